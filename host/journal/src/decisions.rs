//! The sandbox's decision log: every capability decision (what a skill
//! tried, on what, the verdict), kept beside the task journal in the same
//! sled database (tree `decisions`, key: time ‖ unique id) with its own
//! retention. An audit trail, not a durability point: appends are
//! buffered and reach disk with the journal's next flush.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

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
pub struct DecisionLog {
    db: sled::Db,
    tree: sled::Tree,
    retention: Mutex<Retention>,
    /// Entries recorded since the last pruning.
    since_prune: AtomicU64,
}

impl std::fmt::Debug for DecisionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionLog")
            .field("entries", &self.tree.len())
            .finish_non_exhaustive()
    }
}

impl DecisionLog {
    /// Opens the log in `db` and prunes it with the default retention.
    pub(crate) fn open(db: &sled::Db) -> Result<Self> {
        let log = Self {
            tree: db.open_tree("decisions")?,
            db: db.clone(),
            retention: Mutex::new(Retention::default()),
            since_prune: AtomicU64::new(0),
        };
        log.prune()?;
        Ok(log)
    }

    /// Sets how long the log keeps entries, and prunes now; returns how
    /// many were dropped.
    pub fn set_retention(&self, retention: Retention) -> Result<usize> {
        *self.retention.lock().unwrap_or_else(|p| p.into_inner()) = retention;
        self.prune()
    }

    /// Appends decisions (buffered: on disk with the journal's next flush).
    pub fn record(&self, entries: &[DecisionEntry]) -> Result<()> {
        for e in entries {
            let mut key = e.at_unix_ms.to_be_bytes().to_vec();
            key.extend_from_slice(&self.db.generate_id()?.to_be_bytes());
            self.tree
                .insert(key, serde_json::to_vec(e).map_err(Error::Encode)?)?;
        }
        let n = self
            .since_prune
            .fetch_add(entries.len() as u64, Ordering::Relaxed);
        if n > 5_000 {
            self.since_prune.store(0, Ordering::Relaxed);
            self.prune()?;
        }
        Ok(())
    }

    /// Drops decisions older than the retention age, then the oldest beyond
    /// the retention size. Returns how many were dropped.
    pub fn prune(&self) -> Result<usize> {
        let r = *self.retention.lock().unwrap_or_else(|p| p.into_inner());
        let cutoff = std::time::SystemTime::now()
            .checked_sub(r.max_age)
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut dropped = 0;
        for item in self.tree.range(..cutoff.to_be_bytes().to_vec()) {
            let (k, _) = item?;
            self.tree.remove(k)?;
            dropped += 1;
        }
        let excess = self.tree.len().saturating_sub(r.max_entries);
        for item in self.tree.iter().take(excess) {
            let (k, _) = item?;
            self.tree.remove(k)?;
            dropped += 1;
        }
        Ok(dropped)
    }

    /// Decisions matching `filter`, newest first.
    pub fn query(&self, filter: &DecisionFilter) -> Result<Vec<DecisionEntry>> {
        let mut out = Vec::new();
        for item in self.tree.iter().rev() {
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
        log.record(&entries).unwrap();
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
