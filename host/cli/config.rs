//! `config.toml`: `$CAMINA_HOME/config.toml`, or `--config FILE`. Every
//! section and key is optional; unknown keys are errors naming the file.

use anyhow::Context as _;
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub models: camina_model::config::ModelsSection,
    #[serde(default)]
    pub ollama: camina_model::config::OllamaSection,
    #[serde(default)]
    pub embedded: camina_model::config::EmbeddedSection,
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub plugins: PluginsSection,
    #[serde(default)]
    pub audit: AuditSection,
    #[serde(default)]
    pub journal: JournalSection,
    #[serde(default)]
    pub restate: RestateSection,
}

/// `[restate]`: where the Restate cluster is, for `camina worker` (and the
/// multi-node mode). Single-node sled needs none of it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestateSection {
    /// Restate's ingress (where tasks are submitted), e.g.
    /// `http://127.0.0.1:8080`; `--restate` wins.
    pub ingress: Option<String>,
    /// Restate's admin API (where workers register); default: the
    /// ingress host on port 9070.
    pub admin: Option<String>,
}

/// `[journal]`: what tasks leave behind.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalSection {
    /// Keep a task's before-images (what `camina task undo` restores) this
    /// long after its last change, e.g. `"30d"`; default: as long as the
    /// task is in the journal.
    #[serde(default, with = "humantime_serde_opt")]
    pub keep_undo: Option<std::time::Duration>,
    /// Keep at most this many MiB of before-image content (oldest tasks'
    /// images go first); default: no cap.
    pub max_undo_mib: Option<u64>,
}

impl JournalSection {
    pub fn undo_limits(&self) -> (Option<std::time::Duration>, Option<u64>) {
        (self.keep_undo, self.max_undo_mib.map(|m| m << 20))
    }
}

/// `"30d"`-style durations for an optional field.
mod humantime_serde_opt {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<std::time::Duration>, D::Error> {
        let Some(text) = Option::<String>::deserialize(d)? else {
            return Ok(None);
        };
        humantime::parse_duration(&text)
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("`{text}`: {e} (e.g. \"30d\", \"12h\")")))
    }
}

/// `[plugins]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsSection {
    /// Refuse to install plugins without a trusted signature.
    #[serde(default)]
    pub require_signatures: bool,
}

/// `[audit]`: the capability decision log.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    /// Keep decisions this many days (default 30).
    pub retention_days: Option<u64>,
    /// Keep at most this many decisions (default 200000).
    pub max_entries: Option<usize>,
}

impl AuditSection {
    pub fn retention(&self) -> camina_journal::Retention {
        let d = camina_journal::Retention::default();
        camina_journal::Retention {
            max_age: self.retention_days.map_or(d.max_age, |days| {
                std::time::Duration::from_secs(days * 24 * 3600)
            }),
            max_entries: self.max_entries.unwrap_or(d.max_entries),
        }
    }
}

/// `[server]`: `camina serve`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Default `127.0.0.1:7700`.
    pub listen: Option<String>,
    /// Task workspaces must lie under it; default `{home}/workspaces`.
    pub workspace_root: Option<String>,
    /// Tasks running at once (the rest stay queued); default 4.
    pub max_running: Option<usize>,
    /// Largest JSON body; default 1024 KiB.
    pub max_json_kib: Option<usize>,
    /// Largest plugin upload; default 64 MiB.
    pub max_upload_mib: Option<usize>,
    /// Per-request time limit (event streams excepted); default 30 s.
    pub request_timeout_s: Option<u64>,
    /// `[[server.tokens]] token = "…", scopes = ["tasks", "admin"]`
    #[serde(default)]
    pub tokens: Vec<camina_api::Token>,
}

impl FileConfig {
    pub fn model_config(&self) -> camina_model::Config {
        camina_model::Config {
            models: self.models.clone(),
            ollama: self.ollama.clone(),
            embedded: self.embedded.clone(),
        }
    }
}

/// Loads `--config FILE` (which must exist) or `<home>/config.toml` (which
/// may not).
pub fn load(flag: Option<&Path>, home: &Path) -> anyhow::Result<(FileConfig, Option<PathBuf>)> {
    let (path, required) = match flag {
        Some(p) => (p.to_path_buf(), true),
        None => (camina_coordinator::home::Home::new(home).config(), false),
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
            return Ok((FileConfig::default(), None));
        }
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot read the config file {}", path.display()));
        }
    };
    let config: FileConfig = toml::from_str(&text).map_err(|e| {
        let (line, col) = e
            .span()
            .map(|s| {
                let before = &text[..s.start.min(text.len())];
                (
                    before.matches('\n').count() + 1,
                    before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1,
                )
            })
            .unwrap_or((0, 0));
        anyhow::anyhow!("{}:{line}:{col}: {}", path.display(), e.message().trim())
    })?;
    Ok((config, Some(path)))
}
