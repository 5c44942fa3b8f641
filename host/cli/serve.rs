//! `camina serve`

use crate::{Context, UsageError};
use anyhow::Context as _;
use camina_api::{AppState, Scope, Settings, Token};
use clap::Args;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on (default: [server] listen, else 127.0.0.1:7700).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Who runs the tasks: `sled` (this process, the default) or `restate`
    /// (`camina worker`s behind a Restate cluster; see --restate).
    #[arg(long, value_name = "ENGINE", default_value = "sled")]
    pub engine: EngineKind,
    /// Restate's ingress URL with `--engine restate` (default: [restate]
    /// ingress).
    #[arg(long, value_name = "URL")]
    pub restate: Option<String>,
    /// Restate's admin URL (default: [restate] admin, else the ingress host
    /// on port 9070).
    #[arg(long, value_name = "URL")]
    pub restate_admin: Option<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineKind {
    Sled,
    Restate,
}

pub async fn serve(cx: &Context, args: ServeArgs) -> anyhow::Result<()> {
    let s = &cx.config.server;
    let text = args
        .listen
        .or_else(|| s.listen.clone())
        .unwrap_or_else(|| "127.0.0.1:7700".into());
    let listen: SocketAddr = text
        .parse()
        .map_err(|e| UsageError(format!("--listen `{text}`: {e} (e.g. 127.0.0.1:7700)")))?;
    let tokens = tokens(cx, listen)?;
    let workspace_root = cx.workspace_root();
    let settings = Settings {
        tokens,
        workspace_root,
        max_running: s.max_running.unwrap_or(4),
        max_json_bytes: s.max_json_kib.unwrap_or(1024) * 1024,
        max_upload_bytes: s.max_upload_mib.unwrap_or(64) * 1024 * 1024,
        request_timeout: Duration::from_secs(s.request_timeout_s.unwrap_or(30)),
    };
    if args.engine == EngineKind::Sled && (args.restate.is_some() || args.restate_admin.is_some()) {
        return Err(UsageError("--restate needs --engine restate".into()).into());
    }
    let engine = crate::task::engine(cx, None).await?;
    let mut state = AppState::new(engine, settings);
    let mut resumed = Vec::new();
    if args.engine == EngineKind::Restate {
        let (ingress, admin) = crate::worker::restate_urls(cx, args.restate, args.restate_admin)?;
        eprintln!("tasks go through Restate at {ingress} (admin {admin}) to camina workers");
        state = state.with_cluster(camina_cluster::Client::new(&ingress, &admin));
    } else {
        resumed = state
            .resume_interrupted()
            .await
            .map_err(|e| anyhow::anyhow!(e.message))?;
    }
    if !resumed.is_empty() {
        eprintln!(
            "resuming {} interrupted task(s): {}",
            resumed.len(),
            resumed.join(", ")
        );
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    eprintln!("listening on http://{}", listener.local_addr()?);
    let app = camina_api::router(state.clone());
    let stopping = state.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            eprintln!("shutting down: finishing running tool calls, then stopping");
            stopping.shutdown(Duration::from_secs(30)).await;
        })
        .await
        .context("serving")?;
    eprintln!("stopped");
    Ok(())
}

/// The API's bearer tokens: `[server] tokens` and `$CAMINA_API_TOKEN`
/// (every scope). Each at least 16 characters; none at all (an open API)
/// only on a loopback address.
pub fn tokens(cx: &Context, listen: SocketAddr) -> anyhow::Result<Vec<Token>> {
    let mut tokens = cx.config.server.tokens.clone();
    if let Ok(t) = std::env::var("CAMINA_API_TOKEN")
        && !t.trim().is_empty()
    {
        tokens.push(Token {
            token: t.trim().to_owned(),
            scopes: vec![Scope::Tasks, Scope::Admin],
        });
    }
    if tokens.iter().any(|t| t.token.len() < 16) {
        return Err(UsageError("API tokens must be at least 16 characters".into()).into());
    }
    if !listen.ip().is_loopback() && tokens.is_empty() {
        return Err(UsageError(format!(
            "refusing to listen on {listen} without a token: set CAMINA_API_TOKEN or [server] tokens \
             (without tokens the API is open, which is only allowed on loopback)"
        ))
        .into());
    }
    Ok(tokens)
}

pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = ctrl_c => {}
        _ = async {
            match term.as_mut() {
                Some(t) => { t.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}
