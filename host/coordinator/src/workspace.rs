//! Where a task may work: one rule for the CLI, the API and the engine.
//!
//! [`canonical_dir`] is a workspace as given (`camina run --workspace`, a
//! submitted task): an existing directory, canonical. [`Root::confine`] is one
//! under a root (the server's workspace root): relative to it, or absolute
//! inside it; never `..`, never the root itself, never outside it through a
//! symlink; created if missing through a capability handle on the root
//! (cap-std), so a symlink planted under the root cannot make the host
//! create anything outside it.

use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("workspace {path}")]
    Unreadable {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("workspace {0} is not a directory")]
    NotADirectory(String),
    #[error("workspace: `..` is not allowed")]
    ParentDir,
    #[error("workspace {path} is not a directory under the workspace root {root}")]
    Outside { path: String, root: String },
    #[error(
        "workspace: a task's workspace is a directory under the workspace root, not the root itself"
    )]
    IsRoot,
    #[error("workspace {path}: cannot create it under the workspace root")]
    Create {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the workspace root {path}")]
    Root {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// `path` as an existing directory, canonical.
pub fn canonical_dir(path: &Path) -> Result<PathBuf, WorkspaceError> {
    let canonical = path
        .canonicalize()
        .map_err(|source| WorkspaceError::Unreadable {
            path: path.display().to_string(),
            source,
        })?;
    if !canonical.is_dir() {
        return Err(WorkspaceError::NotADirectory(
            canonical.display().to_string(),
        ));
    }
    Ok(canonical)
}

/// A workspace directory already made canonical ([`canonical_dir`],
/// [`Root::confine`]): the engine takes it as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canonical(PathBuf);

impl std::ops::Deref for Canonical {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Canonical {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

/// `path` as an existing directory, canonical ([`canonical_dir`]).
pub fn canonical(path: &Path) -> Result<Canonical, WorkspaceError> {
    canonical_dir(path).map(Canonical)
}

/// A workspace root (the server's). Its canonical form and a capability
/// handle on it are taken on first use (the root is made if missing) and
/// again only when a request cannot be served under them (the root was
/// removed, renamed or replaced): a server confining a workspace per
/// request neither resolves nor opens the root each time.
#[derive(Debug)]
pub struct Root {
    given: PathBuf,
    known: std::sync::Mutex<Option<std::sync::Arc<Known>>>,
}

/// The root as last resolved.
#[derive(Debug)]
struct Known {
    path: PathBuf,
    dir: cap_std::fs::Dir,
}

impl Root {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            given: path.into(),
            known: std::sync::Mutex::new(None),
        }
    }

    /// The root as configured.
    pub fn path(&self) -> &Path {
        &self.given
    }

    fn resolve(&self, again: bool) -> Result<std::sync::Arc<Known>, WorkspaceError> {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if !again && let Some(k) = &*known {
            return Ok(k.clone());
        }
        let root_error = |source| WorkspaceError::Root {
            path: self.given.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&self.given).map_err(root_error)?;
        let path = self.given.canonicalize().map_err(root_error)?;
        let dir = cap_std::fs::Dir::open_ambient_dir(&path, cap_std::ambient_authority()).map_err(
            |source| WorkspaceError::Root {
                path: path.display().to_string(),
                source,
            },
        )?;
        let k = std::sync::Arc::new(Known { path, dir });
        *known = Some(k.clone());
        Ok(k)
    }

    /// `requested` as a directory under this root (see the module docs),
    /// made if missing; canonical.
    ///
    /// A request that fails under the known root (it may have been
    /// removed, renamed, or replaced by a symlink elsewhere) makes the root
    /// be resolved and opened again; the request is then confined again,
    /// under the root as it is now, and that answer stands.
    pub fn confine(&self, requested: &Path) -> Result<Canonical, WorkspaceError> {
        if requested
            .components()
            .any(|c| matches!(c, Component::ParentDir))
        {
            return Err(WorkspaceError::ParentDir);
        }
        let known = self.resolve(false)?;
        match confine_in(&known, requested) {
            Err(WorkspaceError::IsRoot) => Err(WorkspaceError::IsRoot),
            Err(_) => confine_in(&*self.resolve(true)?, requested),
            ok => ok,
        }
        .map(Canonical)
    }
}

/// [`Root::confine`] under `root` (`..` already refused).
fn confine_in(root: &Known, requested: &Path) -> Result<PathBuf, WorkspaceError> {
    let outside = |shown: &Path| WorkspaceError::Outside {
        path: shown.display().to_string(),
        root: root.path.display().to_string(),
    };
    let relative = if requested.is_absolute() {
        let resolved = requested
            .canonicalize()
            .map_err(|source| WorkspaceError::Unreadable {
                path: requested.display().to_string(),
                source,
            })?;
        resolved
            .strip_prefix(&root.path)
            .map_err(|_| outside(requested))?
            .to_path_buf()
    } else {
        requested.to_path_buf()
    };
    if relative
        .components()
        .all(|c| matches!(c, Component::CurDir))
    {
        return Err(WorkspaceError::IsRoot);
    }
    // Opened through the root's handle: cap-std resolves beneath it, so a
    // symlink planted under the root cannot lead outside. Missing (or not
    // openable): made, then opened.
    let opened = match root.dir.open_dir(&relative) {
        Ok(d) => d,
        Err(_) => {
            // Nothing is made through a handle on a root since renamed
            // away (the caller resolves the root again).
            if opened_path(&root.dir).is_some_and(|p| p != root.path) {
                return Err(outside(&root.path.join(&relative)));
            }
            root.dir
                .create_dir_all(&relative)
                .map_err(|source| WorkspaceError::Create {
                    path: relative.display().to_string(),
                    source,
                })?;
            root.dir
                .open_dir(&relative)
                .map_err(|_| outside(&root.path.join(&relative)))?
        }
    };
    let path = root.path.join(&relative);
    let resolved = match opened_path(&opened) {
        Some(p) => p,
        None => path
            .canonicalize()
            .map_err(|source| WorkspaceError::Unreadable {
                path: path.display().to_string(),
                source,
            })?,
    };
    // The handle's path: under the root as resolved, unless the root
    // was moved since (then the caller resolves it again).
    if !resolved.starts_with(&root.path) || resolved == root.path {
        return Err(outside(&path));
    }
    Ok(resolved)
}

/// The path of an opened directory, as the kernel names it (Linux:
/// `/proc/self/fd`); `None` where that is unavailable or the directory
/// was removed meanwhile.
fn opened_path(dir: &cap_std::fs::Dir) -> Option<PathBuf> {
    use std::os::fd::AsRawFd;
    let link = std::fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd())).ok()?;
    let removed = link.as_os_str().as_encoded_bytes().ends_with(b" (deleted)");
    (link.is_absolute() && !removed).then_some(link)
}
