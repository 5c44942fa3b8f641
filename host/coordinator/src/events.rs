//! What the coordinator writes to the journal, typed.
//!
//! Records fall in two groups. The *deterministic* ones (model requests and
//! replies, advice, plan, step starts and ends, tool intents and results,
//! the answer) form the replayable history: a resumed task re-runs the agent
//! loop and consumes them in order. The *meta* ones (submitted, started,
//! failed, cancelled, needs-review, review) describe the task's life and are
//! skipped by replay.

use camina_model::{ChatReply, ChatRequest, ModelRole};
use serde::{Deserialize, Serialize};

/// Limits of one task, fixed at submission (and kept in the journal, so a
/// restart does not reset them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budgets {
    /// Model turns per crew step.
    pub max_turns: u32,
    /// Model calls for the whole task.
    pub max_model_calls: u32,
    /// Active (running) time for the whole task, in ms.
    pub max_wall_ms: u64,
    /// Corrective retries after invalid model output, per decision.
    pub max_invalid_retries: u32,
    /// Steps a plan may have.
    #[serde(default = "default_max_steps")]
    pub max_steps: u32,
}

fn default_max_steps() -> u32 {
    8
}

impl Default for Budgets {
    fn default() -> Self {
        Self {
            max_turns: 12,
            max_model_calls: 60,
            max_wall_ms: 30 * 60 * 1000,
            max_invalid_retries: 2,
            max_steps: default_max_steps(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submitted {
    pub prompt: String,
    pub workspace: String,
    pub budgets: Budgets,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Started {
    pub pid: u32,
    pub resumed: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRequestEvent {
    pub role: ModelRole,
    pub request: ChatRequest,
}

/// [`ModelRequestEvent`] as it is written: the same fields, borrowing the
/// request (a whole conversation) instead of copying it.
#[derive(Debug, Serialize)]
pub struct ModelRequestRef<'a> {
    pub role: ModelRole,
    pub request: &'a ChatRequest,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelReplyEvent {
    pub role: ModelRole,
    pub reply: ChatReply,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Advice {
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thinking: Option<String>,
}

/// What a task works with, fixed when it first starts so that a resume
/// asks the same questions even after plugins were installed or removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Setup {
    pub crews: Vec<crate::toolbox::Crew>,
    /// Whether the reasoner was asked to think.
    pub think: bool,
    /// Whether the reasoner is consulted: not when it is the coordinator's
    /// own model (asking the same model for advice first adds a call and
    /// nothing else). Tasks recorded before this field consulted it.
    #[serde(default = "yes")]
    pub consult: bool,
    /// The workspace's paths when the task started (what the coordinator
    /// plans with; recorded so a resumed task asks the same questions).
    #[serde(default)]
    pub files: Vec<String>,
    /// The paths the task names that did not exist when it started (see
    /// [`crate::scope`]): a task ending with one missing was not done.
    #[serde(default)]
    pub outputs: Vec<String>,
    /// Whether the coordinator plans a task that one crew can do alone
    /// (see [`crate::prompts::one_crew`]); tasks recorded before this
    /// field were always planned.
    #[serde(default = "yes")]
    pub plans: bool,
}

/// What kind of task it is (the coordinator's triage): whether it asks
/// for changes to files. `None`: the model did not say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Triage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes_files: Option<bool>,
}

/// A call refused before it ran: it would change `path`, which the task
/// does not name (see [`crate::scope`]), or only reads from; or rewrite it
/// unread; or change anything in a task that only asks a question.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolRefused {
    pub tool: String,
    pub path: String,
    /// Refused because it would rewrite an existing file no call of the
    /// task had read (else: the task does not name the path).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub not_read: bool,
    /// Refused because the task only asks a question (its triage).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub question: bool,
    /// Refused because the path is one the task reads from.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub source: bool,
    /// Refused because the task says to leave the path as it is when it
    /// exists, and it does.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub kept: bool,
    /// Refused because most lines of the text it would write come from
    /// neither the task nor any result its calls returned (these lines):
    /// see [`crate::ground`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub invented: Vec<String>,
}

fn yes() -> bool {
    true
}

/// One delegated step of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanStep {
    pub crew: crate::toolbox::CrewKind,
    pub instruction: String,
}

/// The coordinator's plan: steps, or a direct answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<PlanStep>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    /// With a direct answer: whether the task was done (missing: yes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepStarted {
    pub index: usize,
    pub crew: crate::toolbox::CrewKind,
    pub instruction: String,
}

/// A tool call about to run. Durable before the tool runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolIntent {
    pub plugin: String,
    pub digest: camina_policy::Digest,
    pub policy_hash: camina_policy::Digest,
    pub tool: String,
    /// The function name the model used (`tool` or `plugin__tool`).
    pub function: String,
    pub input: serde_json::Value,
    pub effect: camina_sandbox::Effect,
    /// The idempotency key `task:step:n`: the task id, the plan step's
    /// index and the call's index within that step (from 0); unique per
    /// call and the same on every replay.
    pub key: String,
}

/// What a tool call came to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolResult {
    pub key: String,
    /// The tool's JSON output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// `kind` (a tool-error kind, `limit`, `trap`, `skipped`) and message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<(String, String)>,
    pub elapsed_ms: u64,
    /// Sandbox refusals during the call, in words.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub denials: Vec<String>,
}

impl ToolResult {
    /// The text the model sees: the output's JSON, with its multi-line
    /// strings (a file's content) pulled out below it as plain text, so
    /// the model reads lines, not `\n` escapes.
    pub fn for_model(&self, cap: usize) -> String {
        let mut text = match (&self.output, &self.error) {
            (Some(o), _) => readable(o),
            (None, Some((kind, msg))) => format!("error ({kind}): {msg}"),
            (None, None) => "(no output)".into(),
        };
        if text.len() > cap {
            let total = text.len();
            let mut end = cap;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push_str(&format!("… [truncated: {total} bytes in all]"));
        }
        text
    }
}

/// A tool's JSON output with each top-level string that spans lines moved
/// out of the object and shown after it as `field:` and its text.
fn readable(output: &str) -> String {
    let Ok(serde_json::Value::Object(mut map)) = serde_json::from_str(output) else {
        return output.to_owned();
    };
    let long: Vec<String> = map
        .iter()
        .filter(|(_, v)| v.as_str().is_some_and(|t| t.contains('\n')))
        .map(|(k, _)| k.clone())
        .collect();
    if long.is_empty() {
        return output.to_owned();
    }
    let mut blocks = String::new();
    for k in long {
        if let Some(serde_json::Value::String(t)) = map.remove(&k) {
            blocks.push_str(&format!("\n{k}:\n{t}"));
        }
    }
    format!("{}{blocks}", serde_json::Value::Object(map))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepFinished {
    pub index: usize,
    /// What the next steps and the answer see.
    pub result: String,
    /// False when the step did not finish its job: it stopped at
    /// `max_turns` or on a repeated call, or failed (see `failure`).
    pub complete: bool,
    /// Why the step failed: the crew made no tool call, or its last call
    /// failed with no later call succeeding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// What the step's successful calls changed (`write_file notes.txt`),
    /// from the calls themselves, not the crew's report.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    pub text: String,
    /// Whether the task was done; a task not done ends `failed` (answers
    /// recorded before this field were all taken as done).
    #[serde(default = "yes")]
    pub done: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NeedsReview {
    pub key: String,
    pub reason: String,
}

/// How an interrupted side-effecting call is settled on resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// Run it again.
    Retry,
    /// Do not run it; tell the model it was skipped.
    Skip,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Review {
    pub key: String,
    pub decision: Decision,
}

/// What a record says happened: the `kind` of every record the engine
/// writes. The journal stores it as its string (`model_reply`…); only this
/// enum names kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Submitted,
    Started,
    Setup,
    Check,
    Checked,
    ToolRefused,
    ModelRequest,
    ModelReply,
    Advice,
    Triage,
    Plan,
    StepStarted,
    ToolIntent,
    ToolResult,
    StepFinished,
    Answer,
    Review,
    Failed,
    Cancelled,
    Paused,
    NeedsReview,
    UndoStarted,
    Undone,
}

impl Kind {
    pub const ALL: [Kind; 23] = [
        Kind::Submitted,
        Kind::Started,
        Kind::Setup,
        Kind::Check,
        Kind::Checked,
        Kind::ToolRefused,
        Kind::ModelRequest,
        Kind::ModelReply,
        Kind::Advice,
        Kind::Triage,
        Kind::Plan,
        Kind::StepStarted,
        Kind::ToolIntent,
        Kind::ToolResult,
        Kind::StepFinished,
        Kind::Answer,
        Kind::Review,
        Kind::Failed,
        Kind::Cancelled,
        Kind::Paused,
        Kind::NeedsReview,
        Kind::UndoStarted,
        Kind::Undone,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Submitted => "submitted",
            Kind::Started => "started",
            Kind::Setup => "setup",
            Kind::Check => "check",
            Kind::Checked => "checked",
            Kind::ToolRefused => "tool_refused",
            Kind::ModelRequest => "model_request",
            Kind::ModelReply => "model_reply",
            Kind::Advice => "advice",
            Kind::Triage => "triage",
            Kind::Plan => "plan",
            Kind::StepStarted => "step_started",
            Kind::ToolIntent => "tool_intent",
            Kind::ToolResult => "tool_result",
            Kind::StepFinished => "step_finished",
            Kind::Answer => "answer",
            Kind::Review => "review",
            Kind::Failed => "failed",
            Kind::Cancelled => "cancelled",
            Kind::Paused => "paused",
            Kind::NeedsReview => "needs_review",
            Kind::UndoStarted => "undo_started",
            Kind::Undone => "undone",
        }
    }

    /// The kind a stored record names (`None`: one this build does not
    /// know, e.g. written by a newer camina).
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The kind of a stored record.
    pub fn of(r: &camina_journal::Record) -> Option<Kind> {
        Kind::parse(&r.kind)
    }

    /// Part of the deterministic history a resumed task replays (the
    /// others describe the task's life and are skipped by replay).
    pub fn replayed(self) -> bool {
        matches!(
            self,
            Kind::Setup
                | Kind::Check
                | Kind::Checked
                | Kind::ToolRefused
                | Kind::ModelRequest
                | Kind::ModelReply
                | Kind::Advice
                | Kind::Triage
                | Kind::Plan
                | Kind::StepStarted
                | Kind::ToolIntent
                | Kind::ToolResult
                | Kind::StepFinished
                | Kind::Answer
        )
    }

    /// Ends a run of the task (it stopped: done, failed, cancelled, paused
    /// or waiting for review).
    pub fn ends_run(self) -> bool {
        matches!(
            self,
            Kind::Answer | Kind::Failed | Kind::Cancelled | Kind::NeedsReview | Kind::Paused
        )
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored record's payload, typed by its kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Submitted(Submitted),
    Started(Started),
    Setup(Box<Setup>),
    Check(crate::checks::Check),
    Checked(Vec<String>),
    ToolRefused(ToolRefused),
    ModelRequest(Box<ModelRequestEvent>),
    ModelReply(Box<ModelReplyEvent>),
    Advice(Advice),
    Triage(Triage),
    Plan(Plan),
    StepStarted(StepStarted),
    ToolIntent(ToolIntent),
    ToolResult(ToolResult),
    StepFinished(StepFinished),
    Answer(Answer),
    Review(Review),
    Failed(Reason),
    Cancelled(Reason),
    Paused(Reason),
    NeedsReview(NeedsReview),
    UndoStarted(UndoStarted),
    Undone(crate::undo::UndoReport),
    /// A kind this build does not know (a newer camina wrote it).
    Unknown,
}

/// The payload of `undo_started`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UndoStarted {
    pub force: bool,
}

impl Event {
    /// Decodes a stored record.
    pub fn decode(r: &camina_journal::Record) -> Result<Event, serde_json::Error> {
        fn p<T: serde::de::DeserializeOwned>(
            r: &camina_journal::Record,
        ) -> Result<T, serde_json::Error> {
            T::deserialize(&r.data)
        }
        let Some(kind) = Kind::of(r) else {
            return Ok(Event::Unknown);
        };
        Ok(match kind {
            Kind::Submitted => Event::Submitted(p(r)?),
            Kind::Started => Event::Started(p(r)?),
            Kind::Setup => Event::Setup(p(r)?),
            Kind::Check => Event::Check(p(r)?),
            Kind::Checked => Event::Checked(p(r)?),
            Kind::ToolRefused => Event::ToolRefused(p(r)?),
            Kind::ModelRequest => Event::ModelRequest(p(r)?),
            Kind::ModelReply => Event::ModelReply(p(r)?),
            Kind::Advice => Event::Advice(p(r)?),
            Kind::Triage => Event::Triage(p(r)?),
            Kind::Plan => Event::Plan(p(r)?),
            Kind::StepStarted => Event::StepStarted(p(r)?),
            Kind::ToolIntent => Event::ToolIntent(p(r)?),
            Kind::ToolResult => Event::ToolResult(p(r)?),
            Kind::StepFinished => Event::StepFinished(p(r)?),
            Kind::Answer => Event::Answer(p(r)?),
            Kind::Review => Event::Review(p(r)?),
            Kind::Failed => Event::Failed(p(r)?),
            Kind::Cancelled => Event::Cancelled(p(r)?),
            Kind::Paused => Event::Paused(p(r)?),
            Kind::NeedsReview => Event::NeedsReview(p(r)?),
            Kind::UndoStarted => Event::UndoStarted(p(r)?),
            Kind::Undone => Event::Undone(p(r)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_stored_as_its_serde_name_and_read_back() {
        for k in Kind::ALL {
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str(), "{k:?}");
            assert_eq!(Kind::parse(k.as_str()), Some(k));
        }
        assert_eq!(Kind::parse("written_by_a_newer_camina"), None);
    }

    fn ok(output: &str) -> ToolResult {
        ToolResult {
            key: "k".into(),
            output: Some(output.into()),
            error: None,
            elapsed_ms: 0,
            denials: Vec::new(),
        }
    }

    #[test]
    fn a_file_read_shows_its_lines_not_escapes() {
        let r = ok(r#"{"path":"a.txt","content":"one\ntwo\n","lines":2}"#);
        assert_eq!(
            r.for_model(1000),
            "{\"path\":\"a.txt\",\"lines\":2}\ncontent:\none\ntwo\n"
        );
        // Single-line strings, arrays and non-JSON stay as they are.
        let flat = r#"{"path":"a.txt","content":"one"}"#;
        assert_eq!(ok(flat).for_model(1000), flat);
        assert_eq!(ok("plain").for_model(1000), "plain");
        let cut = ok(r#"{"content":"abcdef\nghijkl"}"#).for_model(10);
        assert!(
            cut.starts_with("{}\nconte") && cut.contains("truncated"),
            "{cut}"
        );
    }
}
