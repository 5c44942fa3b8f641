//! The journal: a durable, append-only record of every task.
//!
//! A task is a sequence of [`Record`]s (kind + step name + JSON payload),
//! plus a [`TaskSummary`] kept in step with it (status, prompt, answer) so
//! listing is cheap. Each append writes the record and, when asked, the
//! summary change in one sled transaction; [`Durability::Flush`] waits until
//! the record is on disk. Flushes are group-committed: concurrent appenders
//! share one fsync.
//!
//! The journal knows nothing of models or tools: the coordinator decides
//! what records mean. It does own task identity, status and the facts a
//! restart needs: on open, every task still marked `running` cannot be
//! running (sled holds an exclusive lock, so no other process has this
//! journal) and becomes `interrupted`.
//!
//! Layout (sled trees): `meta` (schema marker), `tasks` (id → summary
//! JSON), `events` (id ‖ seq(u64 BE) → record JSON), `keys` (external
//! idempotency key → `{"task", "request"}` JSON: the task it created and
//! the request's fingerprint; older builds stored the bare task id).
//!
//! Failure handling: a foreign or newer database is an error naming the
//! path, never rewritten; a corrupt record is an error naming the task and
//! sequence number; nothing is ever deleted.
//!
//! Test-only failpoints for the crash harness: `CAMINA_CRASH_AFTER=<n>`
//! aborts the process right after its n-th append (as `kill -9` would),
//! `CAMINA_CRASH_BEFORE=<n>` right before it: after a tool ran but before
//! its result was written, the window that matters for side effects.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The schema this build reads and writes.
pub const SCHEMA: &str = "camina-journal/1";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the journal {path} is in use by another camina process{holder}; wait for it, or use \
         the HTTP API of a running `camina serve`"
    )]
    Locked { path: String, holder: String },
    #[error("cannot open the journal {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("{path} is not a Caminaå journal ({reason}); nothing was changed")]
    Foreign { path: String, reason: String },
    #[error("the journal {path} has schema `{found}`; this camina understands `{SCHEMA}`")]
    Schema { path: String, found: String },
    #[error("journal storage: {0}")]
    Storage(String),
    #[error("journal record {task}#{seq} is corrupt: {reason}")]
    Corrupt {
        task: String,
        seq: u64,
        reason: String,
    },
    #[error(
        "the journal {path} looks damaged: {recorded} tasks were recorded in it but only {found} \
         can be read; Caminaå wrote nothing to it. Restore it from a backup, or, to go on with \
         what is readable, delete {count_file}"
    )]
    Damaged {
        path: String,
        recorded: u64,
        found: u64,
        count_file: String,
    },
    #[error("no task matches `{0}` (see `camina task list`)")]
    UnknownTask(String),
    #[error("`{prefix}` matches several tasks ({}); give more of the id", .ids.join(", "))]
    Ambiguous { prefix: String, ids: Vec<String> },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn storage(e: impl std::fmt::Display) -> Error {
    Error::Storage(e.to_string())
}

/// An idempotency key as [`Journal::create_keyed`] takes it: the key, and a
/// fingerprint of the request it came with.
#[derive(Debug, Clone, Copy)]
pub struct IdempotencyKey<'a> {
    pub key: &'a str,
    pub request: &'a str,
}

/// What [`Journal::create_keyed`] did.
#[derive(Debug, Clone)]
pub enum Created {
    /// A new task.
    New(TaskSummary),
    /// The key already named a task.
    Existing(KeyUse),
}

/// The task an idempotency key already names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyUse {
    pub id: String,
    /// Whether it came with the same request (`None`: recorded by an older
    /// build, unknown).
    pub same_request: Option<bool>,
}

impl KeyUse {
    fn new(e: KeyEntry, k: &IdempotencyKey<'_>) -> Self {
        KeyUse {
            same_request: e.request.as_deref().map(|r| r == k.request),
            id: e.task,
        }
    }
}

/// What the keys tree holds for a key.
#[derive(Debug, Serialize, Deserialize)]
struct KeyEntry {
    task: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    request: Option<String>,
}

impl KeyEntry {
    /// An entry: JSON, or the bare task id older builds wrote.
    fn decode(v: &[u8]) -> Result<Self> {
        if v.first() == Some(&b'{') {
            serde_json::from_slice(v).map_err(|e| Error::Corrupt {
                task: String::from_utf8_lossy(v).into_owned(),
                seq: 0,
                reason: format!("idempotency key entry: {e}"),
            })
        } else {
            Ok(KeyEntry {
                task: String::from_utf8_lossy(v).into_owned(),
                request: None,
            })
        }
    }
}

/// A task's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    Interrupted,
    NeedsReview,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
            Status::Interrupted => "interrupted",
            Status::NeedsReview => "needs-review",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Status::Queued,
            Status::Running,
            Status::Succeeded,
            Status::Failed,
            Status::Cancelled,
            Status::Interrupted,
            Status::NeedsReview,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }

    /// Finished for good (`succeeded`, `failed`, `cancelled`).
    pub fn is_final(self) -> bool {
        matches!(self, Status::Succeeded | Status::Failed | Status::Cancelled)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The per-task index entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSummary {
    pub id: String,
    pub status: Status,
    pub created_at: String,
    pub updated_at: String,
    pub prompt: String,
    pub workspace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    /// Why it failed, was cancelled, or needs review.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Records so far.
    pub events: u64,
}

/// One journal record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    /// RFC 3339, UTC, milliseconds.
    pub at: String,
    /// Active (running) time of the task so far, in ms.
    pub elapsed_ms: u64,
    /// The durable step this record belongs to (`plan`, `step/0/turn/1`…).
    pub step: String,
    /// What happened (`submitted`, `model_reply`, `tool_intent`, …).
    pub kind: String,
    pub data: Value,
}

/// A record to append.
#[derive(Debug, Clone)]
pub struct NewRecord {
    pub step: String,
    pub kind: String,
    pub data: Value,
    pub elapsed_ms: u64,
}

/// Changes to a task's summary that go with an append.
#[derive(Debug, Clone, Default)]
pub struct Update {
    pub status: Option<Status>,
    pub answer: Option<String>,
    pub error: Option<String>,
    /// Clear a previous error (e.g. when a task is resumed).
    pub clear_error: bool,
}

/// How durable an append must be before it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// On disk (fsync, group-committed) before returning.
    Flush,
    /// In sled's log; on disk at the next flush.
    Buffered,
}

type Waiter = tokio::sync::oneshot::Sender<Result<(), String>>;

/// Group commit: one flush serves everyone who asked while the previous
/// flush ran.
struct Committer {
    db: sled::Db,
    /// (a flusher is running, callers waiting for the next flush)
    state: Mutex<(bool, Vec<Waiter>)>,
}

impl Committer {
    async fn commit(self: &Arc<Self>) -> Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let lead = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            s.1.push(tx);
            !std::mem::replace(&mut s.0, true)
        };
        if lead {
            let me = self.clone();
            tokio::task::spawn_blocking(move || {
                loop {
                    let waiters = {
                        let mut s = me.state.lock().unwrap_or_else(|p| p.into_inner());
                        if s.1.is_empty() {
                            s.0 = false;
                            break;
                        }
                        std::mem::take(&mut s.1)
                    };
                    let result = me.db.flush().map(drop).map_err(|e| e.to_string());
                    for w in waiters {
                        let _ = w.send(result.clone());
                    }
                }
            });
        }
        rx.await
            .map_err(|_| storage("the flush thread stopped"))?
            .map_err(storage)
    }
}

/// One capability decision of the sandbox, as the decision log keeps it.
/// Never file contents or bodies: what was tried, on what, the verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionEntry {
    /// RFC 3339, UTC, milliseconds.
    pub at: String,
    pub at_unix_ms: u64,
    pub plugin: String,
    pub digest: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// `fs`, `net`, `env`, `limit`
    pub capability: String,
    pub action: String,
    pub target: String,
    pub allowed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl DecisionEntry {
    /// An entry stamped now.
    pub fn now(plugin: &str, digest: &str) -> Self {
        let t = std::time::SystemTime::now();
        Self {
            at: humantime::format_rfc3339_millis(t).to_string(),
            at_unix_ms: t
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            plugin: plugin.to_owned(),
            digest: digest.to_owned(),
            task: None,
            step: None,
            capability: String::new(),
            action: String::new(),
            target: String::new(),
            allowed: true,
            detail: None,
        }
    }
}

/// Which decisions to return.
#[derive(Debug, Clone, Default)]
pub struct DecisionFilter {
    pub plugin: Option<String>,
    /// Task id or prefix.
    pub task: Option<String>,
    pub denied_only: bool,
    pub since_unix_ms: Option<u64>,
    /// Newest first, at most this many (0: no limit).
    pub limit: usize,
}

/// Parses a "since" bound for the decision log: an RFC 3339 time, or a
/// duration back from now (`1h`, `7days`); a duration longer than the age
/// of the epoch means "everything". `None` when `text` is neither.
pub fn parse_since(text: &str) -> Option<u64> {
    let at = match humantime::parse_rfc3339_weak(text) {
        Ok(t) => t,
        Err(_) => {
            let back = humantime::parse_duration(text).ok()?;
            std::time::SystemTime::now()
                .checked_sub(back)
                .unwrap_or(std::time::UNIX_EPOCH)
        }
    };
    Some(
        at.duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    )
}

/// How long the decision log keeps entries.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub max_age: std::time::Duration,
    pub max_entries: usize,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_age: std::time::Duration::from_secs(30 * 24 * 3600),
            max_entries: 200_000,
        }
    }
}

/// A journal (one per home directory, one process at a time).
pub struct Journal {
    path: PathBuf,
    db: sled::Db,
    tasks: sled::Tree,
    events: sled::Tree,
    keys: sled::Tree,
    decisions: sled::Tree,
    /// Next sequence number per task (this process owns the journal).
    seqs: Mutex<std::collections::HashMap<String, u64>>,
    /// Tasks in the journal, and the file beside it that remembers how
    /// many (written after each creation is durable, so never ahead).
    task_count: AtomicU64,
    count_file: PathBuf,
    retention: Mutex<Retention>,
    since_prune: AtomicU64,
    committer: Arc<Committer>,
    appends: AtomicU64,
    crash_after: Option<u64>,
    crash_before: Option<u64>,
    feed: tokio::sync::broadcast::Sender<(String, Record)>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

fn event_key(id: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(id.len() + 9);
    k.extend_from_slice(id.as_bytes());
    k.push(b'/');
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

impl Journal {
    /// Opens (creating if needed) the journal at `path`. Tasks left
    /// `running` by a dead process become `interrupted`; their ids are
    /// returned with the journal.
    pub fn open(path: &Path) -> Result<(Self, Vec<TaskSummary>)> {
        let shown = path.display().to_string();
        let pid_file = path.with_extension("pid");
        let count_file = path.with_extension("tasks");
        let existed = path.exists();
        let open = || {
            sled::Config::new()
                .path(path)
                .flush_every_ms(Some(1000))
                .open()
        };
        let is_lock = |e: &sled::Error| {
            let text = e.to_string();
            text.contains("lock")
                || text.contains("WouldBlock")
                || text.contains("temporarily unavailable")
        };
        // A journal this process closed a moment ago stays locked until
        // sled's flusher thread notices (up to its 1 s period): when the
        // holder is this very process, wait for it a little.
        let ours = || {
            std::fs::read_to_string(&pid_file)
                .is_ok_and(|p| p.trim() == std::process::id().to_string())
        };
        let mut attempt = open();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        while let Err(e) = &attempt {
            if !is_lock(e) || !ours() || std::time::Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
            attempt = open();
        }
        let db = attempt.map_err(|e| {
            if is_lock(&e) {
                let holder = std::fs::read_to_string(&pid_file)
                    .map(|p| format!(" (pid {})", p.trim()))
                    .unwrap_or_default();
                Error::Locked {
                    path: shown.clone(),
                    holder,
                }
            } else {
                Error::Open {
                    path: shown.clone(),
                    reason: e.to_string(),
                }
            }
        })?;
        let _ = std::fs::write(&pid_file, std::process::id().to_string());
        let meta = db.open_tree("meta").map_err(storage)?;
        let tasks = db.open_tree("tasks").map_err(storage)?;
        let events = db.open_tree("events").map_err(storage)?;
        let keys = db.open_tree("keys").map_err(storage)?;
        let decisions = db.open_tree("decisions").map_err(storage)?;
        // sled recovers a damaged log by cutting it at the first bad entry,
        // silently: the task count kept beside it (tasks are never
        // deleted) tells a damaged journal from a smaller one, before
        // anything is written to it.
        let found = tasks.len() as u64;
        let recorded = std::fs::read_to_string(&count_file)
            .ok()
            .and_then(|c| c.trim().parse::<u64>().ok());
        if existed
            && let Some(recorded) = recorded
            && recorded > found
        {
            return Err(Error::Damaged {
                path: shown,
                recorded,
                found,
                count_file: count_file.display().to_string(),
            });
        }
        if recorded != Some(found) {
            let _ = std::fs::write(&count_file, found.to_string());
        }
        match meta.get("schema").map_err(storage)? {
            Some(v) if v.as_ref() == SCHEMA.as_bytes() => {}
            Some(v) => {
                return Err(Error::Schema {
                    path: shown,
                    found: String::from_utf8_lossy(&v).into_owned(),
                });
            }
            None => {
                let foreign = db.tree_names().iter().any(|n| {
                    !matches!(
                        n.as_ref(),
                        b"meta"
                            | b"tasks"
                            | b"events"
                            | b"keys"
                            | b"decisions"
                            | b"__sled__default"
                    )
                }) || !db.is_empty()
                    || !tasks.is_empty()
                    || !events.is_empty();
                if foreign {
                    return Err(Error::Foreign {
                        path: shown,
                        reason: "it holds data but no Caminaå schema marker".into(),
                    });
                }
                meta.insert("schema", SCHEMA).map_err(storage)?;
                db.flush().map_err(storage)?;
            }
        }
        let failpoint = |name: &str| std::env::var(name).ok().and_then(|v| v.parse().ok());
        let crash_after = failpoint("CAMINA_CRASH_AFTER");
        let crash_before = failpoint("CAMINA_CRASH_BEFORE");
        let (feed, _) = tokio::sync::broadcast::channel(1024);
        let journal = Self {
            path: path.to_path_buf(),
            committer: Arc::new(Committer {
                db: db.clone(),
                state: Mutex::new((false, Vec::new())),
            }),
            db,
            tasks,
            events,
            keys,
            decisions,
            seqs: Mutex::new(std::collections::HashMap::new()),
            task_count: AtomicU64::new(found),
            count_file,
            retention: Mutex::new(Retention::default()),
            since_prune: AtomicU64::new(0),
            appends: AtomicU64::new(0),
            crash_after,
            crash_before,
            feed,
        };
        let mut interrupted = Vec::new();
        for t in journal.list()? {
            if t.status == Status::Running {
                let update = Update {
                    status: Some(Status::Interrupted),
                    ..Default::default()
                };
                journal.apply(&t.id, None, &update)?;
                interrupted.push(journal.task(&t.id)?);
            }
        }
        if !interrupted.is_empty() {
            journal.db.flush().map_err(storage)?;
        }
        journal.prune_decisions()?;
        Ok((journal, interrupted))
    }

    /// Sets how long the decision log keeps entries (and prunes now).
    pub fn set_retention(&self, retention: Retention) -> Result<usize> {
        *self.retention.lock().unwrap_or_else(|p| p.into_inner()) = retention;
        self.prune_decisions()
    }

    /// Appends capability decisions to the log (buffered: an audit trail,
    /// not a durability point).
    pub fn record_decisions(&self, entries: &[DecisionEntry]) -> Result<()> {
        for e in entries {
            let mut key = e.at_unix_ms.to_be_bytes().to_vec();
            key.extend_from_slice(&self.db.generate_id().map_err(storage)?.to_be_bytes());
            self.decisions
                .insert(key, serde_json::to_vec(e).map_err(storage)?)
                .map_err(storage)?;
        }
        let n = self
            .since_prune
            .fetch_add(entries.len() as u64, Ordering::Relaxed);
        if n > 5_000 {
            self.since_prune.store(0, Ordering::Relaxed);
            self.prune_decisions()?;
        }
        Ok(())
    }

    /// Drops decisions older than the retention age, then the oldest beyond
    /// the retention size. Returns how many were dropped.
    pub fn prune_decisions(&self) -> Result<usize> {
        let r = *self.retention.lock().unwrap_or_else(|p| p.into_inner());
        let cutoff = std::time::SystemTime::now()
            .checked_sub(r.max_age)
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut dropped = 0;
        for item in self.decisions.range(..cutoff.to_be_bytes().to_vec()) {
            let (k, _) = item.map_err(storage)?;
            self.decisions.remove(k).map_err(storage)?;
            dropped += 1;
        }
        let excess = self.decisions.len().saturating_sub(r.max_entries);
        for item in self.decisions.iter().take(excess) {
            let (k, _) = item.map_err(storage)?;
            self.decisions.remove(k).map_err(storage)?;
            dropped += 1;
        }
        Ok(dropped)
    }

    /// Decisions matching `filter`, newest first.
    pub fn decisions(&self, filter: &DecisionFilter) -> Result<Vec<DecisionEntry>> {
        let mut out = Vec::new();
        for item in self.decisions.iter().rev() {
            let (k, v) = item.map_err(storage)?;
            let e: DecisionEntry = serde_json::from_slice(&v).map_err(|err| Error::Corrupt {
                task: "(decision log)".into(),
                seq: k
                    .get(..8)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map_or(0, u64::from_be_bytes),
                reason: err.to_string(),
            })?;
            if filter.since_unix_ms.is_some_and(|s| e.at_unix_ms < s) {
                break;
            }
            if filter.plugin.as_ref().is_some_and(|p| &e.plugin != p)
                || filter
                    .task
                    .as_ref()
                    .is_some_and(|t| !e.task.as_deref().unwrap_or("").starts_with(t.as_str()))
                || (filter.denied_only && e.allowed)
            {
                continue;
            }
            out.push(e);
            if filter.limit > 0 && out.len() >= filter.limit {
                break;
            }
        }
        Ok(out)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates a task with its `submitted` record (durable on return).
    pub async fn create(&self, prompt: &str, workspace: &str, data: Value) -> Result<TaskSummary> {
        match self.create_keyed(prompt, workspace, data, None).await? {
            Created::New(task) => Ok(task),
            Created::Existing(KeyUse { id, .. }) => Err(storage(format!(
                "a task was created without a key but {id} was returned"
            ))),
        }
    }

    /// Creates a task with its `submitted` record, unless `key` already
    /// names a task: the key, the task and its first record are written in
    /// one transaction (durable on return), so a crash never leaves a task
    /// without its key or a key without its task.
    pub async fn create_keyed(
        &self,
        prompt: &str,
        workspace: &str,
        data: Value,
        key: Option<IdempotencyKey<'_>>,
    ) -> Result<Created> {
        use sled::Transactional;
        use sled::transaction::ConflictableTransactionError as Tx;
        enum Abort {
            Existing(KeyEntry),
            Failed(Error),
        }
        if let Some(k) = &key
            && let Some(entry) = self.key_entry(k.key)?
        {
            return Ok(Created::Existing(KeyUse::new(entry, k)));
        }
        let n = self.before_append();
        let id = uuid::Uuid::now_v7().simple().to_string();
        let at = now();
        let summary = TaskSummary {
            id: id.clone(),
            status: Status::Queued,
            created_at: at.clone(),
            updated_at: at.clone(),
            prompt: prompt.to_owned(),
            workspace: workspace.to_owned(),
            answer: None,
            error: None,
            events: 1,
        };
        let record = Record {
            seq: 0,
            at,
            elapsed_ms: 0,
            step: "submitted".into(),
            kind: "submitted".into(),
            data,
        };
        let entry = key.as_ref().map(|k| KeyEntry {
            task: id.clone(),
            request: Some(k.request.to_owned()),
        });
        let summary_bytes = serde_json::to_vec(&summary).map_err(storage)?;
        let record_bytes = serde_json::to_vec(&record).map_err(storage)?;
        let entry_bytes = entry
            .as_ref()
            .map(serde_json::to_vec)
            .transpose()
            .map_err(storage)?;
        let result =
            (&self.tasks, &self.events, &self.keys).transaction(|(tasks, events, keys)| {
                if let (Some(k), Some(bytes)) = (&key, &entry_bytes) {
                    if let Some(v) = keys.get(k.key.as_bytes())? {
                        return match KeyEntry::decode(&v) {
                            Ok(e) => Err(Tx::Abort(Abort::Existing(e))),
                            Err(e) => Err(Tx::Abort(Abort::Failed(e))),
                        };
                    }
                    keys.insert(k.key.as_bytes(), bytes.as_slice())?;
                }
                tasks.insert(id.as_bytes(), summary_bytes.as_slice())?;
                events.insert(event_key(&id, 0), record_bytes.as_slice())?;
                Ok(())
            });
        match result {
            Ok(()) => {}
            Err(sled::transaction::TransactionError::Abort(Abort::Existing(e))) => {
                let k = key.as_ref().expect("only a key aborts");
                return Ok(Created::Existing(KeyUse::new(e, k)));
            }
            Err(sled::transaction::TransactionError::Abort(Abort::Failed(e))) => return Err(e),
            Err(sled::transaction::TransactionError::Storage(e)) => return Err(storage(e)),
        }
        self.seqs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.clone())
            .or_insert(1);
        self.committer.commit().await?;
        let count = self.task_count.fetch_add(1, Ordering::SeqCst) + 1;
        if let Err(e) = std::fs::write(&self.count_file, count.to_string()) {
            tracing::warn!(file = %self.count_file.display(), "cannot record the task count: {e}");
        }
        let _ = self.feed.send((id.clone(), record));
        self.after_append(n);
        self.task(&id).map(Created::New)
    }

    fn key_entry(&self, key: &str) -> Result<Option<KeyEntry>> {
        self.keys
            .get(key.as_bytes())
            .map_err(storage)?
            .map(|v| KeyEntry::decode(&v))
            .transpose()
    }

    /// What a second [`Journal::create_keyed`] with `key` would return,
    /// if the key names a task already.
    pub fn find_key(&self, key: &IdempotencyKey<'_>) -> Result<Option<KeyUse>> {
        Ok(self.key_entry(key.key)?.map(|e| KeyUse::new(e, key)))
    }

    /// The task an idempotency key names.
    pub fn key(&self, key: &str) -> Result<Option<String>> {
        Ok(self.key_entry(key)?.map(|e| e.task))
    }

    /// Writes record and summary change atomically; returns the new summary
    /// and the record.
    fn apply(
        &self,
        id: &str,
        record: Option<&NewRecord>,
        update: &Update,
    ) -> Result<(Option<TaskSummary>, Option<Record>)> {
        use sled::Transactional;
        let plain = update.status.is_none()
            && update.answer.is_none()
            && update.error.is_none()
            && !update.clear_error;
        // The common case, a record without a state change, is one insert:
        // the summary's record count and time are derived on read.
        if let (Some(r), true) = (record, plain) {
            if !self.tasks.contains_key(id.as_bytes()).map_err(storage)? {
                return Err(Error::UnknownTask(id.to_owned()));
            }
            let rec = Record {
                seq: self.next_seq(id)?,
                at: now(),
                elapsed_ms: r.elapsed_ms,
                step: r.step.clone(),
                kind: r.kind.clone(),
                data: r.data.clone(),
            };
            let bytes = serde_json::to_vec(&rec).map_err(storage)?;
            self.events
                .insert(event_key(id, rec.seq), bytes)
                .map_err(storage)?;
            return Ok((None, Some(rec)));
        }
        let seq = match record {
            Some(_) => Some(self.next_seq(id)?),
            None => None,
        };
        let result = (&self.tasks, &self.events).transaction(|(tasks, events)| {
            let Some(raw) = tasks.get(id.as_bytes())? else {
                return sled::transaction::abort(Error::UnknownTask(id.to_owned()));
            };
            let mut summary: TaskSummary = match serde_json::from_slice(&raw) {
                Ok(s) => s,
                Err(e) => {
                    return sled::transaction::abort(Error::Corrupt {
                        task: id.to_owned(),
                        seq: 0,
                        reason: e.to_string(),
                    });
                }
            };
            let at = now();
            let written = match record {
                Some(r) => {
                    let rec = Record {
                        seq: seq.unwrap_or(summary.events),
                        at: at.clone(),
                        elapsed_ms: r.elapsed_ms,
                        step: r.step.clone(),
                        kind: r.kind.clone(),
                        data: r.data.clone(),
                    };
                    let bytes = serde_json::to_vec(&rec).map_err(|e| {
                        sled::transaction::ConflictableTransactionError::Abort(storage(e))
                    })?;
                    events.insert(event_key(id, rec.seq), bytes)?;
                    summary.events = rec.seq + 1;
                    Some(rec)
                }
                None => None,
            };
            if let Some(s) = update.status {
                summary.status = s;
            }
            if let Some(a) = &update.answer {
                summary.answer = Some(a.clone());
            }
            if update.clear_error {
                summary.error = None;
            }
            if let Some(e) = &update.error {
                summary.error = Some(e.clone());
            }
            summary.updated_at = at;
            let bytes = serde_json::to_vec(&summary)
                .map_err(|e| sled::transaction::ConflictableTransactionError::Abort(storage(e)))?;
            tasks.insert(id.as_bytes(), bytes)?;
            Ok((Some(summary), written))
        });
        result.map_err(|e| match e {
            sled::transaction::TransactionError::Abort(e) => e,
            sled::transaction::TransactionError::Storage(e) => storage(e),
        })
    }

    /// The next sequence number of task `id`.
    fn next_seq(&self, id: &str) -> Result<u64> {
        let mut seqs = self.seqs.lock().unwrap_or_else(|p| p.into_inner());
        let next = match seqs.get(id) {
            Some(n) => *n,
            None => self.last_record(id)?.map_or(0, |(seq, _)| seq + 1),
        };
        seqs.insert(id.to_owned(), next + 1);
        Ok(next)
    }

    /// The sequence number and time of a task's last record.
    fn last_record(&self, id: &str) -> Result<Option<(u64, String)>> {
        let mut prefix = id.as_bytes().to_vec();
        prefix.push(b'/');
        let Some(item) = self.events.scan_prefix(&prefix).next_back() else {
            return Ok(None);
        };
        let (_, v) = item.map_err(storage)?;
        #[derive(Deserialize)]
        struct Head {
            seq: u64,
            at: String,
        }
        let head: Head = serde_json::from_slice(&v).map_err(|e| Error::Corrupt {
            task: id.to_owned(),
            seq: 0,
            reason: e.to_string(),
        })?;
        Ok(Some((head.seq, head.at)))
    }

    /// A stored summary with its record count and last change filled in.
    fn fill(&self, mut s: TaskSummary) -> Result<TaskSummary> {
        if let Some((seq, at)) = self.last_record(&s.id)? {
            s.events = seq + 1;
            if at > s.updated_at {
                s.updated_at = at;
            }
        }
        Ok(s)
    }

    /// Counts an append (a task's creation is the first); the test-only
    /// failpoint dies as kill -9 would, before the write.
    fn before_append(&self) -> u64 {
        let n = self.appends.fetch_add(1, Ordering::SeqCst) + 1;
        if self.crash_before == Some(n) {
            std::process::abort();
        }
        n
    }

    /// The test-only failpoint after append `n` is durable: mid-task.
    fn after_append(&self, n: u64) {
        if self.crash_after == Some(n) {
            std::process::abort();
        }
    }

    /// Appends a record (and a summary change) to task `id`.
    pub async fn append(
        &self,
        id: &str,
        record: NewRecord,
        update: Update,
        durability: Durability,
    ) -> Result<Record> {
        let n = self.before_append();
        let (_, rec) = self.apply(id, Some(&record), &update)?;
        let rec = rec.ok_or_else(|| storage("append wrote no record"))?;
        if durability == Durability::Flush {
            self.committer.commit().await?;
        }
        let _ = self.feed.send((id.to_owned(), rec.clone()));
        self.after_append(n);
        Ok(rec)
    }

    /// Changes a task's summary without a record.
    pub async fn update(&self, id: &str, update: Update) -> Result<TaskSummary> {
        self.apply(id, None, &update)?;
        self.committer.commit().await?;
        self.task(id)
    }

    /// Flushes everything written so far.
    pub async fn flush(&self) -> Result<()> {
        self.committer.commit().await
    }

    /// Live feed of appended records of every task.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<(String, Record)> {
        self.feed.subscribe()
    }

    /// A task's summary by full id.
    pub fn task(&self, id: &str) -> Result<TaskSummary> {
        let raw = self
            .tasks
            .get(id.as_bytes())
            .map_err(storage)?
            .ok_or_else(|| Error::UnknownTask(id.to_owned()))?;
        let summary = serde_json::from_slice(&raw).map_err(|e| Error::Corrupt {
            task: id.to_owned(),
            seq: 0,
            reason: e.to_string(),
        })?;
        self.fill(summary)
    }

    /// A task by id or unique id prefix.
    pub fn find(&self, prefix: &str) -> Result<TaskSummary> {
        let prefix = prefix.trim();
        if prefix.is_empty() {
            return Err(Error::UnknownTask(prefix.to_owned()));
        }
        let mut ids = Vec::new();
        for item in self.tasks.scan_prefix(prefix.as_bytes()).keys() {
            let k = item.map_err(storage)?;
            ids.push(String::from_utf8_lossy(&k).into_owned());
            if ids.len() > 5 {
                break;
            }
        }
        match ids.as_slice() {
            [] => Err(Error::UnknownTask(prefix.to_owned())),
            [one] => self.task(one),
            _ => Err(Error::Ambiguous {
                prefix: prefix.to_owned(),
                ids,
            }),
        }
    }

    /// Every task, newest first.
    pub fn list(&self) -> Result<Vec<TaskSummary>> {
        let mut out = Vec::new();
        for item in self.tasks.iter().rev() {
            let (k, v) = item.map_err(storage)?;
            let summary = serde_json::from_slice(&v).map_err(|e| Error::Corrupt {
                task: String::from_utf8_lossy(&k).into_owned(),
                seq: 0,
                reason: e.to_string(),
            })?;
            out.push(self.fill(summary)?);
        }
        Ok(out)
    }

    /// A task's records, in order.
    pub fn records(&self, id: &str) -> Result<Vec<Record>> {
        let mut prefix = id.as_bytes().to_vec();
        prefix.push(b'/');
        let mut out = Vec::new();
        for item in self.events.scan_prefix(&prefix) {
            let (k, v) = item.map_err(storage)?;
            let seq = k
                .get(prefix.len()..)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
                .unwrap_or(u64::MAX);
            let rec: Record = serde_json::from_slice(&v).map_err(|e| Error::Corrupt {
                task: id.to_owned(),
                seq,
                reason: e.to_string(),
            })?;
            out.push(rec);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(step: &str, kind: &str) -> NewRecord {
        NewRecord {
            step: step.into(),
            kind: kind.into(),
            data: json!({"x": 1}),
            elapsed_ms: 5,
        }
    }

    #[tokio::test]
    async fn records_and_summaries_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let id = {
            let (j, _) = Journal::open(&path).unwrap();
            let t = j
                .create("do it", "/ws", json!({"prompt": "do it"}))
                .await
                .unwrap();
            assert_eq!(t.status, Status::Queued);
            j.append(
                &t.id,
                rec("plan", "plan"),
                Update {
                    status: Some(Status::Running),
                    ..Default::default()
                },
                Durability::Flush,
            )
            .await
            .unwrap();
            t.id
        };
        let (j, interrupted) = Journal::open(&path).unwrap();
        assert_eq!(
            interrupted.len(),
            1,
            "a running task of a dead process is interrupted"
        );
        let t = j.task(&id).unwrap();
        assert_eq!((t.status, t.events), (Status::Interrupted, 2));
        let records = j.records(&id).unwrap();
        assert_eq!(
            records.iter().map(|r| r.kind.as_str()).collect::<Vec<_>>(),
            ["submitted", "plan"]
        );
        assert_eq!(records[1].seq, 1);
        assert_eq!(j.find(&id[..10]).unwrap().id, id);
        assert!(matches!(j.find("zzz"), Err(Error::UnknownTask(_))));
    }

    #[tokio::test]
    async fn a_second_process_is_told_the_journal_is_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let (_held, _) = Journal::open(&path).unwrap();
        let err = Journal::open(&path).unwrap_err();
        assert!(matches!(err, Error::Locked { .. }), "{err}");
    }

    #[tokio::test]
    async fn foreign_and_newer_databases_are_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other");
        {
            let db = sled::open(&path).unwrap();
            db.insert("someone", "else").unwrap();
            db.flush().unwrap();
        }
        assert!(matches!(Journal::open(&path), Err(Error::Foreign { .. })));
        let db = sled::open(&path).unwrap();
        assert_eq!(db.get("someone").unwrap().unwrap().as_ref(), b"else");
        drop(db);

        let newer = dir.path().join("newer");
        {
            let db = sled::open(&newer).unwrap();
            db.open_tree("meta")
                .unwrap()
                .insert("schema", "camina-journal/9")
                .unwrap();
            db.flush().unwrap();
        }
        assert!(matches!(Journal::open(&newer), Err(Error::Schema { .. })));
        let garbage = dir.path().join("garbage");
        std::fs::create_dir(&garbage).unwrap();
        std::fs::write(garbage.join("conf"), b"\x00\x01 not sled").unwrap();
        assert!(Journal::open(&garbage).is_err());
    }

    #[tokio::test]
    async fn a_damaged_journal_is_refused_not_silently_shortened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        {
            let (j, _) = Journal::open(&path).unwrap();
            for i in 0..50 {
                j.create(&format!("task {i}"), "/ws", json!({"n": i}))
                    .await
                    .unwrap();
            }
            j.flush().await.unwrap();
        }
        let db = std::fs::read(path.join("db")).unwrap();
        for (name, damage) in [
            ("truncated", db[..db.len() / 2].to_vec()),
            ("zeroed", {
                let mut d = db.clone();
                let n = d.len();
                d[n / 4..n / 2].fill(0);
                d
            }),
            ("flipped", {
                let mut d = db.clone();
                for b in d.iter_mut().skip(64).step_by(97) {
                    *b ^= 0x5a;
                }
                d
            }),
        ] {
            let copy = dir.path().join(name);
            std::fs::create_dir_all(&copy).unwrap();
            for f in std::fs::read_dir(&path).unwrap() {
                let f = f.unwrap();
                if f.path().is_file() {
                    std::fs::copy(f.path(), copy.join(f.file_name())).unwrap();
                }
            }
            std::fs::copy(path.with_extension("tasks"), copy.with_extension("tasks")).unwrap();
            std::fs::write(copy.join("db"), &damage).unwrap();
            let err = match Journal::open(&copy) {
                Ok((j, _)) => panic!("{name}: opened with {} tasks", j.list().unwrap().len()),
                Err(e) => e,
            };
            assert!(
                matches!(err, Error::Damaged { recorded: 50, found, .. } if found < 50),
                "{name}: {err}"
            );
            assert!(err.to_string().contains(".tasks"), "{err}");
            // Deleting the count file is the way to go on with the rest.
            std::fs::remove_file(copy.with_extension("tasks")).unwrap();
            let (j, _) = Journal::open(&copy).unwrap();
            assert!(j.list().unwrap().len() < 50, "{name}");
        }
        // The healthy one reopens whole.
        assert_eq!(Journal::open(&path).unwrap().0.list().unwrap().len(), 50);
        // A journal removed on purpose starts afresh, count file or not.
        std::fs::remove_dir_all(&path).unwrap();
        assert_eq!(Journal::open(&path).unwrap().0.list().unwrap().len(), 0);
    }

    #[tokio::test]
    async fn concurrent_durable_appends_share_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(&dir.path().join("j")).unwrap();
        let j = Arc::new(j);
        let t = j.create("p", "/ws", json!({})).await.unwrap();
        let mut handles = Vec::new();
        for i in 0..32 {
            let j = j.clone();
            let id = t.id.clone();
            handles.push(tokio::spawn(async move {
                j.append(
                    &id,
                    rec(&format!("s{i}"), "x"),
                    Update::default(),
                    Durability::Flush,
                )
                .await
                .unwrap()
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
        let records = j.records(&t.id).unwrap();
        assert_eq!(records.len(), 33);
        let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
        assert_eq!(
            seqs,
            (0..33).collect::<Vec<_>>(),
            "gapless, ordered sequence numbers"
        );
    }

    #[tokio::test]
    async fn decisions_are_filtered_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(&dir.path().join("j")).unwrap();
        let mut entries = Vec::new();
        for i in 0..10u64 {
            let mut e = DecisionEntry::now(if i % 2 == 0 { "a" } else { "b" }, "sha256:x");
            e.at_unix_ms -= 10 - i;
            e.capability = "fs".into();
            e.action = "open read".into();
            e.target = format!("/w/{i}");
            e.allowed = i % 3 != 0;
            e.task = (i > 5).then(|| "task1".to_owned());
            entries.push(e);
        }
        j.record_decisions(&entries).unwrap();
        let all = j.decisions(&DecisionFilter::default()).unwrap();
        assert_eq!(all.len(), 10);
        assert_eq!(all[0].target, "/w/9", "newest first");
        let a = j
            .decisions(&DecisionFilter {
                plugin: Some("a".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(a.len(), 5);
        let denied = j
            .decisions(&DecisionFilter {
                denied_only: true,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(
            denied.iter().map(|e| e.target.as_str()).collect::<Vec<_>>(),
            ["/w/9", "/w/6", "/w/3", "/w/0"]
        );
        let t = j
            .decisions(&DecisionFilter {
                task: Some("task".into()),
                limit: 2,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(t.len(), 2);
        let since = entries[7].at_unix_ms;
        assert_eq!(
            j.decisions(&DecisionFilter {
                since_unix_ms: Some(since),
                ..Default::default()
            })
            .unwrap()
            .len(),
            3
        );
        let dropped = j
            .set_retention(Retention {
                max_age: std::time::Duration::from_secs(3600),
                max_entries: 4,
            })
            .unwrap();
        assert_eq!(dropped, 6);
        assert_eq!(
            j.decisions(&DecisionFilter::default()).unwrap()[3].target,
            "/w/6"
        );
    }

    #[tokio::test]
    async fn idempotency_keys_name_one_task() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(&dir.path().join("j")).unwrap();
        let key = |request| {
            Some(IdempotencyKey {
                key: "order-42",
                request,
            })
        };
        let Created::New(a) = j
            .create_keyed("p", "/ws", Value::Null, key("r1"))
            .await
            .unwrap()
        else {
            panic!("the first use of a key creates the task");
        };
        // The task, its first record and the key were written together.
        assert_eq!(j.key("order-42").unwrap(), Some(a.id.clone()));
        assert_eq!(j.records(&a.id).unwrap()[0].kind, "submitted");
        for (request, same) in [("r1", true), ("r2", false)] {
            match j
                .create_keyed("p", "/ws", Value::Null, key(request))
                .await
                .unwrap()
            {
                Created::Existing(KeyUse { id, same_request }) => {
                    assert_eq!((id.as_str(), same_request), (a.id.as_str(), Some(same)));
                }
                Created::New(t) => panic!("a second task {}", t.id),
            }
        }
        assert_eq!(j.list().unwrap().len(), 1);
        // Keys written by older builds (a bare task id) still resolve.
        j.keys.insert("old", a.id.as_bytes()).unwrap();
        assert_eq!(j.key("old").unwrap(), Some(a.id.clone()));
        assert!(matches!(
            j.create_keyed(
                "p",
                "/ws",
                Value::Null,
                Some(IdempotencyKey {
                    key: "old",
                    request: "x"
                })
            )
            .await
            .unwrap(),
            Created::Existing(KeyUse {
                same_request: None,
                ..
            })
        ));
    }

    #[test]
    fn since_accepts_times_and_durations_without_overflow() {
        assert_eq!(parse_since("1970-01-01T00:00:01Z"), Some(1000));
        let hour_ago = parse_since("1h").unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(now - hour_ago >= 3_600_000 && now - hour_ago < 3_700_000);
        assert_eq!(parse_since("400000000000y"), Some(0));
        assert_eq!(parse_since("yesterday-ish"), None);
    }
}
