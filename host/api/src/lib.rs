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
use camina_coordinator::{Engine, RunOptions};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
    runner: Arc<Runner>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Runs tasks in the background, at most `max_running` at once.
struct Runner {
    slots: Arc<tokio::sync::Semaphore>,
    closing: AtomicBool,
    tasks: tokio::sync::Mutex<tokio::task::JoinSet<()>>,
}

impl AppState {
    pub fn new(engine: Arc<Engine>, settings: Settings) -> Self {
        let runner = Arc::new(Runner {
            slots: Arc::new(tokio::sync::Semaphore::new(settings.max_running.max(1))),
            closing: AtomicBool::new(false),
            tasks: tokio::sync::Mutex::new(tokio::task::JoinSet::new()),
        });
        Self {
            engine,
            settings: Arc::new(settings),
            runner,
        }
    }

    /// Starts (or queues) task `id` in the background.
    pub async fn spawn(&self, id: String, opts: RunOptions) {
        let engine = self.engine.clone();
        let slots = self.runner.slots.clone();
        self.runner.tasks.lock().await.spawn(async move {
            let Ok(_slot) = slots.acquire_owned().await else {
                return;
            };
            match engine.run(&id, opts).await {
                Ok(t) => tracing::info!(task = %id, status = %t.status, "task stopped"),
                Err(e) => tracing::warn!(task = %id, "task could not run: {e}"),
            }
        });
    }

    /// Resumes the tasks a previous process left interrupted or queued
    /// (not those waiting for review).
    pub async fn resume_interrupted(&self) -> Result<Vec<String>, ApiError> {
        let mut resumed = Vec::new();
        let mut tasks = self.engine.journal().list()?;
        tasks.reverse();
        for t in tasks {
            if matches!(
                t.status,
                camina_journal::Status::Interrupted | camina_journal::Status::Queued
            ) {
                self.spawn(t.id.clone(), RunOptions::default()).await;
                resumed.push(t.id);
            }
        }
        Ok(resumed)
    }

    pub fn closing(&self) -> bool {
        self.runner.closing.load(Ordering::SeqCst)
    }

    /// Graceful shutdown: refuse new work, let running tasks reach their next
    /// boundary (in-flight tool calls finish or time out), flush.
    pub async fn shutdown(&self, grace: Duration) {
        self.runner.closing.store(true, Ordering::SeqCst);
        self.engine.pause_all();
        let mut tasks = std::mem::take(&mut *self.runner.tasks.lock().await);
        let drained =
            tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(
                "tasks still running after {grace:?}; they will resume at the next start"
            );
        }
        if let Err(e) = self.engine.journal().flush().await {
            tracing::error!("flushing the journal: {e}");
        }
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
        .with_state(state)
}
