//! `drummer-web`: the Drummers' web tool.
//!
//! `http_get` fetches a URL through `wasi:http/outgoing-handler`. The host
//! checks every request (scheme, host, port, resolved address) against the
//! plugin's `[net] allow` list; the shipped policy allows nothing, so the user
//! decides which hosts Drummers may read. Redirects are followed here, one
//! request per hop, so every hop passes the host's check again.

use camina_skill_kit::{
    Effect, Guest, Manifest, Tool, ToolError, ToolResult, output, parse_input, tool, truncate_utf8,
    unknown_tool,
};
use serde::Deserialize;
use serde_json::json;
use wasip2::http::outgoing_handler;
use wasip2::http::types::{ErrorCode, Fields, IncomingResponse, Method, OutgoingRequest, Scheme};
use wasip2::io::streams::StreamError;

const NAME: &str = "drummer-web";
const DEFAULT_BODY_BYTES: usize = 256 * 1024;
const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;
const MAX_REDIRECTS: usize = 5;
const USER_AGENT: &str = concat!("camina-drummer-web/", env!("CARGO_PKG_VERSION"));

struct DrummerWeb;

camina_skill_kit::export_skill!(DrummerWeb);

impl Guest for DrummerWeb {
    fn describe() -> Manifest {
        Manifest {
            name: NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Fetch web pages and APIs over HTTP(S), limited to the hosts the \
                          plugin's policy allows."
                .into(),
            tools: tools(),
        }
    }

    fn call(name: String, input: String) -> Result<String, ToolError> {
        match name.as_str() {
            "http_get" => http_get(parse_input(&input)?),
            other => Err(unknown_tool(NAME, other)),
        }
    }
}

fn tools() -> Vec<Tool> {
    vec![tool(
        "http_get",
        "HTTP GET a URL (http or https). Returns the status, content type and the body \
         as text, truncated to max_bytes. Redirects are followed (at most 5).",
        json!({
            "type": "object",
            "properties": {
                "url": {"type": "string", "minLength": 1, "description": "absolute http(s) URL"},
                "max_bytes": {"type": "integer", "minimum": 1, "maximum": MAX_BODY_BYTES,
                              "description": "body bytes to return at most (default 262144)"},
                "follow_redirects": {"type": "boolean", "description": "default true"}
            },
            "required": ["url"],
            "additionalProperties": false
        }),
        Effect::ReadOnly,
    )]
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetInput {
    url: String,
    #[serde(default)]
    max_bytes: Option<usize>,
    #[serde(default = "yes")]
    follow_redirects: bool,
}

fn yes() -> bool {
    true
}

/// An absolute URL split the way `wasi:http` wants it.
#[derive(Debug, Clone, PartialEq)]
struct Target {
    https: bool,
    authority: String,
    path_with_query: String,
}

impl Target {
    fn parse(url: &str) -> ToolResult<Self> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| ToolError::InvalidInput(format!("url: `{url}` is not absolute")))?;
        let https = match scheme.to_ascii_lowercase().as_str() {
            "https" => true,
            "http" => false,
            other => {
                return Err(ToolError::InvalidInput(format!(
                    "url: scheme `{other}` is not supported (http or https)"
                )));
            }
        };
        let rest = rest.split('#').next().unwrap_or_default();
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        if authority.is_empty() || authority.contains('@') {
            return Err(ToolError::InvalidInput(format!(
                "url: `{url}` has no host, or has credentials"
            )));
        }
        let path_with_query = match path {
            "" => "/".to_owned(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_owned(),
        };
        Ok(Self {
            https,
            authority: authority.to_owned(),
            path_with_query,
        })
    }

    fn url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}{}", self.authority, self.path_with_query)
    }

    /// Where a `Location` header points, relative to this URL.
    fn join(&self, location: &str) -> ToolResult<Self> {
        if location.contains("://") {
            return Self::parse(location);
        }
        let scheme = if self.https { "https" } else { "http" };
        if let Some(rest) = location.strip_prefix("//") {
            return Self::parse(&format!("{scheme}://{rest}"));
        }
        let path = if location.starts_with('/') {
            location.to_owned()
        } else {
            let base = self.path_with_query.split('?').next().unwrap_or("/");
            let dir = &base[..base.rfind('/').map_or(0, |i| i + 1)];
            format!("{dir}{location}")
        };
        Self::parse(&format!("{scheme}://{}{path}", self.authority))
    }
}

fn describe_error(url: &str, code: &ErrorCode) -> ToolError {
    match code {
        ErrorCode::HttpRequestDenied | ErrorCode::DestinationIpProhibited => ToolError::Denied(
            format!("GET {url}: refused by the sandbox (not in the plugin's [net] allow list)"),
        ),
        ErrorCode::DnsError(_) | ErrorCode::DestinationNotFound => {
            ToolError::NotFound(format!("GET {url}: host not found"))
        }
        other => ToolError::Failed(format!("GET {url}: {other:?}")),
    }
}

fn send(target: &Target) -> ToolResult<IncomingResponse> {
    let url = target.url();
    let headers = Fields::from_list(&[
        ("user-agent".to_owned(), USER_AGENT.as_bytes().to_vec()),
        ("accept".to_owned(), b"*/*".to_vec()),
    ])
    .map_err(|e| ToolError::Failed(format!("building headers: {e:?}")))?;
    let request = OutgoingRequest::new(headers);
    let bad = |what: &str| ToolError::InvalidInput(format!("url: invalid {what} in `{url}`"));
    request
        .set_method(&Method::Get)
        .map_err(|()| bad("method"))?;
    request
        .set_scheme(Some(if target.https {
            &Scheme::Https
        } else {
            &Scheme::Http
        }))
        .map_err(|()| bad("scheme"))?;
    request
        .set_authority(Some(&target.authority))
        .map_err(|()| bad("host"))?;
    request
        .set_path_with_query(Some(&target.path_with_query))
        .map_err(|()| bad("path"))?;
    let pending = outgoing_handler::handle(request, None).map_err(|e| describe_error(&url, &e))?;
    pending.subscribe().block();
    match pending.get() {
        Some(Ok(Ok(response))) => Ok(response),
        Some(Ok(Err(code))) => Err(describe_error(&url, &code)),
        Some(Err(())) | None => Err(ToolError::Failed(format!("GET {url}: no response"))),
    }
}

fn header(response: &IncomingResponse, name: &str) -> Option<String> {
    let values = response.headers().get(name);
    values
        .first()
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Reads at most `max` bytes of the body; true if more was left.
fn read_body(response: IncomingResponse, max: usize) -> ToolResult<(Vec<u8>, bool)> {
    let body = response
        .consume()
        .map_err(|()| ToolError::Failed("response body already taken".into()))?;
    let stream = body
        .stream()
        .map_err(|()| ToolError::Failed("response body stream unavailable".into()))?;
    let mut bytes = Vec::new();
    loop {
        let want = (max + 1).saturating_sub(bytes.len()).clamp(1, 64 * 1024);
        match stream.blocking_read(want as u64) {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => {
                return Err(ToolError::Failed(format!(
                    "reading body: {}",
                    e.to_debug_string()
                )));
            }
        }
        if bytes.len() > max {
            bytes.truncate(max);
            return Ok((bytes, true));
        }
    }
    Ok((bytes, false))
}

fn http_get(input: GetInput) -> ToolResult {
    let max = input.max_bytes.unwrap_or(DEFAULT_BODY_BYTES);
    if max == 0 || max > MAX_BODY_BYTES {
        return Err(ToolError::InvalidInput(format!(
            "max_bytes: must be between 1 and {MAX_BODY_BYTES}"
        )));
    }
    let mut target = Target::parse(&input.url)?;
    let mut redirects = Vec::new();
    loop {
        let response = send(&target)?;
        let status = response.status();
        let location = header(&response, "location");
        if input.follow_redirects
            && matches!(status, 301 | 302 | 303 | 307 | 308)
            && let Some(location) = location
        {
            if redirects.len() >= MAX_REDIRECTS {
                return Err(ToolError::Failed(format!(
                    "GET {}: more than {MAX_REDIRECTS} redirects",
                    input.url
                )));
            }
            drop(response);
            let next = target.join(&location)?;
            redirects.push(next.url());
            target = next;
            continue;
        }
        let content_type = header(&response, "content-type");
        let (bytes, mut truncated) = read_body(response, max)?;
        let mut body = String::from_utf8_lossy(&bytes).into_owned();
        truncated |= truncate_utf8(&mut body, max);
        return output(&json!({
            "url": input.url,
            "final_url": target.url(),
            "status": status,
            "content_type": content_type,
            "body": body,
            "truncated": truncated,
            "redirects": redirects,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_joins_urls() {
        let t = Target::parse("http://127.0.0.1:8080/a/b?x=1#frag").unwrap();
        assert_eq!(t.authority, "127.0.0.1:8080");
        assert_eq!(t.path_with_query, "/a/b?x=1");
        assert_eq!(t.join("c").unwrap().url(), "http://127.0.0.1:8080/a/c");
        assert_eq!(t.join("/z").unwrap().url(), "http://127.0.0.1:8080/z");
        assert_eq!(
            t.join("https://example.com").unwrap().url(),
            "https://example.com/"
        );
        assert_eq!(t.join("//other:1/p").unwrap().url(), "http://other:1/p");
        assert!(Target::parse("ftp://x/").is_err());
        assert!(Target::parse("http://user:pw@x/").is_err());
    }
}
