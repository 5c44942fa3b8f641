//! Where Caminaå keeps its state, and opening it.

use anyhow::Context as _;
use camina_registry::Registry;
use camina_sandbox::Sandbox;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `--home`, else `$CAMINA_HOME`, else the platform data directory.
pub fn resolve(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    let home = match flag {
        Some(p) => p.to_path_buf(),
        None => match std::env::var_os("CAMINA_HOME").filter(|v| !v.is_empty()) {
            Some(v) => PathBuf::from(v),
            None => directories::ProjectDirs::from("", "", "camina")
                .map(|d| d.data_dir().to_path_buf())
                .context("cannot find a data directory for this user; pass --home DIR or set CAMINA_HOME")?,
        },
    };
    std::fs::create_dir_all(&home)
        .with_context(|| format!("cannot create the home directory {}", home.display()))?;
    Ok(home)
}

/// Opens the plugin store with a fresh sandbox engine.
pub fn registry(home: &Path) -> anyhow::Result<Registry> {
    let sandbox = Arc::new(Sandbox::new().context("starting the sandbox")?);
    Registry::open(home, sandbox)
        .with_context(|| format!("opening the plugin store in {}", home.display()))
}
