//! Caminaå, the coordinator, and the durable task engine around it.
//!
//! For a task the coordinator (1) consults the reasoner (thinking on where
//! the model can, no tools), (2) asks the coordinator model for a plan —
//! JSON steps for the crews, or a direct answer — (3) runs each step as a
//! chat loop with that crew's model, offering every tool of the crew's
//! plugins and executing each tool call in the sandbox with the task's
//! workspace, and (4) asks for the final answer. Invalid model output gets
//! a corrective turn, up to a bound.
//!
//! Every model request and reply, tool intent and result, and milestone is
//! journaled (see [`events`]); the loop runs against the durable-step seam
//! ([`durable::Durable`]), so a killed process resumes where it stopped:
//! recorded replies are reused, finished tool calls are not re-run, an
//! interrupted read-only or idempotent call is re-run, and an interrupted
//! side-effecting call stops the task in `needs-review` until the user
//! decides (`--retry-interrupted` / `--skip-interrupted`).
//!
//! # State machine
//! ```text
//! queued ──run──▶ running ──▶ succeeded
//!                   │ ├──────▶ failed        (model error, invalid output, budget)  ──resume──▶ running
//!                   │ ├──────▶ cancelled     (final)
//!                   │ ├──────▶ needs-review  (side-effecting call interrupted)      ──resume + decision──▶ running
//!                   │ └─(process dies)─▶ interrupted (found on the next open)      ──resume──▶ running
//! ```
//!
//! Not here: storage (`camina-journal`), models (`camina-model`), the
//! sandbox (`camina-sandbox` via `camina-registry`).

pub mod agent;
pub mod checks;
pub mod durable;
pub mod events;
pub mod ground;
pub mod home;
pub mod lines;
pub mod prompts;
pub mod replay;
pub mod runner;
pub mod scope;
pub mod toolbox;
pub mod undo;
pub mod view;
pub mod workspace;

use camina_journal::{Durability, Journal, Status, TaskSummary, Update};
use camina_model::Bridge;
use camina_registry::Registry;
use events::{Budgets, Decision, Kind, NeedsReview, Reason, Started, Submitted, ToolIntent};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Errors of the engine itself (not of a task: a task that fails is a
/// `failed` task, not an error).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Journal(#[from] camina_journal::Error),
    #[error(transparent)]
    Registry(#[from] camina_registry::Error),
    #[error("task {id} is {status}; there is nothing to resume")]
    Finished { id: String, status: Status },
    #[error("task {0} is already running in this process")]
    AlreadyRunning(String),
    #[error(
        "plugin `{plugin}` changed since task {task} called it (digest or policy: was {was}, now {now}); \
         resume with --allow-changed-plugins to accept that"
    )]
    PluginChanged {
        task: String,
        plugin: String,
        was: String,
        now: String,
    },
    #[error(
        "the journal and the engine disagree at record {seq}: recorded {recorded}, the engine is at {now}; \
         the task cannot be replayed (was camina upgraded mid-task?)"
    )]
    Diverged {
        seq: u64,
        recorded: String,
        now: String,
    },
    #[error("journal record {seq} cannot be read: {reason}")]
    Corrupt { seq: u64, reason: String },
    #[error(transparent)]
    Workspace(#[from] workspace::WorkspaceError),
    #[error("the engine is shutting down")]
    ShuttingDown,
    #[error("undo of task {task}: {source}")]
    Undo {
        task: String,
        #[source]
        source: undo::UndoError,
    },
    #[error("task {0} is running; undo it once it has stopped")]
    Running(String),
    /// The outside engine cancelled the task while a record was written.
    #[error("cancelled: {0}")]
    Cancelled(String),
    #[error("internal: {0}")]
    Internal(String),
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// How to resume.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Settles an interrupted side-effecting call.
    pub interrupted: Option<Decision>,
    /// Accept plugins whose digest or policy changed since their intent.
    pub allow_changed_plugins: bool,
}

/// The engine: the journal, the plugins and the models, shared by the CLI
/// and the HTTP API.
pub struct Engine {
    journal: Arc<Journal>,
    registry: Arc<Registry>,
    bridge: Arc<Bridge>,
    home: PathBuf,
    running: Mutex<HashMap<String, tokio::sync::watch::Sender<Option<agent::Stop>>>>,
    paused: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("home", &self.home)
            .finish_non_exhaustive()
    }
}

impl Engine {
    pub fn new(
        journal: Arc<Journal>,
        registry: Arc<Registry>,
        bridge: Arc<Bridge>,
        home: &Path,
    ) -> Self {
        Self {
            journal,
            registry,
            bridge,
            home: home.to_path_buf(),
            running: Mutex::new(HashMap::new()),
            paused: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Stops taking work: running tasks stop at their next boundary
    /// (in-flight tool calls finish) and become `interrupted`; later `run`s
    /// are refused. For graceful shutdown.
    pub fn pause_all(&self) {
        self.paused.store(true, std::sync::atomic::Ordering::SeqCst);
        for tx in self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            let _ = tx.send(Some(agent::Stop::Pause));
        }
    }

    /// Tasks running in this process.
    pub fn running(&self) -> Vec<String> {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Where this home keeps before-images.
    pub fn undo_store(&self) -> undo::Store {
        undo::Store::new(&self.home)
    }

    /// What task `id` (or a unique prefix) changed in its workspace.
    pub fn diff(&self, id: &str) -> Result<(TaskSummary, Vec<undo::PathChange>)> {
        let t = self.journal.find(id)?;
        let changes =
            undo::diff(&self.undo_store(), &t.id, Path::new(&t.workspace)).map_err(|source| {
                EngineError::Undo {
                    task: t.id.clone(),
                    source,
                }
            })?;
        Ok((t, changes))
    }

    /// Restores every path task `id` changed to its state before the task
    /// (see [`undo`]); journaled as an `undone` record unless `dry_run`.
    pub async fn undo(
        &self,
        id: &str,
        force: bool,
        dry_run: bool,
    ) -> Result<(TaskSummary, undo::UndoReport)> {
        let t = self.journal.find(id)?;
        // A final state is final even while the runner is still letting
        // go of the task.
        if t.status == Status::Running || (!t.status.is_final() && self.running().contains(&t.id)) {
            return Err(EngineError::Running(t.id));
        }
        let store = self.undo_store();
        let ws = Path::new(&t.workspace);
        let failed = |source| EngineError::Undo {
            task: t.id.clone(),
            source,
        };
        if dry_run {
            let report = undo::undo(&store, &t.id, ws, force, true).map_err(failed)?;
            return Ok((t, report));
        }
        // Refusals first (nothing is touched), then `undo_started` is on
        // disk before the first path changes: an undo cut short is found
        // and finished by the next `run` of the task (`task resume`).
        undo::undo(&store, &t.id, ws, force, true).map_err(failed)?;
        self.record_undo(&t.id, Kind::UndoStarted, &events::UndoStarted { force })
            .await?;
        let report = undo::undo(&store, &t.id, ws, force, false).map_err(failed)?;
        self.record_undo(&t.id, Kind::Undone, &report).await?;
        Ok((t, report))
    }

    async fn record_undo(&self, id: &str, kind: Kind, data: &impl serde::Serialize) -> Result<()> {
        let data = serde_json::to_value(data).map_err(|e| EngineError::Internal(e.to_string()))?;
        self.journal
            .append(
                id,
                camina_journal::NewRecord {
                    step: "undo".into(),
                    kind: kind.as_str().into(),
                    data,
                    elapsed_ms: 0,
                },
                Update::default(),
                Durability::Flush,
            )
            .await?;
        Ok(())
    }

    /// Whether task `id` has an undo that started and did not finish (a
    /// crash cut it short); `Some(force)` with the flag it ran with.
    pub fn unfinished_undo(&self, id: &str) -> Result<Option<bool>> {
        unfinished_undo_in(&self.journal.records(id)?)
    }

    /// The journal itself, for tests and tools that inspect raw records.
    /// The CLI and the API go through the views below, so the rules of what
    /// records mean stay in the engine.
    pub fn journal(&self) -> &Arc<Journal> {
        &self.journal
    }

    /// Every task, newest first.
    pub fn tasks(&self) -> Result<Vec<TaskSummary>> {
        Ok(self.journal.list()?)
    }

    /// A task by id or unique id prefix.
    pub fn task(&self, id: &str) -> Result<TaskSummary> {
        Ok(self.journal.find(id)?)
    }

    /// A task's records, in order (see [`events::Event::decode`]).
    pub fn records(&self, id: &str) -> Result<Vec<camina_journal::Record>> {
        Ok(self.journal.records(id)?)
    }

    /// Everything about a task a reader shows: its summary, its records and
    /// the paths each call changed that `undo` can give back.
    pub fn view(&self, id: &str) -> Result<view::TaskView> {
        let task = self.journal.find(id)?;
        let records = self.journal.records(&task.id)?;
        let images = self.undo_store().entries(&task.id).unwrap_or_default();
        Ok(view::TaskView {
            undoable: undo::undoable(&images),
            pruned: images.iter().any(|e| e.at == "pruned"),
            task,
            records,
        })
    }

    /// A read-only handle on tasks and their records that can move into a
    /// spawned task (progress printers, event streams).
    pub fn reader(&self) -> Reader {
        Reader {
            journal: self.journal.clone(),
        }
    }

    /// Records of every task as they are appended (buffered ones too).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<(String, camina_journal::Record)> {
        self.journal.subscribe()
    }

    /// Makes everything recorded so far durable.
    pub async fn flush(&self) -> Result<()> {
        Ok(self.journal.flush().await?)
    }

    /// The task an idempotency key already names, if any.
    pub fn find_key(
        &self,
        key: &camina_journal::IdempotencyKey<'_>,
    ) -> Result<Option<camina_journal::KeyUse>> {
        Ok(self.journal.find_key(key)?)
    }

    /// The sandbox's capability decisions matching `filter`, newest first.
    pub fn decisions(
        &self,
        filter: &camina_journal::DecisionFilter,
    ) -> Result<Vec<camina_journal::DecisionEntry>> {
        Ok(self.journal.decision_log().query(filter)?)
    }

    /// Appends capability decisions to the decision log (queued; on disk
    /// with the journal's next flush).
    pub fn record_decisions(&self, entries: Vec<camina_journal::DecisionEntry>) -> Result<()> {
        Ok(self.journal.decision_log().record(entries)?)
    }

    /// What a previous process left to pick up, oldest first: tasks left
    /// `interrupted` or `queued` (not those waiting for review), and tasks
    /// whose undo a crash cut short (with the `force` it ran with). `camina
    /// serve` at start and `camina task resume --all` take the same.
    pub fn left_over(&self) -> Result<LeftOver> {
        let mut left = LeftOver::default();
        for t in self.journal.list()?.into_iter().rev() {
            if let Some(force) = self.unfinished_undo(&t.id)? {
                left.undos.push((t.clone(), force));
            }
            if matches!(t.status, Status::Interrupted | Status::Queued) {
                left.waiting.push(t);
            }
        }
        Ok(left)
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn bridge(&self) -> &Arc<Bridge> {
        &self.bridge
    }

    /// Records a new task (queued).
    pub async fn submit(
        &self,
        prompt: &str,
        workspace: &Path,
        budgets: Budgets,
    ) -> Result<TaskSummary> {
        match self.submit_keyed(prompt, workspace, budgets, None).await? {
            camina_journal::Created::New(task) => Ok(task),
            camina_journal::Created::Existing(camina_journal::KeyUse { id, .. }) => {
                Err(EngineError::Internal(format!(
                    "a task was submitted without a key but {id} came back"
                )))
            }
        }
    }

    /// Submits a task under an idempotency key: the first submission with
    /// `key` creates the task (key and task are written together); later
    /// ones return the task it names and whether they came with the same
    /// request fingerprint (the caller's: what the client sent).
    pub async fn submit_keyed(
        &self,
        prompt: &str,
        workspace: &Path,
        budgets: Budgets,
        key: Option<camina_journal::IdempotencyKey<'_>>,
    ) -> Result<camina_journal::Created> {
        let ws = workspace::canonical(workspace)?;
        self.submit_canonical(prompt, &ws, budgets, key).await
    }

    /// [`Self::submit_keyed`] with a workspace already made canonical
    /// ([`workspace::Root::confine`]): not resolved again.
    pub async fn submit_canonical(
        &self,
        prompt: &str,
        ws: &workspace::Canonical,
        budgets: Budgets,
        key: Option<camina_journal::IdempotencyKey<'_>>,
    ) -> Result<camina_journal::Created> {
        let submitted = Submitted {
            prompt: prompt.to_owned(),
            workspace: ws.display().to_string(),
            budgets,
        };
        let data =
            serde_json::to_value(&submitted).map_err(|e| EngineError::Internal(e.to_string()))?;
        Ok(self
            .journal
            .create_keyed(prompt, &submitted.workspace, data, key)
            .await?)
    }

    /// Refuses to replay calls whose plugin changed, unless allowed.
    pub fn check_plugins(&self, id: &str, allow: bool) -> Result<()> {
        if allow {
            return Ok(());
        }
        self.check_plugins_in(id, &self.journal.records(id)?)
    }

    /// [`Self::check_plugins`] on records already read.
    fn check_plugins_in(&self, id: &str, records: &[camina_journal::Record]) -> Result<()> {
        let mut seen: HashMap<String, (camina_policy::Digest, camina_policy::Digest)> =
            HashMap::new();
        for r in records
            .iter()
            .filter(|r| Kind::of(r) == Some(Kind::ToolIntent))
        {
            let intent: ToolIntent = durable::decode(r)?;
            seen.insert(intent.plugin.clone(), (intent.digest, intent.policy_hash));
        }
        let mut names: Vec<_> = seen.keys().cloned().collect();
        names.sort();
        for plugin in names {
            let (digest, policy) = &seen[&plugin];
            let now = self
                .registry
                .get(&plugin)
                .ok()
                .map(|p| (p.record.digest.clone(), p.record.policy.hash.clone()));
            if now.as_ref() != Some(&(digest.clone(), policy.clone())) {
                return Err(EngineError::PluginChanged {
                    task: id.to_owned(),
                    plugin,
                    was: format!("{digest} / {policy}"),
                    now: now.map_or_else(
                        || "(not installed)".to_owned(),
                        |(d, p)| format!("{d} / {p}"),
                    ),
                });
            }
        }
        Ok(())
    }

    /// Runs (or resumes) task `id` until it succeeds, fails, is cancelled
    /// or needs review; returns its summary then.
    pub async fn run(&self, id: &str, opts: RunOptions) -> Result<TaskSummary> {
        // The task is read once (summary and records) and handed down.
        let mut task = self.journal.task(id)?;
        let mut records = self.journal.records(id)?;
        // An undo a crash cut short is what resuming the task finishes.
        if let Some(force) = unfinished_undo_in(&records)? {
            tracing::info!(task = id, "finishing an undo that was cut short");
            self.undo(id, force, false).await?;
            return Ok(self.journal.task(id)?);
        }
        if matches!(task.status, Status::Succeeded | Status::Cancelled) {
            return Err(EngineError::Finished {
                id: id.to_owned(),
                status: task.status,
            });
        }
        if self.paused.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(EngineError::ShuttingDown);
        }
        let (tx, rx) = tokio::sync::watch::channel(None);
        {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            if running.contains_key(id) {
                return Err(EngineError::AlreadyRunning(id.to_owned()));
            }
            running.insert(id.to_owned(), tx);
        }
        // Another run of it in this process may have finished between the
        // read and taking it: then read it again.
        let now = self.journal.task(id)?;
        if now.events != task.events {
            (task, records) = (now, self.journal.records(id)?);
        }
        let result = self.run_registered(&task, records, opts, rx).await;
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        result
    }

    async fn run_registered(
        &self,
        task: &TaskSummary,
        records: Vec<camina_journal::Record>,
        opts: RunOptions,
        cancel: tokio::sync::watch::Receiver<Option<agent::Stop>>,
    ) -> Result<TaskSummary> {
        let id = task.id.as_str();
        let submitted = submitted_in(id, &records)?;
        if !opts.allow_changed_plugins {
            self.check_plugins_in(id, &records)?;
        }
        let crews = toolbox::crews(&self.registry.list()?);
        let d = durable::Durable::new(&self.journal, id, records);
        started(&d, task.events > 1).await?;
        let watcher = self.watch_cancel_files(id);
        let mut agent = self.agent(d, submitted, crews, opts, cancel);
        let outcome = agent.drive().await;
        watcher.abort();
        settle(&agent.d, outcome).await?;
        Ok(self.journal.task(id)?)
    }

    /// Runs task `id` with its steps journaled by an outside
    /// durable-execution engine (Restate, through `camina-cluster`), which
    /// replays this after a worker dies: the same loop, the same records
    /// (published to the engine's state from sequence number 1; `submitted`
    /// is 0). This process's journal keeps only the decision log. Returns
    /// the status the task stopped in; `Err`: the engine could not run it
    /// here (e.g. a plugin differs from the one a recorded call used), and
    /// nothing was recorded for that.
    pub async fn run_on<'a>(
        &'a self,
        id: &str,
        submitted: Submitted,
        steps: Box<dyn durable::Steps + 'a>,
        opts: RunOptions,
    ) -> Result<Status> {
        let crews = toolbox::crews(&self.registry.list()?);
        let d = durable::Durable::on(&self.journal, id, steps, 1);
        match started(&d, false).await {
            Ok(()) => {}
            // Cancelled before it began: say so (the signal is spent).
            Err(EngineError::Cancelled(reason)) => {
                return settle(&d, Err(agent::Halt::Cancelled(reason))).await;
            }
            Err(e) => return Err(e),
        }
        // Cancellation comes from the engine (its own cancel), not from a
        // watch here.
        let (_stop, cancel) = tokio::sync::watch::channel(None);
        let mut agent = self.agent(d, submitted, crews, opts, cancel);
        let outcome = agent.drive().await;
        settle(&agent.d, outcome).await
    }

    fn agent<'a>(
        &'a self,
        d: durable::Durable<'a>,
        submitted: Submitted,
        crews: Vec<toolbox::Crew>,
        opts: RunOptions,
        cancel: tokio::sync::watch::Receiver<Option<agent::Stop>>,
    ) -> agent::Agent<'a> {
        agent::Agent {
            d,
            bridge: &self.bridge,
            registry: &self.registry,
            submitted,
            crews,
            opts,
            cancel,
            model_calls: 0,
            outputs: Vec::new(),
            touched: Vec::new(),
            read: Vec::new(),
            changes_files: None,
            kept: false,
            seen: ground::Seen::default(),
            check: None,
            undo: undo::Store::new(&self.home),
        }
    }

    /// Polls `<home>/cancel/` for a file named by (a prefix of) the task id:
    /// how `camina task cancel` reaches a task another process is running.
    fn watch_cancel_files(&self, id: &str) -> tokio::task::JoinHandle<()> {
        let dir = cancel_dir(&self.home);
        let id = id.to_owned();
        let sender = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned();
        tokio::spawn(async move {
            let Some(sender) = sender else { return };
            loop {
                if let Ok(entries) = std::fs::read_dir(&dir) {
                    for e in entries.flatten() {
                        let name = e.file_name().to_string_lossy().into_owned();
                        if name.len() >= 6 && id.starts_with(&name) {
                            let _ = std::fs::remove_file(e.path());
                            let _ = sender.send(Some(agent::Stop::Cancel(
                                "cancelled by `camina task cancel`".into(),
                            )));
                            return;
                        }
                    }
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        })
    }

    /// Cancels a task: a running one stops at once (its in-flight model or
    /// tool call is abandoned); a waiting one is marked cancelled.
    pub async fn cancel(&self, id: &str, reason: &str) -> Result<TaskSummary> {
        let task = self.journal.task(id)?;
        // A failed task can still be resumed, so it can be cancelled (for
        // good) too.
        if matches!(task.status, Status::Succeeded | Status::Cancelled) {
            return Err(EngineError::Finished {
                id: id.to_owned(),
                status: task.status,
            });
        }
        let live = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned();
        if let Some(tx) = live {
            let _ = tx.send(Some(agent::Stop::Cancel(reason.to_owned())));
            let mut feed = self.journal.subscribe();
            loop {
                let t = self.journal.task(id)?;
                if t.status != Status::Running {
                    return Ok(t);
                }
                let _ =
                    tokio::time::timeout(std::time::Duration::from_millis(200), feed.recv()).await;
            }
        }
        let update = Update {
            status: Some(Status::Cancelled),
            error: Some(reason.to_owned()),
            ..Default::default()
        };
        self.journal
            .append(
                id,
                camina_journal::NewRecord {
                    step: "cancelled".into(),
                    kind: Kind::Cancelled.as_str().into(),
                    data: serde_json::json!(Reason {
                        reason: reason.to_owned()
                    }),
                    elapsed_ms: self.journal.records(id)?.last().map_or(0, |r| r.elapsed_ms),
                },
                update,
                Durability::Flush,
            )
            .await?;
        Ok(self.journal.task(id)?)
    }
}

/// Records that a run started: the task is `running`, a previous error
/// cleared.
async fn started(d: &durable::Durable<'_>, resumed: bool) -> Result<()> {
    let started = Started {
        pid: std::process::id(),
        resumed,
    };
    let update = Update {
        status: Some(Status::Running),
        clear_error: true,
        ..Default::default()
    };
    d.record_with(
        "started",
        Kind::Started,
        &started,
        Durability::Flush,
        update,
    )
    .await
}

/// Records how a run stopped (the record, the state, the reason) and
/// returns the state.
async fn settle(d: &durable::Durable<'_>, outcome: agent::Flow<String>) -> Result<Status> {
    // How the task stopped: the record, the state, the reason.
    let (kind, status, error, data) = match outcome {
        Ok(_) => return Ok(Status::Succeeded),
        Err(agent::Halt::Failed(reason)) => {
            tracing::warn!(task = %d.task, "task failed: {reason}");
            let data = serde_json::json!(Reason {
                reason: reason.clone()
            });
            (Kind::Failed, Status::Failed, Some(reason), data)
        }
        Err(agent::Halt::Cancelled(reason)) => {
            let data = serde_json::json!(Reason {
                reason: reason.clone()
            });
            (Kind::Cancelled, Status::Cancelled, Some(reason), data)
        }
        Err(agent::Halt::Paused) => {
            let reason = "the engine shut down; resume to continue".to_owned();
            (
                Kind::Paused,
                Status::Interrupted,
                None,
                serde_json::json!(Reason { reason }),
            )
        }
        Err(agent::Halt::Review { key, reason }) => {
            let data = serde_json::json!(NeedsReview {
                key,
                reason: reason.clone()
            });
            (Kind::NeedsReview, Status::NeedsReview, Some(reason), data)
        }
        Err(agent::Halt::Engine(e)) if d.external() => {
            // The engine retries the handler (perhaps on another
            // worker): nothing is recorded.
            return Err(e);
        }
        Err(agent::Halt::Engine(e)) => {
            // The task cannot continue; say why in the journal, then
            // report the engine error.
            let reason = e.to_string();
            let update = Update {
                status: Some(Status::Failed),
                error: Some(reason.clone()),
                ..Default::default()
            };
            let _ = d
                .record_with(
                    "failed",
                    Kind::Failed,
                    &Reason { reason },
                    Durability::Flush,
                    update,
                )
                .await;
            return Err(e);
        }
    };
    let update = Update {
        status: Some(status),
        error,
        ..Default::default()
    };
    d.record_with(kind.as_str(), kind, &data, Durability::Flush, update)
        .await?;
    Ok(status)
}

/// Whether these records end with an undo that started and did not
/// finish; `Some(force)` with the flag it ran with.
fn unfinished_undo_in(records: &[camina_journal::Record]) -> Result<Option<bool>> {
    let last = records
        .iter()
        .rev()
        .find(|r| matches!(Kind::of(r), Some(Kind::UndoStarted | Kind::Undone)));
    match last {
        Some(r) if Kind::of(r) == Some(Kind::UndoStarted) => {
            Ok(Some(durable::decode::<events::UndoStarted>(r)?.force))
        }
        _ => Ok(None),
    }
}

/// What task `id` was submitted with (its first record).
fn submitted_in(id: &str, records: &[camina_journal::Record]) -> Result<Submitted> {
    let first = records
        .iter()
        .find(|r| Kind::of(r) == Some(Kind::Submitted))
        .ok_or_else(|| EngineError::Corrupt {
            seq: 0,
            reason: format!("task {id} has no `submitted` record"),
        })?;
    durable::decode(first)
}

/// See [`Engine::reader`].
#[derive(Debug, Clone)]
pub struct Reader {
    journal: Arc<Journal>,
}

impl Reader {
    /// A task by full id.
    pub fn task(&self, id: &str) -> Result<TaskSummary> {
        Ok(self.journal.task(id)?)
    }

    /// A task's records, in order.
    pub fn records(&self, id: &str) -> Result<Vec<camina_journal::Record>> {
        Ok(self.journal.records(id)?)
    }
}

/// See [`Engine::left_over`].
#[derive(Debug, Default)]
pub struct LeftOver {
    /// Tasks to resume.
    pub waiting: Vec<TaskSummary>,
    /// Tasks with an undo to finish, and its `force`.
    pub undos: Vec<(TaskSummary, bool)>,
}

/// Where cancel requests for tasks of other processes are dropped.
pub fn cancel_dir(home: &Path) -> PathBuf {
    home::Home::new(home).cancel()
}
