//! A task as one JSON document, for `camina task show --json` and
//! `GET /v1/tasks/{id}`: the summary's fields at the top level (`id`,
//! `status`, `created_at`, …), then the advice, the plan, the steps with
//! their tool calls and outcomes (with the paths each call changed that
//! `task undo` can give back), the model calls, and the raw records.

use camina_journal::{Record, TaskSummary};
use serde_json::{Value, json};

/// `camina task show --json`: the summary fields at the top level, plus the
/// plan, steps with their tool calls, model calls and the raw records.
/// `undoable`: the paths each call (by journal step) changed that undo can
/// restore (see [`crate::undo::undoable`]).
pub fn task_json(
    t: &TaskSummary,
    records: &[Record],
    undoable: &std::collections::BTreeMap<String, Vec<String>>,
) -> Value {
    let mut plan = Value::Null;
    let mut steps: Vec<Value> = Vec::new();
    let mut models: Vec<Value> = Vec::new();
    let mut advice = Value::Null;
    for r in records {
        let d = &r.data;
        match r.kind.as_str() {
            "advice" => advice = d.clone(),
            "plan" => plan = d.clone(),
            "step_started" => steps.push(json!({
                "index": d["index"], "crew": d["crew"], "instruction": d["instruction"],
                "tool_calls": [], "result": null, "complete": null
            })),
            "tool_intent" => {
                if let Some(s) = steps.last_mut()
                    && let Some(calls) = s["tool_calls"].as_array_mut()
                {
                    calls.push(json!({
                        "key": d["key"], "plugin": d["plugin"], "tool": d["tool"], "input": d["input"],
                        "effect": d["effect"], "digest": d["digest"], "policy_hash": d["policy_hash"],
                        "outcome": null,
                        "undoable": undoable.get(&r.step).cloned().unwrap_or_default()
                    }));
                }
            }
            "tool_result" => {
                if let Some(s) = steps.last_mut()
                    && let Some(calls) = s["tool_calls"].as_array_mut()
                    && let Some(c) = calls.iter_mut().rev().find(|c| c["key"] == d["key"])
                {
                    c["outcome"] = d.clone();
                }
            }
            "step_finished" => {
                if let Some(s) = steps.last_mut() {
                    s["result"] = d["result"].clone();
                    s["complete"] = d["complete"].clone();
                }
            }
            "model_reply" => models.push(json!({
                "step": r.step, "role": d["role"], "backend": d["reply"]["backend"], "model": d["reply"]["model"],
                "content": d["reply"]["message"]["content"], "thinking": d["reply"]["message"]["thinking"],
                "tool_calls": d["reply"]["message"]["tool_calls"], "prompt_tokens": d["reply"]["prompt_tokens"],
                "prompt_eval_tokens": d["reply"]["prompt_eval_tokens"],
                "completion_tokens": d["reply"]["completion_tokens"], "done_reason": d["reply"]["done_reason"]
            })),
            _ => {}
        }
    }
    json!({
        "id": t.id, "status": t.status, "created_at": t.created_at, "updated_at": t.updated_at,
        "prompt": t.prompt, "workspace": t.workspace, "answer": t.answer, "error": t.error,
        "advice": advice, "plan": plan, "steps": steps, "model_calls": models, "events": records
    })
}
