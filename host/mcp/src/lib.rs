//! Caminaå as a Model Context Protocol server: every tool of every
//! installed plugin, for any MCP client (Claude Desktop, Cursor, VS Code,
//! Goose, Codex CLI…), run the way `camina tool call` runs it.
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
//!
//! Threat model: the MCP client is the user's own agent, trusted as much
//! as a shell the user types `camina tool call` into. What it can do is
//! bounded by the plugins' policies, which the host enforces; a client can
//! not widen a grant, pick another workspace, or reach a plugin's tools
//! under another plugin's policy.

use camina_journal::{DecisionEntry, Journal};
use camina_registry::{PluginRecord, Registry};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
    ToolAnnotations,
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

/// The server: the plugin store, the workspace calls run in, and the
/// decision log.
#[derive(Debug, Clone)]
pub struct McpServer {
    registry: Arc<Registry>,
    workspace: PathBuf,
    journal: Option<Arc<Journal>>,
}

/// One offered tool: the name the client sees, and what it calls.
#[derive(Debug, Clone, PartialEq)]
struct Offered {
    name: String,
    plugin: String,
    tool: String,
}

impl McpServer {
    /// `workspace` must be an existing directory (canonical); `journal`
    /// receives the decision log (`None`: decisions are only traced).
    pub fn new(registry: Arc<Registry>, workspace: PathBuf, journal: Option<Arc<Journal>>) -> Self {
        Self {
            registry,
            workspace,
            journal,
        }
    }

    fn records(&self) -> Vec<PluginRecord> {
        match self.registry.list() {
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
        out
    }

    /// The MCP tool list.
    pub fn tools(&self) -> Vec<Tool> {
        let records = self.records();
        Self::offered(&records)
            .into_iter()
            .filter_map(|(o, r)| {
                let t = r.tools.iter().find(|t| t.name == o.tool)?;
                let schema = match &t.input_schema {
                    serde_json::Value::Object(m) => m.clone(),
                    _ => serde_json::Map::new(),
                };
                // The effect as hints; an idempotent tool may still replace
                // data (`write_file` with `overwrite`), so it is not said to
                // be harmless (destructiveHint stays at the protocol's
                // default, true).
                let annotations = match t.effect.as_str() {
                    "read-only" => ToolAnnotations::new().read_only(true),
                    "idempotent" => ToolAnnotations::new().read_only(false).idempotent(true),
                    _ => ToolAnnotations::new()
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
            })
            .collect()
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
            .registry
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
            Err(e) => error(format!("{}.{}: {e}", target.plugin, target.tool)),
        }
    }

    fn log(&self, plugin: &str, digest: &str, decisions: &[camina_sandbox::Decision]) {
        let Some(journal) = &self.journal else {
            return;
        };
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
        if let Err(e) = journal.record_decisions(&entries) {
            tracing::warn!("decision log: {e}");
        }
    }

    /// What identifies the installed tools: a change means a new list.
    fn fingerprint(&self) -> Vec<(String, String, String)> {
        self.records()
            .into_iter()
            .map(|r| (r.name, r.digest, r.policy.hash))
            .collect()
    }
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
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        Ok(self.call(&request.name, request.arguments).await.into())
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
        move || Ok(server.clone()),
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
