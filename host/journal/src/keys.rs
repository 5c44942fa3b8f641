//! Idempotency keys (tree `keys`: external key → `{"task", "request"}`
//! JSON, the task it created and the request's fingerprint; older builds
//! stored the bare task id). A key is written in the same transaction as
//! the task it creates ([`crate::Journal::create_keyed`]).

use crate::{Error, Journal, Result, TaskSummary};
use serde::{Deserialize, Serialize};

/// An idempotency key as [`Journal::create_keyed`] takes it: the key, and a
/// fingerprint of the request it came with.
#[derive(Debug, Clone, Copy)]
pub struct IdempotencyKey<'a> {
    pub key: &'a str,
    pub request: &'a str,
}

/// What [`Journal::create_keyed`] did.
#[derive(Debug, Clone)]
pub enum Created {
    /// A new task.
    New(TaskSummary),
    /// The key already named a task.
    Existing(KeyUse),
}

/// The task an idempotency key already names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyUse {
    pub id: String,
    /// Whether it came with the same request (`None`: recorded by an older
    /// build, unknown).
    pub same_request: Option<bool>,
}

impl KeyUse {
    pub(crate) fn new(e: KeyEntry, k: &IdempotencyKey<'_>) -> Self {
        KeyUse {
            same_request: e.request.as_deref().map(|r| r == k.request),
            id: e.task,
        }
    }
}

/// What the keys tree holds for a key.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct KeyEntry {
    pub(crate) task: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) request: Option<String>,
}

impl KeyEntry {
    /// An entry: JSON, or the bare task id older builds wrote.
    pub(crate) fn decode(v: &[u8]) -> Result<Self> {
        if v.first() == Some(&b'{') {
            serde_json::from_slice(v).map_err(|e| {
                Error::corrupt(
                    format!("(idempotency key of {})", String::from_utf8_lossy(v)),
                    0,
                    e,
                )
            })
        } else {
            Ok(KeyEntry {
                task: String::from_utf8_lossy(v).into_owned(),
                request: None,
            })
        }
    }
}

impl Journal {
    pub(crate) fn key_entry(&self, key: &str) -> Result<Option<KeyEntry>> {
        self.keys
            .get(key.as_bytes())?
            .map(|v| KeyEntry::decode(&v))
            .transpose()
    }

    /// What a second [`Journal::create_keyed`] with `key` would return,
    /// if the key names a task already.
    pub fn find_key(&self, key: &IdempotencyKey<'_>) -> Result<Option<KeyUse>> {
        Ok(self.key_entry(key.key)?.map(|e| KeyUse::new(e, key)))
    }

    /// The task an idempotency key names.
    pub fn key(&self, key: &str) -> Result<Option<String>> {
        Ok(self.key_entry(key)?.map(|e| e.task))
    }
}
