//! Per-role routing: which backend and model answers each role.

use crate::config::{Config, EmbeddedModel, EmbeddedTarget, ModelRole, ModelSpec};
use crate::ollama::OllamaBackend;
use crate::{Backend, ChatBackend, ChatReply, ChatRequest, ModelError, Progress, Result};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// What a role runs on, once decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resolved {
    pub role: ModelRole,
    pub backend: Backend,
    /// The Ollama model name, or the GGUF path.
    pub model: String,
    /// `completion`, `tools`, `thinking`, …
    pub capabilities: Vec<String>,
    /// For an embedded model: the catalogue model the file is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub catalogue: Option<String>,
}

impl Resolved {
    pub fn can(&self, capability: &str) -> bool {
        self.capabilities.iter().any(|c| c == capability)
    }
}

/// One line of `camina model check`.
#[derive(Debug, Clone, Serialize)]
pub struct RoleReport {
    pub role: ModelRole,
    /// As configured (`auto`, `ollama:…`, `embedded…`).
    pub spec: String,
    /// The chosen backend, if any.
    pub backend: Option<Backend>,
    pub model: Option<String>,
    /// The backend answers (server reachable / file loadable).
    pub reachable: bool,
    /// The model exists there.
    pub present: bool,
    pub capabilities: Vec<String>,
    /// For an embedded model: the catalogue model the file is.
    pub catalogue: Option<String>,
    /// Why nothing could be chosen.
    pub error: Option<String>,
}

/// Capabilities of embedded models: tool calls and structured output are
/// grammar-constrained; there is no separate thinking channel.
pub const EMBEDDED_CAPABILITIES: [&str; 2] = ["completion", "tools"];

/// The model bridge.
pub struct Bridge {
    config: Config,
    home: PathBuf,
    ollama: Arc<OllamaBackend>,
    /// Set for replays and tests: every role goes to this backend, with the
    /// model named here.
    fixed: Option<(Arc<dyn ChatBackend>, HashMap<ModelRole, String>)>,
    resolved: tokio::sync::Mutex<HashMap<ModelRole, Resolved>>,
    #[cfg(feature = "embedded")]
    embedded: tokio::sync::Mutex<HashMap<PathBuf, Arc<crate::embedded::EmbeddedBackend>>>,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge")
            .field("ollama", &self.ollama.url())
            .finish_non_exhaustive()
    }
}

impl Bridge {
    /// A bridge for `config`, with `home` filling `{home}` in paths.
    pub fn new(config: Config, home: &Path) -> Result<Self> {
        let ollama = Arc::new(OllamaBackend::new(
            &config.ollama_url(),
            config.ollama_timeout(),
        )?);
        Ok(Self {
            config,
            home: home.to_path_buf(),
            ollama,
            fixed: None,
            resolved: tokio::sync::Mutex::new(HashMap::new()),
            #[cfg(feature = "embedded")]
            embedded: tokio::sync::Mutex::new(HashMap::new()),
        })
    }

    /// Routes every role to `backend` (e.g. a replay), with per-role model
    /// names; roles not named use `"replay"`.
    pub fn fixed(
        config: Config,
        home: &Path,
        backend: Arc<dyn ChatBackend>,
        models: HashMap<ModelRole, String>,
    ) -> Result<Self> {
        let mut b = Self::new(config, home)?;
        b.fixed = Some((backend, models));
        Ok(b)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn ollama(&self) -> &OllamaBackend {
        &self.ollama
    }

    fn embedded_target(&self, which: &EmbeddedModel) -> EmbeddedTarget {
        self.config.embedded_target(which, &self.home)
    }

    fn missing_model_hint(path: &Path) -> ModelError {
        ModelError::ModelFileMissing {
            path: path.display().to_string(),
            hint: if cfg!(feature = "embedded") {
                "run `camina model fetch` to download the configured model (`camina model list` \
                 shows the catalogue), or point [embedded] gguf (or \"embedded:<path>\") at a \
                 GGUF file"
                    .into()
            } else {
                "this build has no embedded backend (cargo feature `embedded`)".into()
            },
        }
    }

    /// Decides (once per process) what `role` runs on.
    pub async fn resolve(&self, role: ModelRole) -> Result<Resolved> {
        if let Some(r) = self.resolved.lock().await.get(&role) {
            return Ok(r.clone());
        }
        let r = self.decide(role).await?;
        self.resolved.lock().await.insert(role, r.clone());
        Ok(r)
    }

    async fn decide(&self, role: ModelRole) -> Result<Resolved> {
        if let Some((backend, models)) = &self.fixed {
            return Ok(Resolved {
                role,
                backend: backend.kind(),
                model: models
                    .get(&role)
                    .cloned()
                    .unwrap_or_else(|| "replay".into()),
                capabilities: vec!["completion".into(), "tools".into(), "thinking".into()],
                catalogue: None,
            });
        }
        match self.config.models.get(role) {
            ModelSpec::Ollama(name) => self.ollama_role(role, name).await,
            ModelSpec::Embedded(which) => self.embedded_role(role, &self.embedded_target(which)),
            ModelSpec::Auto => {
                let seed = role.seed_model();
                let ollama_reason =
                    match tokio::time::timeout(Duration::from_secs(3), self.ollama.has_model(seed))
                        .await
                    {
                        Ok(Ok(true)) => return self.ollama_role(role, seed).await,
                        Ok(Ok(false)) => format!(
                            "the Ollama server at {} does not have {seed} (`ollama pull {seed}`)",
                            self.ollama.url()
                        ),
                        Ok(Err(e)) => e.with_causes(),
                        Err(_) => format!(
                            "the Ollama server at {} did not answer in 3 s",
                            self.ollama.url()
                        ),
                    };
                let target = self.embedded_target(&EmbeddedModel::Configured);
                match self.embedded_role(role, &target) {
                    Ok(r) => {
                        tracing::info!(%role, "using the embedded model: {ollama_reason}");
                        Ok(r)
                    }
                    Err(e) => Err(ModelError::NoBackend {
                        role: role.to_string(),
                        reason: format!("{ollama_reason}; and {e}"),
                    }),
                }
            }
        }
    }

    async fn ollama_role(&self, role: ModelRole, name: &str) -> Result<Resolved> {
        let facts = self.ollama.facts(name).await?;
        Ok(Resolved {
            role,
            backend: crate::Backend::Ollama,
            model: name.to_owned(),
            capabilities: facts.capabilities,
            catalogue: None,
        })
    }

    fn embedded_role(&self, role: ModelRole, target: &EmbeddedTarget) -> Result<Resolved> {
        let path = &target.path;
        if !cfg!(feature = "embedded") || !path.is_file() {
            return Err(Self::missing_model_hint(path));
        }
        // A file is not yet a model: a truncated download or a wrong path
        // is said here, not when the first task reaches the model.
        crate::check_gguf_magic(path)?;
        Ok(Resolved {
            role,
            backend: crate::Backend::Embedded,
            model: path.display().to_string(),
            capabilities: EMBEDDED_CAPABILITIES
                .iter()
                .map(|s| s.to_string())
                .collect(),
            catalogue: target.catalogue.map(|m| m.name.to_owned()),
        })
    }

    #[cfg(feature = "embedded")]
    async fn embedded_backend(&self, path: &Path) -> Result<Arc<crate::embedded::EmbeddedBackend>> {
        let mut loaded = self.embedded.lock().await;
        if let Some(b) = loaded.get(path) {
            return Ok(b.clone());
        }
        let e = &self.config.embedded;
        let defaults = crate::embedded::EmbeddedOptions::default();
        let opts = crate::embedded::EmbeddedOptions {
            threads: self.config.embedded_threads(),
            n_ctx: e.n_ctx.unwrap_or(defaults.n_ctx),
            cache_slots: e.cache_slots.unwrap_or(defaults.cache_slots),
            prompt_cache: e
                .prompt_cache
                .unwrap_or(true)
                .then(|| crate::fetch::cache_dir().join("kv")),
        };
        let p = path.to_path_buf();
        let backend =
            tokio::task::spawn_blocking(move || crate::embedded::EmbeddedBackend::load(&p, opts))
                .await
                .map_err(|e| ModelError::embedded("loading the model", e))??;
        let backend = Arc::new(backend);
        loaded.insert(path.to_path_buf(), backend.clone());
        Ok(backend)
    }

    /// Sends `request` to the model of `role`, refusing up front what the
    /// model cannot do (tools, thinking) instead of letting the server fail.
    pub async fn chat(
        &self,
        role: ModelRole,
        request: &ChatRequest,
        progress: Option<Progress<'_>>,
    ) -> Result<ChatReply> {
        let r = self.resolve(role).await?;
        if !request.tools.is_empty() && !r.can("tools") {
            return Err(ModelError::ToolsUnsupported {
                model: r.model,
                message: "its capabilities do not include `tools`; the request was not sent".into(),
            });
        }
        if request.think && !r.can("thinking") {
            return Err(ModelError::ThinkingUnsupported {
                model: r.model,
                message: "its capabilities do not include `thinking`; the request was not sent"
                    .into(),
            });
        }
        if let Some((backend, _)) = &self.fixed {
            return backend.chat(&r.model, request, progress).await;
        }
        match r.backend {
            Backend::Ollama => self.ollama.chat(&r.model, request, progress).await,
            #[cfg(feature = "embedded")]
            Backend::Embedded => {
                let backend = self.embedded_backend(Path::new(&r.model)).await?;
                backend.chat(&r.model, request, progress).await
            }
            other => Err(ModelError::Config(format!(
                "backend `{other}` is not available in this build"
            ))),
        }
    }

    /// What each role would run on, and whether it is there.
    pub async fn check(&self) -> Vec<RoleReport> {
        let tags = tokio::time::timeout(Duration::from_secs(3), self.ollama.models()).await;
        let ollama_up = matches!(tags, Ok(Ok(_)));
        let mut reports = Vec::new();
        for role in ModelRole::ALL {
            let spec = self.config.models.get(role).to_string();
            let report = match self.resolve(role).await {
                Ok(r) => RoleReport {
                    role,
                    spec,
                    reachable: if r.backend == Backend::Ollama {
                        ollama_up
                    } else {
                        true
                    },
                    present: true,
                    backend: Some(r.backend),
                    model: Some(r.model),
                    capabilities: r.capabilities,
                    catalogue: r.catalogue,
                    error: None,
                },
                Err(e) => {
                    let (backend, model, reachable, catalogue) = match self.config.models.get(role)
                    {
                        ModelSpec::Ollama(n) => {
                            (Some(Backend::Ollama), Some(n.clone()), ollama_up, None)
                        }
                        ModelSpec::Embedded(which) => {
                            let t = self.embedded_target(which);
                            (
                                Some(Backend::Embedded),
                                Some(t.path.display().to_string()),
                                false,
                                t.catalogue.map(|m| m.name.to_owned()),
                            )
                        }
                        ModelSpec::Auto => (None, None, false, None),
                    };
                    RoleReport {
                        role,
                        spec,
                        backend,
                        model,
                        reachable,
                        present: false,
                        capabilities: Vec::new(),
                        catalogue,
                        error: Some(e.with_causes()),
                    }
                }
            };
            reports.push(report);
        }
        reports
    }
}
