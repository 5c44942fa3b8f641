//! Opening a journal: the lock (one process at a time), sled, the schema
//! marker, and the check that tells a damaged journal from a smaller one.
//!
//! Files beside the journal directory `<path>`: `<path>.lock` (an
//! exclusive `flock` held while the journal is open: "in use" is that
//! lock's `WouldBlock`, not a guess from sled's error text), `<path>.pid`
//! (who holds it, for the message), `<path>.tasks` (how many tasks it
//! held, written after each creation is durable, so never ahead).

use crate::{Error, Result, SCHEMA};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The trees of an open journal database, and what opening it found.
pub(crate) struct Opened {
    /// Held (locked) as long as the journal is open.
    pub(crate) lock: std::fs::File,
    pub(crate) db: sled::Db,
    pub(crate) tasks: sled::Tree,
    pub(crate) events: sled::Tree,
    pub(crate) keys: sled::Tree,
    pub(crate) count_file: PathBuf,
    /// Tasks in the journal.
    pub(crate) found: u64,
}

/// How long a handle this process closed a moment ago may keep the
/// journal locked (sled's flusher thread notices within its 1 s period).
const OWN_HANDLE_GRACE: Duration = Duration::from_secs(3);

pub(crate) fn open(path: &Path) -> Result<Opened> {
    let shown = path.display().to_string();
    let pid_file = path.with_extension("pid");
    let count_file = path.with_extension("tasks");
    let existed = path.exists();
    let lock = lock(path, &pid_file)?;
    let _ = std::fs::write(&pid_file, std::process::id().to_string());
    let db = open_db(path)?;
    let meta = db.open_tree("meta")?;
    let tasks = db.open_tree("tasks")?;
    let events = db.open_tree("events")?;
    let keys = db.open_tree("keys")?;
    // sled recovers a damaged log by cutting it at the first bad entry,
    // silently: the task count kept beside it (tasks are never deleted)
    // tells a damaged journal from a smaller one, before anything is
    // written to it.
    let found = tasks.len() as u64;
    let text = std::fs::read_to_string(&count_file).ok();
    let recorded = text.as_deref().and_then(|c| c.trim().parse::<u64>().ok());
    if existed
        && let Some(recorded) = recorded
        && recorded > found
    {
        return Err(Error::Damaged {
            path: shown,
            recorded,
            found,
            count_file: count_file.display().to_string(),
        });
    }
    // Exactly the figure, nothing else: the committer writes later counts
    // over it in place (they never shrink, see `commit`).
    if text.as_deref() != Some(found.to_string().as_str()) {
        let _ = std::fs::write(&count_file, found.to_string());
    }
    match meta.get("schema")? {
        Some(v) if v.as_ref() == SCHEMA.as_bytes() => {}
        Some(v) => {
            return Err(Error::Schema {
                path: shown,
                found: String::from_utf8_lossy(&v).into_owned(),
            });
        }
        None => {
            let foreign = db.tree_names().iter().any(|n| {
                !matches!(
                    n.as_ref(),
                    b"meta" | b"tasks" | b"events" | b"keys" | b"decisions" | b"__sled__default"
                )
            }) || !db.is_empty()
                || !tasks.is_empty()
                || !events.is_empty();
            if foreign {
                return Err(Error::Foreign {
                    path: shown,
                    reason: "it holds data but no Caminaå schema marker".into(),
                });
            }
            meta.insert("schema", SCHEMA)?;
            db.flush()?;
        }
    }
    Ok(Opened {
        lock,
        db,
        tasks,
        events,
        keys,
        count_file,
        found,
    })
}

/// Takes the journal's lock file. Held by another handle of this very
/// process (one being dropped), it is waited for a little.
fn lock(path: &Path, pid_file: &Path) -> Result<std::fs::File> {
    let lock_path = path.with_extension("lock");
    let failed = |source| Error::Lock {
        path: lock_path.display().to_string(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(failed)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&lock_path)
        .map_err(failed)?;
    let ours = || {
        std::fs::read_to_string(pid_file).is_ok_and(|p| p.trim() == std::process::id().to_string())
    };
    let deadline = Instant::now() + OWN_HANDLE_GRACE;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if ours() && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(pid_file)
                    .map(|p| format!(" (pid {})", p.trim()))
                    .unwrap_or_default();
                return Err(Error::Locked {
                    path: path.display().to_string(),
                    holder,
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(failed(e)),
        }
    }
}

/// Opens sled under the lock. sled takes its own lock too, which a handle
/// this process dropped a moment ago may still hold (its flusher thread
/// lets go within a second): with the journal's lock held nobody else can,
/// so its lock error is retried for a little while.
fn open_db(path: &Path) -> Result<sled::Db> {
    let open = || {
        sled::Config::new()
            .path(path)
            .flush_every_ms(Some(1000))
            .open()
    };
    let deadline = Instant::now() + OWN_HANDLE_GRACE;
    loop {
        match open() {
            Ok(db) => return Ok(db),
            // sled reports its lock as an `Other` I/O error.
            Err(sled::Error::Io(e))
                if e.kind() == std::io::ErrorKind::Other && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(source) => {
                return Err(Error::Open {
                    path: path.display().to_string(),
                    source,
                });
            }
        }
    }
}
