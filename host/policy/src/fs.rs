//! Filesystem mounts: which host directories a skill sees, where, and how.

use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// The placeholder for the workspace of the call or task.
pub const WORKSPACE_TOKEN: &str = "{workspace}";

/// Read-only or read-write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    Read,
    ReadWrite,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::ReadWrite => "read-write",
        }
    }

    pub fn can_write(self) -> bool {
        self == Access::ReadWrite
    }
}

/// Where a mount's host side is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPath {
    /// `{workspace}` or `{workspace}/sub/dir`.
    Workspace { sub: Option<String> },
    /// A fixed absolute host directory.
    Fixed(PathBuf),
}

impl std::fmt::Display for HostPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPath::Workspace { sub: None } => f.write_str(WORKSPACE_TOKEN),
            HostPath::Workspace { sub: Some(s) } => write!(f, "{WORKSPACE_TOKEN}/{s}"),
            HostPath::Fixed(p) => write!(f, "{}", p.display()),
        }
    }
}

/// One mount as written in the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub host: HostPath,
    /// Absolute, normalised guest path (`/workspace`).
    pub guest: String,
    pub access: Access,
}

/// A mount resolved for one workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedMount {
    /// Host directory: canonical for fixed paths and workspace
    /// subdirectories; the workspace itself as given, made absolute.
    pub host: PathBuf,
    pub guest: String,
    pub access: Access,
}

impl Mount {
    pub(crate) fn resolve(&self, workspace: Option<&Path>) -> Result<ResolvedMount> {
        let fail = |reason: String| Error::Mount {
            guest: self.guest.clone(),
            host: self.host.to_string(),
            reason,
        };
        let canonical = |path: &Path| {
            path.canonicalize()
                .map_err(|e| fail(format!("{}: {e}", path.display())))
        };
        let host = match &self.host {
            HostPath::Fixed(p) => canonical(p)?,
            HostPath::Workspace { sub } => {
                let ws = workspace.ok_or_else(|| {
                    fail("the policy mounts the workspace but no workspace was given".into())
                })?;
                match sub {
                    // The whole workspace: the sandbox opens it (following
                    // any symlink, as a canonical path would) and refuses
                    // the call, naming the mount, if it is not a directory.
                    // Canonicalising here would cost two syscalls per path
                    // component on every call and check nothing more.
                    None => {
                        let ws = std::path::absolute(ws)
                            .map_err(|e| fail(format!("{}: {e}", ws.display())))?;
                        return Ok(self.resolved(ws));
                    }
                    Some(s) => {
                        let ws = canonical(ws)?;
                        // The workspace's contents are not trusted (a skill
                        // or a checkout may have put a symlink there): the
                        // subdirectory must still be inside it once resolved.
                        let host = canonical(&ws.join(s))?;
                        if !host.starts_with(&ws) {
                            return Err(fail(format!(
                                "{} resolves to {}, outside the workspace {} (a symlink?)",
                                ws.join(s).display(),
                                host.display(),
                                ws.display()
                            )));
                        }
                        host
                    }
                }
            }
        };
        if !host.is_dir() {
            return Err(fail(format!("{} is not a directory", host.display())));
        }
        Ok(self.resolved(host))
    }

    fn resolved(&self, host: PathBuf) -> ResolvedMount {
        ResolvedMount {
            host,
            guest: self.guest.clone(),
            access: self.access,
        }
    }
}

/// Validates and normalises a guest path: absolute, no `.`/`..`, no NUL.
pub(crate) fn normalise_guest(path: &str) -> std::result::Result<String, String> {
    if !path.starts_with('/') {
        return Err(format!(
            "guest path `{path}` must be absolute (e.g. /workspace)"
        ));
    }
    if path.contains('\0') || path.contains('\\') {
        return Err("guest path must not contain NUL or backslash".into());
    }
    let mut parts = Vec::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        if part == "." || part == ".." {
            return Err(format!("guest path `{path}` must not contain `.` or `..`"));
        }
        parts.push(part);
    }
    Ok(format!("/{}", parts.join("/")))
}

/// Parses a host path as written in a policy.
pub(crate) fn parse_host(text: &str) -> std::result::Result<HostPath, String> {
    if let Some(rest) = text.strip_prefix(WORKSPACE_TOKEN) {
        let sub = rest.trim_start_matches('/');
        if !rest.is_empty() && !rest.starts_with('/') {
            return Err(format!("`{text}`: write {WORKSPACE_TOKEN}/<subdirectory>"));
        }
        if sub.is_empty() {
            return Ok(HostPath::Workspace { sub: None });
        }
        if sub.split('/').any(|p| p == ".." || p == ".") || sub.starts_with('/') {
            return Err(format!(
                "`{text}`: a workspace subdirectory must not contain `.` or `..`"
            ));
        }
        return Ok(HostPath::Workspace {
            sub: Some(sub.trim_end_matches('/').to_owned()),
        });
    }
    if text.contains('{') {
        return Err(format!(
            "`{text}`: the only placeholder is {WORKSPACE_TOKEN}, at the start"
        ));
    }
    let path = crate::expand_home(text);
    if !path.is_absolute() {
        return Err(format!(
            "`{text}` must be absolute, start with ~/ or with {WORKSPACE_TOKEN}"
        ));
    }
    if path
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        // `/srv/ws/../..` would read as "under /srv/ws" to the audit.
        return Err(format!("`{text}` must not contain `..`"));
    }
    match std::fs::metadata(&path) {
        Ok(m) if m.is_dir() => Ok(HostPath::Fixed(path)),
        Ok(_) => Err(format!("`{text}` is not a directory")),
        Err(e) => Err(format!("`{text}` does not exist or cannot be read: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_paths_are_normalised_and_checked() {
        assert_eq!(normalise_guest("/workspace/").unwrap(), "/workspace");
        assert_eq!(normalise_guest("//a//b").unwrap(), "/a/b");
        assert!(normalise_guest("workspace").is_err());
        assert!(normalise_guest("/a/../b").is_err());
    }

    #[test]
    fn host_paths_accept_the_workspace_template() {
        assert_eq!(
            parse_host("{workspace}").unwrap(),
            HostPath::Workspace { sub: None }
        );
        assert_eq!(
            parse_host("{workspace}/out/").unwrap(),
            HostPath::Workspace {
                sub: Some("out".into())
            }
        );
        assert!(parse_host("{workspace}/../etc").is_err());
        assert!(parse_host("{workspaces}").is_err());
        assert!(parse_host("relative/dir").is_err());
        assert!(parse_host("/definitely/not/here/camina").is_err());
        assert!(parse_host("{home}/x").is_err());
        assert!(parse_host("/tmp/..").is_err());
    }

    #[test]
    fn resolving_the_workspace_needs_an_existing_directory() {
        let dir = tempfile::tempdir().unwrap();
        let m = Mount {
            host: HostPath::Workspace { sub: None },
            guest: "/workspace".into(),
            access: Access::Read,
        };
        let r = m.resolve(Some(dir.path())).unwrap();
        assert_eq!(r.host, dir.path());
        assert!(m.resolve(None).is_err());
        // A missing workspace is refused when the sandbox opens it (see the
        // skills tests); a mounted subdirectory must exist already.
        let sub = Mount {
            host: HostPath::Workspace {
                sub: Some("missing".into()),
            },
            ..m
        };
        assert!(sub.resolve(Some(dir.path())).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn fs_escape_via_symlinked_workspace_subdirectory() {
        let outside = tempfile::tempdir().unwrap();
        let ws = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), ws.path().join("out")).unwrap();
        std::fs::create_dir(ws.path().join("real")).unwrap();
        let mount = |sub: &str| Mount {
            host: HostPath::Workspace {
                sub: Some(sub.into()),
            },
            guest: "/out".into(),
            access: Access::ReadWrite,
        };
        let err = mount("out").resolve(Some(ws.path())).unwrap_err();
        assert!(err.to_string().contains("outside the workspace"), "{err}");
        let ok = mount("real").resolve(Some(ws.path())).unwrap();
        assert_eq!(ok.host, ws.path().join("real").canonicalize().unwrap());
    }
}
