//! The durable-step seam: "run this named step, or return its recorded
//! result".
//!
//! The agent loop is written against [`Durable`] only, and every outside
//! action it takes (asking a model, running a tool, looking at the
//! workspace) happens inside a step's `live` future, so a backend decides
//! whether it runs. Two backends:
//!
//! - **The sled journal** (one process). A resumed task runs the loop again
//!   from the start; every step first looks at the next recorded history
//!   entry: if it is this step's, its recorded result is returned and the
//!   live future is dropped unpolled (models are not re-asked, tools are not
//!   re-run); if it belongs to another step, the history and the code
//!   disagree and the task stops loudly; past the end of the history, the
//!   step runs for real and its result is appended.
//! - **An outside durable-execution engine** ([`Steps`]; Restate in
//!   `camina-cluster`), which journals each step itself (Restate's
//!   `ctx.run` has exactly these semantics) and replays the handler after a
//!   worker dies. Records are also published to the engine's state, in the
//!   same form as the journal's, for readers.

use crate::agent::{Flow, Halt};
use crate::events::{Decision, Kind, ModelReplyEvent, ModelRequestEvent, ModelRequestRef};
use crate::{EngineError, Result};
use camina_journal::{Durability, Journal, Record, RecordRef, Update};
use camina_model::{ChatReply, ChatRequest, ModelRole};
use futures_util::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// A durable-execution engine that journals the steps itself.
///
/// Every call is made in the same order when the handler is replayed, so
/// an engine that checks the order of its journal (Restate does) sees the
/// same sequence.
pub trait Steps: Send + Sync {
    /// Runs `live` as the step `name` and journals its outcome, or returns
    /// the journaled outcome without polling `live`. The outcome's `Err` is
    /// a failure journaled as the step's result (the task fails with it,
    /// the same way on every replay); the `bool` says whether `live` ran
    /// now. `Err(Halt)`: the engine stopped the handler (cancelled, or the
    /// engine itself failed).
    fn step<'a>(
        &'a self,
        name: String,
        live: BoxFuture<'a, std::result::Result<Value, String>>,
    ) -> BoxFuture<'a, Flow<(std::result::Result<Value, String>, bool)>>;

    /// Makes a record (journaled by the step just before) and its change to
    /// the task's summary visible to readers. Called for replayed records
    /// too, in the same order.
    fn publish(&self, record: &Record, update: &Update);

    /// Waits for the decision on a side-effecting call that was interrupted
    /// (the task shows `needs-review` meanwhile); `n` counts the earlier
    /// reviews of the same call (a retry cut off again).
    fn review<'a>(&'a self, key: &'a str, n: u32, reason: &'a str)
    -> BoxFuture<'a, Flow<Decision>>;
}

enum Backend<'j> {
    Journal {
        history: Mutex<VecDeque<Record>>,
        /// Whether records were appended since the last flush.
        unflushed: AtomicBool,
    },
    Steps {
        steps: Box<dyn Steps + 'j>,
        /// The next record's sequence number.
        seq: AtomicU64,
    },
}

/// One task's durable context.
pub struct Durable<'j> {
    /// The task's journal (sled), or the worker's own (for the decision log
    /// only) when an outside engine journals the steps.
    journal: &'j Journal,
    pub task: String,
    backend: Backend<'j>,
    /// Active time at an instant: the start of this run segment (the
    /// journal), or the last record published (an outside engine, whose
    /// replayed records carry the active time of the run that made them).
    clock: Mutex<(u64, Instant)>,
}

impl std::fmt::Debug for Durable<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Durable")
            .field("task", &self.task)
            .field(
                "backend",
                &match self.backend {
                    Backend::Journal { .. } => "journal",
                    Backend::Steps { .. } => "steps",
                },
            )
            .finish_non_exhaustive()
    }
}

impl<'j> Durable<'j> {
    /// The task's durable context from its records (read once by the
    /// engine, which hands them down).
    pub fn new(journal: &'j Journal, task: &str, records: Vec<Record>) -> Self {
        let elapsed_base = records.last().map_or(0, |r| r.elapsed_ms);
        Self {
            journal,
            task: task.to_owned(),
            backend: Backend::Journal {
                history: Mutex::new(
                    records
                        .into_iter()
                        .filter(|r| Kind::of(r).is_some_and(Kind::replayed))
                        .collect(),
                ),
                unflushed: AtomicBool::new(false),
            },
            clock: Mutex::new((elapsed_base, Instant::now())),
        }
    }

    /// The task's durable context on an outside engine; `next_seq` is the
    /// sequence number of the first record this run publishes (records
    /// before it, e.g. `submitted`, were published by whoever created the
    /// task).
    pub fn on(journal: &'j Journal, task: &str, steps: Box<dyn Steps + 'j>, next_seq: u64) -> Self {
        Self {
            journal,
            task: task.to_owned(),
            backend: Backend::Steps {
                steps,
                seq: AtomicU64::new(next_seq),
            },
            clock: Mutex::new((0, Instant::now())),
        }
    }

    /// Active time of the task so far (all run segments), in ms.
    pub fn elapsed_ms(&self) -> u64 {
        let (base, at) = *self.clock.lock().unwrap_or_else(|p| p.into_inner());
        base + at.elapsed().as_millis() as u64
    }

    fn history(&self) -> Option<std::sync::MutexGuard<'_, VecDeque<Record>>> {
        match &self.backend {
            Backend::Journal { history, .. } => {
                Some(history.lock().unwrap_or_else(|p| p.into_inner()))
            }
            Backend::Steps { .. } => None,
        }
    }

    /// The next recorded entry if it belongs to `step` and is of `kind`;
    /// `None` past the end of the history; an error if another step (or
    /// another kind of this step) is recorded next.
    fn take_kind(&self, step: &str, kind: Kind) -> Result<Option<Record>> {
        let Some(mut history) = self.history() else {
            return Ok(None);
        };
        match history.front() {
            None => Ok(None),
            Some(r) if r.step == step && r.kind == kind.as_str() => Ok(history.pop_front()),
            Some(r) => Err(EngineError::Diverged {
                seq: r.seq,
                recorded: format!("{} `{}`", r.kind, r.step),
                now: format!("{kind} `{step}`"),
            }),
        }
    }

    /// The kind of the next recorded entry, if it belongs to `step`.
    fn peek_kind(&self, step: &str) -> Option<Kind> {
        self.history()?
            .front()
            .filter(|r| r.step == step)
            .and_then(Kind::of)
    }

    /// Runs `live` as the step `step` of `kind`, or returns its recorded
    /// result; the `bool` says whether `live` ran now. The record is made
    /// as durable as `durability` says before this returns.
    pub async fn step<T, F>(
        &self,
        step: &str,
        kind: Kind,
        durability: Durability,
        update: impl FnOnce(&T) -> Update,
        live: F,
    ) -> Flow<(T, bool)>
    where
        T: Serialize + DeserializeOwned,
        F: Future<Output = Flow<T>> + Send,
    {
        match &self.backend {
            Backend::Journal { .. } => {
                if let Some(r) = self.take_kind(step, kind)? {
                    return Ok((decode(&r)?, false));
                }
                let value = live.await?;
                self.record_with(step, kind, &value, durability, update(&value))
                    .await?;
                Ok((value, true))
            }
            Backend::Steps { steps, .. } => {
                let (data, at, elapsed_ms, fresh) = self
                    .journaled(&**steps, format!("{step} {kind}"), live)
                    .await?;
                let value: T =
                    serde_json::from_value(data.clone()).map_err(|e| EngineError::Corrupt {
                        seq: self.next_seq(),
                        reason: format!("{kind} `{step}`: {e}"),
                    })?;
                self.publish(step, kind, data, at, elapsed_ms, &update(&value));
                Ok((value, fresh))
            }
        }
    }

    /// Runs `live` as the outside engine's step `name`: the journaled value
    /// (or failure), its time and active time, and whether `live` ran now.
    async fn journaled<T, F>(
        &self,
        steps: &dyn Steps,
        name: String,
        live: F,
    ) -> Flow<(Value, String, u64, bool)>
    where
        T: Serialize,
        F: Future<Output = Flow<T>> + Send,
    {
        let live: BoxFuture<'_, std::result::Result<Value, String>> = Box::pin(async move {
            let v = live.await.map_err(|h| halt_text(&h))?;
            self.envelope(v)
        });
        let (outcome, fresh) = steps.step(name, live).await?;
        let (data, at, elapsed_ms) = opened(outcome.map_err(Halt::Failed)?);
        Ok((data, at, elapsed_ms, fresh))
    }

    /// [`Self::step`], buffered, no summary change, just the value: for
    /// steps derived from model replies already recorded (made durable by
    /// the next [`Self::sync`] or flushed record).
    pub async fn run<T, F>(&self, step: &str, kind: Kind, live: F) -> Flow<T>
    where
        T: Serialize + DeserializeOwned,
        F: Future<Output = Flow<T>> + Send,
    {
        Ok(self
            .step(
                step,
                kind,
                Durability::Buffered,
                |_| Update::default(),
                live,
            )
            .await?
            .0)
    }

    /// A step that records something only sometimes (`live` gives `None`:
    /// nothing recorded). With the journal, a step with nothing recorded is
    /// one whose next record is of another kind.
    pub async fn maybe<T, F>(
        &self,
        step: &str,
        kind: Kind,
        durability: Durability,
        live: F,
    ) -> Flow<Option<T>>
    where
        T: Serialize + DeserializeOwned,
        F: Future<Output = Flow<Option<T>>> + Send,
    {
        match &self.backend {
            Backend::Journal { .. } => {
                match self.peek_kind(step) {
                    Some(k) if k == kind => {
                        if let Some(r) = self.take_kind(step, kind)? {
                            return Ok(Some(decode(&r)?));
                        }
                    }
                    Some(_) => return Ok(None),
                    None => {}
                }
                let value = live.await?;
                if let Some(v) = &value {
                    self.record(step, kind, v, durability).await?;
                }
                Ok(value)
            }
            Backend::Steps { steps, .. } => {
                let (data, at, elapsed_ms, _) = self
                    .journaled(&**steps, format!("{step} {kind}?"), live)
                    .await?;
                if data.is_null() {
                    return Ok(None);
                }
                let r = self.publish(step, kind, data, at, elapsed_ms, &Update::default());
                Ok(Some(decode(&r)?))
            }
        }
    }

    /// A model call's request as the step `step`: recorded, or compared
    /// with the recorded one (a different request means the code, the
    /// plugins or the configuration changed since: the task cannot be
    /// replayed). Returns a reply recorded without its request (journals
    /// written before requests were recorded).
    pub async fn request(
        &self,
        step: &str,
        role: ModelRole,
        req: &ChatRequest,
    ) -> Flow<Option<ChatReply>> {
        let differs = |seq: u64, recorded: &ModelRequestEvent| -> Halt {
            EngineError::Diverged {
                seq,
                recorded: format!("a different {} request at `{step}`", recorded.role),
                now: format!("this {role} request (code, plugins or configuration changed)"),
            }
            .into()
        };
        match &self.backend {
            Backend::Journal { .. } => {
                if self.peek_kind(step) == Some(Kind::ModelReply) {
                    let r = self.take_kind(step, Kind::ModelReply)?;
                    return Ok(r
                        .map(|r| decode::<ModelReplyEvent>(&r))
                        .transpose()?
                        .map(|e| e.reply));
                }
                if let Some(r) = self.take_kind(step, Kind::ModelRequest)? {
                    let recorded: ModelRequestEvent = decode(&r)?;
                    if recorded.request != *req || recorded.role != role {
                        return Err(differs(r.seq, &recorded));
                    }
                    return Ok(None);
                }
                // Recorded from a borrowed event: the conversation is not
                // copied.
                let event = ModelRequestRef { role, request: req };
                self.record(step, Kind::ModelRequest, &event, Durability::Buffered)
                    .await?;
                Ok(None)
            }
            Backend::Steps { .. } => {
                let event = ModelRequestEvent {
                    role,
                    request: req.clone(),
                };
                let seq = self.next_seq();
                let (recorded, _): (ModelRequestEvent, _) = self
                    .step(
                        step,
                        Kind::ModelRequest,
                        Durability::Buffered,
                        |_| Update::default(),
                        async { Ok(event) },
                    )
                    .await?;
                if recorded.request != *req || recorded.role != role {
                    return Err(differs(seq, &recorded));
                }
                Ok(None)
            }
        }
    }

    /// Appends a record of `kind` for `step` that is not replayed (a
    /// milestone: started, reviewed, stopped).
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
        self.append(step, kind, value, durability, update)
            .await
            .map(|_| ())
    }

    /// [`Self::record`], saying whether the record was written now: always
    /// with the journal (these records are not replayed); on an outside
    /// engine, false when it replayed the record from an earlier run.
    pub async fn record_fresh<T: Serialize>(
        &self,
        step: &str,
        kind: Kind,
        value: &T,
        durability: Durability,
    ) -> Result<bool> {
        self.append(step, kind, value, durability, Update::default())
            .await
    }

    async fn append<T: Serialize>(
        &self,
        step: &str,
        kind: Kind,
        value: &T,
        durability: Durability,
        update: Update,
    ) -> Result<bool> {
        match &self.backend {
            Backend::Journal { unflushed, .. } => {
                self.journal
                    .append_value(
                        &self.task,
                        RecordRef {
                            step,
                            kind: kind.as_str(),
                            data: value,
                            elapsed_ms: self.elapsed_ms(),
                        },
                        update,
                        durability,
                    )
                    .await?;
                // A flush makes everything appended before it durable too.
                unflushed.store(
                    matches!(durability, Durability::Buffered),
                    Ordering::Relaxed,
                );
                Ok(true)
            }
            Backend::Steps { steps, .. } => {
                let data = serde_json::to_value(value)
                    .map_err(|e| EngineError::Internal(e.to_string()))?;
                // Journaled by the engine like any step, so a replay
                // publishes the same record at the same place.
                let (outcome, fresh) = steps
                    .step(
                        format!("{step} {kind}"),
                        Box::pin(async move { self.envelope(data) }),
                    )
                    .await
                    .map_err(|h| match h {
                        Halt::Cancelled(reason) => EngineError::Cancelled(reason),
                        h => EngineError::Internal(halt_text(&h)),
                    })?;
                let (data, at, elapsed_ms) = opened(outcome.map_err(EngineError::Internal)?);
                self.publish(step, kind, data, at, elapsed_ms, &update);
                Ok(fresh)
            }
        }
    }

    fn next_seq(&self) -> u64 {
        match &self.backend {
            Backend::Steps { seq, .. } => seq.load(Ordering::Relaxed),
            Backend::Journal { .. } => 0,
        }
    }

    /// What an outside engine journals for a step: its value with the
    /// time it was made, so a replay publishes the same record.
    fn envelope<T: Serialize>(&self, value: T) -> std::result::Result<Value, String> {
        let v = serde_json::to_value(value).map_err(|e| format!("internal: {e}"))?;
        Ok(serde_json::json!({
            "v": v,
            "at": camina_journal::now(),
            "ms": self.elapsed_ms(),
        }))
    }

    /// Publishes a journaled step's record (outside engines only).
    fn publish(
        &self,
        step: &str,
        kind: Kind,
        data: Value,
        at: String,
        elapsed_ms: u64,
        update: &Update,
    ) -> Record {
        let Backend::Steps { steps, seq } = &self.backend else {
            unreachable!("only outside engines publish");
        };
        *self.clock.lock().unwrap_or_else(|p| p.into_inner()) = (elapsed_ms, Instant::now());
        let r = Record {
            seq: seq.fetch_add(1, Ordering::Relaxed),
            at,
            elapsed_ms,
            step: step.to_owned(),
            kind: kind.as_str().to_owned(),
            data,
        };
        steps.publish(&r, update);
        r
    }

    /// Makes every record appended so far durable (one group-committed
    /// flush, none if nothing is pending). The loop calls it before each
    /// outside action that must not be repeated for a lost record: asking a
    /// model (the replies and tool results before it) — tool intents are
    /// flushed themselves. An outside engine has every step durable when
    /// the step returns.
    pub async fn sync(&self) -> Result<()> {
        if let Backend::Journal { unflushed, .. } = &self.backend
            && unflushed.swap(false, Ordering::Relaxed)
            && let Err(e) = self.journal.flush().await
        {
            unflushed.store(true, Ordering::Relaxed);
            return Err(e.into());
        }
        Ok(())
    }

    /// The decision on an interrupted side-effecting call: with the
    /// journal, the one the resume came with (none: the task stops in
    /// `needs-review`); on an outside engine, the task waits for it.
    /// `n` counts the reviews of this call so far (a retried call can be
    /// cut off again). The wait is not running time.
    pub async fn review(
        &self,
        key: &str,
        n: u32,
        reason: String,
        given: Option<Decision>,
    ) -> Flow<Decision> {
        match (&self.backend, given) {
            (_, Some(d)) => Ok(d),
            (Backend::Journal { .. }, None) => Err(Halt::Review {
                key: key.to_owned(),
                reason,
            }),
            (Backend::Steps { steps, .. }, None) => {
                let before = self.elapsed_ms();
                let decision = steps.review(key, n, &reason).await;
                *self.clock.lock().unwrap_or_else(|p| p.into_inner()) = (before, Instant::now());
                decision
            }
        }
    }

    /// Whether an outside engine journals the steps (replays are its own:
    /// a plugin changed since a recorded intent is checked per call then).
    pub fn external(&self) -> bool {
        matches!(self.backend, Backend::Steps { .. })
    }

    pub fn journal(&self) -> &'j Journal {
        self.journal
    }
}

/// How a stop inside a step is journaled on an outside engine: as the
/// step's failure.
fn halt_text(h: &Halt) -> String {
    match h {
        Halt::Failed(m) => m.clone(),
        Halt::Cancelled(m) => format!("cancelled: {m}"),
        Halt::Paused => "the worker shut down".to_owned(),
        Halt::Review { reason, .. } => reason.clone(),
        Halt::Engine(e) => e.to_string(),
    }
}

/// The value, time and active time of an [`Durable::envelope`].
fn opened(mut e: Value) -> (Value, String, u64) {
    let at = e["at"].as_str().unwrap_or_default().to_owned();
    let ms = e["ms"].as_u64().unwrap_or_default();
    (e["v"].take(), at, ms)
}

/// Decodes a record's payload.
pub fn decode<T: DeserializeOwned>(r: &Record) -> Result<T> {
    serde_json::from_value(r.data.clone()).map_err(|e| EngineError::Corrupt {
        seq: r.seq,
        reason: format!("{} `{}`: {e}", r.kind, r.step),
    })
}
