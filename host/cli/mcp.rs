//! `camina mcp`: the installed skills as a Model Context Protocol server on
//! stdin/stdout (see the `camina-mcp` crate). Logs go to stderr only.

use crate::UsageError;
use anyhow::Context as _;
use rmcp::ServiceExt as _;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(clap::Args, Debug)]
pub struct McpArgs {
    /// The workspace directory every call mounts as {workspace} (default:
    /// the current directory).
    #[arg(long, value_name = "DIR")]
    workspace: Option<PathBuf>,
}

pub async fn mcp(cx: &crate::Context, args: McpArgs) -> anyhow::Result<()> {
    let workspace = match args.workspace {
        Some(w) => w,
        None => std::env::current_dir().context("cannot read the current directory")?,
    };
    let workspace = workspace
        .canonicalize()
        .map_err(|e| UsageError(format!("--workspace {}: {e}", workspace.display())))?;
    if !workspace.is_dir() {
        return Err(UsageError(format!(
            "--workspace {} is not a directory",
            workspace.display()
        ))
        .into());
    }
    let registry = Arc::new(cx.registry()?);
    // The decision log lives in the journal, which one process holds at a
    // time: say so at once rather than serve calls that cannot be logged.
    let (journal, _) = camina_journal::Journal::open(&cx.home.join("journal"))
        .context("camina mcp records every call's sandbox decisions in the journal")?;
    let _ = journal.set_retention(cx.config.audit.retention());
    let server = camina_mcp::McpServer::new(registry, workspace.clone(), Some(Arc::new(journal)));
    tracing::info!(workspace = %workspace.display(), "MCP server on stdio");
    let running = server
        .serve(rmcp::transport::stdio())
        .await
        .context("the MCP client did not complete the initialization")?;
    running.waiting().await.context("the MCP server stopped")?;
    Ok(())
}
