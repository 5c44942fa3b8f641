//! The durable-step seam: "run this named step, or return its recorded
//! result".
//!
//! The agent loop is written against [`Durable`] only. A resumed task runs
//! the loop again from the start; every step first looks at the next
//! recorded history entry: if it is this step's, its recorded result is
//! returned and nothing is executed (models are not re-asked, tools are not
//! re-run); if it belongs to another step, the history and the code
//! disagree and the task stops loudly; past the end of the history, the
//! step runs for real and its result is appended.
//!
//! This implementation replays the sled journal by position and checks step
//! names; a multi-node deployment can implement the same three operations
//! (`replay`, `record`, `wait for a decision`) on a durable-execution engine
//! (Restate's `ctx.run` has these semantics) without touching the loop.

use crate::events::Kind;
use crate::{EngineError, Result};
use camina_journal::{Durability, Journal, NewRecord, Record, Update};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// One task's durable context.
#[derive(Debug)]
pub struct Durable<'j> {
    journal: &'j Journal,
    pub task: String,
    history: VecDeque<Record>,
    /// Active time before this run segment.
    elapsed_base: u64,
    segment: Instant,
    /// Whether records were appended since the last flush.
    unflushed: AtomicBool,
}

impl<'j> Durable<'j> {
    /// The task's durable context from its records (read once by the
    /// engine, which hands them down).
    pub fn new(journal: &'j Journal, task: &str, records: Vec<Record>) -> Self {
        let elapsed_base = records.last().map_or(0, |r| r.elapsed_ms);
        Self {
            journal,
            task: task.to_owned(),
            history: records
                .into_iter()
                .filter(|r| Kind::of(r).is_some_and(Kind::replayed))
                .collect(),
            elapsed_base,
            segment: Instant::now(),
            unflushed: AtomicBool::new(false),
        }
    }

    /// Active time of the task so far (all run segments), in ms.
    pub fn elapsed_ms(&self) -> u64 {
        self.elapsed_base + self.segment.elapsed().as_millis() as u64
    }

    /// True while recorded history remains.
    pub fn replaying(&self) -> bool {
        !self.history.is_empty()
    }

    /// The kind of the next recorded entry, if it belongs to `step`.
    pub fn peek_kind(&self, step: &str) -> Option<Kind> {
        self.history
            .front()
            .filter(|r| r.step == step)
            .and_then(Kind::of)
    }

    /// Takes the next recorded entry if it belongs to `step`; `None` past
    /// the end of the history; an error if another step is recorded next.
    pub fn take(&mut self, step: &str) -> Result<Option<Record>> {
        match self.history.front() {
            None => Ok(None),
            Some(r) if r.step == step => Ok(self.history.pop_front()),
            Some(r) => Err(EngineError::Diverged {
                seq: r.seq,
                recorded: format!("{} `{}`", r.kind, r.step),
                now: step.to_owned(),
            }),
        }
    }

    /// Like [`Self::take`], but only an entry of `kind`.
    pub fn take_kind(&mut self, step: &str, kind: Kind) -> Result<Option<Record>> {
        if self
            .history
            .front()
            .is_some_and(|r| r.step == step && r.kind != kind.as_str())
        {
            let r = &self.history[0];
            return Err(EngineError::Diverged {
                seq: r.seq,
                recorded: format!("{} `{}`", r.kind, r.step),
                now: format!("{kind} `{step}`"),
            });
        }
        self.take(step)
    }

    /// Appends a record of `kind` for `step`.
    pub async fn record<T: Serialize>(
        &self,
        step: &str,
        kind: Kind,
        value: &T,
        durability: Durability,
    ) -> Result<()> {
        self.record_with(step, kind, value, durability, Update::default())
            .await
    }

    /// Appends a record with a summary change.
    pub async fn record_with<T: Serialize>(
        &self,
        step: &str,
        kind: Kind,
        value: &T,
        durability: Durability,
        update: Update,
    ) -> Result<()> {
        let data = serde_json::to_value(value).map_err(|e| EngineError::Internal(e.to_string()))?;
        self.journal
            .append(
                &self.task,
                NewRecord {
                    step: step.to_owned(),
                    kind: kind.as_str().to_owned(),
                    data,
                    elapsed_ms: self.elapsed_ms(),
                },
                update,
                durability,
            )
            .await?;
        // A flush makes everything appended before it durable too.
        self.unflushed.store(
            matches!(durability, Durability::Buffered),
            Ordering::Relaxed,
        );
        Ok(())
    }

    /// Makes every record appended so far durable (one group-committed
    /// flush, none if nothing is pending). The loop calls it before each
    /// outside action that must not be repeated for a lost record: asking a
    /// model (the replies and tool results before it) — tool intents are
    /// flushed themselves.
    pub async fn sync(&self) -> Result<()> {
        if self.unflushed.swap(false, Ordering::Relaxed)
            && let Err(e) = self.journal.flush().await
        {
            self.unflushed.store(true, Ordering::Relaxed);
            return Err(e.into());
        }
        Ok(())
    }

    /// Runs `f` as the step `step` of `kind`, or returns its recorded result.
    /// The record is buffered: these steps are derived from model replies
    /// already recorded and are made durable by the next [`Self::sync`] or
    /// flushed record.
    pub async fn run<T, F>(&mut self, step: &str, kind: Kind, f: F) -> Result<T>
    where
        T: Serialize + DeserializeOwned,
        F: Future<Output = Result<T>>,
    {
        if let Some(r) = self.take_kind(step, kind)? {
            return decode(&r);
        }
        let value = f.await?;
        self.record(step, kind, &value, Durability::Buffered)
            .await?;
        Ok(value)
    }

    pub fn journal(&self) -> &'j Journal {
        self.journal
    }
}

/// Decodes a record's payload.
pub fn decode<T: DeserializeOwned>(r: &Record) -> Result<T> {
    serde_json::from_value(r.data.clone()).map_err(|e| EngineError::Corrupt {
        seq: r.seq,
        reason: format!("{} `{}`: {e}", r.kind, r.step),
    })
}
