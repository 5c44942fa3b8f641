//! The plugin store: installs, lists, removes, loads and calls skills.
//!
//! Layout under the Caminaå home (all writes are temp-file + rename, so a
//! crash never leaves a half-written plugin and a reinstall replaces the old
//! one atomically; the plugin record is the commit point):
//!
//! ```text
//! plugins/<name>.json                    the record: manifest, digest, policy text
//! blobs/<sha256>.wasm                    the component as installed
//! cache/<sha256>-<engine>.cwasm          precompiled native code (rebuilt on demand)
//! ```
//!
//! Records are plain files so that several processes (a `camina serve` and a
//! `camina tool call`) can read the store at once.
//!
//! Calls go through [`Registry::call`]: find the plugin and tool, validate the
//! input against the tool's JSON Schema, resolve the policy for the
//! workspace, run the tool in a fresh sandbox.

mod audit;
mod record;
mod schema;
pub mod sign;

pub use audit::{Approval, AuditReport, PluginAudit};

pub use record::{PluginRecord, PolicyRecord, ToolRecord};

pub use camina_policy::Digest;
use camina_policy::Policy;
use camina_sandbox::{CallError, Outcome, Sandbox, Skill, ToolError, ToolErrorKind};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Errors of the plugin store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "digest mismatch: expected sha256:{expected}, the file is sha256:{actual}; nothing was installed"
    )]
    DigestMismatch { expected: String, actual: String },
    #[error("--sha256: `{0}` is not 64 hex digits")]
    BadDigest(String),
    #[error(transparent)]
    Policy(#[from] camina_policy::Error),
    #[error("{source_name}")]
    Component {
        source_name: String,
        #[source]
        error: camina_sandbox::Error,
    },
    #[error("{source_name}: describe() failed: {error}")]
    Describe {
        source_name: String,
        error: CallError,
    },
    #[error("{source_name}: invalid manifest: {reason}")]
    Manifest { source_name: String, reason: String },
    #[error(
        "{policy_file}: `plugin` is \"{policy_name}\" but the component describes itself as \"{component_name}\""
    )]
    NameMismatch {
        policy_file: String,
        policy_name: String,
        component_name: String,
    },
    #[error("no plugin named `{0}` is installed (see `camina plugin list`)")]
    UnknownPlugin(String),
    #[error("plugin record {path} is corrupt: {reason}")]
    CorruptRecord { path: String, reason: String },
    #[error(transparent)]
    Call(#[from] CallError),
    #[error("{source_name}: {error}")]
    Signature {
        source_name: String,
        error: sign::SignError,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

/// `sha256:<hex>` of bytes.
pub fn digest(bytes: &[u8]) -> Digest {
    Digest::of(bytes)
}

/// A policy given at install time, with the name used in messages.
#[derive(Debug, Clone)]
pub struct PolicySource {
    pub text: String,
    /// File path (or upload name) shown in errors and recorded.
    pub name: String,
}

impl PolicySource {
    pub fn from_file(path: &Path) -> Result<Self> {
        Ok(Self {
            text: std::fs::read_to_string(path).map_err(io_err(path))?,
            name: path.display().to_string(),
        })
    }
}

/// What `install` did.
#[derive(Debug, Clone)]
pub struct InstallReport {
    pub record: PluginRecord,
    /// The validated policy now in force.
    pub policy: Policy,
    /// True when a plugin of that name was replaced.
    pub replaced: bool,
}

/// An installed plugin, loaded and ready to call.
#[derive(Debug)]
pub struct Plugin {
    pub record: PluginRecord,
    pub policy: Policy,
    skill: Skill,
    schemas: schema::Schemas,
    /// The record file this was loaded from (stat'ed on every use).
    record_path: PathBuf,
}

impl Plugin {
    pub fn skill(&self) -> &Skill {
        &self.skill
    }
}

/// Identifies one version of a record file: a reinstall writes a new file
/// and renames it into place (a new inode), a remove deletes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    len: u64,
    modified: Option<std::time::SystemTime>,
}

impl Stamp {
    fn of(path: &Path) -> std::io::Result<Self> {
        let m = std::fs::metadata(path)?;
        #[cfg(unix)]
        let ino = std::os::unix::fs::MetadataExt::ino(&m);
        #[cfg(not(unix))]
        let ino = 0;
        Ok(Self {
            ino,
            len: m.len(),
            modified: m.modified().ok(),
        })
    }
}

/// The plugin store under one home directory.
#[derive(Debug)]
pub struct Registry {
    home: PathBuf,
    sandbox: Arc<Sandbox>,
    /// Loaded plugins with the stamp of the record they were loaded from:
    /// another process (the CLI beside `camina serve`) may reinstall or
    /// remove a plugin, and a revoked grant must not live on in memory.
    loaded: Mutex<HashMap<String, (Arc<Plugin>, Stamp)>>,
    require_signatures: std::sync::atomic::AtomicBool,
}

impl Registry {
    /// Opens (creating if needed) the store under `home`.
    pub fn open(home: &Path, sandbox: Arc<Sandbox>) -> Result<Self> {
        for dir in ["plugins", "blobs", "cache"] {
            let p = home.join(dir);
            std::fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        Ok(Self {
            home: home.to_path_buf(),
            sandbox,
            loaded: Mutex::new(HashMap::new()),
            require_signatures: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Refuse unsigned installs from now on (`[plugins] require_signatures`).
    pub fn require_signatures(&self, required: bool) {
        self.require_signatures
            .store(required, std::sync::atomic::Ordering::SeqCst);
    }

    /// Where trusted public keys live.
    pub fn trusted_keys_dir(&self) -> PathBuf {
        self.home.join("trusted_keys")
    }

    pub fn home(&self) -> &Path {
        &self.home
    }

    pub fn sandbox(&self) -> &Arc<Sandbox> {
        &self.sandbox
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.home.join("plugins").join(format!("{name}.json"))
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.home
            .join("blobs")
            .join(format!("{}.wasm", digest.hex()))
    }

    fn cache_path(&self, digest: &Digest) -> PathBuf {
        self.home.join("cache").join(format!(
            "{}-{}.cwasm",
            digest.hex(),
            self.sandbox.fingerprint()
        ))
    }

    /// Installs a component with an optional policy. Validates everything
    /// before storing anything.
    pub async fn install(
        &self,
        wasm: &[u8],
        policy: Option<&PolicySource>,
        expected_sha256: Option<&str>,
        source_name: &str,
    ) -> Result<InstallReport> {
        self.install_signed(wasm, policy, expected_sha256, source_name, None)
            .await
    }

    /// [`Self::install`] with a detached signature to verify against the
    /// trusted keys (mandatory when signatures are required).
    pub async fn install_signed(
        &self,
        wasm: &[u8],
        policy: Option<&PolicySource>,
        expected_sha256: Option<&str>,
        source_name: &str,
        signature: Option<&sign::SignatureFile>,
    ) -> Result<InstallReport> {
        let digest = digest(wasm);
        if let Some(expected) = expected_sha256 {
            let expected = Digest::parse(expected)
                .map_err(|_| Error::BadDigest(expected.trim().to_owned()))?;
            if expected != digest {
                return Err(Error::DigestMismatch {
                    expected: expected.hex().to_owned(),
                    actual: digest.hex().to_owned(),
                });
            }
        }
        let policy_file = policy.map(|p| p.name.clone());
        let parsed_policy = policy
            .map(|p| Policy::parse(&p.text, &p.name))
            .transpose()?;
        let sig_err = |error| Error::Signature {
            source_name: source_name.to_owned(),
            error,
        };
        let policy_hash = camina_policy::hash_text(policy.map_or("", |p| p.text.as_str()));
        let signer = match signature {
            Some(sig) => Some(
                sign::verify(
                    sig,
                    &digest.to_string(),
                    &policy_hash.to_string(),
                    &self.trusted_keys_dir(),
                )
                .map_err(sig_err)?,
            ),
            None if self
                .require_signatures
                .load(std::sync::atomic::Ordering::SeqCst) =>
            {
                return Err(sig_err(sign::SignError::Missing));
            }
            None => None,
        };
        let component_err = |error| Error::Component {
            source_name: source_name.to_owned(),
            error,
        };
        // Compiling is seconds of CPU: off the async runtime, so a server
        // installing a plugin keeps answering.
        let sandbox = self.sandbox.clone();
        let bytes = wasm.to_vec();
        let (skill, native) =
            tokio::task::spawn_blocking(move || sandbox.compile_for_cache(&bytes))
                .await
                .map_err(|e| component_err(camina_sandbox::Error::Compile(e.into())))?
                .map_err(component_err)?;
        let hint = parsed_policy
            .as_ref()
            .map_or("(installing)", |p| p.plugin.as_str());
        let manifest = skill
            .describe(hint)
            .await
            .map_err(|error| Error::Describe {
                source_name: source_name.to_owned(),
                error,
            })?;
        let schemas = schema::Schemas::check(&manifest).map_err(|reason| Error::Manifest {
            source_name: source_name.to_owned(),
            reason,
        })?;
        let policy = match (parsed_policy, policy) {
            (Some(p), Some(src)) => {
                if p.plugin != manifest.name {
                    return Err(Error::NameMismatch {
                        policy_file: src.name.clone(),
                        policy_name: p.plugin,
                        component_name: manifest.name,
                    });
                }
                p
            }
            _ => Policy::deny_all(&manifest.name),
        };

        // Store: compiled cache, blob, then the record (the commit point).
        write_atomic(&self.cache_path(&digest), &native)?;
        write_atomic(&self.blob_path(&digest), wasm)?;
        let mut record =
            PluginRecord::new(&manifest, &digest, &policy, policy_file, skill.imports());
        record.signer = signer;
        let previous = self.read_record(&manifest.name).ok();
        write_atomic(
            &self.record_path(&manifest.name),
            &serde_json::to_vec_pretty(&record).unwrap_or_default(),
        )?;
        if let Some(prev) = &previous
            && prev.digest != digest
        {
            self.collect_garbage(&prev.digest);
        }
        let record_path = self.record_path(&manifest.name);
        let plugin = Plugin {
            record: record.clone(),
            policy: policy.clone(),
            skill,
            schemas,
            record_path: record_path.clone(),
        };
        match Stamp::of(&record_path) {
            Ok(stamp) => {
                self.lock_loaded()
                    .insert(manifest.name.clone(), (Arc::new(plugin), stamp));
            }
            Err(_) => {
                self.lock_loaded().remove(&manifest.name);
            }
        }
        tracing::info!(plugin = %manifest.name, %digest, "installed");
        Ok(InstallReport {
            record,
            policy,
            replaced: previous.is_some(),
        })
    }

    fn lock_loaded(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Arc<Plugin>, Stamp)>> {
        self.loaded.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Removes blob and cache of `digest` unless another record uses it.
    fn collect_garbage(&self, digest: &Digest) {
        let in_use = self
            .list()
            .map(|all| all.iter().any(|r| r.digest == *digest))
            .unwrap_or(true);
        if !in_use {
            let _ = std::fs::remove_file(self.blob_path(digest));
            let _ = std::fs::remove_file(self.cache_path(digest));
        }
    }

    fn read_record(&self, name: &str) -> Result<PluginRecord> {
        // Names come from users (CLI, URL paths): `../x` must never become
        // a path outside the store.
        if !camina_policy::valid_plugin_name(name) {
            return Err(Error::UnknownPlugin(name.to_owned()));
        }
        let path = self.record_path(name);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::UnknownPlugin(name.to_owned()));
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        serde_json::from_slice(&bytes).map_err(|e| Error::CorruptRecord {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    /// Every installed plugin's record, sorted by name. A corrupt record is
    /// an error naming its file (nothing is deleted).
    pub fn list(&self) -> Result<Vec<PluginRecord>> {
        let dir = self.home.join("plugins");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "json")
                && let Some(name) = path.file_stem().and_then(|s| s.to_str())
            {
                out.push(self.read_record(name)?);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Uninstalls `name`.
    pub fn remove(&self, name: &str) -> Result<PluginRecord> {
        let record = self.read_record(name)?;
        let path = self.record_path(name);
        std::fs::remove_file(&path).map_err(io_err(&path))?;
        self.lock_loaded().remove(name);
        self.collect_garbage(&record.digest);
        Ok(record)
    }

    /// Loads `name` (from memory, else from the precompiled cache, else by
    /// recompiling the stored blob).
    pub fn get(&self, name: &str) -> Result<Arc<Plugin>> {
        if !camina_policy::valid_plugin_name(name) {
            return Err(Error::UnknownPlugin(name.to_owned()));
        }
        // One stat per call: the record on disk is the truth (another
        // process may have reinstalled or removed the plugin).
        let cached = self.lock_loaded().get(name).cloned();
        let built;
        let record_path = match &cached {
            Some((p, _)) => &p.record_path,
            None => {
                built = self.record_path(name);
                &built
            }
        };
        let stamp = match Stamp::of(record_path) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.lock_loaded().remove(name);
                return Err(Error::UnknownPlugin(name.to_owned()));
            }
            Err(e) => return Err(io_err(record_path)(e)),
        };
        if let Some((p, loaded)) = &cached
            && *loaded == stamp
        {
            return Ok(p.clone());
        }
        let record_path = record_path.to_owned();
        let record = self.read_record(name)?;
        let policy = record.policy()?;
        let cache = self.cache_path(&record.digest);
        let skill = match self.sandbox.load_precompiled(&cache) {
            Ok(s) => s,
            Err(e) => {
                if cache.exists() {
                    tracing::warn!(
                        plugin = name,
                        "precompiled cache unusable, recompiling: {e}"
                    );
                }
                let blob = self.blob_path(&record.digest);
                let wasm = std::fs::read(&blob).map_err(io_err(&blob))?;
                if digest(&wasm) != record.digest {
                    return Err(Error::CorruptRecord {
                        path: blob.display().to_string(),
                        reason: "stored component does not match its recorded digest".into(),
                    });
                }
                let component_err = |error| Error::Component {
                    source_name: blob.display().to_string(),
                    error,
                };
                let native = self.sandbox.precompile(&wasm).map_err(component_err)?;
                write_atomic(&cache, &native)?;
                self.sandbox
                    .load_precompiled(&cache)
                    .map_err(component_err)?
            }
        };
        let schemas = schema::Schemas::from_record(&record);
        let plugin = Arc::new(Plugin {
            record,
            policy,
            skill,
            schemas,
            record_path,
        });
        self.lock_loaded()
            .insert(name.to_owned(), (plugin.clone(), stamp));
        Ok(plugin)
    }

    /// Calls one tool of one plugin in a fresh sandbox. Tool-level failures
    /// (unknown tool, input not matching the schema, the skill's own
    /// `tool-error`) are in `Outcome::result`; limits and traps are errors.
    pub async fn call(
        &self,
        plugin: &str,
        tool: &str,
        input: &str,
        workspace: Option<&Path>,
    ) -> Result<Outcome> {
        self.call_preserving(plugin, tool, input, workspace, None)
            .await
    }

    /// [`Self::call`], handing the prior state of every path the call is
    /// about to change to `preserve` first (see `camina_sandbox::preserve`).
    pub async fn call_preserving(
        &self,
        plugin: &str,
        tool: &str,
        input: &str,
        workspace: Option<&Path>,
        preserve: Option<Arc<dyn camina_sandbox::Preserve>>,
    ) -> Result<Outcome> {
        let plugin = self.get(plugin)?;
        let refuse = |kind, message| Outcome {
            result: Err(ToolError { kind, message }),
            decisions: Vec::new(),
            stdio: String::new(),
            elapsed: std::time::Duration::ZERO,
        };
        if !plugin.record.tools.iter().any(|t| t.name == tool) {
            let names: Vec<&str> = plugin
                .record
                .tools
                .iter()
                .map(|t| t.name.as_str())
                .collect();
            return Ok(refuse(
                ToolErrorKind::NotFound,
                format!(
                    "{} has no tool `{tool}`; its tools: {}",
                    plugin.record.name,
                    names.join(", ")
                ),
            ));
        }
        if let Err(message) = plugin.schemas.validate(tool, input) {
            return Ok(refuse(ToolErrorKind::InvalidInput, message));
        }
        let grants = plugin.policy.resolve(workspace)?;
        Ok(plugin
            .skill
            .call_preserving(&grants, tool, input, preserve)
            .await?)
    }
}

/// Writes `bytes` to `path` via a temp file in the same directory + rename.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io_err(dir))?;
    tmp.write_all(bytes).map_err(io_err(path))?;
    tmp.as_file().sync_all().map_err(io_err(path))?;
    tmp.persist(path).map_err(|e| io_err(path)(e.error))?;
    Ok(())
}
