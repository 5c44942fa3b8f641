//! Group commit: one flush serves everyone who asked while the previous
//! flush ran, so concurrent durable appends share an fsync.

use crate::{Error, Result};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

type Waiter = tokio::sync::oneshot::Sender<Result<(), sled::Error>>;

pub(crate) struct Committer {
    db: sled::Db,
    /// Queued decision-log entries are stored before each flush.
    decisions: Arc<crate::decisions::Inner>,
    /// (a flusher is running, callers waiting for the next flush)
    state: Mutex<(bool, Vec<Waiter>)>,
    /// Flushes (fsyncs) made so far.
    flushes: AtomicU64,
    /// Tasks created (tasks are never deleted), and the file beside the
    /// database that keeps the count of durable ones: a journal that comes
    /// back with fewer was cut by sled's recovery (see `open`).
    tasks: AtomicU64,
    /// The count the file holds.
    written: AtomicU64,
    count_file: PathBuf,
}

impl Committer {
    pub(crate) fn new(
        db: sled::Db,
        decisions: Arc<crate::decisions::Inner>,
        tasks: u64,
        count_file: PathBuf,
    ) -> Arc<Self> {
        Arc::new(Self {
            db,
            decisions,
            state: Mutex::new((false, Vec::new())),
            flushes: AtomicU64::new(0),
            tasks: AtomicU64::new(tasks),
            written: AtomicU64::new(tasks),
            count_file,
        })
    }

    /// A task was written (not yet flushed): the next flush counts it.
    pub(crate) fn task_created(&self) {
        self.tasks.fetch_add(1, Ordering::SeqCst);
    }

    /// Flushes made so far (each one fsync, shared by its waiters).
    pub(crate) fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }

    /// Returns once everything written before the call is on disk.
    pub(crate) async fn commit(self: &Arc<Self>) -> Result<()> {
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
                    if let Err(e) = me.decisions.store_queued() {
                        tracing::error!("decision log: cannot store decisions: {e}");
                    }
                    // Every task counted here was written before this flush.
                    let tasks = me.tasks.load(Ordering::SeqCst);
                    let result = me.db.flush().map(drop);
                    me.flushes.fetch_add(1, Ordering::Relaxed);
                    if result.is_ok()
                        && me.written.swap(tasks, Ordering::SeqCst) != tasks
                        && let Err(e) = std::fs::write(&me.count_file, tasks.to_string())
                    {
                        tracing::warn!(file = %me.count_file.display(), "cannot record the task count: {e}");
                    }
                    for w in waiters {
                        let _ = w.send(result.clone());
                    }
                }
            });
        }
        rx.await
            .map_err(|_| Error::FlushStopped)?
            .map_err(Error::Storage)
    }
}
