//! Where a skill's paths point: relative paths are joined to the workspace
//! mount and normalised; absolute paths must lie under the mount, since no
//! other path exists for the skill. The host's sandbox is the enforcement;
//! this is so a tool knows what a path names (e.g. never deletes the
//! workspace itself through `a/..`).

use crate::{ToolError, ToolResult};

/// The guest path the skill treats as its workspace.
#[derive(Debug, Clone)]
pub struct Workspace {
    root: String,
}

/// The conventional guest path of the workspace mount.
pub const DEFAULT_ROOT: &str = "/workspace";

impl Workspace {
    /// Finds the workspace among the preopened directories: `/workspace` if
    /// mounted, else the only mount. With no mount at all the skill has no
    /// filesystem access, which is a `denied` answer.
    pub fn discover() -> ToolResult<Self> {
        let dirs = wasip2::filesystem::preopens::get_directories();
        let names: Vec<String> = dirs.into_iter().map(|(_, name)| name).collect();
        let root = if names.iter().any(|n| n == DEFAULT_ROOT) {
            DEFAULT_ROOT.to_owned()
        } else if let [only] = names.as_slice() {
            only.clone()
        } else if names.is_empty() {
            return Err(ToolError::Denied(
                "this skill has no filesystem access: its policy mounts no directory".into(),
            ));
        } else {
            return Err(ToolError::Failed(format!(
                "several mounts ({}) and none is {DEFAULT_ROOT}",
                names.join(", ")
            )));
        };
        Ok(Self { root })
    }

    /// A workspace rooted at `root` (for tests and callers that know it).
    pub fn at(root: &str) -> Self {
        Self {
            root: root.trim_end_matches('/').to_owned(),
        }
    }

    /// The guest path of the workspace.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// The guest path `user_path` names, normalised (`.`, `..` and repeated
    /// slashes folded, no trailing slash), so `a/..` and `/workspace/` are
    /// the workspace itself. Relative paths (the normal case) are joined to
    /// the workspace; absolute ones must lie under it. A `..` that climbs
    /// above the workspace is refused here; the host's sandbox would refuse
    /// it too, since nothing else is mounted.
    pub fn resolve(&self, user_path: &str) -> ToolResult<String> {
        if user_path.is_empty() {
            return Err(ToolError::InvalidInput("path: must not be empty".into()));
        }
        if user_path.contains('\0') {
            return Err(ToolError::InvalidInput("path: contains a NUL byte".into()));
        }
        let outside = || {
            ToolError::Denied(format!(
                "{user_path}: outside the workspace ({}); paths are relative to it",
                self.root
            ))
        };
        let rest = if user_path.starts_with('/') {
            match user_path.strip_prefix(&self.root) {
                Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
                // No preopen covers it: the sandbox gives the skill no way
                // to even name such a path. Say so plainly.
                _ => return Err(outside()),
            }
        } else {
            user_path
        };
        let mut parts: Vec<&str> = Vec::new();
        for part in rest.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    parts.pop().ok_or_else(outside)?;
                }
                p => parts.push(p),
            }
        }
        if parts.is_empty() {
            return Ok(self.root.clone());
        }
        Ok(format!("{}/{}", self.root, parts.join("/")))
    }

    /// How a guest path is shown back to the model: relative to the
    /// workspace when inside it.
    pub fn display(&self, guest_path: &str) -> String {
        match guest_path.strip_prefix(&self.root) {
            Some("") => ".".to_owned(),
            Some(rest) if rest.starts_with('/') => rest.trim_start_matches('/').to_owned(),
            _ => guest_path.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_join_the_workspace() {
        let ws = Workspace::at("/workspace");
        assert_eq!(ws.resolve("a/b.txt").unwrap(), "/workspace/a/b.txt");
        assert_eq!(ws.resolve("./a").unwrap(), "/workspace/a");
        assert_eq!(ws.resolve(".").unwrap(), "/workspace");
        assert_eq!(ws.resolve("/workspace/x").unwrap(), "/workspace/x");
        assert!(matches!(
            ws.resolve("/etc/passwd"),
            Err(ToolError::Denied(_))
        ));
        assert!(matches!(
            ws.resolve("/workspacex"),
            Err(ToolError::Denied(_))
        ));
        assert!(ws.resolve("").is_err());
    }

    #[test]
    fn every_spelling_of_the_workspace_is_the_workspace() {
        let ws = Workspace::at("/workspace");
        for p in [
            "/workspace/",
            "a/..",
            "./",
            "a/b/../..",
            "/workspace/./x/..",
            ".//",
        ] {
            assert_eq!(ws.resolve(p).unwrap(), "/workspace", "{p}");
        }
        assert_eq!(ws.resolve("a//b/./c/../d/").unwrap(), "/workspace/a/b/d");
        for p in ["..", "a/../..", "/workspace/..", "../secret"] {
            assert!(matches!(ws.resolve(p), Err(ToolError::Denied(_))), "{p}");
        }
    }

    #[test]
    fn display_is_relative_inside_the_workspace() {
        let ws = Workspace::at("/workspace");
        assert_eq!(ws.display("/workspace/a/b"), "a/b");
        assert_eq!(ws.display("/workspace"), ".");
        assert_eq!(ws.display("/workspacefoo"), "/workspacefoo");
    }
}
