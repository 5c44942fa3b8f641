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
//! model = "qwen2.5-coder-1.5b"               # a catalogue model (`camina model list`)
//! gguf = "/path/to/any.gguf"                 # or any GGUF file instead
//! threads = 2
//! n_ctx = 8192
//! cache_slots = 4                            # conversations whose KV cache is kept
//! prompt_cache = true                        # keep shared prompt prefixes on disk
//! ```
//!
//! Every key is optional; every role defaults to `auto`.

use crate::catalogue::{self, CatalogueModel};
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

/// Which embedded model: the configured one, a catalogue model, a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmbeddedModel {
    /// `[embedded] gguf`, else `[embedded] model`, else the default.
    Configured,
    /// A catalogue model by name.
    Named(String),
    /// Any GGUF file (`{home}` is filled in).
    File(PathBuf),
}

/// Which model a role runs on.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ModelSpec {
    /// The seed Ollama model if the server has it, else the embedded model.
    #[default]
    Auto,
    Ollama(String),
    Embedded(EmbeddedModel),
}

/// A catalogue model name, checked against the catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CatalogueName(String);

impl CatalogueName {
    pub fn model(&self) -> &'static CatalogueModel {
        catalogue::find(&self.0).expect("checked when parsed")
    }
}

impl TryFrom<String> for CatalogueName {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        match catalogue::find(s.trim()) {
            Some(m) => Ok(Self(m.name.to_owned())),
            None => Err(format!(
                "`{s}` is not a catalogue model (the catalogue: {}; `camina model list`); \
                 for another GGUF file set [embedded] gguf",
                catalogue::names()
            )),
        }
    }
}

impl From<CatalogueName> for String {
    fn from(n: CatalogueName) -> String {
        n.0
    }
}

impl TryFrom<String> for ModelSpec {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        let s = s.trim();
        if s == "auto" {
            return Ok(ModelSpec::Auto);
        }
        if s == "embedded" {
            return Ok(ModelSpec::Embedded(EmbeddedModel::Configured));
        }
        if let Some(what) = s.strip_prefix("embedded:") {
            if what.is_empty() {
                return Err(
                    "`embedded:` needs a catalogue model name or a path to a .gguf file".into(),
                );
            }
            if what.contains('/') || what.ends_with(".gguf") {
                return Ok(ModelSpec::Embedded(EmbeddedModel::File(PathBuf::from(
                    what,
                ))));
            }
            return CatalogueName::try_from(what.to_owned())
                .map(|n| ModelSpec::Embedded(EmbeddedModel::Named(n.0)));
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
            "`{s}` is not a model: use \"auto\", \"ollama:<name>\", \"embedded\", \"embedded:<catalogue name>\" \
             or \"embedded:<path.gguf>\""
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
            ModelSpec::Embedded(EmbeddedModel::Configured) => f.write_str("embedded"),
            ModelSpec::Embedded(EmbeddedModel::Named(n)) => write!(f, "embedded:{n}"),
            ModelSpec::Embedded(EmbeddedModel::File(p)) => write!(f, "embedded:{}", p.display()),
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
    /// A catalogue model (default [`catalogue::DEFAULT_MODEL`]).
    #[serde(default)]
    pub model: Option<CatalogueName>,
    /// Any GGUF file instead of a catalogue model (`{home}` is filled in).
    #[serde(default)]
    pub gguf: Option<String>,
    #[serde(default)]
    pub threads: Option<u32>,
    /// Largest context per call (tokens); default 8192.
    #[serde(default)]
    pub n_ctx: Option<u32>,
    /// Conversations whose KV cache stays in memory between calls
    /// (default 4): a conversation's next turn evaluates only its new
    /// tokens.
    #[serde(default)]
    pub cache_slots: Option<u32>,
    /// Keep the KV cache of shared prompt prefixes (a role's system text
    /// and tools) on disk, under the cache directory, so a new process
    /// does not evaluate them again (default true).
    #[serde(default)]
    pub prompt_cache: Option<bool>,
    /// Accepted for old config files and ignored: the evidence copier that
    /// helped the 270M model quote is gone.
    #[serde(default, skip_serializing)]
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

    /// The catalogue model `[embedded]` names (the default when it names
    /// none), whether or not `gguf` overrides it.
    pub fn catalogue_model(&self) -> &'static CatalogueModel {
        self.embedded.model.as_ref().map_or_else(
            || catalogue::find(catalogue::DEFAULT_MODEL).expect("the default is in the catalogue"),
            CatalogueName::model,
        )
    }

    /// The GGUF file and catalogue entry of an embedded choice: a file as
    /// given (`{home}` filled in; a catalogue entry when its size is one's),
    /// a catalogue model at `<home>/models/<file>` when present there, else
    /// in the cache (where `camina model fetch` puts it).
    pub fn embedded_target(&self, which: &EmbeddedModel, home: &Path) -> EmbeddedTarget {
        let expand = |p: &str| expand_home(p, home);
        let file = |path: PathBuf| EmbeddedTarget {
            catalogue: catalogue::identify(&path),
            path,
        };
        let named = |m: &'static CatalogueModel| {
            let in_home = home.join("models").join(m.file);
            let path = if in_home.is_file() {
                in_home
            } else {
                crate::fetch::cached_model_path(m, &crate::fetch::cache_dir())
            };
            EmbeddedTarget {
                path,
                catalogue: Some(m),
            }
        };
        match which {
            EmbeddedModel::File(p) => file(expand(&p.display().to_string())),
            EmbeddedModel::Named(n) => match catalogue::find(n) {
                Some(m) => named(m),
                None => file(PathBuf::from(n)),
            },
            EmbeddedModel::Configured => match &self.embedded.gguf {
                Some(g) => file(expand(g)),
                None => named(self.catalogue_model()),
            },
        }
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

/// Where an embedded choice's model is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedTarget {
    pub path: PathBuf,
    /// The catalogue model it is, if known.
    pub catalogue: Option<&'static CatalogueModel>,
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

/// A configured path with `{home}` replaced by the home directory (the
/// one place this expansion is written).
pub fn expand_home(text: &str, home: &Path) -> PathBuf {
    PathBuf::from(text.replace("{home}", &home.display().to_string()))
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
            "embedded:qwen2.5-coder-0.5b",
        ] {
            let spec = ModelSpec::try_from(s.to_owned()).unwrap();
            assert_eq!(spec.to_string(), s);
        }
        assert!(ModelSpec::try_from("mistral".to_owned()).is_err());
        assert!(ModelSpec::try_from("ollama:".to_owned()).is_err());
        let e = ModelSpec::try_from("embedded:qwen9".to_owned()).unwrap_err();
        assert!(
            e.contains("not a catalogue model") && e.contains("qwen2.5-coder-1.5b"),
            "{e}"
        );
        assert_eq!(
            ModelSpec::try_from("embedded:m.gguf".to_owned()).unwrap(),
            ModelSpec::Embedded(EmbeddedModel::File("m.gguf".into()))
        );
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
        assert_eq!(
            c.models.belter,
            ModelSpec::Embedded(EmbeddedModel::Configured)
        );
        assert_eq!(c.ollama_timeout().as_secs(), 5);
        let e = toml::from_str::<Config>("[models]\ncoordinator = \"gpt\"\n").unwrap_err();
        assert!(e.to_string().contains("is not a model"), "{e}");
        assert!(toml::from_str::<Config>("[models]\npilot = \"auto\"\n").is_err());
        let t = c.embedded_target(&EmbeddedModel::Configured, Path::new("/h"));
        assert_eq!(t.catalogue.unwrap().name, catalogue::DEFAULT_MODEL);
        assert!(
            t.path
                .ends_with(catalogue::find(catalogue::DEFAULT_MODEL).unwrap().file)
        );
        let c: Config =
            toml::from_str("[embedded]\nmodel = \"qwen2.5-coder-0.5b\"\ncopy_evidence = true\n")
                .unwrap();
        assert_eq!(c.catalogue_model().name, "qwen2.5-coder-0.5b");
        let c: Config = toml::from_str("[embedded]\ngguf = \"{home}/m.gguf\"\n").unwrap();
        let t = c.embedded_target(&EmbeddedModel::Configured, Path::new("/h"));
        assert_eq!(t.path, PathBuf::from("/h/m.gguf"));
        let e = toml::from_str::<Config>("[embedded]\nmodel = \"llama\"\n").unwrap_err();
        assert!(e.to_string().contains("not a catalogue model"), "{e}");
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
