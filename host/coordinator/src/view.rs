//! A task as one JSON document, for `camina task show --json` and
//! `GET /v1/tasks/{id}`: the summary's fields at the top level (`id`,
//! `status`, `created_at`, …), then the advice, the plan, the steps with
//! their tool calls and outcomes (with the paths each call changed that
//! `task undo` can give back), the model calls, and the raw records.

use crate::events::Event;
use std::collections::BTreeMap;

/// A task as readers show it ([`crate::Engine::view`]).
#[derive(Debug, Clone)]
pub struct TaskView {
    pub task: TaskSummary,
    pub records: Vec<Record>,
    /// The paths each call (by journal step) changed that undo can restore.
    pub undoable: BTreeMap<String, Vec<String>>,
    /// Whether the task's before-images were pruned (nothing to undo).
    pub pruned: bool,
}

impl TaskView {
    /// The task as one JSON document ([`task_json`]).
    pub fn json(&self) -> Value {
        task_json(&self.task, &self.records, &self.undoable)
    }
}
use camina_journal::{Record, TaskSummary};
use serde_json::{Value, json};

/// `camina task show --json`: the summary fields at the top level, plus the
/// plan, steps with their tool calls, model calls and the raw records.
/// `undoable`: the paths each call (by journal step) changed that undo can
/// restore (see [`crate::undo::undoable`]).
pub fn task_json(
    t: &TaskSummary,
    records: &[Record],
    undoable: &BTreeMap<String, Vec<String>>,
) -> Value {
    let mut plan = Value::Null;
    let mut steps: Vec<Value> = Vec::new();
    let mut models: Vec<Value> = Vec::new();
    let mut advice = Value::Null;
    for r in records {
        // A record that does not decode (or of a kind this build does not
        // know) is still listed under `events`, raw.
        let Ok(event) = Event::decode(r) else {
            continue;
        };
        match event {
            Event::Advice(a) => advice = json!(a),
            Event::Plan(p) => plan = json!(p),
            Event::StepStarted(s) => steps.push(json!({
                "index": s.index, "crew": s.crew, "instruction": s.instruction,
                "tool_calls": [], "result": null, "complete": null
            })),
            Event::ToolIntent(i) => {
                if let Some(s) = steps.last_mut()
                    && let Some(calls) = s["tool_calls"].as_array_mut()
                {
                    calls.push(json!({
                        "key": i.key, "plugin": i.plugin, "tool": i.tool, "input": i.input,
                        "effect": i.effect, "digest": i.digest, "policy_hash": i.policy_hash,
                        "outcome": null,
                        "undoable": undoable.get(&r.step).cloned().unwrap_or_default()
                    }));
                }
            }
            Event::ToolResult(res) => {
                if let Some(s) = steps.last_mut()
                    && let Some(calls) = s["tool_calls"].as_array_mut()
                    && let Some(c) = calls.iter_mut().rev().find(|c| c["key"] == res.key)
                {
                    c["outcome"] = json!(res);
                }
            }
            Event::StepFinished(f) => {
                if let Some(s) = steps.last_mut() {
                    s["result"] = json!(f.result);
                    s["complete"] = json!(f.complete);
                }
            }
            Event::ModelReply(m) => {
                let reply = &m.reply;
                let message = &reply.message;
                models.push(json!({
                    "step": r.step, "role": m.role, "backend": reply.backend, "model": reply.model,
                    "content": message.content, "thinking": message.thinking,
                    "tool_calls": (!message.tool_calls.is_empty()).then_some(&message.tool_calls),
                    "prompt_tokens": reply.prompt_tokens,
                    "prompt_eval_tokens": reply.prompt_eval_tokens,
                    "completion_tokens": reply.completion_tokens, "done_reason": reply.done_reason
                }));
            }
            _ => {}
        }
    }
    json!({
        "id": t.id, "status": t.status, "created_at": t.created_at, "updated_at": t.updated_at,
        "prompt": t.prompt, "workspace": t.workspace, "answer": t.answer, "error": t.error,
        "advice": advice, "plan": plan, "steps": steps, "model_calls": models, "events": records
    })
}
