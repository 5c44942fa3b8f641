//! Workspace integration tests, one binary (one link) with a module per area.
//!
//! Guest components come from `camina-test-artifacts`, built once per build.

mod api;
mod api_sockets;
mod audit;
mod cli;
mod cluster;
mod crash;
mod embedded;
mod engine;
mod guards;
mod install;
mod mcp;
mod models;
mod net_support;
mod runner;
mod scripts;
mod security;
mod skills;
mod support;
mod undo;
