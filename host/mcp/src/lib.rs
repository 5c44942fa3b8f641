//! Caminaå as a Model Context Protocol server: every tool of every
//! installed plugin, for any MCP client (Claude Desktop, Cursor, VS Code,
//! Goose, Codex CLI…), run the way `camina tool call` runs it, and the
//! crews themselves as the `camina_run_task` tool.
//!
//! The protocol is the official SDK's (`rmcp`): this crate only maps the
//! plugin store onto it.
//! - **Names.** A tool is offered under its own name, or
//!   `<plugin>__<tool>` when two installed plugins have a tool of that name
//!   (the coordinator's rule for crews).
//! - **Descriptions, schemas, hints** come from the plugin's manifest; the
//!   declared effect gives the annotations (`readOnlyHint` for read-only,
//!   `idempotentHint`, `destructiveHint` for side-effecting).
//! - **Calls.** Each call runs in a fresh sandbox under the plugin's policy
//!   with the server's workspace mounted as `{workspace}`; the input is
//!   validated against the tool's schema first; the sandbox's capability
//!   decisions go to the decision log. Whatever goes wrong in a call — the
//!   skill's `tool-error`, a denial, a broken limit, invalid input, an
//!   unknown tool — is a tool result with `isError: true` and the message,
//!   never a protocol error: the client's model reads it and can react.
//! - **Changes.** The store is watched while a client is connected; an
//!   install, removal or reinstall sends `notifications/tools/list_changed`.
//! - **Tasks.** `camina_run_task` submits and runs a task through the
//!   engine (journaled and resumable like any other), reports each step as
//!   a progress notification, returns the answer or an error result, and is
//!   cancelled with its request.
//! - **Transports.** stdio (`rmcp::transport::stdio`) and Streamable HTTP
//!   ([`http_router`]: bearer tokens, Host and Origin checks).
//!
//! Threat model: the MCP client is the user's own agent, trusted as much
//! as a shell the user types `camina tool call` into. What it can do is
//! bounded by the plugins' policies, which the host enforces; a client can
//! not widen a grant, pick another workspace, or reach a plugin's tools
//! under another plugin's policy.

use camina_coordinator::Engine;
use camina_coordinator::events::Budgets;
use camina_coordinator::events::{Event, Kind};
use camina_coordinator::runner::Runner;
use camina_journal::{DecisionEntry, Status};
use camina_registry::PluginRecord;
use camina_sandbox::Effect;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CancelledNotificationParam,
    ContentBlock, Implementation, ListToolsResult, PaginatedRequestParams, ProtocolVersion,
    ServerCapabilities, ServerConfig, Tool, ToolAnnotations,
};
use rmcp::service::{NotificationContext, RequestContext, RoleServer};
use rmcp::{ErrorData, ServerHandler};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How often the plugin store is checked for installs and removals while
/// a client is connected.
const WATCH_EVERY: Duration = Duration::from_millis(500);

/// The host's own tool: a whole task for the crews.
pub const RUN_TASK: &str = "camina_run_task";

/// The server: the engine (its plugin store, journal and decision log) and
/// the workspace calls and tasks run in.
#[derive(Debug, Clone)]
pub struct McpServer {
    /// Runs `camina_run_task` tasks (with the engine's limits).
    runner: Runner,
    engine: Arc<Engine>,
    workspace: PathBuf,
    /// This session's running `camina_run_task` requests: request id →
    /// task id, so a client's `notifications/cancelled` cancels the task
    /// (and nothing else does: a client that goes away leaves its tasks
    /// interrupted and resumable, not cancelled).
    tasks: Arc<std::sync::Mutex<BTreeMap<String, String>>>,
}

/// One offered tool: the name the client sees, and what it calls.
#[derive(Debug, Clone, PartialEq)]
struct Offered {
    name: String,
    plugin: String,
    tool: String,
}

impl McpServer {
    /// `workspace` must be an existing directory (canonical).
    pub fn new(runner: Runner, workspace: PathBuf) -> Self {
        Self {
            engine: runner.engine().clone(),
            runner,
            workspace,
            tasks: Arc::default(),
        }
    }

    /// The same server for another client session (its own requests).
    pub fn session(&self) -> Self {
        Self::new(self.runner.clone(), self.workspace.clone())
    }

    fn records(&self) -> Vec<PluginRecord> {
        match self.engine.registry().list() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("the plugin store cannot be read: {e}");
                Vec::new()
            }
        }
    }

    /// Every tool of every installed plugin, named by the clash rule.
    fn offered(records: &[PluginRecord]) -> Vec<(Offered, &PluginRecord)> {
        let mut count: BTreeMap<&str, usize> = BTreeMap::new();
        // The host's tool keeps its name; a plugin tool of that name is
        // offered under its plugin's.
        count.insert(RUN_TASK, 1);
        for r in records {
            for t in &r.tools {
                *count.entry(t.name.as_str()).or_default() += 1;
            }
        }
        let mut out = Vec::new();
        for r in records {
            for t in &r.tools {
                let name = if count[t.name.as_str()] > 1 {
                    format!("{}__{}", r.name, t.name)
                } else {
                    t.name.clone()
                };
                out.push((
                    Offered {
                        name,
                        plugin: r.name.clone(),
                        tool: t.name.clone(),
                    },
                    r,
                ));
            }
        }
        // A name that still clashes (a tool named `other__write_file`, or
        // `camina_run_task`'s) is offered for neither: a call must never
        // reach a tool the client did not mean.
        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        names.insert(RUN_TASK.to_owned(), 1);
        for (o, _) in &out {
            *names.entry(o.name.clone()).or_default() += 1;
        }
        out.retain(|(o, _)| {
            let unique = names[&o.name] == 1;
            if !unique {
                tracing::warn!(tool = %o.name, plugin = %o.plugin, "not offered: the name is ambiguous");
            }
            unique
        });
        out
    }

    /// The MCP tool list: the crews' tool, then the plugins'.
    pub fn tools(&self) -> Vec<Tool> {
        let records = self.records();
        let plugins = Self::offered(&records).into_iter().filter_map(|(o, r)| {
            let t = r.tools.iter().find(|t| t.name == o.tool)?;
            let schema = match &t.input_schema {
                serde_json::Value::Object(m) => m.clone(),
                _ => serde_json::Map::new(),
            };
            // The effect as hints; an idempotent tool may still replace
            // data (`write_file` with `overwrite`), so it is not said to
            // be harmless (destructiveHint stays at the protocol's
            // default, true).
            let annotations = match t.effect {
                Effect::ReadOnly => ToolAnnotations::new().read_only(true),
                Effect::Idempotent => ToolAnnotations::new().read_only(false).idempotent(true),
                Effect::SideEffecting => ToolAnnotations::new()
                    .read_only(false)
                    .idempotent(false)
                    .destructive(true),
            }
            // Open world: the policy lets it reach the network.
            .open_world(r.policy().is_ok_and(|p| !p.net.rules.is_empty()));
            Some(
                Tool::new(o.name, t.description.clone(), Arc::new(schema))
                    .with_annotations(annotations),
            )
        });
        std::iter::once(run_task_tool()).chain(plugins).collect()
    }

    /// One call by its offered name; every failure is an error result.
    pub async fn call(
        &self,
        name: &str,
        arguments: Option<serde_json::Map<String, serde_json::Value>>,
    ) -> CallToolResult {
        let records = self.records();
        let offered = Self::offered(&records);
        let Some((target, record)) = offered.iter().find(|(o, _)| o.name == name) else {
            let names: Vec<&str> = offered.iter().map(|(o, _)| o.name.as_str()).collect();
            return error(format!(
                "not-found: no tool named `{name}`; the tools are: {}",
                names.join(", ")
            ));
        };
        let input = serde_json::Value::Object(arguments.unwrap_or_default()).to_string();
        let outcome = self
            .engine
            .registry()
            .call(&target.plugin, &target.tool, &input, Some(&self.workspace))
            .await;
        let decisions: &[camina_sandbox::Decision] = match &outcome {
            Ok(o) => &o.decisions,
            Err(camina_registry::Error::Call(e)) => e.decisions(),
            Err(_) => &[],
        };
        self.log(&target.plugin, &record.digest, decisions);
        match outcome {
            Ok(o) => match o.result {
                Ok(json) => {
                    let structured = serde_json::from_str::<serde_json::Value>(&json)
                        .ok()
                        .filter(serde_json::Value::is_object);
                    let mut result = CallToolResult::success(vec![ContentBlock::text(json)]);
                    result.structured_content = structured;
                    result
                }
                Err(e) => error(format!("{}: {}", e.kind.as_str(), e.message)),
            },
            Err(e) => error(format!(
                "{}.{}: {}",
                target.plugin,
                target.tool,
                camina_sandbox::error_chain(&e)
            )),
        }
    }

    /// `camina_run_task`: the task through the engine in the server's
    /// workspace (journaled, resumable, in `camina task list`), with a
    /// progress notification per step when the client asked for progress,
    /// and cancelled when the client cancels the request.
    pub async fn run_task(
        &self,
        arguments: Option<serde_json::Map<String, serde_json::Value>>,
        context: &RequestContext<RoleServer>,
    ) -> CallToolResult {
        let (prompt, budgets) = match task_input(arguments.unwrap_or_default()) {
            Ok(x) => x,
            Err(e) => return error(format!("invalid-input: {e}")),
        };
        let task = match self.engine.submit(&prompt, &self.workspace, budgets).await {
            Ok(t) => t,
            Err(e) => {
                return error(format!(
                    "the task could not be submitted: {}",
                    camina_sandbox::error_chain(&e)
                ));
            }
        };
        let id = task.id.clone();
        let progress = context.meta.get_progress_token().map(|token| {
            let mut feed = self.engine.subscribe();
            let (peer, id) = (context.peer.clone(), id.clone());
            tokio::spawn(async move {
                let mut n = 0.0;
                loop {
                    match feed.recv().await {
                        Ok((task, rec)) if task == id => {
                            // The answer is the last record worth a note (a
                            // failure after it needs none); the others end
                            // a run without one.
                            let last = Kind::of(&rec).is_some_and(Kind::ends_run);
                            if let Some(message) = progress_line(&rec) {
                                n += 1.0;
                                let note =
                                    rmcp::model::ProgressNotificationParam::new(token.clone(), n)
                                        .with_message(message);
                                if peer.notify_progress(note).await.is_err() {
                                    return;
                                }
                            }
                            if last {
                                return;
                            }
                        }
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                }
            })
        });
        let request = context.id.to_string();
        self.lock_tasks().insert(request.clone(), id.clone());
        let outcome = match self
            .runner
            .run(&id, camina_coordinator::RunOptions::default())
            .await
        {
            Ok(outcome) => outcome,
            // A fresh task cannot be busy: only a shutdown refuses it.
            Err(_) => Err(camina_coordinator::EngineError::ShuttingDown),
        };
        self.lock_tasks().remove(&request);
        // The last records may still be on their way to the client: let the
        // forwarder reach the task's end record (briefly), so every progress
        // notification precedes the result.
        if let Some(mut p) = progress
            && (outcome.is_err()
                || tokio::time::timeout(Duration::from_secs(2), &mut p)
                    .await
                    .is_err())
        {
            p.abort();
        }
        match outcome {
            Ok(summary) => {
                let structured = serde_json::json!({
                    "task": summary.id,
                    "status": summary.status.as_str(),
                    "answer": summary.answer,
                    "error": summary.error,
                });
                let mut result = if summary.status == Status::Succeeded {
                    CallToolResult::success(vec![ContentBlock::text(
                        summary.answer.clone().unwrap_or_default(),
                    )])
                } else {
                    error(format!(
                        "task {} {}: {}",
                        summary.id,
                        summary.status.as_str(),
                        summary.error.as_deref().unwrap_or("no reason recorded")
                    ))
                };
                result.structured_content = Some(structured);
                result
            }
            Err(e) => error(format!("task {id}: {}", camina_sandbox::error_chain(&e))),
        }
    }

    fn lock_tasks(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn log(
        &self,
        plugin: &str,
        digest: &camina_registry::Digest,
        decisions: &[camina_sandbox::Decision],
    ) {
        if decisions.is_empty() {
            return;
        }
        let entries: Vec<DecisionEntry> = decisions
            .iter()
            .map(|d| DecisionEntry {
                capability: d.capability.as_str().to_owned(),
                action: d.action.clone(),
                target: d.target.clone(),
                allowed: d.allowed,
                detail: d.detail.clone(),
                ..DecisionEntry::now(plugin, digest)
            })
            .collect();
        if let Err(e) = self.engine.record_decisions(entries) {
            tracing::warn!("decision log: {e}");
        }
    }

    /// What identifies the installed tools: a change means a new list.
    fn fingerprint(&self) -> Vec<(String, camina_registry::Digest, camina_registry::Digest)> {
        self.records()
            .into_iter()
            .map(|r| (r.name, r.digest, r.policy.hash))
            .collect()
    }
}

/// The declaration of `camina_run_task`.
fn run_task_tool() -> Tool {
    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "prompt": {"type": "string", "minLength": 1, "description": "the task, in the user's words"},
            "max_turns": {"type": "integer", "minimum": 1, "maximum": 100, "description": "model turns per step (default 12)"},
            "max_model_calls": {"type": "integer", "minimum": 1, "maximum": 10000, "description": "model calls in all (default 60)"},
            "max_steps": {"type": "integer", "minimum": 1, "maximum": 50, "description": "plan steps (default 8)"},
            "max_time_s": {"type": "integer", "minimum": 1, "maximum": 86400, "description": "running time in seconds (default 1800)"}
        },
        "required": ["prompt"],
        "additionalProperties": false
    });
    let serde_json::Value::Object(schema) = schema else {
        unreachable!("a JSON object literal")
    };
    Tool::new(
        RUN_TASK,
        "Hand a whole task to Caminaå's crews (a coordinator model plans; Belters change \
         files, Drummers look things up, each tool call sandboxed under its plugin's policy) \
         in this server's workspace. Journaled and resumable (`camina task show ID`). Returns \
         the answer; an error result when the task did not get done.",
        Arc::new(schema),
    )
    .with_annotations(
        ToolAnnotations::new()
            .read_only(false)
            .idempotent(false)
            .destructive(true)
            .open_world(true),
    )
}

/// `camina_run_task`'s input: the prompt and the budgets.
fn task_input(
    mut args: serde_json::Map<String, serde_json::Value>,
) -> Result<(String, Budgets), String> {
    let prompt = match args.remove("prompt") {
        Some(serde_json::Value::String(p)) if !p.trim().is_empty() => p,
        Some(_) => return Err("`prompt` must be a non-empty string".into()),
        None => return Err("`prompt` is required".into()),
    };
    let mut budgets = Budgets::default();
    for (key, value) in args {
        let n = value
            .as_u64()
            .filter(|n| *n >= 1)
            .ok_or_else(|| format!("`{key}` must be a positive integer"))?;
        match key.as_str() {
            "max_turns" => budgets.max_turns = n.min(100) as u32,
            "max_model_calls" => budgets.max_model_calls = n.min(10_000) as u32,
            "max_steps" => budgets.max_steps = n.min(50) as u32,
            "max_time_s" => budgets.max_wall_ms = n.min(86_400) * 1000,
            _ => return Err(format!("unknown field `{key}`")),
        }
    }
    Ok((prompt, budgets))
}

/// A task record worth a progress notification.
fn progress_line(rec: &camina_journal::Record) -> Option<String> {
    Some(match Event::decode(rec).ok()? {
        Event::Plan(p) => format!("planned {} step(s)", p.steps.len()),
        Event::StepStarted(s) => format!("step {} [{}]: {}", s.index + 1, s.crew, s.instruction),
        Event::StepFinished(f) => format!(
            "step {} {}",
            f.index + 1,
            if f.failure.is_some() {
                "failed"
            } else {
                "done"
            }
        ),
        Event::Answer(_) => "answered".to_owned(),
        _ => return None,
    })
}

fn error(message: String) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message)])
}

impl ServerHandler for McpServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .build(),
        )
        .with_server_info(Implementation::new("camina", env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "Caminaå's skills: each tool runs in a fresh WebAssembly sandbox under its plugin's \
             capability policy, in the workspace this server was started with.",
        )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(self.tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if request.name == RUN_TASK {
            return Ok(self.run_task(request.arguments, &context).await.into());
        }
        Ok(self.call(&request.name, request.arguments).await.into())
    }

    /// Up to 2025-11-25: the later revision drops `initialize`, and with it
    /// the session this server's `list_changed` watch belongs to.
    fn supported_protocol_versions(&self) -> std::borrow::Cow<'static, [ProtocolVersion]> {
        std::borrow::Cow::Borrowed(ProtocolVersion::known_up_to(&ProtocolVersion::V_2025_11_25))
    }

    async fn on_cancelled(
        &self,
        notification: CancelledNotificationParam,
        _context: NotificationContext<RoleServer>,
    ) {
        let Some(request) = notification.request_id.map(|r| r.to_string()) else {
            return;
        };
        let task = self.lock_tasks().get(&request).cloned();
        if let Some(task) = task {
            let reason = format!(
                "cancelled by the MCP client{}",
                notification
                    .reason
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            );
            if let Err(e) = self.engine.cancel(&task, &reason).await {
                tracing::warn!(task = %task, "cancelling: {e}");
            }
        }
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        // Watch the store for this client: installs, removals and
        // reinstalls (a new digest or policy) change the list.
        let server = self.clone();
        let peer = context.peer;
        tokio::spawn(async move {
            let mut seen = server.fingerprint();
            loop {
                tokio::time::sleep(WATCH_EVERY).await;
                if peer.is_transport_closed() {
                    return; // the session ended
                }
                let now = server.fingerprint();
                if now != seen {
                    seen = now;
                    if peer.notify_tool_list_changed().await.is_err() {
                        return; // the client is gone
                    }
                }
            }
        });
    }
}

/// The Streamable HTTP transport: `/mcp` on an axum router, each client
/// session served by a clone of `server`; `config` carries the shutdown
/// token (its hosts and origins are set here).
///
/// - **Tokens.** With `tokens` set, every request needs `Authorization:
///   Bearer <one of them>` (compared in constant time), else 401 with
///   `WWW-Authenticate: Bearer`. No tokens: open (the caller allows that
///   on loopback only, as `camina serve` does).
/// - **DNS rebinding.** The `Host` must be a loopback name or one of
///   `extra_hosts` (the address listened on), and a browser's `Origin`, when
///   present, must be a loopback origin: a page elsewhere that resolves its
///   own name to 127.0.0.1 cannot reach the server.
pub fn http_router(
    server: McpServer,
    tokens: Vec<String>,
    extra_hosts: Vec<String>,
    config: rmcp::transport::streamable_http_server::tower::StreamableHttpServerConfig,
) -> axum::Router {
    use rmcp::transport::streamable_http_server::{
        StreamableHttpService, session::local::LocalSessionManager,
    };
    let mut hosts: Vec<String> = ["localhost", "127.0.0.1", "::1", "[::1]"]
        .map(String::from)
        .to_vec();
    hosts.extend(extra_hosts);
    let config = config.with_allowed_hosts(hosts).with_allowed_origins([
        "http://localhost:*",
        "http://127.0.0.1:*",
        "http://[::1]:*",
    ]);
    let service = StreamableHttpService::new(
        move || Ok(server.session()),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    let tokens = Arc::new(tokens);
    axum::Router::new()
        .nest_service("/mcp", service)
        .layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let tokens = tokens.clone();
                async move {
                    if !tokens.is_empty() && !presents_token(&req, &tokens) {
                        return unauthorized();
                    }
                    next.run(req).await
                }
            },
        ))
}

fn presents_token(req: &axum::extract::Request, tokens: &[String]) -> bool {
    use subtle::ConstantTimeEq;
    let presented = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    presented.is_some_and(|p| {
        tokens
            .iter()
            .any(|t| bool::from(t.as_bytes().ct_eq(p.as_bytes())))
    })
}

fn unauthorized() -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        axum::http::StatusCode::UNAUTHORIZED,
        [(axum::http::header::WWW_AUTHENTICATE, "Bearer")],
        axum::Json(serde_json::json!({
            "error": "unauthorized",
            "message": "missing or unknown bearer token (Authorization: Bearer $CAMINA_API_TOKEN)"
        })),
    )
        .into_response()
}
