//! The HTTP API: `pub fn router(state) -> Router`.
//!
//! Tasks run on the same [`Engine`] as the CLI. Auth is bearer tokens with
//! scopes (`tasks`, `admin`); with no token configured the API is open, so
//! `camina serve` refuses to listen beyond loopback without one. Every error
//! is `{"error": {"kind", "message"}}` with its status. Bodies are limited
//! (JSON 1 MiB by default, plugin uploads configurable), requests time out
//! (except event streams), and at most `max_running` tasks run at once (the
//! rest stay `queued`). During shutdown new work gets 503.
//!
//! Not here: listening and signals (`camina serve`, in the CLI).

mod cluster;
mod error;
mod openapi;
mod plugins;
mod tasks;

pub use error::ApiError;
pub use openapi::ApiDoc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{delete, get, post};
use camina_coordinator::runner::Runner;
use camina_coordinator::{Engine, RunOptions};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Submit, watch, resume and cancel tasks; list plugins.
    Tasks,
    /// Install and remove plugins; read the policy audit.
    Admin,
}

/// A bearer token and its scopes.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Token {
    pub token: String,
    pub scopes: Vec<Scope>,
}

/// Server settings (`[server]` in config.toml).
#[derive(Debug, Clone)]
pub struct Settings {
    pub tokens: Vec<Token>,
    /// Task workspaces must lie under it.
    pub workspace_root: PathBuf,
    pub max_running: usize,
    pub max_json_bytes: usize,
    pub max_upload_bytes: usize,
    pub request_timeout: Duration,
}

/// Shared state of the API.
#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<Engine>,
    pub settings: Arc<Settings>,
    /// Runs the tasks, at most `max_running` at once (the engine's runner,
    /// as `camina run` and `camina mcp` use it).
    pub runner: Runner,
    /// `GET /v1/tasks/{id}` documents, keyed by the summary they were built
    /// from: a task whose summary is unchanged (no new record, same status)
    /// is served without reading and assembling its records again.
    pub(crate) docs: Arc<DocCache>,
    /// The multi-node mode: tasks go through Restate to `camina worker`s
    /// (`camina serve --engine restate`); `None`: this process runs them.
    pub cluster: Option<camina_cluster::Client>,
    /// `settings.workspace_root`, resolved once.
    pub(crate) root: Arc<camina_coordinator::workspace::Root>,
}

/// Rendered task documents (JSON bytes), at most [`DocCache::MAX_BYTES`]
/// in all; a document over [`DocCache::MAX_DOC`] is not kept (a long task's
/// records carry every model request with its whole conversation).
#[derive(Default)]
pub(crate) struct DocCache(std::sync::Mutex<DocMap>);

#[derive(Default)]
pub(crate) struct DocMap {
    docs: std::collections::HashMap<String, (String, axum::body::Bytes)>,
    bytes: usize,
}

impl DocCache {
    const MAX_BYTES: usize = 64 << 20;
    const MAX_DOC: usize = 4 << 20;

    /// The document of `id` if it was rendered from `version`.
    pub(crate) fn get(&self, id: &str, version: &str) -> Option<axum::body::Bytes> {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.docs
            .get(id)
            .filter(|(v, _)| v == version)
            .map(|(_, b)| b.clone())
    }

    pub(crate) fn put(&self, id: &str, version: String, doc: axum::body::Bytes) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, old)) = m.docs.remove(id) {
            m.bytes -= old.len();
        }
        if doc.len() > Self::MAX_DOC {
            return;
        }
        if m.bytes + doc.len() > Self::MAX_BYTES {
            // Bounded, not an LRU: dropping everything keeps it simple and
            // the next reads rebuild what is still asked for.
            m.docs.clear();
            m.bytes = 0;
        }
        m.bytes += doc.len();
        m.docs.insert(id.to_owned(), (version, doc));
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl AppState {
    pub fn new(engine: Arc<Engine>, settings: Settings) -> Self {
        Self {
            root: Arc::new(camina_coordinator::workspace::Root::new(
                settings.workspace_root.clone(),
            )),
            runner: Runner::new(engine.clone(), settings.max_running),
            engine,
            settings: Arc::new(settings),
            docs: Arc::default(),
            cluster: None,
        }
    }

    /// Tasks through Restate (the multi-node mode) instead of this process.
    pub fn with_cluster(mut self, client: camina_cluster::Client) -> Self {
        self.cluster = Some(client);
        self
    }

    /// Starts (or queues) task `id` in the background. Returns false (and
    /// does nothing) when the task is already with the runner, or the
    /// server is shutting down.
    pub async fn spawn(&self, id: String, opts: RunOptions) -> bool {
        self.runner.spawn(id, opts).await.is_ok()
    }

    /// Resumes the tasks a previous process left interrupted or queued
    /// (not those waiting for review), and finishes the undos it left cut
    /// short.
    pub async fn resume_interrupted(&self) -> Result<Vec<String>, ApiError> {
        Ok(self.runner.resume_left_over().await?)
    }

    pub fn closing(&self) -> bool {
        self.runner.closing()
    }

    /// Graceful shutdown (see [`Runner::shutdown`]).
    pub async fn shutdown(&self, grace: Duration) {
        self.runner.shutdown(grace).await;
    }
}

/// Checks the bearer token for `scope` (no tokens configured: open API).
fn require(state: &AppState, req: &Request, scope: Scope) -> Result<(), ApiError> {
    if state.settings.tokens.is_empty() {
        return Ok(());
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let Some(presented) = presented else {
        return Err(ApiError::unauthorized(
            "missing bearer token (Authorization: Bearer <token>)",
        ));
    };
    use subtle::ConstantTimeEq;
    let token = state
        .settings
        .tokens
        .iter()
        .find(|t| bool::from(t.token.as_bytes().ct_eq(presented.as_bytes())));
    match token {
        None => Err(ApiError::unauthorized("unknown bearer token")),
        Some(t) if !t.scopes.contains(&scope) => Err(ApiError::forbidden(&format!(
            "this token lacks the `{}` scope",
            match scope {
                Scope::Tasks => "tasks",
                Scope::Admin => "admin",
            }
        ))),
        Some(_) => Ok(()),
    }
}

async fn tasks_scope(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    require(&state, &req, Scope::Tasks)?;
    Ok(next.run(req).await)
}

async fn admin_scope(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    require(&state, &req, Scope::Admin)?;
    Ok(next.run(req).await)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

/// The API's router.
pub fn router(state: AppState) -> Router {
    let json_limit = DefaultBodyLimit::max(state.settings.max_json_bytes);
    let timeout = tower_http::timeout::TimeoutLayer::with_status_code(
        axum::http::StatusCode::REQUEST_TIMEOUT,
        state.settings.request_timeout,
    );
    let task_routes = Router::new()
        .route("/v1/tasks", post(tasks::create).get(tasks::list))
        .route("/v1/tasks/{id}", get(tasks::show))
        .route("/v1/tasks/{id}/resume", post(tasks::resume))
        .route("/v1/tasks/{id}/cancel", post(tasks::cancel))
        .route("/v1/tasks/{id}/diff", get(tasks::diff))
        .route("/v1/tasks/{id}/undo", post(tasks::undo))
        .route("/v1/plugins", get(plugins::list))
        .layer(timeout)
        .layer(json_limit)
        .route_layer(middleware::from_fn_with_state(state.clone(), tasks_scope));
    // Event streams last as long as their task: no request timeout.
    let stream_routes = Router::new()
        .route("/v1/tasks/{id}/events", get(tasks::events))
        .route_layer(middleware::from_fn_with_state(state.clone(), tasks_scope));
    let admin_routes = Router::new()
        .route("/v1/plugins", post(plugins::install))
        .route("/v1/plugins/{name}", delete(plugins::remove))
        .route("/v1/policies/audit", get(plugins::audit))
        .route("/v1/audit", get(plugins::decisions))
        .layer(timeout)
        .layer(DefaultBodyLimit::max(state.settings.max_upload_bytes))
        .route_layer(middleware::from_fn_with_state(state.clone(), admin_scope));
    Router::new()
        .route(
            "/healthz",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/openapi.json", get(openapi::serve))
        .merge(task_routes)
        .merge(stream_routes)
        .merge(admin_routes)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(middleware::from_fn(json_errors))
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method (see /openapi.json)",
    )
}

/// Every error is `{"error": {"kind", "message"}}`: responses that axum's
/// extractors and layers produce themselves (a bad path parameter, a
/// multipart or content-type rejection, a request timeout) are rewritten
/// into that shape, keeping their status and text.
async fn json_errors(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (_, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 16 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    use axum::http::StatusCode as S;
    let kind = match status {
        S::BAD_REQUEST => "bad_request",
        S::UNAUTHORIZED => "unauthorized",
        S::FORBIDDEN => "forbidden",
        S::NOT_FOUND => "not_found",
        S::METHOD_NOT_ALLOWED => "method_not_allowed",
        S::REQUEST_TIMEOUT => "timeout",
        S::CONFLICT => "conflict",
        S::PAYLOAD_TOO_LARGE => "payload_too_large",
        S::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        S::UNPROCESSABLE_ENTITY => "unprocessable",
        S::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_server_error() => "internal",
        _ => "error",
    };
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_owned()
    } else {
        text
    };
    axum::response::IntoResponse::into_response(ApiError::new(status, kind, message))
}

#[cfg(test)]
mod doc_cache_tests {
    use super::DocCache;
    use axum::body::Bytes;

    #[test]
    fn documents_are_served_only_for_their_version_and_within_the_budget() {
        let c = DocCache::default();
        c.put("a", "1".into(), Bytes::from_static(b"{}"));
        assert_eq!(c.get("a", "1").as_deref(), Some(&b"{}"[..]));
        assert!(c.get("a", "2").is_none(), "another version is a miss");
        c.put("a", "2".into(), Bytes::from_static(b"{\"x\":1}"));
        assert!(c.get("a", "1").is_none());
        assert_eq!(c.0.lock().unwrap().bytes, 7);
        let big = Bytes::from(vec![b' '; DocCache::MAX_DOC + 1]);
        c.put("b", "1".into(), big);
        assert!(c.get("b", "1").is_none(), "too big to keep");
        for i in 0..20 {
            c.put(
                &format!("d{i}"),
                "1".into(),
                Bytes::from(vec![b' '; DocCache::MAX_DOC]),
            );
        }
        assert!(c.0.lock().unwrap().bytes <= DocCache::MAX_BYTES);
    }
}
