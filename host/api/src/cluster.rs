//! The task routes in the multi-node mode (`camina serve --engine
//! restate`): tasks are Restate workflows run by `camina worker`s; this
//! server submits, lists, shows, streams, cancels and settles them through
//! Restate (see `camina-cluster`). The routes and their shapes are the
//! single-node ones; what differs is said in each error.

use crate::tasks::{CreateTask, ResumeTask, TaskPage, TaskRef};
use crate::{ApiError, AppState};
use axum::Json;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use camina_cluster::{Client, ClientError};
use camina_coordinator::events::{Budgets, Decision, Kind, Submitted};
use camina_journal::{Record, Status, TaskSummary};
use futures_util::Stream;
use std::time::Duration;

impl From<ClientError> for ApiError {
    fn from(e: ClientError) -> Self {
        match &e {
            ClientError::Unreachable { .. } | ClientError::NoAnswer { .. } => {
                ApiError::unavailable(e.to_string())
            }
            _ => ApiError::new(StatusCode::BAD_GATEWAY, "restate", e.to_string()),
        }
    }
}

fn reference(id: &str, status: Status) -> TaskRef {
    TaskRef {
        id: id.to_owned(),
        status: status.as_str().to_owned(),
    }
}

/// The task's summary; 404 when Restate has no such task; a task still
/// waiting for a worker is `queued`.
async fn summary(client: &Client, id: &str) -> Result<TaskSummary, ApiError> {
    let missing = || ApiError::not_found(format!("no task {id} (ids are given in full here)"));
    if !camina_cluster::client::is_task_id(id) {
        return Err(missing());
    }
    if let Some(s) = client.summary(id).await? {
        return Ok(s);
    }
    let Some((_, status)) = client.invocation(id).await? else {
        return Err(missing());
    };
    let waiting = TaskSummary {
        id: id.to_owned(),
        status: if status == "completed" {
            Status::Cancelled
        } else {
            Status::Queued
        },
        created_at: String::new(),
        updated_at: String::new(),
        prompt: String::new(),
        workspace: String::new(),
        answer: None,
        error: None,
        events: 0,
    };
    Ok(waiting)
}

pub(crate) async fn create(
    state: &AppState,
    client: &Client,
    key: Option<String>,
    body: CreateTask,
) -> Result<(StatusCode, Json<TaskRef>), ApiError> {
    // A key names the task: the workflow id is derived from it, and Restate
    // starts a workflow id once.
    let id = key.as_ref().map(|k| {
        use sha2::{Digest, Sha256};
        let d = Sha256::digest(format!("camina-idempotency-key:{k}"));
        d[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    });
    if let Some(id) = &id
        && client.invocation(id).await?.is_some()
    {
        let t = summary(client, id).await?;
        let same = t.prompt.is_empty()
            || (t.prompt == body.prompt
                && body
                    .workspace
                    .as_deref()
                    .is_none_or(|w| t.workspace.ends_with(w.trim_end_matches('/'))));
        if !same {
            return Err(ApiError::unprocessable(format!(
                "Idempotency-Key: already used for another request (task {id}); use a new key"
            )));
        }
        return Ok((StatusCode::OK, Json(reference(id, t.status))));
    }
    let ws = crate::tasks::workspace(state, body.workspace.as_deref())?;
    let submitted = Submitted {
        prompt: body.prompt,
        workspace: ws.display().to_string(),
        budgets: Budgets::default(),
    };
    let id = match id {
        Some(id) => {
            client.submit_as(&id, &submitted).await?;
            id
        }
        None => client.submit(&submitted).await?,
    };
    Ok((StatusCode::CREATED, Json(reference(&id, Status::Queued))))
}

pub(crate) async fn list(
    client: &Client,
    filter: Option<Status>,
    limit: usize,
    cursor: Option<&str>,
) -> Result<Json<TaskPage>, ApiError> {
    let mut tasks: Vec<TaskSummary> = client
        .list()
        .await?
        .into_iter()
        .filter(|t| filter.is_none_or(|f| t.status == f))
        .filter(|t| cursor.is_none_or(|c| t.id.as_str() < c))
        .take(limit + 1)
        .collect();
    let next = (tasks.len() > limit).then(|| {
        tasks.truncate(limit);
        tasks.last().map(|t| t.id.clone()).unwrap_or_default()
    });
    Ok(Json(TaskPage { tasks, next }))
}

pub(crate) async fn show(client: &Client, id: &str) -> Result<serde_json::Value, ApiError> {
    let task = summary(client, id).await?;
    let records = client.records(id, 0).await?;
    Ok(camina_coordinator::view::TaskView {
        task,
        records,
        undoable: Default::default(),
        pruned: false,
    }
    .json())
}

/// Cancels through Restate. The task notices at its next step: a model or
/// tool call in flight finishes first (a `ctx.run` block is not
/// interrupted), so the answer is 200 `cancelled` when that happens within
/// a few seconds, else 202 with the status it still has.
pub(crate) async fn cancel(
    client: &Client,
    id: &str,
) -> Result<(StatusCode, Json<TaskRef>), ApiError> {
    let t = summary(client, id).await?;
    if t.status.is_final() {
        return Err(ApiError::conflict(format!(
            "task {id} is {}; there is nothing to cancel",
            t.status
        )));
    }
    client.cancel(id).await?;
    match client.wait_final(id, Duration::from_secs(10)).await {
        Ok(t) => Ok((StatusCode::OK, Json(reference(id, t.status)))),
        Err(_) => Ok((StatusCode::ACCEPTED, Json(reference(id, t.status)))),
    }
}

pub(crate) async fn resume(
    client: &Client,
    id: &str,
    body: ResumeTask,
    interrupted: Option<Decision>,
) -> Result<(StatusCode, Json<TaskRef>), ApiError> {
    let t = summary(client, id).await?;
    if body.allow_changed_plugins {
        return Err(ApiError::bad_request(
            "allow_changed_plugins: in the multi-node mode a worker whose plugin differs from \
             the one a recorded call used leaves the task to another worker; install the same \
             plugin there",
        ));
    }
    match t.status {
        Status::NeedsReview => {
            let Some(decision) = interrupted else {
                return Err(ApiError::bad_request(
                    "interrupted: say `retry` or `skip` to settle the interrupted call",
                ));
            };
            let records = client.records(id, 0).await?;
            let key = records
                .iter()
                .rev()
                .find(|r| Kind::of(r) == Some(Kind::ToolIntent))
                .and_then(|r| r.data["key"].as_str())
                .ok_or_else(|| ApiError::internal(format!("task {id} needs review of no call")))?
                .to_owned();
            client.decide(id, &key, decision).await?;
            Ok((StatusCode::ACCEPTED, Json(reference(id, Status::Running))))
        }
        Status::Failed => Err(ApiError::conflict(format!(
            "task {id} failed; in the multi-node mode a task is run once (Restate resumes it after \
             a worker dies by itself): submit it again"
        ))),
        s if s.is_final() => Err(ApiError::conflict(format!(
            "task {id} is {s}; there is nothing to resume"
        ))),
        _ => Err(ApiError::conflict(format!(
            "task {id} is {}: Restate runs it (and resumes it after a worker dies) by itself",
            t.status
        ))),
    }
}

fn sse(r: &Record) -> Event {
    Event::default()
        .id(r.seq.to_string())
        .event(r.kind.clone())
        .data(serde_json::to_string(r).unwrap_or_default())
}

/// The task's records as Server-Sent Events, polled from Restate, until
/// the task stops (or waits for a decision).
pub(crate) async fn events(
    client: Client,
    id: &str,
    headers: &HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, std::convert::Infallible>> + use<>>, ApiError> {
    let t = summary(&client, id).await?;
    let mut next: u64 = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |l| l + 1);
    let id = t.id.clone();
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let stopped = match client.summary(&id).await {
                Ok(Some(s)) => s.status.is_final() || s.status == Status::NeedsReview,
                Ok(None) => false,
                // Restate failing over: try again.
                Err(_) => false,
            };
            if let Ok(records) = client.records(&id, next).await {
                for r in &records {
                    next = r.seq + 1;
                    let end = Kind::of(r).is_some_and(Kind::ends_run);
                    if tx.send(sse(r)).await.is_err() || end {
                        return;
                    }
                }
                // The summary was read before these records: once it said
                // stopped, every record is in.
                if stopped {
                    return;
                }
            }
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let stream = futures_util::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), Ok);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
