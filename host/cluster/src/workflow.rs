//! The task workflow and the durable-step seam on Restate.

use camina_coordinator::agent::{Flow, Halt};
use camina_coordinator::durable::Steps;
use camina_coordinator::events::{Decision, Submitted};
use camina_coordinator::{Engine, RunOptions};
use camina_journal::{Record, Status, TaskSummary, Update};
use futures_util::future::BoxFuture;
use restate_sdk::prelude::*;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The workflow: one instance per task, keyed by the task id.
///
/// Timeouts are sized for model calls: a step (`ctx.run`) sends nothing
/// while a model thinks, and Restate would otherwise take a long reply for
/// a stalled worker and start the step again. A task whose worker died, or
/// that no worker can run (none up, or none with the task's plugins), is
/// tried again at most 10 s apart for a week, then paused.
pub struct CaminaTask {
    pub engine: Arc<Engine>,
    /// Task workspaces must lie under it (the ingress takes any request
    /// Restate lets through); `None`: anywhere.
    pub workspace_root: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for CaminaTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaminaTask").finish_non_exhaustive()
    }
}

/// A decision on an interrupted side-effecting call (`decide`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Decide {
    /// The call's idempotency key (`task:step:n`), as the task's error and
    /// its `needs_review` state say.
    pub key: String,
    pub decision: Decision,
}

/// The promise a task waits on for the `n`-th decision on the call `key`
/// (a retried call can be cut off again).
pub(crate) fn review_promise(key: &str, n: u32) -> String {
    if n == 0 {
        format!("review/{key}")
    } else {
        format!("review/{key}/{n}")
    }
}

/// Where the promise a task waits on is named while it waits.
const PENDING_REVIEW: &str = "review";

/// Why `workspace` may not be used under `root`, if it may not.
fn outside(workspace: &str, root: &std::path::Path) -> Option<String> {
    let ws = std::path::Path::new(workspace);
    let (Ok(ws), Ok(root)) = (ws.canonicalize(), root.canonicalize()) else {
        return Some(format!(
            "the workspace {workspace} or this worker's workspace root {} does not exist here",
            root.display()
        ));
    };
    (!ws.starts_with(&root) || ws == root).then(|| {
        format!(
            "the workspace {workspace} is not under this worker's workspace root {} \
             ([server] workspace_root)",
            root.display()
        )
    })
}

/// Where record `seq` is kept in the workflow's state.
fn record_key(seq: u64) -> String {
    format!("record/{seq:08}")
}

#[restate_sdk::workflow(
    name = "CaminaTask",
    inactivity_timeout = "30m",
    abort_timeout = "1m",
    workflow_completion_retention = "7 days",
    invocation_retry_policy(
        initial_interval = "500ms",
        factor = 2.0,
        max_interval = "10s",
        max_attempts = 60480
    )
)]
impl CaminaTask {
    /// Runs the task to its end: `succeeded`, `failed` or `cancelled` (a
    /// side-effecting call interrupted by a worker's death waits for
    /// `decide`).
    #[handler]
    async fn run(
        &self,
        ctx: WorkflowContext<'_>,
        task: Json<Submitted>,
    ) -> Result<Json<TaskSummary>, HandlerError> {
        let Json(submitted) = task;
        let id = ctx.key().to_owned();
        let created: String = ctx
            .run(|| async { Ok(camina_journal::now()) })
            .name("created")
            .await?;
        let summary = Arc::new(Mutex::new(TaskSummary {
            id: id.clone(),
            status: Status::Queued,
            created_at: created.clone(),
            updated_at: created.clone(),
            prompt: submitted.prompt.clone(),
            workspace: submitted.workspace.clone(),
            answer: None,
            error: None,
            events: 0,
        }));
        if let Some(why) = self
            .workspace_root
            .as_deref()
            .and_then(|root| outside(&submitted.workspace, root))
        {
            let mut s = summary.lock().unwrap_or_else(|p| p.into_inner()).clone();
            s.status = Status::Failed;
            s.error = Some(why);
            ctx.set("summary", Json(s.clone()));
            return Ok(Json(s));
        }
        let steps = RestateSteps {
            ctx: &ctx,
            summary: summary.clone(),
        };
        let first = Record {
            seq: 0,
            at: created,
            elapsed_ms: 0,
            step: "submitted".into(),
            kind: "submitted".into(),
            data: serde_json::to_value(&submitted)?,
        };
        steps.publish(&first, &Update::default());
        let status = self
            .engine
            .run_on(&id, submitted, Box::new(steps), RunOptions::default())
            .await;
        if let Err(e) = status {
            // Not recorded: Restate runs the handler again (on this worker
            // or another), replaying what was.
            tracing::warn!(task = %id, "the task cannot run on this worker now: {e}");
            return Err(HandlerError::from(e.to_string()));
        }
        let s = summary.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Ok(Json(s))
    }

    /// The task's summary, as `camina task show` prints it (`null` before
    /// the task started).
    #[handler]
    async fn summary(
        &self,
        ctx: SharedWorkflowContext<'_>,
    ) -> Result<Json<Option<TaskSummary>>, HandlerError> {
        Ok(Json(
            ctx.get::<Json<TaskSummary>>("summary").await?.map(|j| j.0),
        ))
    }

    /// The task's records from sequence number `from` on.
    #[handler]
    async fn records(
        &self,
        ctx: SharedWorkflowContext<'_>,
        from: Json<u64>,
    ) -> Result<Json<Vec<Record>>, HandlerError> {
        let events = ctx
            .get::<Json<TaskSummary>>("summary")
            .await?
            .map_or(0, |j| j.0.events);
        let mut out = Vec::new();
        for seq in from.0..events {
            if let Some(Json(r)) = ctx.get::<Json<Record>>(&record_key(seq)).await? {
                out.push(r);
            }
        }
        Ok(Json(out))
    }

    /// Settles an interrupted side-effecting call: run it again or skip it.
    /// 404 when no call of the task waits under that key.
    #[handler]
    async fn decide(
        &self,
        ctx: SharedWorkflowContext<'_>,
        decide: Json<Decide>,
    ) -> Result<(), HandlerError> {
        let Json(d) = decide;
        let pending: Option<String> = ctx.get(PENDING_REVIEW).await?;
        match pending {
            Some(p)
                if p == review_promise(&d.key, 0)
                    || p.starts_with(&format!("review/{}/", d.key)) =>
            {
                ctx.resolve_promise(&p, Json(d.decision));
                Ok(())
            }
            _ => Err(TerminalError::new_with_code(
                404,
                format!(
                    "no call of this task waits for a decision under key {}",
                    d.key
                ),
            )
            .into()),
        }
    }
}

/// The durable-step seam on a workflow's context.
struct RestateSteps<'a> {
    ctx: &'a WorkflowContext<'a>,
    summary: Arc<Mutex<TaskSummary>>,
}

impl RestateSteps<'_> {
    fn set_summary(&self, f: impl FnOnce(&mut TaskSummary)) {
        let s = {
            let mut s = self.summary.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut s);
            s.clone()
        };
        self.ctx.set("summary", Json(s));
    }
}

/// Restate's code for an invocation cancelled through its API.
const CANCELLED: u16 = 409;

impl Steps for RestateSteps<'_> {
    fn step<'b>(
        &'b self,
        name: String,
        live: BoxFuture<'b, Result<Value, String>>,
    ) -> BoxFuture<'b, Flow<(Result<Value, String>, bool)>> {
        Box::pin(async move {
            let ctx: &'b WorkflowContext<'b> = self.ctx;
            let fresh = Arc::new(AtomicBool::new(false));
            let ran = fresh.clone();
            #[cfg(feature = "failpoints")]
            let crash = std::env::var("CAMINA_CRASH_IN_STEP")
                .is_ok_and(|s| !s.is_empty() && name.contains(&s));
            let out = ctx
                .run(move || async move {
                    ran.store(true, Ordering::Relaxed);
                    let outcome = live.await;
                    // Only after a live part that did something (not a
                    // step that found nothing to do).
                    #[cfg(feature = "failpoints")]
                    if crash && outcome.as_ref().is_ok_and(|v| !v["v"].is_null()) {
                        std::process::abort();
                    }
                    match outcome {
                        Ok(v) => Ok(Json(v)),
                        Err(m) => Err(TerminalError::new(m).into()),
                    }
                })
                .name(name)
                .await;
            let fresh = fresh.load(Ordering::Relaxed);
            match out {
                Ok(Json(v)) => Ok((Ok(v), fresh)),
                Err(e) if e.code() == CANCELLED => Err(Halt::Cancelled(format!(
                    "cancelled through Restate: {}",
                    e.message()
                ))),
                Err(e) => Ok((Err(e.message().to_owned()), fresh)),
            }
        })
    }

    fn publish(&self, record: &Record, update: &Update) {
        self.ctx.set(&record_key(record.seq), Json(record.clone()));
        self.set_summary(|s| {
            update.apply_to(s, record.at.clone());
            s.events = record.seq + 1;
        });
    }

    fn review<'b>(
        &'b self,
        key: &'b str,
        n: u32,
        reason: &'b str,
    ) -> BoxFuture<'b, Flow<Decision>> {
        Box::pin(async move {
            self.set_summary(|s| {
                s.status = Status::NeedsReview;
                s.error = Some(format!(
                    "{reason} (decide through Restate: {}/{}/decide)",
                    crate::SERVICE,
                    s.id
                ));
            });
            let name = review_promise(key, n);
            let ctx: &WorkflowContext<'_> = self.ctx;
            ctx.set(PENDING_REVIEW, name.clone());
            let decision = ctx.promise::<Json<Decision>>(&name).await;
            let decision = match decision {
                Ok(Json(d)) => d,
                Err(e) if e.code() == CANCELLED => {
                    return Err(Halt::Cancelled("cancelled through Restate".into()));
                }
                Err(e) => return Err(Halt::Failed(e.message().to_owned())),
            };
            ctx.clear(PENDING_REVIEW);
            self.set_summary(|s| {
                s.status = Status::Running;
                s.error = None;
            });
            Ok(decision)
        })
    }
}
