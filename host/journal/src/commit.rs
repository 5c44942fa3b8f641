//! Group commit: one flush serves everyone who asked while the previous
//! flush ran, so concurrent durable appends share an fsync.

use crate::{Error, Result};
use std::sync::{Arc, Mutex};

type Waiter = tokio::sync::oneshot::Sender<Result<(), sled::Error>>;

pub(crate) struct Committer {
    db: sled::Db,
    /// (a flusher is running, callers waiting for the next flush)
    state: Mutex<(bool, Vec<Waiter>)>,
}

impl Committer {
    pub(crate) fn new(db: sled::Db) -> Arc<Self> {
        Arc::new(Self {
            db,
            state: Mutex::new((false, Vec::new())),
        })
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
                    let result = me.db.flush().map(drop);
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
