//! The `read_file` tool, shared by `belter-fs` and `drummer-search`.

use crate::{Effect, Tool, ToolError, ToolResult, Workspace, io_error, output, tool};
use serde::{Deserialize, Serialize};
use std::io::Read;

/// Default and largest number of bytes one `read_file` call returns.
pub const DEFAULT_READ_BYTES: u64 = 256 * 1024;
pub const MAX_READ_BYTES: u64 = 1024 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadFileInput {
    pub path: String,
    #[serde(default)]
    pub offset: u64,
    #[serde(default)]
    pub max_bytes: Option<u64>,
}

#[derive(Debug, Serialize)]
struct ReadFileOutput {
    path: String,
    content: String,
    /// Size of the whole file in bytes.
    size: u64,
    offset: u64,
    /// Lines in the returned content (a last line without a newline
    /// counts).
    lines: usize,
    /// True when the file continues past the returned content.
    truncated: bool,
    /// True when the bytes were not valid UTF-8 (invalid sequences replaced).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    lossy: bool,
}

/// The tool description of `read_file`.
pub fn read_file_tool() -> Tool {
    tool(
        "read_file",
        "Read a text file from the workspace. Paths are relative to the workspace. \
         Returns the content (UTF-8), the file size, its number of lines and whether it \
         was truncated; \
         use offset/max_bytes to page through large files.",
        serde_json::json!({
            "type": "object",
            "properties": {
                "path": {"type": "string", "minLength": 1, "description": "file path relative to the workspace"},
                "offset": {"type": "integer", "minimum": 0, "description": "byte offset to start at (default 0)"},
                "max_bytes": {"type": "integer", "minimum": 1, "maximum": MAX_READ_BYTES,
                              "description": "bytes to return at most (default 262144)"}
            },
            "required": ["path"],
            "additionalProperties": false
        }),
        Effect::ReadOnly,
    )
}

/// Runs `read_file`.
pub fn read_file(ws: &Workspace, input: ReadFileInput) -> ToolResult {
    let max = input.max_bytes.unwrap_or(DEFAULT_READ_BYTES);
    if max == 0 || max > MAX_READ_BYTES {
        return Err(ToolError::InvalidInput(format!(
            "max_bytes: must be between 1 and {MAX_READ_BYTES}"
        )));
    }
    let path = ws.resolve(&input.path)?;
    let mut file = std::fs::File::open(&path).map_err(|e| io_error("read", &input.path, &e))?;
    let meta = file
        .metadata()
        .map_err(|e| io_error("read", &input.path, &e))?;
    if meta.is_dir() {
        return Err(ToolError::InvalidInput(format!(
            "read {0}: is a directory; grep {{\"path\": \"{0}\", \"pattern\": \"<the text to \
             find>\"}} finds the matching lines in its files, and list_dir lists its entries",
            input.path
        )));
    }
    let size = meta.len();
    if input.offset > 0 {
        use std::io::{Seek, SeekFrom};
        file.seek(SeekFrom::Start(input.offset))
            .map_err(|e| io_error("read", &input.path, &e))?;
    }
    let want = max.min(size.saturating_sub(input.offset));
    let mut buf = Vec::with_capacity(usize::try_from(want).unwrap_or(0));
    file.take(max)
        .read_to_end(&mut buf)
        .map_err(|e| io_error("read", &input.path, &e))?;
    let truncated = input.offset + (buf.len() as u64) < size;
    let (content, lossy) = match String::from_utf8(buf) {
        Ok(s) => (s, false),
        Err(e) => (String::from_utf8_lossy(e.as_bytes()).into_owned(), true),
    };
    output(&ReadFileOutput {
        path: ws.display(&path),
        lines: content.lines().count(),
        content,
        size,
        offset: input.offset,
        truncated,
        lossy,
    })
}
