//! `camina worker`: the task workflow served as a Restate service endpoint.

use crate::{CaminaTask, Client, ClientError};
use camina_coordinator::Engine;
use restate_sdk::prelude::{Endpoint, HttpServer};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Serves the task workflow on `listener` (HTTP/2, as Restate calls it;
/// task workspaces must lie under `workspace_root` when given),
/// registers it with Restate as `advertise` (the URL Restate reaches this
/// worker at; `registered` is called once Restate accepted it), and serves
/// until `shutdown` resolves.
pub async fn serve(
    engine: Arc<Engine>,
    workspace_root: Option<std::path::PathBuf>,
    listener: TcpListener,
    client: &Client,
    advertise: &str,
    registered: impl FnOnce(),
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ClientError> {
    let endpoint = Endpoint::builder()
        .bind(CaminaTask {
            engine,
            workspace_root,
        })
        .build();
    let server = HttpServer::new(endpoint).serve_with_cancel(listener, shutdown);
    let mut server = std::pin::pin!(server);
    // Restate discovers the services by calling this endpoint: it must be
    // serving while it registers.
    tokio::select! {
        r = client.register(advertise, Duration::from_secs(60)) => r?,
        () = &mut server => return Ok(()),
    }
    registered();
    server.await;
    Ok(())
}
