//! Workspace integration tests, one binary (one link) with a module per area.
//!
//! Guest components come from `camina-test-artifacts`, built once per build.

mod api;
mod audit;
mod cli;
mod crash;
mod engine;
mod install;
mod mcp;
mod models;
mod net_support;
mod security;
mod skills;
mod support;
mod undo;
