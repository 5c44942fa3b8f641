//! `camina tool …`

use crate::{Reported, UsageError};
use anyhow::Context as _;
use clap::Subcommand;
use std::io::Read;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum ToolCommand {
    /// Call one tool of an installed plugin in a fresh sandbox under its
    /// policy. Prints the tool's JSON output; on a tool error prints
    /// `<kind>: <message>` on stderr and exits 1.
    Call {
        plugin: String,
        tool: String,
        /// The tool's input as a JSON object; `-` reads it from stdin.
        #[arg(long, default_value = "{}", value_name = "JSON")]
        input: String,
        /// The workspace directory mounted as {workspace} (default: the
        /// current directory).
        #[arg(long, value_name = "DIR")]
        workspace: Option<PathBuf>,
    },
}

pub async fn run(cx: &crate::Context, cmd: ToolCommand) -> anyhow::Result<()> {
    match cmd {
        ToolCommand::Call {
            plugin,
            tool,
            input,
            workspace,
        } => call(cx, &plugin, &tool, input, workspace).await,
    }
}

async fn call(
    cx: &crate::Context,
    plugin: &str,
    tool: &str,
    input: String,
    workspace: Option<PathBuf>,
) -> anyhow::Result<()> {
    let input = if input == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading --input from stdin")?;
        s
    } else {
        input
    };
    if let Err(e) = serde_json::from_str::<serde_json::Value>(&input) {
        return Err(UsageError(format!("--input is not valid JSON: {e}")).into());
    }
    let workspace = workspace_arg(workspace)?;
    let registry = cx.registry()?;
    let outcome = registry.call(plugin, tool, &input, Some(&workspace)).await;
    let decisions: &[camina_sandbox::Decision] = match &outcome {
        Ok(o) => &o.decisions,
        Err(camina_registry::Error::Call(e)) => e.decisions(),
        Err(_) => &[],
    };
    if !decisions.is_empty()
        && let Ok(p) = registry.get(plugin)
    {
        let entries: Vec<camina_journal::DecisionEntry> = decisions
            .iter()
            .map(|d| camina_journal::DecisionEntry {
                capability: d.capability.as_str().to_owned(),
                action: d.action.clone(),
                target: d.target.clone(),
                allowed: d.allowed,
                detail: d.detail.clone(),
                ..camina_journal::DecisionEntry::now(plugin, &p.record.digest)
            })
            .collect();
        cx.log_decisions(entries);
    }
    match outcome {
        Ok(outcome) => match outcome.result {
            Ok(json) => {
                println!("{json}");
                Ok(())
            }
            Err(tool_error) => {
                eprintln!("{}: {}", tool_error.kind.as_str(), tool_error.message);
                Err(Reported.into())
            }
        },
        Err(camina_registry::Error::Call(e)) => {
            Err(anyhow::Error::new(e).context(format!("{plugin} {tool}")))
        }
        Err(e) => Err(e.into()),
    }
}

/// A `--workspace DIR` argument (default: the current directory), made
/// canonical; a missing path or a file is a usage error naming it.
pub fn workspace_arg(workspace: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let workspace = match workspace {
        Some(w) => w,
        None => std::env::current_dir().context("cannot read the current directory")?,
    };
    // "--workspace x: No such file…", "--workspace x is not a directory".
    let canonical = camina_coordinator::workspace::canonical_dir(&workspace)
        .map_err(|e| UsageError(format!("--{}", camina_sandbox::error_chain(&e))))?;
    Ok(canonical)
}
