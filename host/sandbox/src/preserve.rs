//! Before-images: the state of each path a call is about to change,
//! captured by the audited filesystem before the change happens.
//!
//! The host learns which paths a call touches from the guest's own
//! filesystem operations, not from the tool's input: the first
//! open-for-write, create, truncate, unlink, rmdir, mkdir, rename (both
//! ends), symlink or hard link of a path within a call hands its prior
//! state to the caller's [`Preserve`], which must store it durably before
//! returning. If it cannot, the operation is refused (the guest sees an
//! I/O error), so no change happens that could not be undone. This works
//! for any skill, not only the bundled file tools.
//!
//! The prior state is read through the descriptor's own cap-std directory
//! handle, so capturing it can never read outside the mount (a symlink
//! planted to `/etc/passwd` is recorded as a symlink, not followed).

use std::io::Read;
use std::path::Path;

/// Files larger than this are recorded by size only: undo says it cannot
/// restore them.
pub const MAX_PRESERVED_BYTES: u64 = 64 << 20;

/// What was at a path before a call changed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prior {
    Absent,
    File {
        bytes: Vec<u8>,
        mode: u32,
    },
    Dir {
        mode: u32,
    },
    Symlink {
        target: String,
    },
    /// A file too large to keep (`MAX_PRESERVED_BYTES`), or another kind
    /// (socket, device): its size and why it was not kept.
    NotKept {
        size: u64,
        reason: String,
    },
}

/// One path about to change: the mount's host directory, the path
/// relative to it (`/`-separated, normalised), and its prior state.
#[derive(Debug)]
pub struct Change<'a> {
    pub mount: &'a Path,
    pub path: &'a str,
    pub prior: Prior,
}

/// Where before-images go. Called on the call's own thread before the
/// change; an error refuses the change.
pub trait Preserve: Send + Sync + std::fmt::Debug {
    fn before(&self, change: Change<'_>) -> Result<(), String>;
}

/// `rel` (a guest path relative to a mount) with `.` and `..` resolved
/// lexically; `None` if it climbs out of the mount.
pub(crate) fn normalise(rel: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for p in rel.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

/// The prior state of `rel` under `dir` (a directory descriptor's handle).
pub(crate) fn capture(dir: &std::fs::File, rel: &str) -> std::io::Result<Prior> {
    read_state(&cap_std::fs::Dir::from_std_file(dir.try_clone()?), rel)
}

/// The state of `rel` under `dir`, read through the cap-std handle: a
/// symlink is reported as one, never followed, and nothing outside `dir`
/// is reachable.
pub fn read_state(dir: &cap_std::fs::Dir, rel: &str) -> std::io::Result<Prior> {
    use cap_std::fs::PermissionsExt;
    let rel = if rel.is_empty() { "." } else { rel };
    let meta = match dir.symlink_metadata(rel) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Prior::Absent),
        Err(e) => return Err(e),
    };
    let mode = meta.permissions().mode();
    let kind = meta.file_type();
    if kind.is_symlink() {
        let target = dir.read_link_contents(rel)?;
        return Ok(Prior::Symlink {
            target: target.to_string_lossy().into_owned(),
        });
    }
    if kind.is_dir() {
        return Ok(Prior::Dir { mode });
    }
    if !kind.is_file() {
        return Ok(Prior::NotKept {
            size: meta.len(),
            reason: "not a regular file".into(),
        });
    }
    if meta.len() > MAX_PRESERVED_BYTES {
        return Ok(Prior::NotKept {
            size: meta.len(),
            reason: format!("larger than {} MiB", MAX_PRESERVED_BYTES >> 20),
        });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    dir.open(rel)?.read_to_end(&mut bytes)?;
    Ok(Prior::File { bytes, mode })
}

/// Every entry under the directory `rel` (not following symlinks), each
/// handed to `each` with its path relative to `rel`, parents first; at
/// most 10,000 entries.
pub(crate) fn capture_tree(
    dir: &std::fs::File,
    rel: &str,
    each: &mut dyn FnMut(&str, Prior) -> Result<(), String>,
) -> Result<(), String> {
    const MAX_ENTRIES: usize = 10_000;
    let root = cap_std::fs::Dir::from_std_file(dir.try_clone().map_err(|e| e.to_string())?);
    let mut stack = vec![String::new()];
    let mut seen = 0usize;
    while let Some(sub) = stack.pop() {
        let at = if sub.is_empty() {
            rel.to_owned()
        } else {
            format!("{rel}/{sub}")
        };
        let entries = root
            .read_dir(&at)
            .map_err(|e| format!("listing {at}: {e}"))?;
        for e in entries {
            let e = e.map_err(|e| format!("listing {at}: {e}"))?;
            seen += 1;
            if seen > MAX_ENTRIES {
                return Err(format!("more than {MAX_ENTRIES} entries under {rel}"));
            }
            let name = e.file_name().to_string_lossy().into_owned();
            let child = if sub.is_empty() {
                name
            } else {
                format!("{sub}/{name}")
            };
            let prior = capture(dir, &format!("{rel}/{child}"))
                .map_err(|e| format!("reading {rel}/{child}: {e}"))?;
            let is_dir = matches!(prior, Prior::Dir { .. });
            each(&child, prior)?;
            if is_dir {
                stack.push(child);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalised_inside_the_mount() {
        assert_eq!(normalise("a/./b/../c").as_deref(), Some("a/c"));
        assert_eq!(normalise("./x.txt").as_deref(), Some("x.txt"));
        assert_eq!(normalise("a/../..").as_deref(), None);
    }

    #[test]
    fn capture_reads_through_the_handle_and_never_follows_symlinks() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "s3cret").unwrap();
        std::fs::write(root.path().join("a.txt"), "hello").unwrap();
        std::fs::create_dir(root.path().join("d")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("link"))
            .unwrap();
        let dir = std::fs::File::open(root.path()).unwrap();
        assert!(matches!(
            capture(&dir, "a.txt").unwrap(),
            Prior::File { bytes, .. } if bytes == b"hello"
        ));
        assert!(matches!(capture(&dir, "d").unwrap(), Prior::Dir { .. }));
        assert_eq!(capture(&dir, "none").unwrap(), Prior::Absent);
        assert!(matches!(
            capture(&dir, "link").unwrap(),
            Prior::Symlink { target } if target.ends_with("secret")
        ));
    }
}
