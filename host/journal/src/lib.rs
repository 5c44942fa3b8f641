//! The journal: a durable, append-only record of every task.
//!
//! A task is a sequence of [`Record`]s (kind + step name + JSON payload),
//! plus a [`TaskSummary`] kept in step with it (status, prompt, answer) so
//! listing is cheap. Each append writes the record and, when asked, the
//! summary change in one sled transaction; [`Durability::Flush`] waits until
//! the record is on disk. Flushes are group-committed ([`commit`]):
//! concurrent appenders share one fsync.
//!
//! The journal does not interpret records: the coordinator decides what
//! they mean. It does own task identity, status and the facts a restart
//! needs: on open, every task still marked `running` cannot be running (the
//! journal's lock is exclusive, so no other process has it) and becomes
//! `interrupted`. Beside the tasks, the same database holds the sandbox's
//! [`DecisionLog`], with its own owner and retention ([`decisions`]).
//!
//! Layout (sled trees): `meta` (schema marker), `tasks` (id → summary
//! JSON), `events` (id ‖ seq(u64 BE) → record JSON), `keys` (idempotency
//! keys, [`keys`]), `decisions` ([`decisions`]). Opening, locking and the
//! damage check: [`open`](mod@open).
//!
//! Failure handling: a foreign or newer database is an error naming the
//! path, never rewritten; a corrupt record is an error naming the task and
//! sequence number; nothing is ever deleted. Crash failpoints for the
//! tests exist only with the `failpoints` feature ([`failpoint`]).

mod commit;
pub mod decisions;
mod error;
mod failpoint;
pub mod keys;
mod open;
mod task;

pub use decisions::{DecisionEntry, DecisionFilter, DecisionLog, Retention};
pub use error::{Error, Result};
pub use keys::{Created, IdempotencyKey, KeyUse};
use task::Written;
pub use task::{Durability, NewRecord, Record, RecordRef, Status, TaskSummary, Update};

use commit::Committer;
use failpoint::Failpoints;
use keys::KeyEntry;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The schema this build reads and writes.
pub const SCHEMA: &str = "camina-journal/1";

/// A journal (one per home directory, one process at a time).
pub struct Journal {
    path: PathBuf,
    /// The journal's lock, held while it is open.
    _lock: std::fs::File,
    db: sled::Db,
    tasks: sled::Tree,
    events: sled::Tree,
    keys: sled::Tree,
    decisions: DecisionLog,
    /// Next sequence number per task (this process owns the journal).
    seqs: Mutex<std::collections::HashMap<String, u64>>,
    /// Group commit; it also keeps the task count and writes the file
    /// beside the database that remembers it (after the flush that made
    /// those tasks durable, so never ahead).
    committer: Arc<Committer>,
    failpoints: Failpoints,
    feed: tokio::sync::broadcast::Sender<(String, Record)>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Now, as records stamp it (RFC 3339, UTC, milliseconds).
pub fn now() -> String {
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
        let o = open::open(path)?;
        let (feed, _) = tokio::sync::broadcast::channel(1024);
        let decisions = DecisionLog::open(&o.db)?;
        let journal = Self {
            path: path.to_path_buf(),
            committer: Committer::new(o.db.clone(), decisions.storer(), o.found, o.count_file),
            decisions,
            _lock: o.lock,
            db: o.db,
            tasks: o.tasks,
            events: o.events,
            keys: o.keys,
            seqs: Mutex::new(std::collections::HashMap::new()),
            failpoints: Failpoints::from_env(),
            feed,
        };
        let mut interrupted = Vec::new();
        for t in journal.list()? {
            if t.status == Status::Running {
                let update = Update {
                    status: Some(Status::Interrupted),
                    ..Default::default()
                };
                journal.apply::<Value>(&t.id, None, &update)?;
                interrupted.push(journal.task(&t.id)?);
            }
        }
        if !interrupted.is_empty() {
            journal.db.flush()?;
        }
        Ok((journal, interrupted))
    }

    /// Durable flushes (fsyncs) this journal made since it was opened; one
    /// serves every append that waited for it (group commit).
    pub fn flushes(&self) -> u64 {
        self.committer.flushes()
    }

    /// The sandbox's decision log, kept in this journal's database.
    pub fn decision_log(&self) -> &DecisionLog {
        &self.decisions
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates a task with its `submitted` record (durable on return).
    pub async fn create(&self, prompt: &str, workspace: &str, data: Value) -> Result<TaskSummary> {
        match self.create_keyed(prompt, workspace, data, None).await? {
            Created::New(task) => Ok(task),
            Created::Existing(KeyUse { id, .. }) => {
                unreachable!("a task created without a key returned {id}")
            }
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
        let n = self.failpoints.before_append();
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
        let summary_bytes = serde_json::to_vec(&summary).map_err(Error::Encode)?;
        let record_bytes = serde_json::to_vec(&record).map_err(Error::Encode)?;
        let entry_bytes = entry
            .as_ref()
            .map(serde_json::to_vec)
            .transpose()
            .map_err(Error::Encode)?;
        if let (Some(k), Some(bytes)) = (&key, &entry_bytes) {
            // With a key, the key and the task are written together (a
            // retry must find either both or neither).
            let result =
                (&self.tasks, &self.events, &self.keys).transaction(|(tasks, events, keys)| {
                    if let Some(v) = keys.get(k.key.as_bytes())? {
                        return match KeyEntry::decode(&v) {
                            Ok(e) => Err(Tx::Abort(Abort::Existing(e))),
                            Err(e) => Err(Tx::Abort(Abort::Failed(e))),
                        };
                    }
                    keys.insert(k.key.as_bytes(), bytes.as_slice())?;
                    tasks.insert(id.as_bytes(), summary_bytes.as_slice())?;
                    events.insert(event_key(&id, 0), record_bytes.as_slice())?;
                    Ok(())
                });
            match result {
                Ok(()) => {}
                Err(sled::transaction::TransactionError::Abort(Abort::Existing(e))) => {
                    return Ok(Created::Existing(KeyUse::new(e, k)));
                }
                Err(sled::transaction::TransactionError::Abort(Abort::Failed(e))) => {
                    return Err(e);
                }
                Err(sled::transaction::TransactionError::Storage(e)) => return Err(e.into()),
            }
        } else {
            // Without a key no transaction: sled's transactions exclude each
            // other and every flush, so concurrent creates (`POST
            // /v1/tasks`) would not share flushes. The first event goes
            // first; the summary makes the task exist (a crash between the
            // two leaves an event of no task, never listed).
            self.events
                .insert(event_key(&id, 0), record_bytes.as_slice())?;
            self.tasks.insert(id.as_bytes(), summary_bytes.as_slice())?;
        }
        // Counted before the flush that makes it durable: the committer
        // writes the count file after each flush (one write per flush, not
        // one per task).
        self.committer.task_created();
        self.seqs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.clone())
            .or_insert(1);
        self.settle(&id, n, Durability::Flush, || Some(record))
            .await?;
        // What was written is the summary: no read back.
        Ok(Created::New(summary))
    }

    /// Writes record and summary change atomically; returns the record's
    /// sequence number, time and serialized data.
    fn apply<T: Serialize>(
        &self,
        id: &str,
        record: Option<RecordRef<'_, T>>,
        update: &Update,
    ) -> Result<Option<(u64, String, Box<RawValue>)>> {
        use sled::Transactional;
        // The record is serialized once, straight from the caller's value
        // (a model request can be large: no `Value` copy of it is made),
        // and before a sequence number is taken: data that cannot be
        // serialized leaves no gap.
        let written = match &record {
            Some(r) => {
                if !self.tasks.contains_key(id.as_bytes())? {
                    return Err(Error::UnknownTask(id.to_owned()));
                }
                let data = serde_json::value::to_raw_value(r.data).map_err(Error::Encode)?;
                let seq = self.next_seq(id)?;
                let at = now();
                let bytes = serde_json::to_vec(&Written {
                    seq,
                    at: &at,
                    elapsed_ms: r.elapsed_ms,
                    step: r.step,
                    kind: r.kind,
                    data: &data,
                })
                .map_err(Error::Encode)?;
                Some((seq, at, bytes, data))
            }
            None => None,
        };
        // The common case, a record without a state change, is one insert:
        // the summary's record count and time are derived on read.
        if update.is_plain()
            && let Some((seq, at, bytes, data)) = written
        {
            self.events.insert(event_key(id, seq), bytes)?;
            return Ok(Some((seq, at, data)));
        }
        let result = (&self.tasks, &self.events).transaction(|(tasks, events)| {
            let Some(raw) = tasks.get(id.as_bytes())? else {
                return sled::transaction::abort(Error::UnknownTask(id.to_owned()));
            };
            let mut summary: TaskSummary = match serde_json::from_slice(&raw) {
                Ok(s) => s,
                Err(e) => {
                    return sled::transaction::abort(Error::corrupt(id.to_owned(), 0, e));
                }
            };
            let at = match &written {
                Some((seq, at, bytes, _)) => {
                    events.insert(event_key(id, *seq), bytes.as_slice())?;
                    summary.events = seq + 1;
                    at.clone()
                }
                None => now(),
            };
            update.apply_to(&mut summary, at);
            let bytes = serde_json::to_vec(&summary).map_err(|e| {
                sled::transaction::ConflictableTransactionError::Abort(Error::Encode(e))
            })?;
            tasks.insert(id.as_bytes(), bytes)?;
            Ok(())
        });
        result.map_err(|e| match e {
            sled::transaction::TransactionError::Abort(e) => e,
            sled::transaction::TransactionError::Storage(e) => e.into(),
        })?;
        Ok(written.map(|(seq, at, _, data)| (seq, at, data)))
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
        let (_, v) = item?;
        #[derive(Deserialize)]
        struct Head {
            seq: u64,
            at: String,
        }
        let head: Head =
            serde_json::from_slice(&v).map_err(|e| Error::corrupt(id.to_owned(), 0, e))?;
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

    /// Appends a record (and a summary change) to task `id`.
    pub async fn append(
        &self,
        id: &str,
        record: NewRecord,
        update: Update,
        durability: Durability,
    ) -> Result<Record> {
        let n = self.failpoints.before_append();
        let (seq, at, _) = self
            .apply(id, Some(RecordRef::of(&record)), &update)?
            .expect("an append with a record writes it");
        let rec = Record {
            seq,
            at,
            elapsed_ms: record.elapsed_ms,
            step: record.step,
            kind: record.kind,
            data: record.data,
        };
        self.settle(id, n, durability, || Some(rec.clone())).await?;
        Ok(rec)
    }

    /// [`Self::append`] of any serializable value as the record's data,
    /// written without making a `Value` of it (one is made only for live
    /// watchers). Returns the record's sequence number.
    pub async fn append_value<T: Serialize>(
        &self,
        id: &str,
        record: RecordRef<'_, T>,
        update: Update,
        durability: Durability,
    ) -> Result<u64> {
        let n = self.failpoints.before_append();
        let (seq, at, data) = self
            .apply(id, Some(record), &update)?
            .expect("an append with a record writes it");
        // Watchers get the data as stored (read back from its JSON).
        let watched = || match serde_json::from_str(data.get()) {
            Ok(data) => Some(Record {
                seq,
                at,
                elapsed_ms: record.elapsed_ms,
                step: record.step.to_owned(),
                kind: record.kind.to_owned(),
                data,
            }),
            Err(e) => {
                tracing::warn!(task = id, seq, "record not sent to watchers: {e}");
                None
            }
        };
        self.settle(id, n, durability, watched).await?;
        Ok(seq)
    }

    /// What every append does once its record is written: the flush it
    /// asked for, the record for live watchers (SSE, `task watch`; made
    /// only when someone watches), the crash failpoint's count.
    async fn settle(
        &self,
        id: &str,
        n: u64,
        durability: Durability,
        watched: impl FnOnce() -> Option<Record>,
    ) -> Result<()> {
        if durability == Durability::Flush {
            self.committer.commit().await?;
        }
        if self.feed.receiver_count() > 0
            && let Some(rec) = watched()
        {
            let _ = self.feed.send((id.to_owned(), rec));
        }
        self.failpoints.after_append(n);
        Ok(())
    }

    /// Changes a task's summary without a record.
    pub async fn update(&self, id: &str, update: Update) -> Result<TaskSummary> {
        self.apply::<Value>(id, None, &update)?;
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
            .get(id.as_bytes())?
            .ok_or_else(|| Error::UnknownTask(id.to_owned()))?;
        let summary =
            serde_json::from_slice(&raw).map_err(|e| Error::corrupt(id.to_owned(), 0, e))?;
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
            let k = item?;
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
            let (k, v) = item?;
            let summary = serde_json::from_slice(&v)
                .map_err(|e| Error::corrupt(String::from_utf8_lossy(&k).into_owned(), 0, e))?;
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
            let (k, v) = item?;
            let seq = k
                .get(prefix.len()..)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
                .unwrap_or(u64::MAX);
            let rec: Record =
                serde_json::from_slice(&v).map_err(|e| Error::corrupt(id.to_owned(), seq, e))?;
            out.push(rec);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
