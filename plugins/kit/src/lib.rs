//! The toolkit every bundled Caminaå skill is built with.
//!
//! It owns the guest bindings of the `camina:skill` world (see `wit/`), so a
//! skill crate only implements [`Guest`] and calls [`export_skill!`]. It also
//! holds what the skills share: JSON input/output helpers, the mapping from
//! I/O errors to `tool-error` kinds, workspace path resolution, the
//! `read_file` tool used by both Belters and Drummers and (feature
//! `search`) the `find_files` and `grep` tools.
//!
//! What it deliberately does not do: enforce anything. A skill is untrusted;
//! the host's sandbox decides what a path or URL may reach. The kit only turns
//! the sandbox's refusals into clear `denied` answers.

pub mod bindings {
    wit_bindgen::generate!({
        world: "skill",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "export_skill",
        default_bindings_module: "camina_skill_kit::bindings",
    });
}

mod files;
mod paths;
#[cfg(feature = "search")]
mod search;

pub use bindings::camina::skill::host::{Level, log};
pub use bindings::camina::skill::types::{Effect, Manifest, Tool, ToolError};
pub use bindings::{Guest, export_skill};
pub use files::{ReadFileInput, read_file, read_file_tool};
pub use paths::Workspace;
#[cfg(feature = "search")]
pub use search::{call_search, search_tools};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The result type of every tool.
pub type ToolResult<T = String> = Result<T, ToolError>;

/// Builds a [`Tool`] from a JSON Schema value.
pub fn tool(name: &str, description: &str, schema: serde_json::Value, effect: Effect) -> Tool {
    Tool {
        name: name.to_owned(),
        description: description.to_owned(),
        input_schema: schema.to_string(),
        effect,
    }
}

/// Parses a tool's JSON input into `T`; a mismatch is `invalid-input`.
pub fn parse_input<T: DeserializeOwned>(input: &str) -> ToolResult<T> {
    serde_json::from_str(input).map_err(|e| ToolError::InvalidInput(format!("input: {e}")))
}

/// Serialises a tool's output.
pub fn output<T: Serialize>(value: &T) -> ToolResult {
    serde_json::to_string(value).map_err(|e| ToolError::Failed(format!("serialising output: {e}")))
}

/// The `not-found` answer for a tool name the skill does not have.
pub fn unknown_tool(skill: &str, tool: &str) -> ToolError {
    ToolError::NotFound(format!("{skill} has no tool named `{tool}`"))
}

/// wasi-libc errno values std does not always map to an `ErrorKind`.
mod errno {
    pub const EACCES: i32 = 2;
    pub const EEXIST: i32 = 20;
    pub const EISDIR: i32 = 31;
    pub const ENOENT: i32 = 44;
    pub const ENOTDIR: i32 = 54;
    pub const ENOTEMPTY: i32 = 55;
    pub const EPERM: i32 = 63;
    pub const EROFS: i32 = 69;
    /// wasi-libc's answer for a path under no preopen.
    pub const ENOTCAPABLE: i32 = 76;
}

/// Maps an I/O error on `path` to the `tool-error` a model can act on.
pub fn io_error(op: &str, path: &str, err: &std::io::Error) -> ToolError {
    use std::io::ErrorKind as K;
    let kind = match err.raw_os_error() {
        Some(errno::ENOENT) => K::NotFound,
        Some(errno::EACCES | errno::EPERM) => K::PermissionDenied,
        Some(errno::EEXIST) => K::AlreadyExists,
        Some(errno::EISDIR) => K::IsADirectory,
        Some(errno::ENOTDIR) => K::NotADirectory,
        Some(errno::ENOTEMPTY) => K::DirectoryNotEmpty,
        Some(errno::EROFS) => K::ReadOnlyFilesystem,
        _ => err.kind(),
    };
    match kind {
        K::NotFound => ToolError::NotFound(format!("{op} {path}: no such file or directory")),
        K::PermissionDenied => {
            ToolError::Denied(format!("{op} {path}: not permitted by the sandbox policy"))
        }
        K::AlreadyExists => ToolError::InvalidInput(format!("{op} {path}: already exists")),
        K::IsADirectory => ToolError::InvalidInput(format!("{op} {path}: is a directory")),
        K::NotADirectory => ToolError::InvalidInput(format!("{op} {path}: not a directory")),
        K::DirectoryNotEmpty => {
            ToolError::InvalidInput(format!("{op} {path}: directory not empty"))
        }
        K::ReadOnlyFilesystem => ToolError::Denied(format!("{op} {path}: the mount is read-only")),
        _ if err.raw_os_error() == Some(errno::ENOTCAPABLE) => ToolError::Denied(format!(
            "{op} {path}: outside every directory this skill may access"
        )),
        _ => ToolError::Failed(format!("{op} {path}: {err}")),
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary.
pub fn truncate_utf8(text: &mut String, max: usize) -> bool {
    if text.len() <= max {
        return false;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_respects_char_boundaries() {
        let mut s = "aé".to_string();
        assert!(truncate_utf8(&mut s, 2));
        assert_eq!(s, "a");
        let mut t = "abc".to_string();
        assert!(!truncate_utf8(&mut t, 3));
    }
}
