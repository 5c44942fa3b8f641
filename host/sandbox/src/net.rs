//! `wasi:http/outgoing-handler` behind the policy's `[net]` rules.
//!
//! Every request a guest sends lands in [`NetGate::send_request`], which:
//! 1. normalises the URL (so `2130706433`, `0x7f.1` and `[::ffff:7f00:1]`
//!    are all `127.0.0.1`) and checks scheme, host and port against the rules;
//! 2. resolves the host itself and checks every candidate address (a name
//!    resolving to loopback, private, link-local or metadata addresses is
//!    refused unless the rule lists that IP literal);
//! 3. connects to the exact address it checked, so a DNS answer cannot
//!    change between check and use, with TLS verified against the *name*.
//!
//! A refusal is `HttpRequestDenied` / `DestinationIpProhibited` to the guest
//! (which the skill turns into `tool-error::denied`), a `warn!`, and a
//! recorded [`Decision`]. Redirects are never followed here: a 3xx goes back
//! to the guest, and a follow-up request is checked like any other.

use crate::audit::{Capability, Decision, Decisions};
use camina_policy::NetPolicy;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::net::TcpStream;
use url::Url;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiHttpHooks};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// The per-call network gate.
#[derive(Debug, Clone)]
pub(crate) struct NetGate {
    pub plugin: Arc<str>,
    pub policy: Arc<NetPolicy>,
    pub decisions: Decisions,
}

type IoFuture = Box<dyn Future<Output = Result<(), HttpError>> + Send>;

impl WasiHttpHooks for NetGate {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<RequestOptions>,
        _fut: IoFuture,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (http::Response<wasmtime_wasi_http::WasiBody>, IoFuture),
                    HttpError,
                >,
            > + Send,
    > {
        let gate = self.clone();
        Box::new(async move { gate.send(request, options).await })
    }
}

fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map(|b| b.with_root_certificates(roots).with_no_client_auth())
                .unwrap_or_else(|e| {
                    // The ring provider supports the default versions; this
                    // cannot fail, but never panic on a host path.
                    tracing::error!("TLS configuration: {e}");
                    rustls::ClientConfig::builder()
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth()
                });
            Arc::new(config)
        })
        .clone()
}

impl NetGate {
    fn deny(&self, method: &str, target: String, reason: String) {
        tracing::warn!(
            plugin = %self.plugin, capability = "net", action = method, target = %target,
            decision = "denied", reason = %reason, "network request denied"
        );
        self.record(method, target, false, reason);
    }

    /// Records a request the policy allowed, with how it went.
    fn record_allowed(&self, method: &str, target: String, outcome: String) {
        tracing::debug!(
            plugin = %self.plugin, capability = "net", action = %method, target = %target,
            decision = "allowed", outcome = %outcome, "network request"
        );
        self.record(method, target, true, outcome);
    }

    fn record(&self, method: &str, target: String, allowed: bool, detail: String) {
        self.decisions.push(Decision {
            capability: Capability::Net,
            action: method.to_owned(),
            target,
            allowed,
            detail: Some(detail),
        });
    }

    async fn send(
        self,
        mut request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<RequestOptions>,
    ) -> Result<(http::Response<wasmtime_wasi_http::WasiBody>, IoFuture), HttpError> {
        let method = request.method().as_str().to_owned();
        let uri = request.uri().clone();
        let shown = uri.to_string();
        let url = match Url::parse(&shown) {
            Ok(u) => u,
            Err(e) => {
                self.deny(&method, shown, format!("unparseable URL: {e}"));
                return Err(HttpError::HttpRequestUriInvalid);
            }
        };
        if let Err(denial) = self.policy.check_url(&url) {
            self.deny(&method, shown, denial.to_string());
            return Err(HttpError::HttpRequestDenied);
        }
        let https = url.scheme() == "https";
        let port = url
            .port_or_known_default()
            .unwrap_or(if https { 443 } else { 80 });
        let (addrs, server_name): (Vec<IpAddr>, String) = match url.host() {
            Some(url::Host::Ipv4(ip)) => (vec![IpAddr::V4(ip)], ip.to_string()),
            Some(url::Host::Ipv6(ip)) => (vec![IpAddr::V6(ip)], ip.to_string()),
            Some(url::Host::Domain(name)) => match tokio::net::lookup_host((name, port)).await {
                Ok(found) => (found.map(|a| a.ip()).collect(), name.to_owned()),
                Err(e) => {
                    // Allowed by the policy, but it went nowhere: recorded
                    // all the same, so the log shows every attempt.
                    self.record_allowed(&method, shown, format!("failed: DNS lookup: {e}"));
                    return Err(HttpError::DnsError {
                        rcode: Some(e.to_string()),
                        info_code: None,
                    });
                }
            },
            None => return Err(HttpError::HttpRequestUriInvalid),
        };
        // Connect only to an address that passed the check.
        let mut refusal = None;
        let mut chosen = None;
        for ip in addrs {
            match self.policy.check_addr(&url, ip) {
                Ok(()) => {
                    chosen = Some(ip.to_canonical());
                    break;
                }
                Err(denial) => refusal = refusal.or(Some(denial)),
            }
        }
        let Some(ip) = chosen else {
            let reason =
                refusal.map_or_else(|| "the host has no address".to_owned(), |d| d.to_string());
            self.deny(&method, shown, reason);
            return Err(HttpError::DestinationIpProhibited);
        };
        let addr = SocketAddr::new(ip, port);
        let target = format!("{shown} ({addr})");

        let connect_timeout = options
            .and_then(|o| o.connect_timeout)
            .unwrap_or(CONNECT_TIMEOUT);
        let response = async {
            let tcp = tokio::time::timeout(connect_timeout, TcpStream::connect(addr))
                .await
                .map_err(|_| HttpError::ConnectionTimeout)?
                .map_err(HttpError::Connect)?;
            let _ = tcp.set_nodelay(true);

            // The request line carries only the path; Host was set by wasmtime.
            let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
            *request.uri_mut() = http::Uri::builder()
                .path_and_query(path)
                .build()
                .map_err(|_| HttpError::HttpRequestUriInvalid)?;

            if https {
                let name = rustls::pki_types::ServerName::try_from(server_name)
                    .map_err(|_| HttpError::TlsCertificateError)?;
                let tls = tokio_rustls::TlsConnector::from(tls_config())
                    .connect(name, tcp)
                    .await
                    .map_err(HttpError::Tls)?;
                exchange(TokioIo::new(tls), request).await
            } else {
                exchange(TokioIo::new(tcp), request).await
            }
        }
        .await;
        let detail = match &response {
            Ok((r, _)) => match r
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
            {
                Some(n) => format!("status {}, {n} bytes", r.status().as_u16()),
                None => format!("status {}", r.status().as_u16()),
            },
            Err(e) => format!("failed: {e}"),
        };
        self.record_allowed(&method, target, detail);
        response
    }
}

/// HTTP/1.1 over an established stream: send, drive the connection until
/// the response head arrives, hand the rest of the connection to wasmtime.
async fn exchange<S>(
    io: TokioIo<S>,
    request: http::Request<wasmtime_wasi_http::WasiBody>,
) -> Result<(http::Response<wasmtime_wasi_http::WasiBody>, IoFuture), HttpError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    let mut conn = Box::pin(conn);
    let send = sender.send_request(request);
    tokio::pin!(send);
    let mut conn_done = false;
    let response = loop {
        tokio::select! {
            r = &mut send => break r?,
            c = &mut conn, if !conn_done => {
                c?;
                conn_done = true;
            }
        }
    };
    let response =
        response.map(|body: hyper::body::Incoming| body.map_err(HttpError::from).boxed_unsync());
    let io: IoFuture = if conn_done {
        Box::new(async { Ok(()) })
    } else {
        Box::new(async move { conn.await.map_err(HttpError::from) })
    };
    Ok((response, io))
}
