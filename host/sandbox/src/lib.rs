//! The Caminaå sandbox: runs skill components under capability grants.
//!
//! This crate is the only user of wasmtime in the host. The rest of the host
//! sees [`Sandbox`] (one engine and linker per process), [`Skill`] (one
//! compiled, pre-linked component) and the call types ([`Manifest`],
//! [`Outcome`], [`CallError`]); never a `wasmtime::Config` or a `Store`.
//!
//! # Threat model
//! Skills are untrusted code. Each call runs in a fresh store whose WASI
//! context holds exactly the policy's grants ([`camina_policy::Grants`]):
//! - filesystem: one cap-std preopen per mount, read-only or read-write;
//!   nothing else is reachable (`..`, absolute paths and symlinks resolve
//!   inside the mount or fail);
//! - network: only `wasi:http/outgoing-handler`, each request checked against
//!   the `[net]` rules and its resolved address (see [`net`](crate::net));
//!   `wasi:sockets` is never linked, so a component importing it is refused at
//!   install;
//! - environment: only the allowed names; no arguments, no host stdio (stdout
//!   and stderr are captured and capped), no inherited anything;
//! - limits: linear memory via a resource limiter, CPU time via epoch
//!   interruption plus a wall-clock timeout for host waits, wasm stack depth,
//!   output size.
//!
//! A policy refusal is an error *value* returned to the guest (and recorded
//! as a [`Decision`]); a broken limit or a guest fault is a [`CallError`]
//! that says which. Nothing here panics on guest behaviour.
//!
//! Not here: policy parsing (`camina-policy`), the plugin store and input
//! validation (`camina-registry`).

mod audit;
mod engine;
mod fs;
mod net;
pub mod preserve;
mod skill;
mod state;
mod stdio;

pub use audit::{Capability, Decision};
pub use engine::{Sandbox, SandboxOptions};
pub use preserve::{Change, Preserve, Prior};
pub use skill::{Skill, unsupported_imports};

pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "skill",
        exports: { default: async },
    });
}

use std::time::Duration;

/// Errors preparing a component (compile, link, load).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not a WebAssembly file (the first bytes are not `\\0asm`)")]
    NotWasm,
    #[error(
        "this is a core WebAssembly module, not a component: build the skill for \
         wasm32-wasip2 (cargo build --target wasm32-wasip2), or wrap the module with \
         `wasm-tools component new`"
    )]
    CoreModule,
    #[error("the component is invalid or cannot be compiled")]
    Compile(#[source] BoxError),
    #[error("the component does not implement the camina:skill@0.1.0 `skill` world")]
    WrongWorld(#[source] BoxError),
    #[error(
        "the component imports what Caminaå never grants: {}. Skills may import \
         wasi:filesystem, wasi:http (outgoing-handler, types), wasi:io, wasi:clocks, \
         wasi:random, wasi:cli and camina:skill/host; never wasi:sockets",
        .0.join(", ")
    )]
    UnsupportedImports(Vec<String>),
    #[error("loading the precompiled component {path}")]
    Load {
        path: String,
        #[source]
        source: BoxError,
    },
    #[error("starting the sandbox engine")]
    Engine(#[source] BoxError),
}

/// The cause an [`Error`] or [`CallError`] keeps (wasmtime's errors, I/O).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An error and its causes, `: `-separated, for one-line reports (a tool
/// result a model reads, an MCP error result).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How a tool call's effect on the world is classified (see the WIT).
/// Stored and shown as `read-only`, `idempotent`, `side-effecting`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Effect {
    ReadOnly,
    Idempotent,
    SideEffecting,
}

impl Effect {
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::ReadOnly => "read-only",
            Effect::Idempotent => "idempotent",
            Effect::SideEffecting => "side-effecting",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "read-only" => Some(Effect::ReadOnly),
            "idempotent" => Some(Effect::Idempotent),
            "side-effecting" => Some(Effect::SideEffecting),
            _ => None,
        }
    }
}

impl std::fmt::Display for Effect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One tool as a skill describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// JSON Schema text.
    pub input_schema: String,
    pub effect: Effect,
}

/// A skill's `describe()` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub description: String,
    pub tools: Vec<ToolSpec>,
}

/// The kinds of `tool-error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ToolErrorKind {
    InvalidInput,
    Denied,
    NotFound,
    Failed,
}

impl ToolErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ToolErrorKind::InvalidInput => "invalid-input",
            ToolErrorKind::Denied => "denied",
            ToolErrorKind::NotFound => "not-found",
            ToolErrorKind::Failed => "failed",
        }
    }
}

/// A tool's failure as the skill reported it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", kind.as_str())]
pub struct ToolError {
    pub kind: ToolErrorKind,
    pub message: String,
}

/// A finished call: the tool's answer plus what the sandbox saw.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The tool's JSON output, or its `tool-error`.
    pub result: std::result::Result<String, ToolError>,
    /// Capability decisions taken during the call, in order.
    pub decisions: Vec<Decision>,
    /// What the guest wrote to stdout/stderr (capped).
    pub stdio: String,
    pub elapsed: Duration,
}

/// Which limit a call broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    /// `timeout_ms` (CPU or waiting).
    Timeout { ms: u64 },
    /// `memory_mib`.
    Memory { mib: u32 },
    /// `max_output_kib` (result, or stdout/stderr).
    Output { kib: u32 },
    /// The wasm stack.
    Stack,
}

impl std::fmt::Display for LimitKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LimitKind::Timeout { ms } => write!(f, "timeout: the call ran longer than {ms} ms"),
            LimitKind::Memory { mib } => {
                write!(f, "memory: the call tried to use more than {mib} MiB")
            }
            LimitKind::Output { kib } => {
                write!(f, "output: the call produced more than {kib} KiB")
            }
            LimitKind::Stack => f.write_str("stack: the call overflowed the wasm stack"),
        }
    }
}

/// A call that did not produce an answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("limit exceeded: {kind}")]
    Limit {
        kind: LimitKind,
        decisions: Vec<Decision>,
    },
    #[error("the skill crashed (trap): {message}")]
    Trap {
        message: String,
        decisions: Vec<Decision>,
    },
    #[error("cannot set up the sandbox: {what}")]
    Setup {
        what: String,
        #[source]
        source: BoxError,
    },
    #[error("the skill broke the contract: {0}")]
    Contract(String),
}

impl CallError {
    /// Decisions taken before the call failed.
    pub fn decisions(&self) -> &[Decision] {
        match self {
            CallError::Limit { decisions, .. } | CallError::Trap { decisions, .. } => decisions,
            _ => &[],
        }
    }
}
