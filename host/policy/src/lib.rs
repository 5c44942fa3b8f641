//! Capability policies: what a skill may touch.
//!
//! A policy file (`policies/<plugin>.toml`) names a plugin, the crew whose
//! agents get its tools, and its grants: filesystem mounts, network allow
//! rules, passed-through environment variables and resource limits. This crate
//! parses and validates policy text into a [`Policy`], and resolves a policy
//! against a concrete workspace into [`Grants`], the data the sandbox
//! enforces. It is pure: no wasmtime, no tokio, no I/O beyond checking that
//! mounted host paths exist.
//!
//! # Threat model
//! Policy files are written by the operator and trusted; skills are not. The
//! defaults deny: no mounts, no network, no environment. Everything a policy
//! grants is explicit, and every decision the sandbox makes is a method here
//! (`grants.net.check_url(..)`, `grants.net.check_addr(..)`) so it can be
//! tested without running a guest. Malformed policies are rejected with the
//! file, line and key at fault, never half-applied.

pub mod audit;
mod digest;
mod fs;
mod limits;
mod locate;
pub mod net;
mod raw;

pub use digest::{BadDigest, Digest};
pub use fs::{Access, HostPath, Mount, ResolvedMount, WORKSPACE_TOKEN};
pub use limits::Limits;
pub use net::{NetDenial, NetPolicy, NetRule};
pub use raw::valid_plugin_name;

use std::path::{Path, PathBuf};

/// Errors from reading, validating or resolving a policy.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{file}: cannot read policy: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{line}:{column}: `{key}`: {reason}")]
    Invalid {
        file: String,
        line: usize,
        column: usize,
        key: String,
        reason: String,
    },
    #[error("mount {guest}: host path {host}: {reason}")]
    Mount {
        guest: String,
        host: String,
        reason: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which worker agents are offered a plugin's tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Crew {
    /// File work.
    Belter,
    /// Information gathering.
    Drummer,
}

impl Crew {
    pub fn as_str(self) -> &'static str {
        match self {
            Crew::Belter => "belter",
            Crew::Drummer => "drummer",
        }
    }
}

impl std::fmt::Display for Crew {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Must equal the component's `describe().name`.
    pub plugin: String,
    /// `None`: callable directly, offered to no agent.
    pub crew: Option<Crew>,
    pub mounts: Vec<Mount>,
    pub net: NetPolicy,
    /// Host environment variable names passed through to the guest.
    pub env: Vec<String>,
    pub limits: Limits,
    /// The policy text as written (empty for [`Policy::deny_all`]).
    pub source: String,
    /// `sha256:<hex>` of `source`; the journal records it with every call.
    pub hash: Digest,
}

impl Policy {
    /// Reads and validates a policy file.
    pub fn load(path: &Path) -> Result<Self> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            file: file.clone(),
            source,
        })?;
        Self::parse(&text, &file)
    }

    /// Validates policy text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Self> {
        raw::parse(text, file)
    }

    /// The policy of a plugin installed without one: nothing at all.
    pub fn deny_all(plugin: &str) -> Self {
        Self {
            plugin: plugin.to_owned(),
            crew: None,
            mounts: Vec::new(),
            net: NetPolicy::default(),
            env: Vec::new(),
            limits: Limits::default(),
            source: String::new(),
            hash: hash_text(""),
        }
    }

    /// True when the policy grants no filesystem, network or environment.
    pub fn grants_nothing(&self) -> bool {
        self.mounts.is_empty() && self.net.is_empty() && self.env.is_empty()
    }

    /// The grants in words, one line per capability, for install output and
    /// listings.
    pub fn summary(&self) -> Vec<String> {
        let fs = if self.mounts.is_empty() {
            "fs: none".to_owned()
        } else {
            let mounts: Vec<String> = self
                .mounts
                .iter()
                .map(|m| format!("{} -> {} ({})", m.host, m.guest, m.access.as_str()))
                .collect();
            format!("fs: {}", mounts.join(", "))
        };
        let net = if self.net.is_empty() {
            "net: none".to_owned()
        } else {
            let rules: Vec<&str> = self.net.rules.iter().map(|r| r.text.as_str()).collect();
            format!("net: {}", rules.join(", "))
        };
        let env = if self.env.is_empty() {
            "env: none".to_owned()
        } else {
            format!("env: {}", self.env.join(", "))
        };
        let l = &self.limits;
        let limits = format!(
            "limits: {} MiB memory, {} ms, {} KiB output",
            l.memory_mib, l.timeout_ms, l.max_output_kib
        );
        vec![fs, net, env, limits]
    }

    /// Resolves the policy for one call or task whose workspace is
    /// `workspace`: mount templates are filled in; fixed paths and workspace
    /// subdirectories must exist as directories (and stay inside the
    /// workspace); the workspace itself is checked when the sandbox opens
    /// it.
    pub fn resolve(&self, workspace: Option<&Path>) -> Result<Grants> {
        let mounts = self
            .mounts
            .iter()
            .map(|m| m.resolve(workspace))
            .collect::<Result<Vec<_>>>()?;
        Ok(Grants {
            plugin: self.plugin.clone(),
            mounts,
            net: self.net.clone(),
            env: self.env.clone(),
            limits: self.limits,
        })
    }
}

/// A policy resolved for one workspace: exactly what the sandbox enforces.
#[derive(Debug, Clone)]
pub struct Grants {
    pub plugin: String,
    pub mounts: Vec<ResolvedMount>,
    pub net: NetPolicy,
    pub env: Vec<String>,
    pub limits: Limits,
}

impl Grants {
    /// The environment passed to the guest: each allowed name that is set on
    /// the host, with its value. Nothing else.
    pub fn env_vars(&self) -> Vec<(String, String)> {
        self.env
            .iter()
            .filter_map(|name| std::env::var(name).ok().map(|v| (name.clone(), v)))
            .collect()
    }
}

/// The digest of a text (a policy's hash).
pub fn hash_text(text: &str) -> Digest {
    Digest::of(text.as_bytes())
}

/// Expands a leading `~/` in a host path.
fn expand_home(path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(path),
    }
}
