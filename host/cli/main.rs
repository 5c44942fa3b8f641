//! `camina`: the command-line front end of Caminaå.
//!
//! The one `main()`, the one tracing subscriber and the one place errors are
//! printed. Exit codes: 0 success; 1 the operation failed (a tool error, a
//! limit, a refused install); 2 a usage error (bad flags, bad `--input` JSON).

mod config;
mod eval;
mod home;
mod mcp;
mod model;
mod plugin;
mod policy;
mod serve;
mod task;
mod tool;
mod worker;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "camina",
    version,
    about = "Caminaå: LLM agents whose tools run as sandboxed WebAssembly components"
)]
struct Cli {
    /// State directory (plugin store, compiled cache, journal). Default:
    /// $CAMINA_HOME, else the platform data directory.
    #[arg(long, global = true, value_name = "DIR")]
    home: Option<PathBuf>,

    /// Configuration file. Default: <home>/config.toml (optional).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Install, list, inspect and remove skill plugins.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Call skill tools directly, each in a fresh sandbox.
    #[command(subcommand)]
    Tool(tool::ToolCommand),
    /// Check, fetch and try the models behind each role.
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// Run a task: the coordinator plans, the crews work, the answer is
    /// printed on stdout (progress on stderr, first line `task <ID>`).
    Run(task::RunArgs),
    /// List, show, resume and cancel tasks.
    #[command(subcommand)]
    Task(task::TaskCommand),
    /// Run a suite of task cases (evals/*.toml) and score the end states:
    /// pass rate, median time, model calls.
    Eval(eval::EvalArgs),
    /// Serve the HTTP API (tasks, events, plugins, audit).
    Serve(serve::ServeArgs),
    /// Run tasks for a Restate cluster: serve the agent loop as a Restate
    /// service endpoint and register it (multi-node mode).
    Worker(worker::WorkerArgs),
    /// Serve the installed skills to MCP clients (Model Context Protocol,
    /// JSON-RPC on stdin/stdout; logs on stderr).
    Mcp(mcp::McpArgs),
    /// Audit and approve plugin policies.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Query the capability decision log.
    #[command(subcommand)]
    Audit(policy::AuditCommand),
    /// Keys for signing plugins.
    #[command(subcommand)]
    Key(policy::KeyCommand),
}

/// What every command needs: the home directory and the configuration.
#[derive(Debug)]
pub struct Context {
    pub home: PathBuf,
    pub config: config::FileConfig,
}

impl Context {
    /// The home directory's layout.
    pub fn layout(&self) -> camina_coordinator::home::Home {
        camina_coordinator::home::Home::new(&self.home)
    }

    pub fn registry(&self) -> anyhow::Result<camina_registry::Registry> {
        let r = home::registry(&self.home)?;
        r.require_signatures(self.config.plugins.require_signatures);
        Ok(r)
    }

    /// The server's (and the audit's) workspace root.
    pub fn workspace_root(&self) -> PathBuf {
        self.config
            .server
            .workspace_root
            .as_deref()
            .map(|p| self.layout().expand(p))
            .unwrap_or_else(|| self.layout().workspaces())
    }

    /// Records sandbox decisions of a direct tool call in the decision log
    /// (skipped, with a note, while another process holds the journal).
    pub fn log_decisions(&self, entries: Vec<camina_journal::DecisionEntry>) {
        if entries.is_empty() {
            return;
        }
        match camina_journal::Journal::open(&self.layout().journal()) {
            Ok((j, _)) => {
                let _ = j
                    .decision_log()
                    .set_retention(self.config.audit.retention());
                if let Err(e) = j.decision_log().record(entries) {
                    tracing::warn!("decision log: {e}");
                }
            }
            Err(e) => tracing::warn!("decisions of this call not logged: {e}"),
        }
    }

    pub fn bridge(&self) -> anyhow::Result<camina_model::Bridge> {
        Ok(camina_model::Bridge::new(
            self.config.model_config(),
            &self.home,
        )?)
    }
}

/// An error that is the user's invocation, not the operation: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A failure already reported on stderr in its own format (e.g. a tool's
/// `kind: message`): exit 1 without printing again.
#[derive(Debug, thiserror::Error)]
#[error("reported")]
pub struct Reported;

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("CAMINA_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .without_time()
        .init();
}

/// `camina … | head` closes stdout early and `println!` then panics on the
/// broken pipe. Like other Unix tools, stop quietly instead, with the
/// status a SIGPIPE death gives (128 + 13).
fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

fn main() -> ExitCode {
    quiet_on_broken_pipe();
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async move {
        let home = home::resolve(cli.home.as_deref())?;
        let (config, _) = config::load(cli.config.as_deref(), &home)?;
        let cx = Context { home, config };
        match cli.command {
            Command::Plugin(cmd) => plugin::run(&cx, cmd).await,
            Command::Tool(cmd) => tool::run(&cx, cmd).await,
            Command::Model(cmd) => model::run(&cx, cmd).await,
            Command::Run(args) => task::run(&cx, args).await,
            Command::Task(cmd) => task::task(&cx, cmd).await,
            Command::Eval(args) => eval::eval(&cx, args).await,
            Command::Serve(args) => serve::serve(&cx, args).await,
            Command::Mcp(args) => mcp::mcp(&cx, args).await,
            Command::Worker(args) => worker::worker(&cx, args).await,
            Command::Policy(cmd) => policy::policy(&cx, cmd).await,
            Command::Audit(cmd) => policy::audit(&cx, cmd).await,
            Command::Key(cmd) => policy::key(&cx, cmd).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<Reported>() => ExitCode::from(1),
        Err(e) if e.is::<UsageError>() => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
