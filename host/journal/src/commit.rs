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
    /// The count file, kept open: written in place after each flush that
    /// added tasks. The count never shrinks once the journal is open, so
    /// the new figure always covers the old one: no truncation (on a disk
    /// mounted with `discard`, truncating made every flush wait for the
    /// device to discard a block).
    count: Mutex<Option<std::fs::File>>,
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
            count: Mutex::new(None),
        })
    }

    /// Writes `tasks` over the count file's figure (see `count`).
    fn write_count(&self, tasks: u64) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let mut file = self.count.lock().unwrap_or_else(|p| p.into_inner());
        if file.is_none() {
            *file = Some(
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&self.count_file)?,
            );
        }
        let written = file
            .as_ref()
            .map(|f| f.write_all_at(tasks.to_string().as_bytes(), 0));
        if let Some(Err(e)) = written {
            // Opened again next time (the file may have been replaced).
            *file = None;
            return Err(e);
        }
        Ok(())
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
    ///
    /// The caller that finds no flush running leads: on a multi-thread
    /// runtime it flushes on its own thread (`block_in_place`), so the
    /// common case of one committer waits for the flush only, not for a
    /// blocking thread to start it and wake it back (≈ 60 µs per commit on
    /// the bench machine; tokio still moves the worker's other tasks to
    /// another thread, off the caller's path). Other futures of the
    /// caller's own task wait during the flush. Callers that arrive while
    /// a flush runs wait for the next one; if any are waiting when the
    /// leader's flush ends, a blocking thread serves them and the leader
    /// returns. (The flavor check is the entered runtime's: code that
    /// enters a multi-thread runtime's handle from inside a current-thread
    /// runtime would panic here; camina does not.)
    pub(crate) async fn commit(self: &Arc<Self>) -> Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let lead = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            s.1.push(tx);
            !std::mem::replace(&mut s.0, true)
        };
        if lead {
            let inline = tokio::runtime::Handle::try_current().is_ok_and(|h| {
                matches!(
                    h.runtime_flavor(),
                    tokio::runtime::RuntimeFlavor::MultiThread
                )
            });
            if inline {
                // This caller's waiter is in the round: nobody else takes
                // waiters while a leader is running.
                tokio::task::block_in_place(|| self.round());
            }
            if !inline || self.more() {
                let me = self.clone();
                tokio::task::spawn_blocking(move || while me.round() {});
            }
        }
        rx.await
            .map_err(|_| Error::FlushStopped)?
            .map_err(Error::Storage)
    }

    /// Whether callers are waiting for a flush; when none are, the lead is
    /// given up (the next caller leads).
    fn more(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.1.is_empty() {
            s.0 = false;
        }
        s.0
    }

    /// One flush for every caller waiting now. False (and the lead given
    /// up) when none was waiting.
    fn round(&self) -> bool {
        /// A flush that panics gives up the lead (its waiters are dropped:
        /// they get `FlushStopped`), so later commits are not stuck.
        struct Lead<'a>(&'a Committer);
        impl Drop for Lead<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    let mut s = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
                    s.0 = false;
                }
            }
        }
        let _lead = Lead(self);
        let waiters = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if s.1.is_empty() {
                s.0 = false;
                return false;
            }
            std::mem::take(&mut s.1)
        };
        if let Err(e) = self.decisions.store_queued() {
            tracing::error!("decision log: cannot store decisions: {e}");
        }
        // Every task counted here was written before this flush.
        let tasks = self.tasks.load(Ordering::SeqCst);
        let result = self.db.flush().map(drop);
        self.flushes.fetch_add(1, Ordering::Relaxed);
        if result.is_ok()
            && self.written.swap(tasks, Ordering::SeqCst) != tasks
            && let Err(e) = self.write_count(tasks)
        {
            tracing::warn!(file = %self.count_file.display(), "cannot record the task count: {e}");
        }
        for w in waiters {
            let _ = w.send(result.clone());
        }
        true
    }
}
