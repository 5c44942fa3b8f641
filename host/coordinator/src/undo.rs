//! What a task changed, and giving it back: before-images, `task diff`,
//! `task undo`.
//!
//! Before a tool that may change the workspace runs, the sandbox hands the
//! prior state of every path the call is about to touch to a [`Keeper`]
//! (see `camina_sandbox::preserve`): the content goes to a
//! content-addressed store (`<home>/undo/blobs/<sha256>`), the state to the
//! task's image log (`<home>/undo/tasks/<task>.jsonl`, one JSON line per
//! entry, fsynced), before the change is allowed. After the call, the state
//! each of those paths was left in is logged the same way. A path's first
//! `before` is its state before the task; its last `after` is what the task
//! left.
//!
//! Undo restores every path to its state before the task. A path whose
//! current state is neither what the task left nor already the state before
//! it was changed by someone else since: undo refuses before touching
//! anything and names each one (`--force` restores anyway). Every write
//! goes through a cap-std handle on the workspace, so no path outside it
//! can be written, whatever symlinks were planted since. Undo is logged
//! (`undone` lines and a task record) and idempotent: a path already
//! restored is skipped, so an undo cut short is finished by running it
//! again.

use camina_policy::Digest;
use camina_sandbox::{Change, Preserve, Prior};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A path's state, as logged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum State {
    Absent,
    File {
        digest: Digest,
        size: u64,
        mode: u32,
    },
    Dir {
        mode: u32,
    },
    Symlink {
        target: String,
    },
    /// Too large or not a regular file: known, not kept.
    NotKept {
        size: u64,
        reason: String,
    },
}

impl State {
    /// Same content and kind (modes aside: a restored mode may differ by
    /// umask, and a diff is about content).
    fn same(&self, other: &State) -> bool {
        match (self, other) {
            (State::File { digest: a, .. }, State::File { digest: b, .. }) => a == b,
            (State::Dir { .. }, State::Dir { .. }) => true,
            (a, b) => a == b,
        }
    }

    fn exists(&self) -> bool {
        !matches!(self, State::Absent)
    }
}

/// One line of a task's image log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// `before`, `after` or `undone`.
    pub at: String,
    /// The journal step of the call (`step/0/turn/1/call/0`), or `undo`.
    pub step: String,
    /// Relative to the workspace, `/`-separated.
    pub path: String,
    pub state: State,
}

/// Where a home keeps before-images.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    pub fn new(home: &Path) -> Self {
        Self {
            root: crate::home::Home::new(home).undo(),
        }
    }

    fn log_path(&self, task: &str) -> PathBuf {
        self.root.join("tasks").join(format!("{task}.jsonl"))
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs").join(digest.hex())
    }

    /// Keeps `bytes` (once), durably; returns their digest.
    fn put(&self, bytes: &[u8]) -> std::io::Result<Digest> {
        let digest = Digest::of(bytes);
        let path = self.blob_path(&digest);
        if path.exists() {
            return Ok(digest);
        }
        let dir = path.parent().unwrap_or(&self.root);
        std::fs::create_dir_all(dir)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        tmp.write_all(bytes)?;
        tmp.as_file().sync_all()?;
        tmp.persist(&path).map_err(|e| e.error)?;
        Ok(digest)
    }

    /// A kept content, checked against its digest.
    pub fn get(&self, digest: &Digest) -> std::io::Result<Vec<u8>> {
        let bytes = std::fs::read(self.blob_path(digest))?;
        let got = Digest::of(&bytes);
        if got != *digest {
            return Err(std::io::Error::other(format!(
                "kept content {digest} is damaged (it hashes to {got})"
            )));
        }
        Ok(bytes)
    }

    /// Appends entries to a task's log and syncs it.
    pub fn log(&self, task: &str, entries: &[Entry]) -> std::io::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let path = self.log_path(task);
        std::fs::create_dir_all(path.parent().unwrap_or(&self.root))?;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        let mut text = String::new();
        for e in entries {
            text.push_str(&serde_json::to_string(e).map_err(std::io::Error::other)?);
            text.push('\n');
        }
        f.write_all(text.as_bytes())?;
        f.sync_data()
    }

    /// A task's log; empty when it changed nothing. A torn last line (a
    /// crash mid-append) is ignored.
    pub fn entries(&self, task: &str) -> std::io::Result<Vec<Entry>> {
        let text = match std::fs::read_to_string(self.log_path(task)) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }

    /// The state of `prior` without keeping its content.
    fn peek(prior: Prior) -> State {
        match prior {
            Prior::File { bytes, mode } => State::File {
                size: bytes.len() as u64,
                digest: Digest::of(&bytes),
                mode,
            },
            Prior::Absent => State::Absent,
            Prior::Dir { mode } => State::Dir { mode },
            Prior::Symlink { target } => State::Symlink { target },
            Prior::NotKept { size, reason } => State::NotKept { size, reason },
        }
    }

    /// Drops the images of tasks whose log is older than `max_age`, then of
    /// the oldest tasks until the kept contents fit `max_bytes`; each such
    /// log is replaced by a `pruned` line saying when and why, so `undo`
    /// can say so. Contents no remaining log refers to are deleted.
    /// Returns the tasks pruned.
    pub fn prune(
        &self,
        max_age: Option<std::time::Duration>,
        max_bytes: Option<u64>,
    ) -> std::io::Result<Vec<String>> {
        let dir = self.root.join("tasks");
        let mut logs: Vec<(std::time::SystemTime, String)> = Vec::new();
        match std::fs::read_dir(&dir) {
            Ok(entries) => {
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let Some(task) = name.strip_suffix(".jsonl") else {
                        continue;
                    };
                    let modified = e.metadata()?.modified()?;
                    logs.push((modified, task.to_owned()));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        }
        logs.sort();
        let now = std::time::SystemTime::now();
        let mut pruned = Vec::new();
        let mut live: Vec<String> = Vec::new();
        for (modified, task) in logs {
            let entries = self.entries(&task)?;
            if entries.iter().any(|e| e.at == "pruned") {
                continue;
            }
            let old =
                max_age.is_some_and(|age| now.duration_since(modified).unwrap_or_default() > age);
            if old {
                self.tombstone(&task, "older than the configured keep_undo")?;
                pruned.push(task);
            } else {
                live.push(task);
            }
        }
        if let Some(cap) = max_bytes {
            // Oldest first, until what is kept fits.
            while self.kept_bytes(&live)? > cap && !live.is_empty() {
                let task = live.remove(0);
                self.tombstone(&task, "over the configured max_undo_mib")?;
                pruned.push(task);
            }
        }
        if !pruned.is_empty() {
            self.collect_garbage(&live)?;
        }
        Ok(pruned)
    }

    fn tombstone(&self, task: &str, why: &str) -> std::io::Result<()> {
        let line = Entry {
            at: "pruned".into(),
            step: format!(
                "{why}; pruned at {}",
                humantime::format_rfc3339_seconds(std::time::SystemTime::now())
            ),
            path: String::new(),
            state: State::Absent,
        };
        let path = self.log_path(task);
        let mut tmp = tempfile::NamedTempFile::new_in(path.parent().unwrap_or(&self.root))?;
        tmp.write_all(
            format!(
                "{}\n",
                serde_json::to_string(&line).map_err(std::io::Error::other)?
            )
            .as_bytes(),
        )?;
        tmp.as_file().sync_all()?;
        tmp.persist(&path).map_err(|e| e.error)?;
        Ok(())
    }

    /// The digests the logs of `tasks` refer to.
    fn referenced(&self, tasks: &[String]) -> std::io::Result<std::collections::HashSet<String>> {
        let mut digests = std::collections::HashSet::new();
        for t in tasks {
            for e in self.entries(t)? {
                if let State::File { digest, .. } = e.state {
                    digests.insert(digest.hex().to_owned());
                }
            }
        }
        Ok(digests)
    }

    fn kept_bytes(&self, tasks: &[String]) -> std::io::Result<u64> {
        let mut total = 0;
        for d in self.referenced(tasks)? {
            total += std::fs::metadata(self.root.join("blobs").join(d)).map_or(0, |m| m.len());
        }
        Ok(total)
    }

    fn collect_garbage(&self, live: &[String]) -> std::io::Result<()> {
        let keep = self.referenced(live)?;
        let Ok(entries) = std::fs::read_dir(self.root.join("blobs")) else {
            return Ok(());
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name) {
                std::fs::remove_file(e.path())?;
            }
        }
        Ok(())
    }

    fn state_of(&self, prior: Prior) -> std::io::Result<State> {
        Ok(match prior {
            Prior::File { bytes, mode } => State::File {
                size: bytes.len() as u64,
                digest: self.put(&bytes)?,
                mode,
            },
            other => Self::peek(other),
        })
    }
}

/// The [`Preserve`] of one tool call: keeps each prior state of a path in
/// the task's workspace, and remembers the paths for the `after` entries.
#[derive(Debug)]
pub struct Keeper {
    store: Store,
    task: String,
    step: String,
    workspace: PathBuf,
    /// The workspace as the caller named it: a `{workspace}` mount's host
    /// path is that form (the sandbox does not canonicalise it per call).
    given: PathBuf,
    touched: Mutex<Vec<String>>,
}

impl Keeper {
    pub fn new(store: Store, task: &str, step: &str, workspace: &Path) -> Self {
        Self {
            store,
            task: task.to_owned(),
            step: step.to_owned(),
            workspace: workspace
                .canonicalize()
                .unwrap_or_else(|_| workspace.to_path_buf()),
            given: std::path::absolute(workspace).unwrap_or_else(|_| workspace.to_path_buf()),
            touched: Mutex::new(Vec::new()),
        }
    }

    /// Logs the state each touched path was left in (after the call).
    pub fn after(&self) -> std::io::Result<()> {
        let touched = std::mem::take(&mut *self.touched.lock().unwrap_or_else(|p| p.into_inner()));
        if touched.is_empty() {
            return Ok(());
        }
        let root =
            cap_std::fs::Dir::open_ambient_dir(&self.workspace, cap_std::ambient_authority())?;
        let mut entries = Vec::new();
        for path in touched {
            let state = self.store.state_of(current(&root, &path)?)?;
            entries.push(Entry {
                at: "after".into(),
                step: self.step.clone(),
                path,
                state,
            });
        }
        self.store.log(&self.task, &entries)
    }
}

impl Preserve for Keeper {
    fn before(&self, change: Change<'_>) -> Result<(), String> {
        // A mount outside the workspace is not the task's to undo.
        let Some(under) = [&self.workspace, &self.given]
            .into_iter()
            .find_map(|ws| change.mount.strip_prefix(ws).ok())
        else {
            return Ok(());
        };
        let mut path = under.to_string_lossy().replace('\\', "/");
        if !path.is_empty() {
            path.push('/');
        }
        path.push_str(change.path);
        let state = self
            .store
            .state_of(change.prior)
            .map_err(|e| format!("keeping the content: {e}"))?;
        self.store
            .log(
                &self.task,
                &[Entry {
                    at: "before".into(),
                    step: self.step.clone(),
                    path: path.clone(),
                    state,
                }],
            )
            .map_err(|e| format!("writing the image log: {e}"))?;
        self.touched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(path);
        Ok(())
    }
}

/// A path's state now, read through the workspace handle
/// (`camina_sandbox::preserve::read_state`); a path reached through a
/// symlink that leads out of the workspace (cap-std refuses to follow it)
/// is not the task's file, whatever is there.
fn current(root: &cap_std::fs::Dir, path: &str) -> std::io::Result<Prior> {
    match camina_sandbox::preserve::read_state(root, path) {
        // A parent that is now a file: not there.
        Err(e) if e.raw_os_error() == Some(20) => Ok(Prior::Absent),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Ok(Prior::NotKept {
            size: 0,
            reason: "reached through a symlink leading outside the workspace".into(),
        }),
        other => other,
    }
}

/// What a task did to one path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PathChange {
    pub path: String,
    /// `created`, `changed`, `deleted`, or `moved` (with `from`).
    pub change: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    pub before: State,
    pub after: State,
    /// A unified diff for text files.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
    /// Lines added and removed (text files).
    pub added: usize,
    pub removed: usize,
}

/// Every path's first `before` and last `after`, in the order first
/// touched.
fn spans(entries: &[Entry]) -> Vec<(String, State, Option<State>)> {
    let mut out: Vec<(String, State, Option<State>)> = Vec::new();
    for e in entries {
        match e.at.as_str() {
            "before" if !out.iter().any(|(p, _, _)| *p == e.path) => {
                out.push((e.path.clone(), e.state.clone(), None));
            }
            "after" => {
                if let Some(s) = out.iter_mut().find(|(p, _, _)| *p == e.path) {
                    s.2 = Some(e.state.clone());
                }
            }
            _ => {}
        }
    }
    out
}

/// For each call (its journal step), the paths it changed that `undo`
/// would give back; empty when the images were pruned.
pub fn undoable(entries: &[Entry]) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut out: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    if pruned(entries).is_some() {
        return out;
    }
    for b in entries.iter().filter(|e| e.at == "before") {
        let after = entries
            .iter()
            .find(|e| e.at == "after" && e.step == b.step && e.path == b.path);
        if after.is_none_or(|a| !a.state.same(&b.state)) {
            let paths = out.entry(b.step.clone()).or_default();
            if !paths.contains(&b.path) {
                paths.push(b.path.clone());
            }
        }
    }
    out
}

/// Why a task's images are gone, if they were pruned.
fn pruned(entries: &[Entry]) -> Option<String> {
    entries
        .iter()
        .find(|e| e.at == "pruned")
        .map(|e| e.step.clone())
}

/// What the task changed (paths it left as they were are not listed).
pub fn diff(store: &Store, task: &str, workspace: &Path) -> Result<Vec<PathChange>, UndoError> {
    let entries = store.entries(task)?;
    if let Some(why) = pruned(&entries) {
        return Err(UndoError::Pruned(why));
    }
    let root = cap_std::fs::Dir::open_ambient_dir(workspace, cap_std::ambient_authority()).ok();
    let mut changes: Vec<PathChange> = Vec::new();
    for (path, before, after) in spans(&entries) {
        // No `after` (the process died in the call): the state now.
        let after = match after {
            Some(a) => a,
            None => match &root {
                Some(r) => store.state_of(current(r, &path)?)?,
                None => State::Absent,
            },
        };
        if before.same(&after) {
            continue;
        }
        let change = match (before.exists(), after.exists()) {
            (false, true) => "created",
            (true, false) => "deleted",
            _ => "changed",
        };
        let (diff, added, removed) = text_diff(store, &path, &before, &after);
        changes.push(PathChange {
            path,
            change: change.into(),
            from: None,
            before,
            after,
            diff,
            added,
            removed,
        });
    }
    // A file deleted and one created with the same content: a move.
    let mut k = 0;
    while k < changes.len() {
        if changes[k].change == "created"
            && let State::File { digest, .. } = &changes[k].after
            && let Some(j) = changes.iter().position(|c| {
                c.change == "deleted"
                    && matches!(&c.before, State::File { digest: d, .. } if d == digest)
            })
        {
            let from = changes.remove(j);
            let k2 = if j < k { k - 1 } else { k };
            let c = &mut changes[k2];
            c.change = "moved".into();
            c.from = Some(from.path);
            c.before = from.before;
            c.diff = None;
            c.added = 0;
            c.removed = 0;
            k = k2 + 1;
        } else {
            k += 1;
        }
    }
    Ok(changes)
}

fn text_diff(
    store: &Store,
    path: &str,
    before: &State,
    after: &State,
) -> (Option<String>, usize, usize) {
    let text = |s: &State| -> Option<String> {
        match s {
            State::Absent | State::Dir { .. } => Some(String::new()),
            State::File { digest, .. } => String::from_utf8(store.get(digest).ok()?).ok(),
            _ => None,
        }
    };
    let file = |s: &State| matches!(s, State::File { .. } | State::Absent);
    if !(file(before) && file(after)) {
        return (None, 0, 0);
    }
    let (Some(old), Some(new)) = (text(before), text(after)) else {
        return (None, 0, 0);
    };
    let d = similar::TextDiff::from_lines(&old, &new);
    let (mut added, mut removed) = (0, 0);
    for c in d.iter_all_changes() {
        match c.tag() {
            similar::ChangeTag::Insert => added += 1,
            similar::ChangeTag::Delete => removed += 1,
            similar::ChangeTag::Equal => {}
        }
    }
    let a = if before.exists() {
        format!("a/{path}")
    } else {
        "/dev/null".into()
    };
    let b = if after.exists() {
        format!("b/{path}")
    } else {
        "/dev/null".into()
    };
    let text = d
        .unified_diff()
        .context_radius(3)
        .header(&a, &b)
        .to_string();
    (Some(text), added, removed)
}

/// How an undo went (or would go, with `dry_run`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UndoReport {
    /// Paths restored (or to restore), with what was done.
    pub restored: Vec<(String, String)>,
    /// Paths already as they were before the task.
    pub already: Vec<String>,
    /// Paths changed since the task (restored only with `force`).
    pub conflicts: Vec<String>,
    /// Paths that cannot be restored (content not kept).
    pub lost: Vec<String>,
    pub dry_run: bool,
}

/// Why an undo did not run.
#[derive(Debug, thiserror::Error)]
pub enum UndoError {
    #[error(
        "these paths changed after the task, so undo would lose those changes: {}; nothing \
         was restored (use --force to restore them anyway)",
        .0.join(", ")
    )]
    ChangedSince(Vec<String>),
    #[error("its before-images were pruned ({0}), so its changes can no longer be undone")]
    Pruned(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Restores every path the task touched to its state before the task.
pub fn undo(
    store: &Store,
    task: &str,
    workspace: &Path,
    force: bool,
    dry_run: bool,
) -> Result<UndoReport, UndoError> {
    let entries = store.entries(task)?;
    if let Some(why) = pruned(&entries) {
        return Err(UndoError::Pruned(why));
    }
    let root = cap_std::fs::Dir::open_ambient_dir(workspace, cap_std::ambient_authority())?;
    let mut report = UndoReport {
        dry_run,
        ..Default::default()
    };
    let spans = spans(&entries);
    let touched: std::collections::HashSet<&str> =
        spans.iter().map(|(p, _, _)| p.as_str()).collect();
    let mut todo: Vec<(String, State)> = Vec::new();
    for (path, before, after) in spans.iter().cloned() {
        // A restore cut short (a crash) may have left its temporary copy.
        if !dry_run {
            let tmp = format!("{path}.camina-undo");
            if root
                .symlink_metadata(&tmp)
                .is_ok_and(|m| m.file_type().is_file())
            {
                root.remove_file(&tmp)?;
            }
        }
        let now = Store::peek(current(&root, &path)?);
        if now.same(&before) {
            // A path the task left as it found it (a skill's temporary
            // file) is not news.
            if !after.as_ref().is_some_and(|a| a.same(&before)) {
                report.already.push(path);
            }
            continue;
        }
        if let State::NotKept { .. } = before {
            report.lost.push(path);
            continue;
        }
        let left = after.as_ref().is_none_or(|a| a.same(&now));
        // A directory that goes must hold only what the task made: a file
        // put in it since is someone else's.
        let foreign = matches!(now, State::Dir { .. })
            && !matches!(before, State::Dir { .. })
            && holds_other_than(&root, &path, &touched);
        if !left || foreign {
            report.conflicts.push(path.clone());
        }
        todo.push((path, before));
    }
    if !report.conflicts.is_empty() && !force {
        return Err(UndoError::ChangedSince(report.conflicts));
    }
    // Removals first (files, then directories deepest first), then
    // directories (shallowest first), then files and links.
    let depth = |p: &str| p.matches('/').count();
    let mut removals: Vec<&(String, State)> = todo.iter().filter(|(_, b)| !b.exists()).collect();
    removals.sort_by_key(|(p, _)| std::cmp::Reverse(depth(p)));
    let mut dirs: Vec<&(String, State)> = todo
        .iter()
        .filter(|(_, b)| matches!(b, State::Dir { .. }))
        .collect();
    dirs.sort_by_key(|(p, _)| depth(p));
    let rest: Vec<&(String, State)> = todo
        .iter()
        .filter(|(_, b)| matches!(b, State::File { .. } | State::Symlink { .. }))
        .collect();
    let mut done = Vec::new();
    for (path, state) in removals.into_iter().chain(dirs).chain(rest) {
        let what = restore(store, &root, path, state, dry_run)?;
        report.restored.push((path.clone(), what));
        done.push(Entry {
            at: "undone".into(),
            step: "undo".into(),
            path: path.clone(),
            state: state.clone(),
        });
    }
    if !dry_run {
        store.log(task, &done)?;
    }
    Ok(report)
}

/// Whether the directory `dir` holds (at any depth) an entry that is not
/// one of the task's paths; unreadable counts as yes.
fn holds_other_than(
    root: &cap_std::fs::Dir,
    dir: &str,
    touched: &std::collections::HashSet<&str>,
) -> bool {
    let mut stack = vec![dir.to_owned()];
    let mut seen = 0usize;
    while let Some(d) = stack.pop() {
        let Ok(entries) = root.read_dir(&d) else {
            return true;
        };
        for e in entries {
            let Ok(e) = e else { return true };
            seen += 1;
            if seen > 100_000 {
                return true;
            }
            let child = format!("{d}/{}", e.file_name().to_string_lossy());
            if !touched.contains(child.as_str()) && !child.ends_with(".camina-undo") {
                return true;
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(child);
            }
        }
    }
    false
}

/// Removes every directory of `path` (not `path` itself) that is now a
/// symlink: planted after the task, it would lead the restore somewhere
/// else. The link goes, never what it points at.
fn unlink_symlinked_parents(root: &cap_std::fs::Dir, path: &str) -> std::io::Result<()> {
    let parts: Vec<&str> = path.split('/').collect();
    for k in 1..parts.len() {
        let prefix = parts[..k].join("/");
        if root
            .symlink_metadata(&prefix)
            .is_ok_and(|m| m.file_type().is_symlink())
        {
            root.remove_file(&prefix)?;
        }
    }
    Ok(())
}

/// Puts `state` back at `path`; says what it did.
fn restore(
    store: &Store,
    root: &cap_std::fs::Dir,
    path: &str,
    state: &State,
    dry_run: bool,
) -> std::io::Result<String> {
    use cap_std::fs::PermissionsExt;
    let now = root.symlink_metadata(path).ok();
    // Whatever is there now goes first, unless it is the directory wanted.
    let clear = |dry: bool| -> std::io::Result<()> {
        if dry {
            return Ok(());
        }
        match &now {
            Some(m) if m.is_dir() => root.remove_dir_all(path),
            Some(_) => root.remove_file(path),
            None => Ok(()),
        }
    };
    if !matches!(state, State::Absent) && !dry_run {
        unlink_symlinked_parents(root, path)?;
    }
    match state {
        State::Absent => {
            clear(dry_run)?;
            Ok("removed".into())
        }
        State::Dir { mode } => {
            if now.as_ref().is_some_and(|m| m.is_dir()) {
                return Ok("directory kept".into());
            }
            clear(dry_run)?;
            if !dry_run {
                root.create_dir_all(path)?;
                root.set_permissions(path, cap_std::fs::Permissions::from_mode(*mode))?;
            }
            Ok("directory made".into())
        }
        State::File { digest, mode, .. } => {
            let bytes = store.get(digest)?;
            if !dry_run {
                if now.as_ref().is_some_and(|m| m.is_dir() || m.is_symlink()) {
                    clear(false)?;
                }
                if let Some(parent) = Path::new(path)
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                {
                    root.create_dir_all(parent)?;
                }
                // Whole or not at all: a crash mid-restore leaves either
                // the task's version or the old one, never half a file.
                let tmp = format!("{path}.camina-undo");
                {
                    let mut f = root.create(&tmp)?;
                    f.write_all(&bytes)?;
                    f.sync_all()?;
                }
                root.set_permissions(&tmp, cap_std::fs::Permissions::from_mode(*mode))?;
                root.rename(&tmp, root, path)?;
            }
            Ok(if now.is_some() {
                "content restored".into()
            } else {
                "file restored".into()
            })
        }
        State::Symlink { target } => {
            if !dry_run {
                clear(false)?;
                root.symlink_contents(target, path)?;
            }
            Ok("symlink restored".into())
        }
        State::NotKept { .. } => Ok("not kept".into()),
    }
}
