//! A fake Ollama server for tests, speaking the real wire format:
//!
//! - `GET /api/tags` → `{"models": [{"name", "model", "modified_at", "size", "digest", "details"}]}`
//! - `POST /api/show` → `{"modelfile", "parameters", "template", "details", "model_info", "capabilities"}`,
//!   404 `{"error": "model 'x' not found"}` for unknown models
//! - `POST /api/chat` → one JSON object (`"stream": false`) or NDJSON lines
//!   (`message.content` / `message.thinking` pieces, `message.tool_calls`,
//!   a final `done: true` line with `done_reason` and counts); errors as
//!   `{"error": "…"}` bodies with the real status codes (404 unknown model,
//!   400 "does not support tools" / "does not support thinking", 503).
//!
//! What each chat answers is decided by a script: a function of the request
//! body (model, messages, tools, format, …). Every request is recorded.
//! The server runs on its own thread and runtime, so it serves blocking
//! tests and child processes alike.

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

/// A model the fake server has.
#[derive(Debug, Clone)]
pub struct FakeModel {
    pub name: String,
    /// `completion`, `tools`, `thinking`, …
    pub capabilities: Vec<String>,
}

impl FakeModel {
    pub fn new(name: &str, capabilities: &[&str]) -> Self {
        Self {
            name: name.to_owned(),
            capabilities: capabilities.iter().map(|c| c.to_string()).collect(),
        }
    }
}

/// What one `/api/chat` request gets.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A normal answer.
    Message {
        content: String,
        thinking: Option<String>,
        /// `(function name, arguments)`
        tool_calls: Vec<(String, Value)>,
        /// `stop`, `length`, …
        done_reason: String,
    },
    /// An HTTP error with Ollama's body shape.
    Status { status: u16, message: String },
    /// Streams `content_before`, then an `{"error": …}` line, then stops.
    MidStreamError {
        content_before: String,
        message: String,
    },
    /// Streams `content` and ends without a `done` line.
    Cut { content: String },
    /// Waits, then answers with the inner reply.
    Delayed { ms: u64, reply: Box<Reply> },
}

impl Reply {
    pub fn text(content: &str) -> Self {
        Reply::Message {
            content: content.to_owned(),
            thinking: None,
            tool_calls: Vec::new(),
            done_reason: "stop".into(),
        }
    }

    pub fn thinking(thinking: &str, content: &str) -> Self {
        Reply::Message {
            content: content.to_owned(),
            thinking: Some(thinking.to_owned()),
            tool_calls: Vec::new(),
            done_reason: "stop".into(),
        }
    }

    pub fn tool_call(name: &str, arguments: Value) -> Self {
        Reply::Message {
            content: String::new(),
            thinking: None,
            tool_calls: vec![(name.to_owned(), arguments)],
            done_reason: "stop".into(),
        }
    }

    pub fn truncated(content: &str) -> Self {
        Reply::Message {
            content: content.to_owned(),
            thinking: None,
            tool_calls: Vec::new(),
            done_reason: "length".into(),
        }
    }

    pub fn status(status: u16, message: &str) -> Self {
        Reply::Status {
            status,
            message: message.to_owned(),
        }
    }
}

type Script = Box<dyn FnMut(&Value) -> Reply + Send>;

struct Shared {
    models: Vec<FakeModel>,
    script: Mutex<Script>,
    requests: Mutex<Vec<(String, Value)>>,
}

/// A running fake server; stops when dropped.
pub struct FakeOllama {
    url: String,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for FakeOllama {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeOllama")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Drop for FakeOllama {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl FakeOllama {
    /// Starts a server with `models`, answering chats with `script`.
    pub fn start(
        models: Vec<FakeModel>,
        script: impl FnMut(&Value) -> Reply + Send + 'static,
    ) -> Self {
        let shared = Arc::new(Shared {
            models,
            script: Mutex::new(Box::new(script)),
            requests: Mutex::new(Vec::new()),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        listener.set_nonblocking(true).expect("nonblocking");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = Router::new()
            .route("/api/tags", get(tags))
            .route("/api/show", post(show))
            .route("/api/chat", post(chat))
            .route(
                "/api/version",
                get(|| async { axum::Json(json!({"version": "0.12.0-fake"})) }),
            )
            .with_state(shared.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                // Stopping does not wait for replies still being delayed:
                // dropping the runtime ends their connections.
                tokio::select! {
                    _ = axum::serve(listener, app).into_future() => {}
                    _ = stopped => {}
                }
            });
        });
        Self {
            url,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:<port>`
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Every request so far: `(path, body)`.
    pub fn requests(&self) -> Vec<(String, Value)> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The bodies of the `/api/chat` requests so far.
    pub fn chats(&self) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|(p, _)| p == "/api/chat")
            .map(|(_, b)| b)
            .collect()
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

fn record(shared: &Shared, path: &str, body: &Value) {
    shared
        .requests
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((path.to_owned(), body.clone()));
}

/// The digest `/api/tags` lists for a model: 64 hex digits, one per name.
pub fn digest(name: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}").repeat(4)
}

async fn tags(State(shared): State<Arc<Shared>>) -> Response {
    record(&shared, "/api/tags", &Value::Null);
    let models: Vec<Value> = shared
        .models
        .iter()
        .map(|m| {
            json!({
                "name": m.name, "model": m.name,
                "modified_at": "2026-11-01T00:00:00Z", "size": 4_000_000_000u64,
                "digest": digest(&m.name),
                "details": {"format": "gguf", "family": "llama", "parameter_size": "7B", "quantization_level": "Q4_K_M"}
            })
        })
        .collect();
    axum::Json(json!({ "models": models })).into_response()
}

fn find<'a>(shared: &'a Shared, name: &str) -> Option<&'a FakeModel> {
    let norm = |s: &str| {
        if s.contains(':') {
            s.to_owned()
        } else {
            format!("{s}:latest")
        }
    };
    shared.models.iter().find(|m| norm(&m.name) == norm(name))
}

async fn show(State(shared): State<Arc<Shared>>, body: String) -> Response {
    let Ok(body) = serde_json::from_str::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "invalid request body");
    };
    record(&shared, "/api/show", &body);
    let name = body["model"]
        .as_str()
        .or(body["name"].as_str())
        .unwrap_or_default();
    let Some(m) = find(&shared, name) else {
        return error(StatusCode::NOT_FOUND, &format!("model '{name}' not found"));
    };
    axum::Json(json!({
        "modelfile": format!("FROM {}", m.name),
        "parameters": "stop \"[INST]\"",
        "template": "{{ .Prompt }}",
        "details": {"format": "gguf", "family": "llama"},
        "model_info": {"general.architecture": "llama"},
        "capabilities": m.capabilities,
        "modified_at": "2026-11-01T00:00:00Z"
    }))
    .into_response()
}

fn line(v: &Value) -> String {
    format!("{v}\n")
}

fn chunk(model: &str, content: &str, thinking: Option<&str>) -> Value {
    let mut message = json!({"role": "assistant", "content": content});
    if let Some(t) = thinking {
        message["thinking"] = json!(t);
    }
    json!({"model": model, "created_at": "2026-11-24T00:00:00Z", "message": message, "done": false})
}

fn final_chunk(model: &str, done_reason: &str, prompt_tokens: u64, eval_count: u64) -> Value {
    json!({
        "model": model, "created_at": "2026-11-24T00:00:00Z",
        "message": {"role": "assistant", "content": ""},
        "done": true, "done_reason": done_reason,
        "total_duration": 1_000_000u64, "load_duration": 1000u64,
        "prompt_eval_count": prompt_tokens, "prompt_eval_duration": 400_000u64,
        "eval_count": eval_count, "eval_duration": 500_000u64
    })
}

/// Splits text into a few pieces, like tokens arriving.
fn pieces(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in text.chars() {
        cur.push(c);
        if c == ' ' || cur.len() >= 8 {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

async fn chat(State(shared): State<Arc<Shared>>, body: String) -> Response {
    let Ok(req) = serde_json::from_str::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "invalid character in request body");
    };
    record(&shared, "/api/chat", &req);
    let model_name = req["model"].as_str().unwrap_or_default().to_owned();
    let Some(model) = find(&shared, &model_name).cloned() else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("model \"{model_name}\" not found, try pulling it first"),
        );
    };
    let has_tools = req["tools"].as_array().is_some_and(|t| !t.is_empty());
    if has_tools && !model.capabilities.iter().any(|c| c == "tools") {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("registry.ollama.ai/library/{model_name} does not support tools"),
        );
    }
    if req["think"] == json!(true) && !model.capabilities.iter().any(|c| c == "thinking") {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("\"{model_name}\" does not support thinking"),
        );
    }
    let reply = {
        let mut script = shared.script.lock().unwrap_or_else(|p| p.into_inner());
        (script)(&req)
    };
    let mut reply = reply;
    while let Reply::Delayed { ms, reply: inner } = reply {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        reply = *inner;
    }
    let stream = req["stream"] != json!(false);
    let prompt_tokens = req["messages"]
        .as_array()
        .map_or(0, |m| m.len() as u64 * 10);
    match reply {
        Reply::Status { status, message } => error(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            &message,
        ),
        Reply::Message {
            content,
            thinking,
            tool_calls,
            done_reason,
        } => {
            let calls: Vec<Value> = tool_calls
                .iter()
                .map(|(n, a)| json!({"function": {"name": n, "arguments": a}}))
                .collect();
            let eval = (content.len() / 4 + 1) as u64;
            if !stream {
                let mut last = final_chunk(&model_name, &done_reason, prompt_tokens, eval);
                last["message"]["content"] = json!(content);
                if let Some(t) = &thinking {
                    last["message"]["thinking"] = json!(t);
                }
                if !calls.is_empty() {
                    last["message"]["tool_calls"] = json!(calls);
                }
                return axum::Json(last).into_response();
            }
            let mut body = String::new();
            if let Some(t) = &thinking {
                for p in pieces(t) {
                    body.push_str(&line(&chunk(&model_name, "", Some(&p))));
                }
            }
            for p in pieces(&content) {
                body.push_str(&line(&chunk(&model_name, &p, None)));
            }
            if !calls.is_empty() {
                let mut c = chunk(&model_name, "", None);
                c["message"]["tool_calls"] = json!(calls);
                body.push_str(&line(&c));
            }
            body.push_str(&line(&final_chunk(
                &model_name,
                &done_reason,
                prompt_tokens,
                eval,
            )));
            ndjson(body)
        }
        Reply::MidStreamError {
            content_before,
            message,
        } => {
            let mut body = String::new();
            for p in pieces(&content_before) {
                body.push_str(&line(&chunk(&model_name, &p, None)));
            }
            body.push_str(&line(&json!({ "error": message })));
            ndjson(body)
        }
        Reply::Cut { content } => {
            let mut body = String::new();
            for p in pieces(&content) {
                body.push_str(&line(&chunk(&model_name, &p, None)));
            }
            ndjson(body)
        }
        Reply::Delayed { .. } => error(StatusCode::INTERNAL_SERVER_ERROR, "unreachable"),
    }
}

/// A streamed NDJSON body, sent in parts cut where a client must cope:
/// mid-line, and inside a multi-byte UTF-8 character when there is one
/// (real servers' chunks fall anywhere).
fn ndjson(body: String) -> Response {
    let bytes = body.into_bytes();
    let mut cuts = vec![bytes.len() / 3, bytes.len() * 2 / 3];
    if let Some(i) = bytes.iter().position(|b| *b >= 0x80) {
        cuts.push(i + 1);
    }
    cuts.retain(|&c| c > 0 && c < bytes.len());
    cuts.sort_unstable();
    cuts.dedup();
    let mut parts = Vec::new();
    let mut from = 0;
    for c in cuts.into_iter().chain([bytes.len()]) {
        parts.push(axum::body::Bytes::copy_from_slice(&bytes[from..c]));
        from = c;
    }
    let stream = futures_util::stream::unfold(parts.into_iter(), |mut parts| async move {
        let part = parts.next()?;
        // Let the server write each part on its own.
        tokio::task::yield_now().await;
        Some((Ok::<_, std::convert::Infallible>(part), parts))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
