//! `camina mcp`: the installed skills as a Model Context Protocol server on
//! stdin/stdout (see the `camina-mcp` crate). Logs go to stderr only.

use crate::UsageError;
use anyhow::Context as _;
use rmcp::ServiceExt as _;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct McpArgs {
    /// The workspace directory every call mounts as {workspace} (default:
    /// the current directory).
    #[arg(long, value_name = "DIR")]
    workspace: Option<PathBuf>,
    /// Serve the Streamable HTTP transport at http://ADDR/mcp instead of
    /// stdio (bearer tokens as for `camina serve`: $CAMINA_API_TOKEN or
    /// [server] tokens; required off loopback).
    #[arg(long, value_name = "ADDR")]
    http: Option<String>,
}

pub async fn mcp(cx: &crate::Context, args: McpArgs) -> anyhow::Result<()> {
    let workspace = crate::tool::workspace_arg(args.workspace)?;
    // The journal (decision log, tasks) is one process's at a time: say so
    // at once rather than serve calls that cannot be logged.
    let engine = crate::task::engine(cx, None)
        .await
        .context("camina mcp records calls and tasks in the journal")?;
    let runner =
        camina_coordinator::runner::Runner::new(engine, cx.config.server.max_running.unwrap_or(4));
    let server = camina_mcp::McpServer::new(runner.clone(), workspace.clone());
    if let Some(text) = args.http {
        let served = http(cx, server, &text).await;
        stop_tasks(&runner).await;
        return served;
    }
    tracing::info!(workspace = %workspace.display(), "MCP server on stdio");
    let running = server
        .serve(rmcp::transport::stdio())
        .await
        .context("the MCP client did not complete the initialization")?;
    running.waiting().await.context("the MCP server stopped")?;
    // The client is gone: tasks it started stop at their next boundary,
    // interrupted (resumable), and what the journal buffered is written.
    stop_tasks(&runner).await;
    Ok(())
}

async fn http(
    cx: &crate::Context,
    server: camina_mcp::McpServer,
    text: &str,
) -> anyhow::Result<()> {
    use rmcp::transport::streamable_http_server::tower::StreamableHttpServerConfig;
    let listen: std::net::SocketAddr = text
        .parse()
        .map_err(|e| UsageError(format!("--http `{text}`: {e} (e.g. 127.0.0.1:7701)")))?;
    // Tokens with the `tasks` scope, as `camina serve` asks to submit a
    // task (an admin-only token cannot run tools or tasks here either).
    let all = crate::serve::tokens(cx, listen)?;
    let open = all.is_empty();
    let tokens: Vec<String> = all
        .into_iter()
        .filter(|t| t.scopes.contains(&camina_api::Scope::Tasks))
        .map(|t| t.token)
        .collect();
    if !open && tokens.is_empty() {
        return Err(UsageError(
            "none of the API tokens has the `tasks` scope, which camina mcp --http requires".into(),
        )
        .into());
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let local = listener.local_addr()?;
    // The address itself is a valid Host (clients that connect by IP).
    let hosts = vec![local.ip().to_string(), local.to_string()];
    let config = StreamableHttpServerConfig::default();
    let stop = config.cancellation_token.clone();
    let app = camina_mcp::http_router(server, tokens, hosts, config);
    eprintln!("MCP (Streamable HTTP) on http://{local}/mcp");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            crate::serve::shutdown_signal().await;
            stop.cancel();
        })
        .await
        .context("serving MCP over HTTP")?;
    Ok(())
}

/// Running tasks stop at their next boundary (interrupted: `camina task
/// resume` continues them), for up to 30 s, and the journal is flushed.
async fn stop_tasks(runner: &camina_coordinator::runner::Runner) {
    runner.shutdown(std::time::Duration::from_secs(30)).await;
}
