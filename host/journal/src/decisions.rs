//! The sandbox's decision log: every capability decision (what a skill
//! tried, on what, the verdict), kept beside the task journal in the same
//! sled database (tree `decisions`, key: time ‖ unique id) with its own
//! retention. An audit trail, not a durability point: appends are queued,
//! stored in batches off the caller's path, and reach disk with the
//! journal's next flush.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

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
    pub fn now(plugin: &str, digest: impl std::fmt::Display) -> Self {
        let t = std::time::SystemTime::now();
        Self {
            at: humantime::format_rfc3339_millis(t).to_string(),
            at_unix_ms: t
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            plugin: plugin.to_owned(),
            digest: digest.to_string(),
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

/// Parses the `since` bound of a [`DecisionFilter`] as the CLI and the API
/// take it: an RFC 3339 time, or a duration back from now (`1h`, `7days`);
/// a duration longer than the age of the epoch means "everything". `None`
/// when `text` is neither.
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

/// The decision log of one journal ([`crate::Journal::decision_log`]).
///
/// Recording is off the tool-call path: [`DecisionLog::record`] queues the
/// entries and returns; a writer thread stores them in batches (at least
/// every [`WRITE_EVERY`], or as soon as [`WAKE_AT`] entries wait). The
/// journal's flush stores whatever still waits before it syncs, so a
/// decision is on disk with the next durable record of its task, as
/// before; a query stores them first too (a reader sees every entry
/// recorded before it asked).
pub struct DecisionLog {
    inner: Arc<Inner>,
    writer: Option<std::thread::JoinHandle<()>>,
}

/// How long queued decisions wait at most for the writer thread.
pub const WRITE_EVERY: Duration = Duration::from_millis(50);
/// Queued decisions that wake the writer at once.
pub const WAKE_AT: usize = 512;

pub(crate) struct Inner {
    db: sled::Db,
    tree: sled::Tree,
    retention: Mutex<Retention>,
    /// Entries stored since the last pruning.
    since_prune: AtomicU64,
    /// Entries in the tree (counted once at open, then kept): pruning by
    /// size must not walk the whole log every time.
    count: AtomicU64,
    queue: Mutex<Vec<DecisionEntry>>,
    wake: Condvar,
    stop: AtomicBool,
}

impl std::fmt::Debug for DecisionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionLog")
            .field("entries", &self.inner.count.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Drop for DecisionLog {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        self.inner.wake.notify_all();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        // The writer stores what waits before it stops; this covers a log
        // without a writer thread.
        if let Err(e) = self.inner.store_queued() {
            tracing::error!("decision log: queued decisions were not stored: {e}");
        }
    }
}

impl DecisionLog {
    /// Opens the log in `db` and prunes it with the default retention.
    pub(crate) fn open(db: &sled::Db) -> Result<Self> {
        let tree = db.open_tree("decisions")?;
        let inner = Arc::new(Inner {
            count: AtomicU64::new(tree.len() as u64),
            tree,
            db: db.clone(),
            retention: Mutex::new(Retention::default()),
            since_prune: AtomicU64::new(0),
            queue: Mutex::new(Vec::new()),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        inner.prune()?;
        let me = inner.clone();
        let writer = std::thread::Builder::new()
            .name("camina-decisions".into())
            .spawn(move || me.write_loop())
            .map_err(|e| {
                tracing::warn!("decision log: no writer thread, storing on the caller's: {e}")
            })
            .ok();
        Ok(Self { inner, writer })
    }

    /// What the journal's flush calls first: stores every queued entry.
    pub(crate) fn storer(&self) -> Arc<Inner> {
        self.inner.clone()
    }

    /// Sets how long the log keeps entries, and prunes now; returns how
    /// many were dropped.
    pub fn set_retention(&self, retention: Retention) -> Result<usize> {
        *self
            .inner
            .retention
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = retention;
        self.prune()
    }

    /// Appends decisions: queued here, stored by the writer thread, on disk
    /// with the journal's next flush.
    pub fn record(&self, entries: Vec<DecisionEntry>) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        if self.writer.is_none() {
            return self.inner.store(entries);
        }
        let waiting = {
            let mut q = self.inner.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.extend(entries);
            q.len()
        };
        if waiting >= WAKE_AT {
            self.inner.wake.notify_one();
        }
        Ok(())
    }

    /// Drops decisions older than the retention age, then the oldest beyond
    /// the retention size. Returns how many were dropped.
    pub fn prune(&self) -> Result<usize> {
        self.inner.store_queued()?;
        self.inner.prune()
    }

    /// Decisions matching `filter`, newest first.
    pub fn query(&self, filter: &DecisionFilter) -> Result<Vec<DecisionEntry>> {
        self.inner.store_queued()?;
        let mut out = Vec::new();
        for item in self.inner.tree.iter().rev() {
            let (k, v) = item?;
            let e: DecisionEntry = serde_json::from_slice(&v).map_err(|err| {
                let at = k
                    .get(..8)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map_or(0, u64::from_be_bytes);
                Error::corrupt("(decision log)", at, err)
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
}

impl Inner {
    fn write_loop(&self) {
        loop {
            let stopping = {
                let q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                let (_q, _) = self
                    .wake
                    .wait_timeout_while(q, WRITE_EVERY, |q| {
                        q.len() < WAKE_AT && !self.stop.load(Ordering::SeqCst)
                    })
                    .unwrap_or_else(|p| p.into_inner());
                self.stop.load(Ordering::SeqCst)
            };
            if let Err(e) = self.store_queued() {
                tracing::error!("decision log: cannot store decisions: {e}");
            }
            if stopping {
                return;
            }
        }
    }

    /// Stores every queued entry (the writer, a flush, a query).
    pub(crate) fn store_queued(&self) -> Result<()> {
        let entries = std::mem::take(&mut *self.queue.lock().unwrap_or_else(|p| p.into_inner()));
        self.store(entries)
    }

    /// Stores `entries` (key: time ‖ unique id), one insert each: entries
    /// are independent, and a sled batch would seal and write the current
    /// log buffer on its own (a second write before every flush).
    fn store(&self, entries: Vec<DecisionEntry>) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        for e in &entries {
            let mut key = e.at_unix_ms.to_be_bytes().to_vec();
            key.extend_from_slice(&self.db.generate_id()?.to_be_bytes());
            self.tree
                .insert(key, serde_json::to_vec(e).map_err(Error::Encode)?)?;
        }
        let n = entries.len() as u64;
        self.count.fetch_add(n, Ordering::Relaxed);
        if self.since_prune.fetch_add(n, Ordering::Relaxed) > 5_000 {
            self.since_prune.store(0, Ordering::Relaxed);
            self.prune()?;
        }
        Ok(())
    }

    fn prune(&self) -> Result<usize> {
        let r = *self.retention.lock().unwrap_or_else(|p| p.into_inner());
        let cutoff = std::time::SystemTime::now()
            .checked_sub(r.max_age)
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut dropped = 0;
        for item in self.tree.range(..cutoff.to_be_bytes().to_vec()) {
            let (k, _) = item?;
            if self.tree.remove(k)?.is_some() {
                dropped += 1;
            }
        }
        let count = self
            .count
            .load(Ordering::Relaxed)
            .saturating_sub(dropped as u64);
        let excess = (count as usize).saturating_sub(r.max_entries);
        for item in self.tree.iter().take(excess) {
            let (k, _) = item?;
            if self.tree.remove(k)?.is_some() {
                dropped += 1;
            }
        }
        let _ = self
            .count
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                Some(c.saturating_sub(dropped as u64))
            });
        Ok(dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn decisions_are_filtered_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = crate::Journal::open(&dir.path().join("j")).unwrap();
        let log = j.decision_log();
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
        log.record(entries.clone()).unwrap();
        let all = log.query(&DecisionFilter::default()).unwrap();
        assert_eq!(all.len(), 10);
        assert_eq!(all[0].target, "/w/9", "newest first");
        let a = log
            .query(&DecisionFilter {
                plugin: Some("a".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(a.len(), 5);
        let denied = log
            .query(&DecisionFilter {
                denied_only: true,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(
            denied.iter().map(|e| e.target.as_str()).collect::<Vec<_>>(),
            ["/w/9", "/w/6", "/w/3", "/w/0"]
        );
        let t = log
            .query(&DecisionFilter {
                task: Some("task".into()),
                limit: 2,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(t.len(), 2);
        let since = entries[7].at_unix_ms;
        assert_eq!(
            log.query(&DecisionFilter {
                since_unix_ms: Some(since),
                ..Default::default()
            })
            .unwrap()
            .len(),
            3
        );
        let dropped = log
            .set_retention(Retention {
                max_age: std::time::Duration::from_secs(3600),
                max_entries: 4,
            })
            .unwrap();
        assert_eq!(dropped, 6);
        assert_eq!(
            log.query(&DecisionFilter::default()).unwrap()[3].target,
            "/w/6"
        );
    }

    #[tokio::test]
    async fn recorded_decisions_are_stored_off_the_callers_path_and_before_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = crate::Journal::open(&dir.path().join("j")).unwrap();
        let log = j.decision_log();
        let entry = |i: u64| {
            let mut e = DecisionEntry::now("p", "sha256:x");
            e.target = format!("/w/{i}");
            e
        };
        // The writer thread stores queued entries by itself.
        log.record(vec![entry(0)]).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while log.inner.tree.is_empty() {
            assert!(std::time::Instant::now() < deadline, "never stored");
            std::thread::sleep(WRITE_EVERY / 4);
        }
        // A flush stores what still waits, whatever the writer's timing.
        log.record(vec![entry(1), entry(2)]).unwrap();
        j.flush().await.unwrap();
        assert_eq!(log.inner.tree.len(), 3);
        assert!(log.inner.queue.lock().unwrap().is_empty());
        // So does dropping the journal: reopened, all entries are there.
        log.record(vec![entry(3)]).unwrap();
        drop(j);
        let (j, _) = crate::Journal::open(&dir.path().join("j")).unwrap();
        let all = j.decision_log().query(&DecisionFilter::default()).unwrap();
        assert_eq!(all.len(), 4);
        assert_eq!(all[0].target, "/w/3");
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
