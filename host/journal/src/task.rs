//! What the journal stores about a task: its [`Status`], its
//! [`TaskSummary`] (the index entry) and its [`Record`]s.

use serde::{Deserialize, Serialize};
use serde_json::Value;

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
    pub const ALL: [Status; 7] = [
        Status::Queued,
        Status::Running,
        Status::Succeeded,
        Status::Failed,
        Status::Cancelled,
        Status::Interrupted,
        Status::NeedsReview,
    ];

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
        Self::ALL.into_iter().find(|st| st.as_str() == s)
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

/// A record to append, borrowed: its data is any serializable value
/// ([`crate::Journal::append_value`]).
#[derive(Debug)]
pub struct RecordRef<'a, T> {
    pub step: &'a str,
    pub kind: &'a str,
    pub data: &'a T,
    pub elapsed_ms: u64,
}

impl<T> Clone for RecordRef<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for RecordRef<'_, T> {}

impl<'a> RecordRef<'a, Value> {
    pub fn of(r: &'a NewRecord) -> Self {
        Self {
            step: &r.step,
            kind: &r.kind,
            data: &r.data,
            elapsed_ms: r.elapsed_ms,
        }
    }
}

/// A [`Record`] as it is written: the same fields, in the same order,
/// borrowed; the data already serialized.
#[derive(Serialize)]
pub(crate) struct Written<'a> {
    pub seq: u64,
    pub at: &'a str,
    pub elapsed_ms: u64,
    pub step: &'a str,
    pub kind: &'a str,
    pub data: &'a serde_json::value::RawValue,
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

impl Update {
    /// Changes nothing in the summary.
    pub(crate) fn is_plain(&self) -> bool {
        self.status.is_none() && self.answer.is_none() && self.error.is_none() && !self.clear_error
    }

    /// Applies the change to `summary`, stamped `at`.
    pub fn apply_to(&self, summary: &mut TaskSummary, at: String) {
        if let Some(s) = self.status {
            summary.status = s;
        }
        if let Some(a) = &self.answer {
            summary.answer = Some(a.clone());
        }
        if self.clear_error {
            summary.error = None;
        }
        if let Some(e) = &self.error {
            summary.error = Some(e.clone());
        }
        summary.updated_at = at;
    }
}

/// How durable an append must be before it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// On disk (fsync, group-committed) before returning.
    Flush,
    /// In sled's log; on disk at the next flush.
    Buffered,
}
