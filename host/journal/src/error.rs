//! The journal's errors. Each keeps its cause as its `source` (a sled or
//! serde error), so `{:#}` through `anyhow` shows the whole chain; the
//! message names the journal, task or record it concerns.

use crate::SCHEMA;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Another process (or another handle in this one) holds the journal.
    #[error(
        "the journal {path} is in use by another camina process{holder}; wait for it, or use \
         the HTTP API of a running `camina serve`"
    )]
    Locked { path: String, holder: String },
    #[error("cannot lock the journal {path}")]
    Lock {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the journal {path}")]
    Open {
        path: String,
        #[source]
        source: sled::Error,
    },
    #[error("{path} is not a Caminaå journal ({reason}); nothing was changed")]
    Foreign { path: String, reason: String },
    #[error("the journal {path} has schema `{found}`; this camina understands `{SCHEMA}`")]
    Schema { path: String, found: String },
    #[error("journal storage failed")]
    Storage(#[from] sled::Error),
    #[error("cannot encode a journal entry")]
    Encode(#[source] serde_json::Error),
    #[error("the journal's flush thread stopped")]
    FlushStopped,
    #[error("journal record {task}#{seq} is corrupt")]
    Corrupt {
        task: String,
        seq: u64,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "the journal {path} looks damaged: {recorded} tasks were recorded in it but only {found} \
         can be read; Caminaå wrote nothing to it. Restore it from a backup, or, to go on with \
         what is readable, delete {count_file}"
    )]
    Damaged {
        path: String,
        recorded: u64,
        found: u64,
        count_file: String,
    },
    #[error("no task matches `{0}` (see `camina task list`)")]
    UnknownTask(String),
    #[error("`{prefix}` matches several tasks ({}); give more of the id", .ids.join(", "))]
    Ambiguous { prefix: String, ids: Vec<String> },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A record (or entry) of `task` at `seq` that does not decode.
    pub(crate) fn corrupt(task: impl Into<String>, seq: u64, source: serde_json::Error) -> Self {
        Error::Corrupt {
            task: task.into(),
            seq,
            source,
        }
    }
}
