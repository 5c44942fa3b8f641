//! Replaying a recorded conversation with models.
//!
//! The journal records every request and reply; fed back here they make a
//! recorded task re-runnable without any model: the same request sequence
//! gets the recorded replies, and the first request that differs is a clear
//! [`ModelError::ReplayMismatch`] naming what changed.

use crate::{ChatBackend, ChatReply, ChatRequest, ModelError, Progress, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Mutex;

/// One recorded exchange.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exchange {
    /// The model the request went to.
    pub model: String,
    pub request: ChatRequest,
    pub reply: ChatReply,
}

/// Answers from a transcript, in order.
#[derive(Debug)]
pub struct ReplayBackend {
    transcript: Vec<Exchange>,
    next: Mutex<usize>,
}

impl ReplayBackend {
    pub fn new(transcript: Vec<Exchange>) -> Self {
        Self {
            transcript,
            next: Mutex::new(0),
        }
    }

    /// Requests answered so far.
    pub fn position(&self) -> usize {
        *self.next.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What differs between a recorded and an actual request, in words.
/// JSON equality, fast when objects keep their keys in the same order
/// (a request rebuilt by the same code does): members are compared in
/// order, and only objects whose key order differs fall back to the
/// order-insensitive comparison (a hash lookup per key).
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && (x
                    .iter()
                    .zip(y.iter())
                    .all(|((ka, va), (kb, vb))| ka == kb && same_json(va, vb))
                    || x == y)
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_json(a, b))
        }
        _ => a == b,
    }
}

fn same_tools(a: &[crate::ToolSpec], b: &[crate::ToolSpec]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.name == y.name
                && x.description == y.description
                && same_json(&x.parameters, &y.parameters)
        })
}

fn difference(
    model_was: &str,
    model_is: &str,
    was: &ChatRequest,
    is: &ChatRequest,
) -> Option<String> {
    if model_was != model_is {
        return Some(format!("model was `{model_was}`, now `{model_is}`"));
    }
    if was.messages.len() != is.messages.len() {
        return Some(format!(
            "{} messages were recorded, {} were sent",
            was.messages.len(),
            is.messages.len()
        ));
    }
    if let Some((i, (a, b))) = was
        .messages
        .iter()
        .zip(&is.messages)
        .enumerate()
        .find(|(_, (a, b))| a != b)
    {
        let show = |m: &crate::Message| {
            let mut c = format!("{:?}: {}", m.role, m.content);
            if c.len() > 120 {
                let mut end = 120;
                while !c.is_char_boundary(end) {
                    end -= 1;
                }
                c.truncate(end);
                c.push('…');
            }
            c
        };
        return Some(format!(
            "message {i} differs: recorded {} / sent {}",
            show(a),
            show(b)
        ));
    }
    if !same_tools(&was.tools, &is.tools) {
        let names = |r: &ChatRequest| {
            r.tools
                .iter()
                .map(|t| t.name.clone())
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Some(format!(
            "tools differ: recorded [{}] / sent [{}]",
            names(was),
            names(is)
        ));
    }
    if !match (&was.format, &is.format) {
        (Some(a), Some(b)) => same_json(a, b),
        (a, b) => a == b,
    } {
        return Some("the output format (JSON schema) differs".into());
    }
    if was.think != is.think {
        return Some(format!("think was {}, now {}", was.think, is.think));
    }
    if was.options != is.options {
        return Some("the options differ".into());
    }
    None
}

#[async_trait::async_trait]
impl ChatBackend for ReplayBackend {
    fn kind(&self) -> crate::Backend {
        crate::Backend::Replay
    }

    async fn chat(
        &self,
        model: &str,
        request: &ChatRequest,
        progress: Option<Progress<'_>>,
    ) -> Result<ChatReply> {
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let index = *next;
        let Some(ex) = self.transcript.get(index) else {
            return Err(ModelError::ReplayExhausted { index });
        };
        if let Some(reason) = difference(&ex.model, model, &ex.request, request) {
            return Err(ModelError::ReplayMismatch { index, reason });
        }
        *next += 1;
        let mut reply = ex.reply.clone();
        if let Some(p) = progress {
            p(
                &reply.message.content,
                reply.message.thinking.as_deref().unwrap_or_default(),
            );
        }
        reply.backend = crate::Backend::Replay;
        Ok(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Message, Timing};

    fn reply(text: &str) -> ChatReply {
        ChatReply {
            prompt_eval_tokens: None,
            message: Message::assistant(text),
            backend: crate::Backend::Ollama,
            model: "m".into(),
            model_digest: None,
            done_reason: Some("stop".into()),
            prompt_tokens: 1,
            completion_tokens: 1,
            timing: Timing::default(),
        }
    }

    fn req(text: &str) -> ChatRequest {
        ChatRequest {
            messages: vec![Message::user(text)],
            ..Default::default()
        }
    }

    #[test]
    fn json_equality_ignores_key_order_only() {
        let a = serde_json::json!({"type": "object", "properties": {"p": {"type": "string"}, "n": {"type": "integer"}}, "required": ["p"]});
        let reordered = serde_json::json!({"required": ["p"], "properties": {"n": {"type": "integer"}, "p": {"type": "string"}}, "type": "object"});
        let other = serde_json::json!({"type": "object", "properties": {"p": {"type": "string"}, "n": {"type": "number"}}, "required": ["p"]});
        let swapped = serde_json::json!({"type": "object", "properties": {"p": {"type": "string"}, "n": {"type": "integer"}}, "required": ["p", "n"]});
        assert!(same_json(&a, &a.clone()));
        assert!(same_json(&a, &reordered));
        assert!(!same_json(&a, &other));
        assert!(!same_json(&a, &swapped));
        assert!(!same_json(
            &serde_json::json!([1, 2]),
            &serde_json::json!([2, 1])
        ));
        for (x, y) in [(&a, &reordered), (&a, &other), (&a, &swapped)] {
            assert_eq!(same_json(x, y), x == y);
        }
    }

    #[tokio::test]
    async fn replays_in_order_and_reports_mismatches() {
        let r = ReplayBackend::new(vec![
            Exchange {
                model: "m".into(),
                request: req("a"),
                reply: reply("A"),
            },
            Exchange {
                model: "m".into(),
                request: req("b"),
                reply: reply("B"),
            },
        ]);
        let got = r.chat("m", &req("a"), None).await.unwrap();
        assert_eq!(
            (got.message.content.as_str(), got.backend.as_str()),
            ("A", "replay")
        );
        let err = r.chat("m", &req("x"), None).await.unwrap_err();
        assert!(
            matches!(&err, ModelError::ReplayMismatch { index: 1, reason } if reason.contains("message 0 differs")),
            "{err}"
        );
        let err = r.chat("other", &req("b"), None).await.unwrap_err();
        assert!(
            matches!(&err, ModelError::ReplayMismatch { reason, .. } if reason.contains("model was")),
            "{err}"
        );
        assert_eq!(
            r.chat("m", &req("b"), None).await.unwrap().message.content,
            "B"
        );
        assert!(matches!(
            r.chat("m", &req("c"), None).await,
            Err(ModelError::ReplayExhausted { index: 2 })
        ));
    }
}
