//! Caminaå past one machine: tasks as Restate workflows.
//!
//! A task is one instance of the Restate workflow [`SERVICE`], keyed by the
//! task id. Its `run` handler is the agent loop (`camina-coordinator`) with
//! the durable-step seam ([`camina_coordinator::durable::Steps`]) on
//! Restate: every step is a `ctx.run`, so when a worker dies Restate replays
//! the handler on another one — recorded model replies are reused, finished
//! tool calls are not run again — and an interrupted side-effecting call
//! waits for a decision on a durable promise (`decide`). The task's records
//! and summary are kept in the workflow's state, in the journal's form, for
//! readers (`summary`, `records`).
//!
//! `camina worker` serves the workflow ([`worker`]) with the sandbox and the
//! model bridge in process and registers itself with Restate's admin API;
//! [`client`] is how front ends submit and read tasks through Restate's
//! ingress.

pub mod client;
pub mod worker;
mod workflow;

pub use client::{Client, ClientError};
pub use workflow::CaminaTask;

/// The Restate service name of a task.
pub const SERVICE: &str = "CaminaTask";
