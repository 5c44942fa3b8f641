//! Capability decisions made during one call.

use std::sync::{Arc, Mutex};

/// Which capability a decision concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Capability {
    Fs,
    Net,
    Env,
    Limit,
}

impl Capability {
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Fs => "fs",
            Capability::Net => "net",
            Capability::Env => "env",
            Capability::Limit => "limit",
        }
    }
}

impl std::fmt::Display for Capability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One sandbox decision: what the guest tried, on what, and the verdict.
/// Never holds file contents or bodies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub capability: Capability,
    /// `open read`, `unlink`, `GET`, …
    pub action: String,
    /// Guest path or URL (plus resolved address for network requests).
    pub target: String,
    pub allowed: bool,
    /// Why it was refused, or extra facts (status, bytes) when allowed.
    pub detail: Option<String>,
}

/// The decisions of one call, shared between the store and in-flight host
/// futures (HTTP requests run outside the store borrow).
#[derive(Debug, Clone, Default)]
pub(crate) struct Decisions(Arc<Mutex<Vec<Decision>>>);

impl Decisions {
    pub(crate) fn push(&self, d: Decision) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(d);
    }

    pub(crate) fn take(&self) -> Vec<Decision> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}
