//! A recorded task as a model transcript, for the replay backend: re-run
//! the task without models (regression runs, benchmarks).

use crate::durable::decode;
use crate::events::{Kind, ModelReplyEvent, ModelRequestEvent};
use crate::{EngineError, Result};
use camina_journal::Journal;
use camina_model::ModelRole;
use camina_model::replay::Exchange;
use std::collections::HashMap;

/// The model exchanges of task `id`, in order, and the model each role used.
pub fn transcript(
    journal: &Journal,
    id: &str,
) -> Result<(Vec<Exchange>, HashMap<ModelRole, String>)> {
    let records = journal.records(id)?;
    let mut out = Vec::new();
    let mut models = HashMap::new();
    let mut pending: HashMap<String, ModelRequestEvent> = HashMap::new();
    for r in &records {
        match Kind::of(r) {
            Some(Kind::ModelRequest) => {
                pending.insert(r.step.clone(), decode(r)?);
            }
            Some(Kind::ModelReply) => {
                let reply: ModelReplyEvent = decode(r)?;
                let request = pending
                    .remove(&r.step)
                    .ok_or_else(|| EngineError::Corrupt {
                        seq: r.seq,
                        reason: format!("reply without request at `{}`", r.step),
                    })?;
                models.insert(reply.role, reply.reply.model.clone());
                out.push(Exchange {
                    model: reply.reply.model.clone(),
                    request: request.request,
                    reply: reply.reply,
                });
            }
            _ => {}
        }
    }
    Ok((out, models))
}
