//! The Extism twin of `belter-fs`'s `read_file`, for the P1b baseline.
//!
//! Same work as the skill's tool (plugins/kit/src/files.rs) on the bench's
//! path: parse `{"path": "..."}`, open the file under the mounted workspace
//! through WASI (std::fs on wasm32-wasip1), check it is a file, read it, and
//! return the content with its size as JSON. The host maps the workspace
//! directory to `/workspace` (Extism `Manifest::allowed_paths`, read-only).

use extism_pdk::{plugin_fn, Error, FnResult, Json};
use serde::{Deserialize, Serialize};
use std::io::Read;

/// Where the host mounts the workspace, as Caminaå mounts it for skills.
const WORKSPACE: &str = "/workspace";
/// Largest read, as the skill's default.
const MAX_READ_BYTES: u64 = 256 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadFileInput {
    path: String,
}

#[derive(Serialize)]
struct ReadFileOutput {
    path: String,
    content: String,
    size: u64,
    offset: u64,
    truncated: bool,
}

#[plugin_fn]
pub fn read_file(Json(input): Json<ReadFileInput>) -> FnResult<Json<ReadFileOutput>> {
    let path = if input.path.starts_with('/') {
        input.path.clone()
    } else {
        format!("{WORKSPACE}/{}", input.path)
    };
    let fail = |e: std::io::Error| Error::msg(format!("read {}: {e}", input.path));
    let file = std::fs::File::open(&path).map_err(fail)?;
    let meta = file.metadata().map_err(fail)?;
    if meta.is_dir() {
        return Err(Error::msg(format!("read {}: is a directory", input.path)).into());
    }
    let size = meta.len();
    let mut buf = Vec::with_capacity(size.min(MAX_READ_BYTES) as usize);
    file.take(MAX_READ_BYTES)
        .read_to_end(&mut buf)
        .map_err(fail)?;
    let truncated = (buf.len() as u64) < size;
    let content = String::from_utf8(buf)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    Ok(Json(ReadFileOutput {
        path: input.path,
        content,
        size,
        offset: 0,
        truncated,
    }))
}
