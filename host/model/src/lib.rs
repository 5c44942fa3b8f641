//! The model bridge: the one place that talks to models.
//!
//! Everything above it sees one small interface: a [`ChatRequest`] (messages,
//! optional tools with JSON schemas, optional JSON-schema output format,
//! thinking on/off, options) and a [`ChatReply`] (content, thinking, tool
//! calls, token counts, which backend and model answered, timing). Three
//! backends implement [`ChatBackend`]:
//!
//! - [`ollama::OllamaBackend`], the production path: Ollama's `/api/chat`
//!   with request types from `ollama-rs`, plus what that crate lacks (status
//!   codes mapped to typed errors, `{"error":…}` lines inside a stream,
//!   `done_reason`, byte-safe NDJSON splitting, retries with backoff);
//! - `embedded::EmbeddedBackend` (cargo feature `embedded`, on by default):
//!   llama.cpp in-process, prompts through the GGUF's own chat template
//!   ([`template`]), tool calls and JSON grammar-constrained, the KV cache
//!   kept between a conversation's turns, so everything runs with no server;
//! - [`replay::ReplayBackend`]: answers from a recorded transcript and
//!   reports a mismatch when the request differs.
//!
//! [`Bridge`] maps roles (coordinator, reasoner, belter, drummer) to
//! backends and models from the config, checks capabilities before sending
//! (no tools to a model without the `tools` capability), and reports what it
//! chose ([`Bridge::check`]).
//!
//! Not here: prompts and protocols of the agents (the coordinator), the
//! journal (it stores requests and replies, which serialise with serde).

mod bridge;
pub mod catalogue;
pub mod config;
#[cfg(feature = "embedded")]
pub mod embedded;
pub mod fetch;
pub mod grammar;
pub mod ollama;
pub mod replay;
pub mod template;

pub use bridge::{Bridge, Resolved, RoleReport};
pub use config::{Config, ModelRole, ModelSpec};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

/// A tool call a model asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub name: String,
    /// The arguments object.
    pub arguments: Value,
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thinking: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// For `Role::Tool`: which tool this is the result of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_name: Option<String>,
}

impl Message {
    fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            thinking: None,
            tool_calls: Vec::new(),
            tool_name: None,
        }
    }

    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }

    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new(Role::Assistant, content)
    }

    /// The result of calling `tool`.
    pub fn tool(tool: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            tool_name: Some(tool.into()),
            ..Self::new(Role::Tool, content)
        }
    }
}

/// A tool offered to the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments object (shared: a crew's tools go
    /// into every request it makes).
    pub parameters: std::sync::Arc<Value>,
}

/// Sampling and context options. Unset fields use the backend's defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Options {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_ctx: Option<u32>,
    /// Most tokens to generate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_predict: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
}

/// A chat request, independent of the backend.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolSpec>,
    /// JSON Schema the reply's content must follow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Value>,
    /// Ask for the model's reasoning (`thinking`) separately.
    #[serde(default)]
    pub think: bool,
    #[serde(default)]
    pub options: Options,
    /// How long Ollama keeps the model loaded afterwards (`5m`, `-1`, `0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_alive: Option<String>,
    /// Whether the reply may be plain text or must call a tool.
    #[serde(default, skip_serializing_if = "ToolChoice::is_auto")]
    pub tool_choice: ToolChoice,
    /// Tools declared (the prompt, and its cached prefix, stay the same)
    /// that this reply may not call: the embedded grammar leaves them out;
    /// Ollama has no such setting, and a caller must check.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unavailable: Vec<String>,
}

impl ChatRequest {
    /// The tools this reply may call.
    pub fn callable(&self) -> impl Iterator<Item = &ToolSpec> {
        self.tools
            .iter()
            .filter(|t| !self.unavailable.contains(&t.name))
    }
}

/// Whether a reply to a request with tools may be plain text.
///
/// `Required` is a decoding constraint where the backend has one (the
/// embedded backend's grammar then offers only the tools' calls); Ollama's
/// chat API has no such setting, so an Ollama model gets the same prompt
/// and may still reply in text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ToolChoice {
    /// A tool call or plain text, as the model chooses.
    #[default]
    Auto,
    /// One of the tools' calls.
    Required,
}

impl ToolChoice {
    pub fn is_auto(&self) -> bool {
        *self == ToolChoice::Auto
    }
}

/// How long a reply took.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    pub total_ms: f64,
    pub prompt_ms: f64,
    pub generation_ms: f64,
}

/// Where a model runs. Stored and shown as `ollama`, `embedded`, `replay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// An Ollama server.
    Ollama,
    /// llama.cpp in this process.
    Embedded,
    /// Recorded replies (regression runs, benchmarks).
    Replay,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Ollama => "ollama",
            Backend::Embedded => "embedded",
            Backend::Replay => "replay",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A model's reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatReply {
    pub message: Message,
    pub backend: Backend,
    pub model: String,
    /// The model's digest when the backend knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_digest: Option<String>,
    /// `stop`, `length` (cut off at the token limit), …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done_reason: Option<String>,
    /// Tokens of the prompt.
    pub prompt_tokens: u32,
    /// Of those, how many the model evaluated (the rest came from a cached
    /// prefix); unknown for replies recorded before it was counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_eval_tokens: Option<u32>,
    pub completion_tokens: u32,
    pub timing: Timing,
}

impl ChatReply {
    /// True when generation stopped at the token limit.
    pub fn truncated(&self) -> bool {
        self.done_reason.as_deref() == Some("length")
    }
}

/// Streaming progress: pieces of content and thinking as they arrive.
pub type Progress<'a> = &'a (dyn Fn(&str, &str) + Send + Sync);

/// Everything that can go wrong talking to a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(
        "model `{model}` is not available ({message}); pull it with `ollama pull {model}` or \
         choose another model in config.toml [models]"
    )]
    ModelNotFound { model: String, message: String },
    #[error("model `{model}` does not support tools ({message})")]
    ToolsUnsupported { model: String, message: String },
    #[error("model `{model}` does not support thinking ({message})")]
    ThinkingUnsupported { model: String, message: String },
    #[error("the Ollama server is overloaded (503) and did not recover after retries: {message}")]
    Busy { message: String },
    #[error("cannot reach the Ollama server at {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("Ollama answered HTTP {status}: {message}")]
    Http { status: u16, message: String },
    #[error("Ollama reported an error in the middle of the reply: {message}")]
    Stream { message: String },
    #[error("the reply from {backend} could not be understood: {message}")]
    BadReply { backend: Backend, message: String },
    #[error("no model file at {path}: {hint}")]
    ModelFileMissing { path: String, hint: String },
    #[error("the embedded model failed: {what}")]
    Embedded {
        what: String,
        #[source]
        source: Option<BoxError>,
    },
    #[error("replay mismatch at request {index}: {reason}")]
    ReplayMismatch { index: usize, reason: String },
    #[error("replay transcript exhausted: request {index} was never recorded")]
    ReplayExhausted { index: usize },
    #[error("no model for role `{role}`: {reason}")]
    NoBackend { role: String, reason: String },
    #[error("fetching the model: {what}")]
    Fetch {
        what: String,
        #[source]
        source: Option<BoxError>,
    },
    #[error("{0}")]
    Config(String),
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

/// The cause kept by a [`ModelError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl ModelError {
    /// The embedded backend failed at `what`, because of `source`.
    pub fn embedded(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        ModelError::Embedded {
            what: what.into(),
            source: Some(source.into()),
        }
    }

    /// The embedded backend refused something, for the reason in `what`.
    pub fn embedded_msg(what: impl Into<String>) -> Self {
        ModelError::Embedded {
            what: what.into(),
            source: None,
        }
    }

    /// Fetching a model failed at `what`, because of `source`.
    pub fn fetch(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        ModelError::Fetch {
            what: what.into(),
            source: Some(source.into()),
        }
    }

    /// Fetching a model failed, for the reason in `what`.
    pub fn fetch_msg(what: impl Into<String>) -> Self {
        ModelError::Fetch {
            what: what.into(),
            source: None,
        }
    }

    /// The message with its causes, `: `-separated (for one-line reports:
    /// a task's failure reason, `camina model check`).
    pub fn with_causes(&self) -> String {
        let mut out = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            out.push_str(&format!(": {c}"));
            cause = c.source();
        }
        out
    }
}

/// Checks that `path` starts like a GGUF model file, so a truncated
/// download or a wrong path is said plainly (llama.cpp reports what else
/// is wrong when it loads the file).
pub(crate) fn check_gguf_magic(path: &std::path::Path) -> Result<()> {
    let mut magic = [0u8; 4];
    let read =
        std::fs::File::open(path).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic));
    if read.is_err() || &magic != b"GGUF" {
        return Err(ModelError::embedded_msg(format!(
            "{}: not a GGUF model file (it does not start with `GGUF`); run `camina model \
             fetch` again, or point [embedded] gguf at a GGUF file",
            path.display()
        )));
    }
    Ok(())
}

/// One way of talking to models.
#[async_trait::async_trait]
pub trait ChatBackend: Send + Sync {
    /// `ollama`, `embedded`, `replay`.
    fn kind(&self) -> Backend;

    /// Sends `request` to `model`.
    async fn chat(
        &self,
        model: &str,
        request: &ChatRequest,
        progress: Option<Progress<'_>>,
    ) -> Result<ChatReply>;
}
