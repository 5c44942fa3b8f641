//! The `[models]`, `[ollama]` and `[embedded]` sections of `config.toml`.
//!
//! ```toml
//! [models]
//! coordinator = "ollama:mistral-small:22b"   # "ollama:<name>" | "embedded" | "embedded:<path.gguf>" | "auto"
//! reasoner    = "ollama:deepseek-r1:7b"
//! belter      = "ollama:mistral:7b"
//! drummer     = "ollama:mistral:7b"
//!
//! [ollama]
//! url = "http://127.0.0.1:11434"             # OLLAMA_HOST overrides when set
//! timeout_s = 300
//!
//! [embedded]
//! gguf = "{home}/models/gemma-3-270m-q4_k_m.gguf"
//! threads = 2
//! n_ctx = 4096
//! copy_evidence = true                       # bias JSON strings towards quoting tool results
//! ```
//!
//! Every key is optional; every role defaults to `auto`.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};

/// The roles that run on models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelRole {
    Coordinator,
    Reasoner,
    Belter,
    Drummer,
}

impl ModelRole {
    pub const ALL: [ModelRole; 4] = [
        ModelRole::Coordinator,
        ModelRole::Reasoner,
        ModelRole::Belter,
        ModelRole::Drummer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ModelRole::Coordinator => "coordinator",
            ModelRole::Reasoner => "reasoner",
            ModelRole::Belter => "belter",
            ModelRole::Drummer => "drummer",
        }
    }

    /// The Ollama model the project plan assigns to the role.
    pub fn seed_model(self) -> &'static str {
        match self {
            ModelRole::Coordinator => "mistral-small:22b",
            ModelRole::Reasoner => "deepseek-r1:7b",
            ModelRole::Belter | ModelRole::Drummer => "mistral:7b",
        }
    }
}

impl fmt::Display for ModelRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which model a role runs on.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ModelSpec {
    /// The seed Ollama model if the server has it, else the embedded model.
    #[default]
    Auto,
    Ollama(String),
    /// The configured GGUF, or this one.
    Embedded(Option<PathBuf>),
}

impl TryFrom<String> for ModelSpec {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        let s = s.trim();
        if s == "auto" {
            return Ok(ModelSpec::Auto);
        }
        if s == "embedded" {
            return Ok(ModelSpec::Embedded(None));
        }
        if let Some(path) = s.strip_prefix("embedded:") {
            if path.is_empty() {
                return Err("`embedded:` needs a path to a .gguf file".into());
            }
            return Ok(ModelSpec::Embedded(Some(PathBuf::from(path))));
        }
        if let Some(name) = s.strip_prefix("ollama:") {
            if name.is_empty() || name.contains(char::is_whitespace) {
                return Err(format!(
                    "`{s}`: give an Ollama model name, e.g. ollama:mistral:7b"
                ));
            }
            return Ok(ModelSpec::Ollama(name.to_owned()));
        }
        Err(format!(
            "`{s}` is not a model: use \"auto\", \"ollama:<name>\", \"embedded\" or \"embedded:<path.gguf>\""
        ))
    }
}

impl From<ModelSpec> for String {
    fn from(m: ModelSpec) -> String {
        m.to_string()
    }
}

impl fmt::Display for ModelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelSpec::Auto => f.write_str("auto"),
            ModelSpec::Ollama(n) => write!(f, "ollama:{n}"),
            ModelSpec::Embedded(None) => f.write_str("embedded"),
            ModelSpec::Embedded(Some(p)) => write!(f, "embedded:{}", p.display()),
        }
    }
}

/// `[models]`
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelsSection {
    #[serde(default)]
    pub coordinator: ModelSpec,
    #[serde(default)]
    pub reasoner: ModelSpec,
    #[serde(default)]
    pub belter: ModelSpec,
    #[serde(default)]
    pub drummer: ModelSpec,
}

impl ModelsSection {
    pub fn get(&self, role: ModelRole) -> &ModelSpec {
        match role {
            ModelRole::Coordinator => &self.coordinator,
            ModelRole::Reasoner => &self.reasoner,
            ModelRole::Belter => &self.belter,
            ModelRole::Drummer => &self.drummer,
        }
    }

    /// Every role on the same spec (`camina run --model embedded`).
    pub fn all(spec: ModelSpec) -> Self {
        Self {
            coordinator: spec.clone(),
            reasoner: spec.clone(),
            belter: spec.clone(),
            drummer: spec,
        }
    }
}

/// `[ollama]`
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OllamaSection {
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub timeout_s: Option<u64>,
}

/// `[embedded]`
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedSection {
    #[serde(default)]
    pub gguf: Option<String>,
    #[serde(default)]
    pub threads: Option<u32>,
    /// Largest context per call (tokens); default 4096.
    #[serde(default)]
    pub n_ctx: Option<u32>,
    /// Bias JSON strings in replies towards copying the evidence the
    /// request shows (tool results); default true.
    #[serde(default)]
    pub copy_evidence: Option<bool>,
}

/// The model bridge's configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub models: ModelsSection,
    #[serde(default)]
    pub ollama: OllamaSection,
    #[serde(default)]
    pub embedded: EmbeddedSection,
}

/// The default GGUF, relative to the Caminaå home.
pub const DEFAULT_GGUF: &str = "{home}/models/gemma-3-270m-q4_k_m.gguf";
pub const DEFAULT_OLLAMA_URL: &str = "http://127.0.0.1:11434";

impl Config {
    /// The Ollama base URL: `OLLAMA_HOST` when set, else `[ollama] url`,
    /// else the default. `OLLAMA_HOST` may omit scheme and port, as with
    /// the ollama CLI (`0.0.0.0`, `host:port`).
    pub fn ollama_url(&self) -> String {
        let from_env = std::env::var("OLLAMA_HOST")
            .ok()
            .filter(|v| !v.trim().is_empty());
        match from_env {
            Some(v) => normalise_ollama_host(&v),
            None => self
                .ollama
                .url
                .clone()
                .unwrap_or_else(|| DEFAULT_OLLAMA_URL.to_owned()),
        }
    }

    pub fn ollama_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.ollama.timeout_s.unwrap_or(300).max(1))
    }

    /// The embedded GGUF path, `{home}` filled in.
    pub fn gguf_path(&self, home: &Path) -> PathBuf {
        let template = self.embedded.gguf.as_deref().unwrap_or(DEFAULT_GGUF);
        PathBuf::from(template.replace("{home}", &home.display().to_string()))
    }

    /// Threads for embedded inference: configured, else the machine's cores.
    pub fn embedded_threads(&self) -> u32 {
        self.embedded.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(2)
        })
    }
}

fn normalise_ollama_host(v: &str) -> String {
    // As the ollama CLI: no scheme means http and port 11434; an explicit
    // scheme keeps its own default port.
    let v = v.trim().trim_end_matches('/');
    let (scheme, rest) = match v.split_once("://") {
        Some((s, r)) => return format!("{s}://{}", r.replacen("0.0.0.0", "127.0.0.1", 1)),
        None => ("http", v),
    };
    let rest = rest.replacen("0.0.0.0", "127.0.0.1", 1);
    let has_port = rest.rsplit_once(':').is_some_and(|(h, p)| {
        !h.ends_with('[') && p.chars().all(|c| c.is_ascii_digit()) && !p.is_empty()
    });
    if has_port {
        format!("{scheme}://{rest}")
    } else {
        format!("{scheme}://{rest}:11434")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_print() {
        for s in [
            "auto",
            "ollama:mistral:7b",
            "embedded",
            "embedded:/m/x.gguf",
        ] {
            let spec = ModelSpec::try_from(s.to_owned()).unwrap();
            assert_eq!(spec.to_string(), s);
        }
        assert!(ModelSpec::try_from("mistral".to_owned()).is_err());
        assert!(ModelSpec::try_from("ollama:".to_owned()).is_err());
    }

    #[test]
    fn config_file_format() {
        let c: Config = toml::from_str(
            "[models]\ncoordinator = \"ollama:mistral-small:22b\"\nbelter = \"embedded\"\n[ollama]\ntimeout_s = 5\n[embedded]\nthreads = 1\n",
        )
        .unwrap();
        assert_eq!(
            c.models.coordinator,
            ModelSpec::Ollama("mistral-small:22b".into())
        );
        assert_eq!(c.models.reasoner, ModelSpec::Auto);
        assert_eq!(c.models.belter, ModelSpec::Embedded(None));
        assert_eq!(c.ollama_timeout().as_secs(), 5);
        let e = toml::from_str::<Config>("[models]\ncoordinator = \"gpt\"\n").unwrap_err();
        assert!(e.to_string().contains("is not a model"), "{e}");
        assert!(toml::from_str::<Config>("[models]\npilot = \"auto\"\n").is_err());
        assert_eq!(
            c.gguf_path(Path::new("/h")),
            PathBuf::from("/h/models/gemma-3-270m-q4_k_m.gguf")
        );
    }

    #[test]
    fn ollama_host_forms() {
        assert_eq!(normalise_ollama_host("0.0.0.0"), "http://127.0.0.1:11434");
        assert_eq!(normalise_ollama_host("host:1234"), "http://host:1234");
        assert_eq!(normalise_ollama_host("https://x.org/"), "https://x.org");
        assert_eq!(
            normalise_ollama_host("http://127.0.0.1:9"),
            "http://127.0.0.1:9"
        );
    }
}
