//! A hostile skill: every tool is one attack on the sandbox. The security
//! suite installs it under different policies and checks that each attack
//! is refused and that nothing happened outside.

use camina_skill_kit::{Effect, Guest, Manifest, ToolError, io_error, tool};
use serde::Deserialize;
use serde_json::json;
use wasip2::filesystem::types::{Descriptor, DescriptorFlags, OpenFlags, PathFlags};

struct Attacker;

camina_skill_kit::export_skill!(Attacker);

#[derive(Deserialize, Default)]
#[serde(default)]
struct Input {
    path: String,
    content: String,
    target: String,
    link: String,
    url: String,
    name: String,
    mib: usize,
    bytes: usize,
    depth: u64,
}

impl Guest for Attacker {
    fn describe() -> Manifest {
        let any = json!({"type": "object"});
        let tools = [
            "read",
            "write",
            "symlink",
            "hardlink",
            "http",
            "env",
            "env_all",
            "spin",
            "alloc",
            "recurse",
            "flood",
            "print",
            "panic",
            "sleep",
            "raw_read",
            "raw_write",
        ];
        Manifest {
            name: "attacker".into(),
            version: "0.1.0".into(),
            description: "tries to break out".into(),
            tools: tools
                .iter()
                .map(|t| tool(t, t, any.clone(), Effect::SideEffecting))
                .collect(),
        }
    }

    fn call(tool: String, input: String) -> Result<String, ToolError> {
        let i: Input =
            serde_json::from_str(&input).map_err(|e| ToolError::InvalidInput(e.to_string()))?;
        match tool.as_str() {
            "read" => std::fs::read_to_string(&i.path).map_err(|e| io_error("read", &i.path, &e)),
            "write" => std::fs::write(&i.path, i.content.as_bytes())
                .map(|()| "written".into())
                .map_err(|e| io_error("write", &i.path, &e)),
            "symlink" => workspace()?
                .symlink_at(&i.target, &i.link)
                .map(|()| "linked".into())
                .map_err(|e| ToolError::Denied(format!("symlink: {e:?}"))),
            "hardlink" => {
                let ws = workspace()?;
                ws.link_at(PathFlags::empty(), &i.target, &ws, &i.link)
                    .map(|()| "linked".into())
                    .map_err(|e| ToolError::Denied(format!("hardlink: {e:?}")))
            }
            // Straight to the host, past wasi-libc's own preopen lookup:
            // the path (absolute, `..`) reaches `open-at` as written.
            "raw_read" => {
                let f = workspace()?
                    .open_at(
                        PathFlags::empty(),
                        &i.path,
                        OpenFlags::empty(),
                        DescriptorFlags::READ,
                    )
                    .map_err(|e| ToolError::Denied(format!("open-at {}: {e:?}", i.path)))?;
                let (bytes, _) = f
                    .read(4096, 0)
                    .map_err(|e| ToolError::Failed(format!("read: {e:?}")))?;
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
            "raw_write" => {
                let f = workspace()?
                    .open_at(
                        PathFlags::empty(),
                        &i.path,
                        OpenFlags::CREATE,
                        DescriptorFlags::WRITE,
                    )
                    .map_err(|e| ToolError::Denied(format!("open-at {}: {e:?}", i.path)))?;
                f.write(i.content.as_bytes(), 0)
                    .map(|_| "written".into())
                    .map_err(|e| ToolError::Failed(format!("write: {e:?}")))
            }
            "http" => http_get(&i.url),
            "env" => std::env::var(&i.name)
                .map_err(|_| ToolError::NotFound(format!("{} is not set", i.name))),
            "env_all" => {
                Ok(json!(std::env::vars().map(|(k, _)| k).collect::<Vec<_>>()).to_string())
            }
            "spin" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "alloc" => {
                let mut chunks = Vec::new();
                for _ in 0..i.mib {
                    chunks.push(vec![1u8; 1 << 20]);
                }
                Ok(format!("allocated {} MiB", chunks.len()))
            }
            "recurse" => Ok(recurse(i.depth).to_string()),
            "symlink_check" => Ok(std::fs::symlink_metadata(&i.path)
                .map(|m| m.file_type().is_symlink())
                .unwrap_or(false)
                .to_string()),
            "flood" => Ok("x".repeat(i.bytes)),
            "print" => {
                let line = "y".repeat(1023);
                for _ in 0..(i.bytes / 1024 + 1) {
                    println!("{line}");
                }
                Ok("printed".into())
            }
            "panic" => panic!("attacker panicked on purpose"),
            "sleep" => {
                wasip2::clocks::monotonic_clock::subscribe_duration(60_000_000_000).block();
                Ok("slept".into())
            }
            other => Err(ToolError::NotFound(other.into())),
        }
    }
}

/// Deep recursion on the wasm stack itself (no address-taken locals, so
/// nothing lives on Rust's shadow stack in linear memory).
#[inline(never)]
fn recurse(n: u64) -> u64 {
    if n == 0 {
        return 1;
    }
    recurse(n - 1).wrapping_mul(3).wrapping_add(n)
}

fn workspace() -> Result<Descriptor, ToolError> {
    wasip2::filesystem::preopens::get_directories()
        .into_iter()
        .next()
        .map(|(d, _)| d)
        .ok_or_else(|| ToolError::Denied("no mount".into()))
}

fn http_get(url: &str) -> Result<String, ToolError> {
    use wasip2::http::types::{ErrorCode, Fields, Method, OutgoingRequest, Scheme};
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| ToolError::InvalidInput("url".into()))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    let req = OutgoingRequest::new(Fields::new());
    req.set_method(&Method::Get)
        .map_err(|()| ToolError::InvalidInput("method".into()))?;
    let scheme = match scheme {
        "https" => Scheme::Https,
        "http" => Scheme::Http,
        other => Scheme::Other(other.into()),
    };
    req.set_scheme(Some(&scheme))
        .map_err(|()| ToolError::InvalidInput("scheme".into()))?;
    req.set_authority(Some(authority))
        .map_err(|()| ToolError::InvalidInput("authority".into()))?;
    req.set_path_with_query(Some(path))
        .map_err(|()| ToolError::InvalidInput("path".into()))?;
    let denied = |e: &ErrorCode| {
        matches!(
            e,
            ErrorCode::HttpRequestDenied | ErrorCode::DestinationIpProhibited
        )
    };
    let pending = match wasip2::http::outgoing_handler::handle(req, None) {
        Ok(p) => p,
        Err(e) if denied(&e) => return Err(ToolError::Denied(format!("{e:?}"))),
        Err(e) => return Err(ToolError::Failed(format!("{e:?}"))),
    };
    pending.subscribe().block();
    match pending.get() {
        Some(Ok(Ok(resp))) => Ok(resp.status().to_string()),
        Some(Ok(Err(e))) if denied(&e) => Err(ToolError::Denied(format!("{e:?}"))),
        Some(Ok(Err(e))) => Err(ToolError::Failed(format!("{e:?}"))),
        _ => Err(ToolError::Failed("no response".into())),
    }
}
