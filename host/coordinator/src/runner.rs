//! Scheduling, one way for every front end: which tasks run, how many at
//! once, what a start picks up, and how they stop. `camina run`, `camina
//! serve` (the HTTP API) and `camina mcp` all run tasks through a
//! [`Runner`] over the one [`Engine`].
//!
//! At most `max_running` tasks run at once; the rest wait for a slot
//! (`queued`). A task is with the runner once at a time: a second start of
//! a task still queued or running is refused. On shutdown new work is
//! refused, running tasks stop at their next boundary (in-flight tool calls
//! finish or time out; the task is `interrupted` and resumes later), and
//! the journal is flushed.

use crate::{Engine, Result, RunOptions};
use camina_journal::TaskSummary;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// See the module docs. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Runner {
    engine: Arc<Engine>,
    state: Arc<State>,
}

struct State {
    slots: Arc<tokio::sync::Semaphore>,
    closing: AtomicBool,
    background: tokio::sync::Mutex<tokio::task::JoinSet<()>>,
    /// Tasks handed to the runner and not finished (waiting for a slot, or
    /// running).
    pending: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("closing", &self.closing())
            .finish_non_exhaustive()
    }
}

/// Why the runner did not take a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// It is already queued or running here.
    Busy,
    /// The runner is shutting down.
    Closing,
}

impl Runner {
    pub fn new(engine: Arc<Engine>, max_running: usize) -> Self {
        Self {
            engine,
            state: Arc::new(State {
                slots: Arc::new(tokio::sync::Semaphore::new(max_running.max(1))),
                closing: AtomicBool::new(false),
                background: tokio::sync::Mutex::new(tokio::task::JoinSet::new()),
                pending: Mutex::new(HashSet::new()),
            }),
        }
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Takes `id` for this runner (until [`Self::release`]).
    fn take(&self, id: &str) -> std::result::Result<(), Refused> {
        if self.closing() {
            return Err(Refused::Closing);
        }
        if self.pending().insert(id.to_owned()) {
            Ok(())
        } else {
            Err(Refused::Busy)
        }
    }

    fn release(&self, id: &str) {
        self.pending().remove(id);
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.state.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `id` is queued or running here.
    pub fn has(&self, id: &str) -> bool {
        self.pending().contains(id)
    }

    /// Starts (or queues) task `id` in the background; the outcome is in
    /// the journal.
    pub async fn spawn(&self, id: String, opts: RunOptions) -> std::result::Result<(), Refused> {
        self.take(&id)?;
        let me = self.clone();
        let mut background = self.state.background.lock().await;
        // Reap finished runs so the set does not grow with every task.
        while background.try_join_next().is_some() {}
        background.spawn(async move {
            if let Ok(_slot) = me.state.slots.clone().acquire_owned().await {
                match me.engine.run(&id, opts).await {
                    Ok(t) => tracing::info!(task = %id, status = %t.status, "task stopped"),
                    Err(e) => tracing::warn!(task = %id, "task could not run: {e}"),
                }
            }
            me.release(&id);
        });
        Ok(())
    }

    /// Runs task `id` here and now (after waiting for a slot), for a front
    /// end that reports the outcome itself (`camina run`, the MCP tool).
    /// `Ok(Err(_))`: the runner did not take it.
    pub async fn run(
        &self,
        id: &str,
        opts: RunOptions,
    ) -> std::result::Result<Result<TaskSummary>, Refused> {
        self.take(id)?;
        let outcome = match self.state.slots.clone().acquire_owned().await {
            Ok(_slot) => self.engine.run(id, opts).await,
            Err(_) => Err(crate::EngineError::ShuttingDown),
        };
        self.release(id);
        Ok(outcome)
    }

    /// Picks up what a previous process left ([`Engine::left_over`]): tasks
    /// with an undo cut short (a run finishes it first), then interrupted
    /// and queued tasks, oldest first, in the background. Returns their ids.
    pub async fn resume_left_over(&self) -> Result<Vec<String>> {
        let left = self.engine.left_over()?;
        let mut resumed: Vec<String> = Vec::new();
        for t in left.undos.into_iter().map(|(t, _)| t).chain(left.waiting) {
            if !resumed.contains(&t.id)
                && self
                    .spawn(t.id.clone(), RunOptions::default())
                    .await
                    .is_ok()
            {
                resumed.push(t.id);
            }
        }
        Ok(resumed)
    }

    pub fn closing(&self) -> bool {
        self.state.closing.load(Ordering::SeqCst)
    }

    /// Graceful shutdown: refuse new work, let running tasks reach their
    /// next boundary (for up to `grace`; the rest resume at the next start),
    /// flush the journal.
    pub async fn shutdown(&self, grace: Duration) {
        self.state.closing.store(true, Ordering::SeqCst);
        self.engine.pause_all();
        let deadline = tokio::time::Instant::now() + grace;
        let mut background = std::mem::take(&mut *self.state.background.lock().await);
        let drained = tokio::time::timeout_at(deadline, async {
            while background.join_next().await.is_some() {}
        })
        .await;
        // Foreground runs (`run`) stop the same way.
        while !self.engine.running().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if drained.is_err() || !self.engine.running().is_empty() {
            tracing::warn!(
                "tasks still running after {grace:?}; they will resume at the next start"
            );
        }
        if let Err(e) = self.engine.flush().await {
            tracing::error!("flushing the journal: {e}");
        }
    }
}
