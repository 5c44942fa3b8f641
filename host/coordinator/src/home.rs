//! The on-disk layout of a Caminaå home directory, in one place.
//!
//! ```text
//! config.toml              settings (the CLI reads it)
//! journal/ journal.lock    the task journal and decision log (sled), its lock,
//! journal.pid journal.tasks   holder and task count (see camina-journal)
//! plugins/ blobs/ cache/   the plugin store (owned by camina-registry:
//! approvals/ trusted_keys/ records, components, precompiled code,
//!                          policy approvals, keys trusted for signatures)
//! keys/                    signing keys made by `camina key generate`
//! models/                  GGUF files placed by hand (else the cache)
//! undo/                    before-images of the files tasks changed
//! cancel/                  cancel requests for another process's tasks
//! workspaces/              the server's default workspace root
//! eval-work/ eval-reports/ `camina eval` workspaces and reports
//! ```

use std::path::{Path, PathBuf};

/// A home directory (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home(PathBuf);

impl Home {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self(root.into())
    }

    pub fn root(&self) -> &Path {
        &self.0
    }

    pub fn config(&self) -> PathBuf {
        self.0.join("config.toml")
    }

    pub fn journal(&self) -> PathBuf {
        self.0.join("journal")
    }

    pub fn keys(&self) -> PathBuf {
        self.0.join("keys")
    }

    pub fn trusted_keys(&self) -> PathBuf {
        self.0.join("trusted_keys")
    }

    pub fn undo(&self) -> PathBuf {
        self.0.join("undo")
    }

    pub fn cancel(&self) -> PathBuf {
        self.0.join("cancel")
    }

    pub fn workspaces(&self) -> PathBuf {
        self.0.join("workspaces")
    }

    pub fn eval_work(&self) -> PathBuf {
        self.0.join("eval-work")
    }

    pub fn eval_reports(&self) -> PathBuf {
        self.0.join("eval-reports")
    }

    /// A configured path with `{home}` filled in (see
    /// [`camina_model::config::expand_home`]).
    pub fn expand(&self, text: &str) -> PathBuf {
        camina_model::config::expand_home(text, &self.0)
    }
}
