//! Ollama, the production backend.
//!
//! Requests are built with `ollama-rs`'s types (`ChatMessageRequest`,
//! `ToolInfo`, `FormatType`, `ThinkType`, `ModelOptions`), and `/api/tags`
//! and `/api/show` go through its client. `/api/chat` is sent and read here
//! because the crate (0.3.6) loses what a serious client needs:
//! - non-2xx answers become an untyped string (status dropped): here 404 is
//!   [`ModelError::ModelNotFound`], 400 "does not support tools/thinking" the
//!   typed errors, 503 [`ModelError::Busy`] after retries;
//! - an `{"error": …}` line inside a stream is printed and skipped by the
//!   crate: here it is [`ModelError::Stream`];
//! - `done_reason` is not parsed: here it is kept, so truncation (`length`)
//!   is visible; a stream that ends without `done` is an error;
//! - NDJSON chunks that split a UTF-8 character are dropped by the crate:
//!   here lines are split on bytes;
//! - tool results cannot carry `tool_name`: here they do.
//!
//! 503s and connection failures are retried with exponential backoff; 4xx
//! never are.

use crate::{
    ChatBackend, ChatReply, ChatRequest, Message, ModelError, Progress, Result, Role, Timing,
    ToolCall,
};
use futures_util::StreamExt;
use ollama_rs::generation::chat::{ChatMessage, MessageRole, request::ChatMessageRequest};
use ollama_rs::generation::parameters::{FormatType, JsonStructure, ThinkType};
use ollama_rs::generation::tools::{
    ToolCall as OToolCall, ToolCallFunction, ToolFunctionInfo, ToolInfo, ToolType,
};
use ollama_rs::models::ModelOptions;
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Retries after a 503 or a failed connection.
const RETRIES: u32 = 4;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// What `/api/show` says about a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFacts {
    /// `completion`, `tools`, `thinking`, `vision`, …
    pub capabilities: Vec<String>,
}

/// An Ollama server.
pub struct OllamaBackend {
    base: String,
    client: ollama_rs::Ollama,
    http: reqwest::Client,
    facts: Mutex<HashMap<String, ModelFacts>>,
    /// Model name → digest, from `/api/tags` (journaled with each reply);
    /// `None` for a model the listing did not give one for, so it is not
    /// listed again on every chat.
    digests: Mutex<HashMap<String, Option<String>>>,
}

impl std::fmt::Debug for OllamaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OllamaBackend")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl OllamaBackend {
    /// A backend for the server at `url` (e.g. `http://127.0.0.1:11434`);
    /// `timeout` bounds each read, so long generations still stream.
    pub fn new(url: &str, timeout: Duration) -> Result<Self> {
        let parsed = url::Url::parse(url)
            .map_err(|e| ModelError::Config(format!("[ollama] url `{url}`: {e}")))?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .read_timeout(timeout)
            .build()
            .map_err(|e| ModelError::Config(format!("HTTP client: {e}")))?;
        let client = ollama_rs::Ollama::builder()
            .url(parsed.clone())
            .reqwest_client(http.clone())
            .build();
        Ok(Self {
            base: parsed.as_str().trim_end_matches('/').to_owned(),
            client,
            http,
            facts: Mutex::new(HashMap::new()),
            digests: Mutex::new(HashMap::new()),
        })
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    fn unreachable(&self, e: impl std::fmt::Display) -> ModelError {
        ModelError::Unreachable {
            url: self.base.clone(),
            message: e.to_string(),
        }
    }

    /// Names of the models the server has (`/api/tags`). Their digests are
    /// kept for the replies (ollama-rs drops the field, so this reads the
    /// listing itself).
    pub async fn models(&self) -> Result<Vec<String>> {
        #[derive(serde::Deserialize)]
        struct Tags {
            #[serde(default)]
            models: Vec<Tag>,
        }
        #[derive(serde::Deserialize)]
        struct Tag {
            name: String,
            #[serde(default)]
            digest: Option<String>,
        }
        let url = format!("{}/api/tags", self.base);
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| self.unreachable(describe_reqwest(&e)))?;
        let status = resp.status().as_u16();
        let text = resp
            .text()
            .await
            .map_err(|e| self.unreachable(describe_reqwest(&e)))?;
        if !(200..300).contains(&status) {
            return Err(ModelError::Http {
                status,
                message: format!("GET /api/tags: {}", error_message(&text)),
            });
        }
        let tags: Tags = serde_json::from_str(&text).map_err(|e| ModelError::BadReply {
            backend: crate::Backend::Ollama,
            message: format!("GET /api/tags: {e}"),
        })?;
        let mut digests = self.digests.lock().unwrap_or_else(|p| p.into_inner());
        for t in &tags.models {
            digests.insert(t.name.clone(), t.digest.clone());
        }
        Ok(tags.models.into_iter().map(|m| m.name).collect())
    }

    /// The digest of `model` as `/api/tags` lists it (listed once per
    /// backend if not known yet); `None` when the server does not say.
    async fn digest(&self, model: &str) -> Option<String> {
        let lock = || self.digests.lock().unwrap_or_else(|p| p.into_inner());
        let known = |digests: &HashMap<String, Option<String>>| {
            digests
                .iter()
                .find(|(name, _)| same_model(name, model))
                .map(|(_, d)| d.clone())
        };
        if let Some(d) = known(&lock()) {
            return d;
        }
        let _ = self.models().await;
        let mut digests = lock();
        let found = known(&digests).flatten();
        if found.is_none() {
            digests.insert(model.to_owned(), None);
        }
        found
    }

    /// Whether the server has `model` (`mistral:7b` also matches
    /// `mistral:7b`, and `x` matches `x:latest`).
    pub async fn has_model(&self, model: &str) -> Result<bool> {
        let names = self.models().await?;
        Ok(names.iter().any(|n| same_model(n, model)))
    }

    /// What `/api/show` reports for `model` (cached per backend).
    pub async fn facts(&self, model: &str) -> Result<ModelFacts> {
        if let Some(f) = self
            .facts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(model)
        {
            return Ok(f.clone());
        }
        let info = self
            .client
            .show_model_info(model.to_owned())
            .await
            .map_err(|e| self.crate_error(e, Some(model)))?;
        let facts = ModelFacts {
            capabilities: info.capabilities,
        };
        self.facts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(model.to_owned(), facts.clone());
        Ok(facts)
    }

    /// Turns an `ollama-rs` error into a typed one (its `Other` carries the
    /// response body, whose `error` field we read).
    fn crate_error(&self, e: ollama_rs::error::OllamaError, model: Option<&str>) -> ModelError {
        use ollama_rs::error::OllamaError as E;
        match e {
            E::ReqwestError(r) => self.unreachable(describe_reqwest(&r)),
            E::Other(body) => {
                let message = error_message(&body);
                match model {
                    Some(m) if message.contains("not found") => ModelError::ModelNotFound {
                        model: m.to_owned(),
                        message,
                    },
                    _ => ModelError::Http { status: 0, message },
                }
            }
            other => ModelError::BadReply {
                backend: crate::Backend::Ollama,
                message: format!(
                    "{other}: {}",
                    std::error::Error::source(&other)
                        .map(|s| s.to_string())
                        .unwrap_or_default()
                ),
            },
        }
    }

    /// The request body Ollama's `/api/chat` expects.
    pub fn wire_request(model: &str, req: &ChatRequest, stream: bool) -> Result<Value> {
        let messages = req.messages.iter().map(to_ollama_message).collect();
        let mut r = ChatMessageRequest::new(model.to_owned(), messages);
        if !req.tools.is_empty() {
            let mut tools = Vec::new();
            for t in &req.tools {
                let parameters =
                    schemars::Schema::try_from((*t.parameters).clone()).map_err(|e| {
                        ModelError::Config(format!(
                            "tool `{}`: parameters are not a JSON schema: {e}",
                            t.name
                        ))
                    })?;
                tools.push(ToolInfo {
                    tool_type: ToolType::Function,
                    function: ToolFunctionInfo {
                        name: t.name.clone(),
                        description: t.description.clone(),
                        parameters,
                    },
                });
            }
            r = r.tools(tools);
        }
        if let Some(format) = &req.format {
            let schema = schemars::Schema::try_from(format.clone())
                .map_err(|e| ModelError::Config(format!("format is not a JSON schema: {e}")))?;
            r = r.format(FormatType::StructuredJson(Box::new(
                JsonStructure::new_for_schema(schema),
            )));
        }
        if req.think {
            r = r.think(ThinkType::True);
        }
        let o = &req.options;
        let mut options = ModelOptions::default();
        if let Some(v) = o.temperature {
            options = options.temperature(v);
        }
        if let Some(v) = o.seed {
            options = options.seed(v);
        }
        if let Some(v) = o.num_ctx {
            options = options.num_ctx(u64::from(v));
        }
        if let Some(v) = o.num_predict {
            options = options.num_predict(i32::try_from(v).unwrap_or(i32::MAX));
        }
        if let Some(v) = o.top_p {
            options = options.top_p(v);
        }
        if let Some(v) = o.top_k {
            options = options.top_k(v);
        }
        r = r.options(options);
        let mut body = serde_json::to_value(&r)
            .map_err(|e| ModelError::Config(format!("serialising the request: {e}")))?;
        body["stream"] = Value::Bool(stream);
        if let Some(k) = &req.keep_alive {
            body["keep_alive"] = match k.parse::<i64>() {
                Ok(n) => Value::from(n),
                Err(_) => Value::String(k.clone()),
            };
        }
        // ollama-rs has no `tool_name`; Ollama uses it to match results.
        if let Some(list) = body["messages"].as_array_mut() {
            for (wire, ours) in list.iter_mut().zip(&req.messages) {
                if let Some(name) = &ours.tool_name {
                    wire["tool_name"] = Value::String(name.clone());
                }
                if let Some(obj) = wire.as_object_mut() {
                    if obj.get("thinking").is_some_and(Value::is_null) {
                        obj.remove("thinking");
                    }
                    if obj
                        .get("tool_calls")
                        .and_then(Value::as_array)
                        .is_some_and(Vec::is_empty)
                    {
                        obj.remove("tool_calls");
                    }
                }
            }
        }
        Ok(body)
    }

    async fn post_with_retries(&self, body: &Value, model: &str) -> Result<reqwest::Response> {
        let url = format!("{}/api/chat", self.base);
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = self.http.post(&url).json(body).send().await;
            let retryable = match outcome {
                Ok(resp) if resp.status().is_success() => return Ok(resp),
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let text = resp.text().await.unwrap_or_default();
                    let err = status_error(status, &error_message(&text), model);
                    if status != 503 {
                        return Err(err);
                    }
                    err
                }
                Err(e) if e.is_connect() || is_reset(&e) => self.unreachable(describe_reqwest(&e)),
                Err(e) => return Err(self.unreachable(describe_reqwest(&e))),
            };
            if attempt > RETRIES {
                return Err(retryable);
            }
            tracing::debug!(attempt, ?backoff, "ollama: retrying after {retryable}");
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }
}

fn same_model(have: &str, want: &str) -> bool {
    let norm = |s: &str| {
        if s.contains(':') {
            s.to_owned()
        } else {
            format!("{s}:latest")
        }
    };
    norm(have) == norm(want)
}

fn is_reset(e: &reqwest::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            );
        }
        source = s.source();
    }
    false
}

fn describe_reqwest(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// The `error` field of an Ollama error body, or the body itself.
fn error_message(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| body.trim().to_owned())
}

fn status_error(status: u16, message: &str, model: &str) -> ModelError {
    let message = message.to_owned();
    let model = model.to_owned();
    match status {
        404 => ModelError::ModelNotFound { model, message },
        400 if message.contains("does not support tools") => {
            ModelError::ToolsUnsupported { model, message }
        }
        400 if message.contains("does not support thinking") => {
            ModelError::ThinkingUnsupported { model, message }
        }
        503 => ModelError::Busy { message },
        status => ModelError::Http { status, message },
    }
}

fn to_ollama_message(m: &Message) -> ChatMessage {
    let role = match m.role {
        Role::System => MessageRole::System,
        Role::User => MessageRole::User,
        Role::Assistant => MessageRole::Assistant,
        Role::Tool => MessageRole::Tool,
    };
    let mut msg = ChatMessage::new(role, m.content.clone());
    msg.thinking = m.thinking.clone();
    msg.tool_calls = m
        .tool_calls
        .iter()
        .map(|c| OToolCall {
            function: ToolCallFunction {
                name: c.name.clone(),
                arguments: c.arguments.clone(),
            },
        })
        .collect();
    msg
}

/// One NDJSON line (or the whole body) of `/api/chat`, as Ollama sends it.
#[derive(Debug, Default, Deserialize)]
struct WireChunk {
    #[serde(default)]
    model: String,
    #[serde(default)]
    message: Option<WireMessage>,
    #[serde(default)]
    done: bool,
    #[serde(default)]
    done_reason: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    prompt_eval_count: Option<u64>,
    #[serde(default)]
    eval_count: Option<u64>,
    #[serde(default)]
    total_duration: Option<u64>,
    #[serde(default)]
    prompt_eval_duration: Option<u64>,
    #[serde(default)]
    eval_duration: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
struct WireMessage {
    #[serde(default)]
    content: String,
    #[serde(default)]
    thinking: Option<String>,
    #[serde(default)]
    tool_calls: Vec<WireToolCall>,
}

#[derive(Debug, Deserialize)]
struct WireToolCall {
    function: WireFunction,
}

#[derive(Debug, Deserialize)]
struct WireFunction {
    name: String,
    #[serde(default, alias = "parameters")]
    arguments: Value,
}

/// Accumulates chunks into a reply.
#[derive(Default)]
struct Assembler {
    model: String,
    content: String,
    thinking: String,
    tool_calls: Vec<ToolCall>,
    final_chunk: Option<WireChunk>,
}

impl Assembler {
    fn push(&mut self, chunk: WireChunk, progress: Option<Progress<'_>>) -> Result<()> {
        if let Some(error) = chunk.error {
            return Err(ModelError::Stream { message: error });
        }
        if !chunk.model.is_empty() {
            self.model.clone_from(&chunk.model);
        }
        if let Some(m) = &chunk.message {
            self.content.push_str(&m.content);
            let thinking = m.thinking.as_deref().unwrap_or_default();
            self.thinking.push_str(thinking);
            if let Some(p) = progress
                && (!m.content.is_empty() || !thinking.is_empty())
            {
                p(&m.content, thinking);
            }
            for c in &m.tool_calls {
                self.tool_calls.push(ToolCall {
                    name: c.function.name.clone(),
                    arguments: match &c.function.arguments {
                        Value::Null => Value::Object(Default::default()),
                        v => v.clone(),
                    },
                });
            }
        }
        if chunk.done {
            self.final_chunk = Some(chunk);
        }
        Ok(())
    }

    fn finish(self, model: &str, started: Instant) -> Result<ChatReply> {
        let Some(last) = self.final_chunk else {
            return Err(ModelError::Stream {
                message: "the reply ended before Ollama said it was done".into(),
            });
        };
        let ns = |v: Option<u64>| v.unwrap_or(0) as f64 / 1e6;
        let total = match last.total_duration {
            Some(t) => t as f64 / 1e6,
            None => started.elapsed().as_secs_f64() * 1e3,
        };
        Ok(ChatReply {
            message: Message {
                role: Role::Assistant,
                content: self.content,
                thinking: (!self.thinking.is_empty()).then_some(self.thinking),
                tool_calls: self.tool_calls,
                tool_name: None,
            },
            backend: crate::Backend::Ollama,
            model: if self.model.is_empty() {
                model.to_owned()
            } else {
                self.model
            },
            model_digest: None,
            done_reason: last.done_reason,
            prompt_tokens: last.prompt_eval_count.unwrap_or(0) as u32,
            // Ollama counts what it evaluated (it reuses cached prefixes too).
            prompt_eval_tokens: last.prompt_eval_count.map(|n| n as u32),
            completion_tokens: last.eval_count.unwrap_or(0) as u32,
            timing: Timing {
                total_ms: total,
                prompt_ms: ns(last.prompt_eval_duration),
                generation_ms: ns(last.eval_duration),
            },
        })
    }
}

fn parse_line(line: &[u8]) -> Result<Option<WireChunk>> {
    let trimmed = line.trim_ascii();
    if trimmed.is_empty() {
        return Ok(None);
    }
    serde_json::from_slice(trimmed)
        .map(Some)
        .map_err(|e| ModelError::BadReply {
            backend: crate::Backend::Ollama,
            message: format!(
                "{e}: {}",
                String::from_utf8_lossy(&trimmed[..trimmed.len().min(200)])
            ),
        })
}

#[async_trait::async_trait]
impl ChatBackend for OllamaBackend {
    fn kind(&self) -> crate::Backend {
        crate::Backend::Ollama
    }

    #[tracing::instrument(name = "model.ollama", skip_all, fields(model = %model))]
    async fn chat(
        &self,
        model: &str,
        req: &ChatRequest,
        progress: Option<Progress<'_>>,
    ) -> Result<ChatReply> {
        let started = Instant::now();
        let stream = progress.is_some();
        let body = Self::wire_request(model, req, stream)?;
        let resp = self.post_with_retries(&body, model).await?;
        let mut asm = Assembler::default();
        if stream {
            let mut bytes = resp.bytes_stream();
            let mut buf: Vec<u8> = Vec::new();
            while let Some(piece) = bytes.next().await {
                let piece = piece.map_err(|e| ModelError::Stream {
                    message: describe_reqwest(&e),
                })?;
                buf.extend_from_slice(&piece);
                while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=nl).collect();
                    if let Some(chunk) = parse_line(&line)? {
                        asm.push(chunk, progress)?;
                    }
                }
            }
            if let Some(chunk) = parse_line(&buf)? {
                asm.push(chunk, progress)?;
            }
        } else {
            let text = resp.bytes().await.map_err(|e| ModelError::Stream {
                message: describe_reqwest(&e),
            })?;
            // A non-streamed body is one object; tolerate NDJSON too.
            for line in text.split(|&b| b == b'\n') {
                if let Some(chunk) = parse_line(line)? {
                    asm.push(chunk, None)?;
                }
            }
        }
        let mut reply = asm.finish(model, started)?;
        reply.model_digest = self.digest(model).await;
        if reply.truncated() {
            tracing::warn!(
                model,
                tokens = reply.completion_tokens,
                "reply cut off at the token limit"
            );
        }
        Ok(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ToolSpec;
    use serde_json::json;

    #[test]
    fn wire_request_has_ollama_shape() {
        let req = ChatRequest {
            messages: vec![
                Message::system("s"),
                Message::user("u"),
                Message {
                    tool_calls: vec![ToolCall {
                        name: "read_file".into(),
                        arguments: json!({"path": "a"}),
                    }],
                    ..Message::assistant("")
                },
                Message::tool("read_file", "{\"content\":\"x\"}"),
            ],
            tools: vec![ToolSpec {
                name: "read_file".into(),
                description: "read".into(),
                parameters: json!({"type": "object", "properties": {"path": {"type": "string"}}})
                    .into(),
            }],
            format: Some(json!({"type": "object"})),
            think: true,
            options: crate::Options {
                temperature: Some(0.0),
                seed: Some(7),
                num_ctx: Some(4096),
                ..Default::default()
            },
            keep_alive: Some("5m".into()),
            tool_choice: crate::ToolChoice::Required,
            // Ollama cannot withhold a tool for one reply: it stays
            // declared (the caller checks the reply).
            unavailable: vec!["read_file".into()],
        };
        let w = OllamaBackend::wire_request("mistral:7b", &req, true).unwrap();
        assert_eq!(w["tools"][0]["function"]["name"], "read_file");
        assert_eq!(w["model"], "mistral:7b");
        assert_eq!(w["stream"], true);
        assert_eq!(w["think"], true);
        assert_eq!(w["format"], json!({"type": "object"}));
        assert_eq!(w["tools"][0]["type"], "function");
        assert_eq!(w["tools"][0]["function"]["name"], "read_file");
        assert_eq!(
            w["messages"][2]["tool_calls"][0]["function"]["arguments"],
            json!({"path": "a"})
        );
        assert_eq!(w["messages"][3]["role"], "tool");
        assert_eq!(w["messages"][3]["tool_name"], "read_file");
        assert!(w["messages"][0].get("thinking").is_none());
        assert_eq!(w["options"]["seed"], 7);
        assert_eq!(w["keep_alive"], "5m");
    }

    #[test]
    fn status_codes_become_typed_errors() {
        assert!(matches!(
            status_error(404, "model \"x\" not found", "x"),
            ModelError::ModelNotFound { .. }
        ));
        assert!(matches!(
            status_error(
                400,
                "registry.ollama.ai/library/deepseek-r1:7b does not support tools",
                "d"
            ),
            ModelError::ToolsUnsupported { .. }
        ));
        assert!(matches!(
            status_error(400, "\"m\" does not support thinking", "m"),
            ModelError::ThinkingUnsupported { .. }
        ));
        assert!(matches!(
            status_error(503, "server busy", "m"),
            ModelError::Busy { .. }
        ));
        assert!(matches!(
            status_error(500, "boom", "m"),
            ModelError::Http { status: 500, .. }
        ));
        assert_eq!(error_message(r#"{"error":"nope"}"#), "nope");
    }

    #[test]
    fn model_names_match_with_implicit_latest() {
        assert!(same_model("llama3:latest", "llama3"));
        assert!(same_model("mistral:7b", "mistral:7b"));
        assert!(!same_model("mistral:7b", "mistral"));
    }
}
