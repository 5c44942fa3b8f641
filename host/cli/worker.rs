//! `camina worker`: runs tasks for a Restate cluster.

use crate::{Context, UsageError};
use anyhow::Context as _;
use clap::Args;
use std::net::SocketAddr;

#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// Restate's ingress URL (default: [restate] ingress).
    #[arg(long, value_name = "URL")]
    pub restate: Option<String>,
    /// Restate's admin URL, where the worker registers (default: [restate]
    /// admin, else the ingress host on port 9070).
    #[arg(long, value_name = "URL")]
    pub restate_admin: Option<String>,
    /// Address to serve the Restate service endpoint on (HTTP/2).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9080")]
    pub listen: String,
    /// The URL Restate reaches this worker at (default: http://ADDR; give
    /// it when listening on 0.0.0.0 or behind a proxy).
    #[arg(long, value_name = "URL")]
    pub advertise: Option<String>,
}

/// Restate's ingress and admin URLs from the flags and `[restate]`.
pub fn restate_urls(
    cx: &Context,
    ingress: Option<String>,
    admin: Option<String>,
) -> anyhow::Result<(String, String)> {
    let r = &cx.config.restate;
    let ingress = ingress.or_else(|| r.ingress.clone()).ok_or_else(|| {
        UsageError("no Restate: give --restate URL or set [restate] ingress".into())
    })?;
    let parsed = reqwest::Url::parse(&ingress).map_err(|e| {
        UsageError(format!(
            "--restate `{ingress}`: {e} (e.g. http://127.0.0.1:8080)"
        ))
    })?;
    let admin = match admin.or_else(|| r.admin.clone()) {
        Some(a) => {
            reqwest::Url::parse(&a)
                .map_err(|e| UsageError(format!("Restate admin URL `{a}`: {e}")))?;
            a
        }
        None => {
            let mut a = parsed.clone();
            a.set_port(Some(9070))
                .map_err(|()| UsageError(format!("--restate `{ingress}` has no host")))?;
            a.to_string().trim_end_matches('/').to_owned()
        }
    };
    Ok((ingress, admin))
}

pub async fn worker(cx: &Context, args: WorkerArgs) -> anyhow::Result<()> {
    let (ingress, admin) = restate_urls(cx, args.restate, args.restate_admin)?;
    let listen: SocketAddr = args.listen.parse().map_err(|e| {
        UsageError(format!(
            "--listen `{}`: {e} (e.g. 127.0.0.1:9080)",
            args.listen
        ))
    })?;
    let engine = crate::task::engine(cx, None).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let bound = listener.local_addr()?;
    let advertise = args.advertise.unwrap_or_else(|| format!("http://{bound}"));
    eprintln!("worker serving on {bound}, registering with Restate at {admin} as {advertise}");
    let client = camina_cluster::Client::new(&ingress, &admin);
    camina_cluster::worker::serve(
        engine,
        Some(cx.workspace_root()),
        listener,
        &client,
        &advertise,
        || eprintln!("registered with Restate; running tasks"),
        crate::serve::shutdown_signal(),
    )
    .await?;
    eprintln!("stopped");
    Ok(())
}
