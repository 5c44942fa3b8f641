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

/// A workspace root (the server's). Its canonical form is found on first
/// use (the root is made if missing) and again only when the root cannot
/// be opened (it was removed or replaced): a server confining a workspace
/// per request does not resolve the root each time.
#[derive(Debug)]
pub struct Root {
    given: PathBuf,
    canonical: std::sync::Mutex<Option<PathBuf>>,
}

impl Root {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            given: path.into(),
            canonical: std::sync::Mutex::new(None),
        }
    }

    /// The root as configured.
    pub fn path(&self) -> &Path {
        &self.given
    }

    fn resolve(&self, again: bool) -> Result<PathBuf, WorkspaceError> {
        let mut known = self.canonical.lock().unwrap_or_else(|p| p.into_inner());
        if !again && let Some(c) = &*known {
            return Ok(c.clone());
        }
        let root_error = |source| WorkspaceError::Root {
            path: self.given.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&self.given).map_err(root_error)?;
        let c = self.given.canonicalize().map_err(root_error)?;
        *known = Some(c.clone());
        Ok(c)
    }

    /// `requested` as a directory under this root (see the module docs),
    /// made if missing; canonical.
    ///
    /// A root that cannot be opened, or a workspace that resolves outside
    /// the known root, makes the root be resolved again (it may have been
    /// removed, or replaced by a symlink elsewhere); the request is then
    /// confined again, under the root as it is now.
    pub fn confine(&self, requested: &Path) -> Result<Canonical, WorkspaceError> {
        let known = self.resolve(false)?;
        match confine_in(&known, requested) {
            // Made again if it was removed.
            Err(WorkspaceError::Root { .. }) => confine_in(&self.resolve(true)?, requested),
            Err(e @ WorkspaceError::Outside { .. }) => {
                let now = self.resolve(true)?;
                if now == known {
                    return Err(e);
                }
                confine_in(&now, requested)
            }
            other => other,
        }
        .map(Canonical)
    }
}

/// [`Root::confine`] under `root`, already canonical.
fn confine_in(root: &Path, requested: &Path) -> Result<PathBuf, WorkspaceError> {
    let root_error = |source| WorkspaceError::Root {
        path: root.display().to_string(),
        source,
    };
    let outside = |shown: &Path| WorkspaceError::Outside {
        path: shown.display().to_string(),
        root: root.display().to_string(),
    };
    if requested
        .components()
        .any(|c| matches!(c, Component::ParentDir))
    {
        return Err(WorkspaceError::ParentDir);
    }
    let relative = if requested.is_absolute() {
        let resolved = requested
            .canonicalize()
            .map_err(|source| WorkspaceError::Unreadable {
                path: requested.display().to_string(),
                source,
            })?;
        resolved
            .strip_prefix(root)
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
    let dir = cap_std::fs::Dir::open_ambient_dir(root, cap_std::ambient_authority())
        .map_err(root_error)?;
    dir.create_dir_all(&relative)
        .map_err(|source| WorkspaceError::Create {
            path: relative.display().to_string(),
            source,
        })?;
    let path = root.join(&relative);
    let resolved = path
        .canonicalize()
        .map_err(|source| WorkspaceError::Unreadable {
            path: path.display().to_string(),
            source,
        })?;
    if !resolved.starts_with(root) || resolved == root || !resolved.is_dir() {
        return Err(outside(&path));
    }
    Ok(resolved)
}
