//! `wasi:filesystem` with an audit trail.
//!
//! Enforcement is wasmtime-wasi's: each mount is a cap-std directory handle,
//! so `..`, absolute paths and symlinks cannot resolve outside it, and a
//! read-only mount refuses every write, create, rename and remove. This layer
//! delegates every call to that implementation unchanged and only watches the
//! results: it remembers the guest path behind each descriptor and records a
//! [`Decision`] for every path operation that was refused (logged with
//! `warn!`) or that opened or changed something (logged with `debug!`).
//! When the caller asks for before-images, it also hands the prior state
//! of each path a call is about to change to the caller first (see
//! [`crate::preserve`]).

use crate::audit::{Capability, Decision, Decisions};
use crate::preserve::{Change, Preserve};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use wasmtime::component::{HasData, Resource};
use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemCtxView};
use wasmtime_wasi::p2::bindings::filesystem::preopens;
use wasmtime_wasi::p2::bindings::filesystem::types::{
    self, ErrorCode, HostDescriptor, HostDirectoryEntryStream,
};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, FsError, FsResult};

/// Marker for linking the audited filesystem.
pub(crate) struct AuditedFs;

impl HasData for AuditedFs {
    type Data<'a> = FsView<'a>;
}

/// What the audit layer keeps per store.
#[derive(Debug)]
pub(crate) struct FsAudit {
    pub plugin: Arc<str>,
    /// Guest path behind each live descriptor, at its resource rep (the
    /// resource table's index: small and dense, so no hashing).
    paths: Vec<Option<String>>,
    pub decisions: Decisions,
    /// Where before-images go, if the caller wants them.
    preserve: Option<Arc<dyn Preserve>>,
    /// The mounts, guest path and host directory (kept only when
    /// before-images are wanted: nothing else needs them).
    mounts: Vec<(String, PathBuf)>,
    /// Paths (`mount\0path`) whose prior state this call already handed
    /// over: only the first change of a path within a call is captured.
    preserved: HashSet<String>,
}

impl FsAudit {
    pub(crate) fn new(
        plugin: Arc<str>,
        decisions: Decisions,
        preserve: Option<Arc<dyn Preserve>>,
        mounts: Vec<(String, PathBuf)>,
    ) -> Self {
        Self {
            plugin,
            paths: Vec::new(),
            decisions,
            preserve,
            mounts,
            preserved: HashSet::new(),
        }
    }

    fn path(&self, rep: u32) -> Option<&str> {
        self.paths.get(rep as usize)?.as_deref()
    }

    fn set_path(&mut self, rep: u32, path: String) {
        let i = rep as usize;
        if self.paths.len() <= i {
            self.paths.resize(i + 1, None);
        }
        self.paths[i] = Some(path);
    }

    fn forget_path(&mut self, rep: u32) {
        if let Some(slot) = self.paths.get_mut(rep as usize) {
            *slot = None;
        }
    }
}

pub(crate) struct FsView<'a> {
    pub inner: WasiFilesystemCtxView<'a>,
    pub audit: &'a mut FsAudit,
}

fn is_denial(err: &FsError) -> bool {
    matches!(
        err.downcast_ref(),
        Some(ErrorCode::NotPermitted | ErrorCode::Access | ErrorCode::ReadOnly)
    )
}

fn describe_open(oflags: types::OpenFlags, flags: types::DescriptorFlags) -> String {
    let mut action = String::from(if flags.contains(types::DescriptorFlags::WRITE) {
        "open read-write"
    } else {
        "open read"
    });
    for (flag, name) in [
        (types::OpenFlags::CREATE, "+create"),
        (types::OpenFlags::TRUNCATE, "+truncate"),
        (types::OpenFlags::DIRECTORY, "+directory"),
    ] {
        if oflags.contains(flag) {
            action.push_str(name);
        }
    }
    action
}

impl FsView<'_> {
    /// Hands the prior state of `rel` (under the directory `fd`) to the
    /// call's [`Preserve`] before a change, once per path and call. A
    /// failure to preserve refuses the change (the guest sees an I/O
    /// error, the decision log says why).
    fn preserve(&mut self, fd: &Resource<Descriptor>, rel: &str) -> FsResult<()> {
        self.preserve_tree(fd, rel, false).map(drop)
    }

    /// [`Self::preserve`]; with `tree`, a directory's whole content too (the
    /// source of a rename takes its subtree along). Returns the subtree's
    /// paths, relative to `rel`.
    fn preserve_tree(
        &mut self,
        fd: &Resource<Descriptor>,
        rel: &str,
        tree: bool,
    ) -> FsResult<Vec<String>> {
        let mut subs = Vec::new();
        let Some(keeper) = self.audit.preserve.clone() else {
            return Ok(subs);
        };
        let guest = self.path_of(fd, rel);
        let Some((mount_guest, host)) = self
            .audit
            .mounts
            .iter()
            .filter(|(g, _)| {
                let g = g.trim_end_matches('/');
                guest == g || guest.starts_with(&format!("{g}/")) || g.is_empty()
            })
            .max_by_key(|(g, _)| g.len())
            .cloned()
        else {
            return Ok(subs); // not under a mount: the operation fails anyway
        };
        let within = &guest[mount_guest.trim_end_matches('/').len().min(guest.len())..];
        let Some(path) = crate::preserve::normalise(within) else {
            return Ok(subs);
        };
        if path.is_empty()
            || !self
                .audit
                .preserved
                .insert(format!("{mount_guest}\0{path}"))
        {
            return Ok(subs);
        }
        // Only a writable directory handle can change anything.
        let dir = match self.inner.table.get(fd) {
            Ok(Descriptor::Dir(d)) if matches!(d.perms, wasmtime_wasi::FsPerms::ReadWrite) => {
                d.dir.clone()
            }
            _ => return Ok(subs),
        };
        let kept = crate::preserve::capture(&dir, rel)
            .map_err(|e| format!("reading its prior state: {e}"))
            .and_then(|prior| {
                let is_dir = matches!(prior, crate::preserve::Prior::Dir { .. });
                keeper.before(Change {
                    mount: &host,
                    path: &path,
                    prior,
                })?;
                if tree && is_dir {
                    crate::preserve::capture_tree(&dir, rel, &mut |sub, prior| {
                        subs.push(sub.to_owned());
                        let full = format!("{path}/{sub}");
                        self.audit
                            .preserved
                            .insert(format!("{mount_guest}\0{full}"));
                        keeper.before(Change {
                            mount: &host,
                            path: &full,
                            prior,
                        })
                    })?;
                }
                Ok(())
            });
        if let Err(reason) = kept {
            tracing::warn!(
                plugin = %self.audit.plugin, capability = "fs", target = %guest,
                "change refused: its before-image could not be kept: {reason}"
            );
            self.audit.decisions.push(Decision {
                capability: Capability::Fs,
                action: "preserve".into(),
                target: guest,
                allowed: false,
                detail: Some(format!("the before-image could not be kept: {reason}")),
            });
            return Err(ErrorCode::Io.into());
        }
        Ok(subs)
    }

    fn path_of(&self, fd: &Resource<Descriptor>, rel: &str) -> String {
        let base = self.audit.path(fd.rep()).unwrap_or("?");
        let rel = rel.trim_start_matches("./");
        if rel.is_empty() || rel == "." {
            base.to_owned()
        } else if base.ends_with('/') {
            format!("{base}{rel}")
        } else {
            format!("{base}/{rel}")
        }
    }

    /// Records the outcome of a path operation. Denials are always recorded;
    /// successes only when `record_allowed` (opens and changes).
    fn note<T>(
        &mut self,
        action: &str,
        target: String,
        result: &FsResult<T>,
        record_allowed: bool,
    ) {
        let plugin = &self.audit.plugin;
        match result {
            Err(e) if is_denial(e) => {
                tracing::warn!(
                    plugin = %plugin, capability = "fs", action, target = %target,
                    decision = "denied", "filesystem access denied"
                );
                self.audit.decisions.push(Decision {
                    capability: Capability::Fs,
                    action: action.to_owned(),
                    target,
                    allowed: false,
                    detail: Some(match e.downcast_ref() {
                        Some(ErrorCode::ReadOnly) => "the mount is read-only".to_owned(),
                        Some(ErrorCode::Access | ErrorCode::NotPermitted) => {
                            "outside the mount, or not granted by the policy".to_owned()
                        }
                        _ => "refused".to_owned(),
                    }),
                });
            }
            Ok(_) if record_allowed => {
                tracing::debug!(
                    plugin = %plugin, capability = "fs", action, target = %target,
                    decision = "allowed", "filesystem access"
                );
                self.audit.decisions.push(Decision {
                    capability: Capability::Fs,
                    action: action.to_owned(),
                    target,
                    allowed: true,
                    detail: None,
                });
            }
            _ => {}
        }
    }
}

impl preopens::Host for FsView<'_> {
    fn get_directories(&mut self) -> wasmtime::Result<Vec<(Resource<Descriptor>, String)>> {
        let dirs = preopens::Host::get_directories(&mut self.inner)?;
        for (fd, name) in &dirs {
            self.audit.set_path(fd.rep(), name.clone());
        }
        Ok(dirs)
    }
}

impl types::Host for FsView<'_> {
    fn convert_error_code(&mut self, err: FsError) -> wasmtime::Result<ErrorCode> {
        types::Host::convert_error_code(&mut self.inner, err)
    }

    fn filesystem_error_code(
        &mut self,
        err: Resource<wasmtime::Error>,
    ) -> wasmtime::Result<Option<ErrorCode>> {
        types::Host::filesystem_error_code(&mut self.inner, err)
    }
}

impl HostDirectoryEntryStream for FsView<'_> {
    async fn read_directory_entry(
        &mut self,
        stream: Resource<types::DirectoryEntryStream>,
    ) -> FsResult<Option<types::DirectoryEntry>> {
        HostDirectoryEntryStream::read_directory_entry(&mut self.inner, stream).await
    }

    fn drop(&mut self, stream: Resource<types::DirectoryEntryStream>) -> wasmtime::Result<()> {
        HostDirectoryEntryStream::drop(&mut self.inner, stream)
    }
}

impl HostDescriptor for FsView<'_> {
    async fn advise(
        &mut self,
        fd: Resource<Descriptor>,
        offset: types::Filesize,
        len: types::Filesize,
        advice: types::Advice,
    ) -> FsResult<()> {
        HostDescriptor::advise(&mut self.inner, fd, offset, len, advice).await
    }

    async fn sync_data(&mut self, fd: Resource<Descriptor>) -> FsResult<()> {
        HostDescriptor::sync_data(&mut self.inner, fd).await
    }

    async fn get_flags(&mut self, fd: Resource<Descriptor>) -> FsResult<types::DescriptorFlags> {
        HostDescriptor::get_flags(&mut self.inner, fd).await
    }

    async fn get_type(&mut self, fd: Resource<Descriptor>) -> FsResult<types::DescriptorType> {
        HostDescriptor::get_type(&mut self.inner, fd).await
    }

    async fn set_size(&mut self, fd: Resource<Descriptor>, size: types::Filesize) -> FsResult<()> {
        let target = self.path_of(&fd, "");
        let r = HostDescriptor::set_size(&mut self.inner, fd, size).await;
        self.note("truncate", target, &r, false);
        r
    }

    async fn set_times(
        &mut self,
        fd: Resource<Descriptor>,
        atim: types::NewTimestamp,
        mtim: types::NewTimestamp,
    ) -> FsResult<()> {
        HostDescriptor::set_times(&mut self.inner, fd, atim, mtim).await
    }

    async fn read(
        &mut self,
        fd: Resource<Descriptor>,
        len: types::Filesize,
        offset: types::Filesize,
    ) -> FsResult<(Vec<u8>, bool)> {
        HostDescriptor::read(&mut self.inner, fd, len, offset).await
    }

    async fn write(
        &mut self,
        fd: Resource<Descriptor>,
        buf: Vec<u8>,
        offset: types::Filesize,
    ) -> FsResult<types::Filesize> {
        HostDescriptor::write(&mut self.inner, fd, buf, offset).await
    }

    async fn read_directory(
        &mut self,
        fd: Resource<Descriptor>,
    ) -> FsResult<Resource<types::DirectoryEntryStream>> {
        HostDescriptor::read_directory(&mut self.inner, fd).await
    }

    async fn sync(&mut self, fd: Resource<Descriptor>) -> FsResult<()> {
        HostDescriptor::sync(&mut self.inner, fd).await
    }

    async fn create_directory_at(
        &mut self,
        fd: Resource<Descriptor>,
        path: String,
    ) -> FsResult<()> {
        let target = self.path_of(&fd, &path);
        self.preserve(&fd, &path)?;
        let r = HostDescriptor::create_directory_at(&mut self.inner, fd, path).await;
        self.note("mkdir", target, &r, true);
        r
    }

    async fn stat(&mut self, fd: Resource<Descriptor>) -> FsResult<types::DescriptorStat> {
        HostDescriptor::stat(&mut self.inner, fd).await
    }

    async fn stat_at(
        &mut self,
        fd: Resource<Descriptor>,
        path_flags: types::PathFlags,
        path: String,
    ) -> FsResult<types::DescriptorStat> {
        let target = self.path_of(&fd, &path);
        let r = HostDescriptor::stat_at(&mut self.inner, fd, path_flags, path).await;
        self.note("stat", target, &r, false);
        r
    }

    async fn set_times_at(
        &mut self,
        fd: Resource<Descriptor>,
        path_flags: types::PathFlags,
        path: String,
        atim: types::NewTimestamp,
        mtim: types::NewTimestamp,
    ) -> FsResult<()> {
        let target = self.path_of(&fd, &path);
        let r =
            HostDescriptor::set_times_at(&mut self.inner, fd, path_flags, path, atim, mtim).await;
        self.note("set-times", target, &r, false);
        r
    }

    async fn link_at(
        &mut self,
        fd: Resource<Descriptor>,
        old_path_flags: types::PathFlags,
        old_path: String,
        new_descriptor: Resource<Descriptor>,
        new_path: String,
    ) -> FsResult<()> {
        let target = format!(
            "{} -> {}",
            self.path_of(&fd, &old_path),
            self.path_of(&new_descriptor, &new_path)
        );
        self.preserve(&new_descriptor, &new_path)?;
        let r = HostDescriptor::link_at(
            &mut self.inner,
            fd,
            old_path_flags,
            old_path,
            new_descriptor,
            new_path,
        )
        .await;
        self.note("hardlink", target, &r, true);
        r
    }

    async fn open_at(
        &mut self,
        fd: Resource<Descriptor>,
        path_flags: types::PathFlags,
        path: String,
        oflags: types::OpenFlags,
        flags: types::DescriptorFlags,
    ) -> FsResult<Resource<Descriptor>> {
        let target = self.path_of(&fd, &path);
        let action = describe_open(oflags, flags);
        if flags.contains(types::DescriptorFlags::WRITE)
            || flags.contains(types::DescriptorFlags::MUTATE_DIRECTORY)
            || oflags.contains(types::OpenFlags::CREATE)
            || oflags.contains(types::OpenFlags::TRUNCATE)
        {
            self.preserve(&fd, &path)?;
        }
        let r = HostDescriptor::open_at(&mut self.inner, fd, path_flags, path, oflags, flags).await;
        self.note(&action, target.clone(), &r, true);
        if let Ok(new) = &r {
            self.audit.set_path(new.rep(), target);
        }
        r
    }

    fn drop(&mut self, fd: Resource<Descriptor>) -> wasmtime::Result<()> {
        self.audit.forget_path(fd.rep());
        HostDescriptor::drop(&mut self.inner, fd)
    }

    async fn readlink_at(&mut self, fd: Resource<Descriptor>, path: String) -> FsResult<String> {
        let target = self.path_of(&fd, &path);
        let r = HostDescriptor::readlink_at(&mut self.inner, fd, path).await;
        self.note("readlink", target, &r, false);
        r
    }

    async fn remove_directory_at(
        &mut self,
        fd: Resource<Descriptor>,
        path: String,
    ) -> FsResult<()> {
        let target = self.path_of(&fd, &path);
        self.preserve(&fd, &path)?;
        let r = HostDescriptor::remove_directory_at(&mut self.inner, fd, path).await;
        self.note("rmdir", target, &r, true);
        r
    }

    async fn rename_at(
        &mut self,
        fd: Resource<Descriptor>,
        old_path: String,
        new_fd: Resource<Descriptor>,
        new_path: String,
    ) -> FsResult<()> {
        let target = format!(
            "{} -> {}",
            self.path_of(&fd, &old_path),
            self.path_of(&new_fd, &new_path)
        );
        self.preserve(&new_fd, &new_path)?;
        // The subtree lands under the new name: those paths are the
        // task's too (absent before), or undo would take them for someone
        // else's files in a directory it made.
        for sub in self.preserve_tree(&fd, &old_path, true)? {
            self.preserve(&new_fd, &format!("{new_path}/{sub}"))?;
        }
        let r = HostDescriptor::rename_at(&mut self.inner, fd, old_path, new_fd, new_path).await;
        self.note("rename", target, &r, true);
        r
    }

    async fn symlink_at(
        &mut self,
        fd: Resource<Descriptor>,
        src_path: String,
        dest_path: String,
    ) -> FsResult<()> {
        let target = format!("{} (-> {src_path})", self.path_of(&fd, &dest_path));
        self.preserve(&fd, &dest_path)?;
        let r = HostDescriptor::symlink_at(&mut self.inner, fd, src_path, dest_path).await;
        self.note("symlink", target, &r, true);
        r
    }

    async fn unlink_file_at(&mut self, fd: Resource<Descriptor>, path: String) -> FsResult<()> {
        let target = self.path_of(&fd, &path);
        self.preserve(&fd, &path)?;
        let r = HostDescriptor::unlink_file_at(&mut self.inner, fd, path).await;
        self.note("unlink", target, &r, true);
        r
    }

    fn read_via_stream(
        &mut self,
        fd: Resource<Descriptor>,
        offset: types::Filesize,
    ) -> FsResult<Resource<DynInputStream>> {
        HostDescriptor::read_via_stream(&mut self.inner, fd, offset)
    }

    fn write_via_stream(
        &mut self,
        fd: Resource<Descriptor>,
        offset: types::Filesize,
    ) -> FsResult<Resource<DynOutputStream>> {
        HostDescriptor::write_via_stream(&mut self.inner, fd, offset)
    }

    fn append_via_stream(
        &mut self,
        fd: Resource<Descriptor>,
    ) -> FsResult<Resource<DynOutputStream>> {
        HostDescriptor::append_via_stream(&mut self.inner, fd)
    }

    async fn is_same_object(
        &mut self,
        a: Resource<Descriptor>,
        b: Resource<Descriptor>,
    ) -> wasmtime::Result<bool> {
        HostDescriptor::is_same_object(&mut self.inner, a, b).await
    }

    async fn metadata_hash(
        &mut self,
        fd: Resource<Descriptor>,
    ) -> FsResult<types::MetadataHashValue> {
        HostDescriptor::metadata_hash(&mut self.inner, fd).await
    }

    async fn metadata_hash_at(
        &mut self,
        fd: Resource<Descriptor>,
        path_flags: types::PathFlags,
        path: String,
    ) -> FsResult<types::MetadataHashValue> {
        let target = self.path_of(&fd, &path);
        let r = HostDescriptor::metadata_hash_at(&mut self.inner, fd, path_flags, path).await;
        self.note("stat", target, &r, false);
        r
    }
}
