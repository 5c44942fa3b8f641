//! `/v1/tasks…`

use crate::{ApiError, AppState};
use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use camina_coordinator::RunOptions;
use camina_coordinator::events::{Budgets, Decision, Kind};
use camina_journal::{Created, IdempotencyKey, KeyUse, Record, Status, TaskSummary};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use utoipa::ToSchema;

/// `POST /v1/tasks`
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTask {
    /// What to do, in words.
    pub prompt: String,
    /// A directory under the server's workspace root (absolute, or relative
    /// to the root). Missing: a fresh directory there.
    #[serde(default)]
    pub workspace: Option<String>,
}

/// A task's id and state.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskRef {
    pub id: String,
    /// queued | running | succeeded | failed | cancelled | interrupted | needs-review
    pub status: String,
}

/// `POST /v1/tasks/{id}/resume`
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResumeTask {
    /// How to settle an interrupted side-effecting call: `retry` or `skip`.
    #[serde(default)]
    pub interrupted: Option<String>,
    /// Replay calls of plugins whose component or policy changed since
    /// (`camina task resume --allow-changed-plugins`). Default false: 409.
    #[serde(default)]
    pub allow_changed_plugins: bool,
}

/// Query of `GET /v1/tasks`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only tasks in this state.
    pub status: Option<String>,
    /// Page size (1-200, default 50).
    pub limit: Option<usize>,
    /// The `next` of the previous page.
    pub cursor: Option<String>,
}

/// One page of tasks, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskPage {
    #[schema(value_type = Vec<Object>)]
    pub tasks: Vec<TaskSummary>,
    /// Cursor of the next page, if any.
    pub next: Option<String>,
}

fn reference(t: &TaskSummary) -> TaskRef {
    TaskRef {
        id: t.id.clone(),
        status: t.status.as_str().to_owned(),
    }
}

/// Resolves a requested workspace under the root; anything resolving
/// outside it (`..`, symlinks), or the root itself, is a 400. Directories
/// are created through a capability handle on the root (cap-std), so a
/// symlink planted under the root cannot make the server create anything
/// outside it.
pub(crate) fn workspace(
    state: &AppState,
    requested: Option<&str>,
) -> Result<camina_coordinator::workspace::Canonical, ApiError> {
    use camina_coordinator::workspace::WorkspaceError;
    let requested = match requested.map(str::trim).filter(|s| !s.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(uuid::Uuid::now_v7().simple().to_string()),
    };
    state.root.confine(&requested).map_err(|e| match e {
        WorkspaceError::Root { .. } => ApiError::internal(e),
        other => ApiError::bad_request(crate::error::chain(&other)),
    })
}

#[utoipa::path(post, path = "/v1/tasks", tag = "tasks",
    request_body = CreateTask,
    params(("Idempotency-Key" = Option<String>, Header, description = "The same key with the same request returns the same task; with another request, 422")),
    responses(
        (status = 201, description = "Created (queued or running)", body = TaskRef),
        (status = 200, description = "The task this Idempotency-Key created before", body = TaskRef),
        (status = 400, description = "Bad body or workspace", body = crate::openapi::ErrorBody),
        (status = 401, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody),
        (status = 413, body = crate::openapi::ErrorBody),
        (status = 422, description = "The Idempotency-Key was used for another request", body = crate::openapi::ErrorBody),
        (status = 503, body = crate::openapi::ErrorBody)
    ), security(("bearer" = ["tasks"])))]
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<CreateTask>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    if state.closing() {
        return Err(ApiError::unavailable("the server is shutting down"));
    }
    let Json(body) = body?;
    if body.prompt.trim().is_empty() {
        return Err(ApiError::bad_request("prompt: must not be empty"));
    }
    let key = headers
        .get("idempotency-key")
        .map(|v| v.to_str().map(str::to_owned))
        .transpose()
        .map_err(|_| ApiError::bad_request("Idempotency-Key: must be visible ASCII"))?;
    if let Some(client) = &state.cluster {
        return Ok(crate::cluster::create(&state, client, key, body)
            .await?
            .into_response());
    }
    // The key is bound to the request as the client sent it (a task
    // without a workspace gets a new directory each time).
    let fingerprint = key.as_ref().map(|_| {
        use sha2::{Digest, Sha256};
        let request = serde_json::json!({"prompt": body.prompt, "workspace": body.workspace});
        format!("sha256:{:x}", Sha256::digest(request.to_string()))
    });
    let idem = key
        .as_deref()
        .zip(fingerprint.as_deref())
        .map(|(key, request)| IdempotencyKey { key, request });
    // A retry is answered before a workspace is made for it.
    if let Some(k) = &idem
        && let Some(found) = state.engine.find_key(k)?
    {
        return Ok(existing(&state, found).await?.into_response());
    }
    let ws = workspace(&state, body.workspace.as_deref())?;
    let task = match state
        .engine
        .submit_canonical(&body.prompt, &ws, Budgets::default(), idem)
        .await?
    {
        Created::New(task) => task,
        Created::Existing(found) => {
            // Lost a race for the key: the directory made for this request
            // (when it named none) is nobody's.
            if body.workspace.is_none() {
                let _ = std::fs::remove_dir(&ws);
            }
            return Ok(existing(&state, found).await?.into_response());
        }
    };
    state.spawn(task.id.clone(), RunOptions::default()).await;
    Ok((StatusCode::CREATED, Json(reference(&task))).into_response())
}

/// The answer to a request whose Idempotency-Key names a task already.
/// The journal is flushed first: the key may have been written by a request
/// still in flight, and a task id handed out must survive a crash.
async fn existing(
    state: &AppState,
    found: KeyUse,
) -> Result<(StatusCode, Json<TaskRef>), ApiError> {
    if found.same_request == Some(false) {
        return Err(ApiError::unprocessable(format!(
            "Idempotency-Key: already used for another request (task {}); use a new key",
            found.id
        )));
    }
    state.engine.flush().await?;
    Ok((
        StatusCode::OK,
        Json(reference(&state.engine.task(&found.id)?)),
    ))
}

#[utoipa::path(get, path = "/v1/tasks", tag = "tasks", params(ListQuery),
    responses((status = 200, body = TaskPage), (status = 400, body = crate::openapi::ErrorBody),
        (status = 401, body = crate::openapi::ErrorBody)),
    security(("bearer" = ["tasks"])))]
pub async fn list(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<TaskPage>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let filter = q
        .status
        .as_deref()
        .map(|s| {
            Status::parse(s)
                .ok_or_else(|| ApiError::bad_request(format!("status: unknown state `{s}`")))
        })
        .transpose()?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::bad_request("limit: must be from 1 to 200"));
    }
    if let Some(client) = &state.cluster {
        return crate::cluster::list(client, filter, limit, q.cursor.as_deref()).await;
    }
    let mut tasks: Vec<TaskSummary> = state
        .engine
        .tasks()?
        .into_iter()
        .filter(|t| filter.is_none_or(|f| t.status == f))
        .filter(|t| q.cursor.as_deref().is_none_or(|c| t.id.as_str() < c))
        .take(limit + 1)
        .collect();
    let next = (tasks.len() > limit).then(|| {
        tasks.truncate(limit);
        tasks.last().map(|t| t.id.clone()).unwrap_or_default()
    });
    Ok(Json(TaskPage { tasks, next }))
}

#[utoipa::path(get, path = "/v1/tasks/{id}", tag = "tasks",
    params(("id" = String, Path, description = "Task id (or a unique prefix)")),
    responses((status = 200, description = "id, status, prompt, workspace, plan, steps with tool calls and outcomes, answer or error, timestamps", body = Object),
        (status = 404, body = crate::openapi::ErrorBody)),
    security(("bearer" = ["tasks"])))]
pub async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::response::Response, ApiError> {
    if let Some(client) = &state.cluster {
        return Ok(Json(crate::cluster::show(client, &id).await?).into_response());
    }
    let t = state.engine.task(&id)?;
    // Every change of a task appends a record (and bumps `events`); the
    // status and answer travel with the summary.
    let version = format!(
        "{}/{}/{}/{}",
        t.events,
        t.status,
        t.updated_at,
        t.error.as_deref().unwrap_or_default().len()
    );
    let doc = match state.docs.get(&t.id, &version) {
        Some(doc) => doc,
        None => {
            let doc = serde_json::to_vec(&state.engine.view(&t.id)?.json())
                .map_err(|e| ApiError::internal(format!("rendering task {}: {e}", t.id)))?;
            let doc = axum::body::Bytes::from(doc);
            state.docs.put(&t.id, version, doc.clone());
            doc
        }
    };
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        doc,
    )
        .into_response())
}

#[utoipa::path(post, path = "/v1/tasks/{id}/resume", tag = "tasks",
    params(("id" = String, Path)), request_body(content = ResumeTask, description = "Optional"),
    responses((status = 202, body = TaskRef), (status = 400, body = crate::openapi::ErrorBody),
        (status = 404, body = crate::openapi::ErrorBody), (status = 409, description = "Finished or running", body = crate::openapi::ErrorBody)),
    security(("bearer" = ["tasks"])))]
pub async fn resume(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Option<Json<serde_json::Value>>,
) -> Result<impl IntoResponse, ApiError> {
    if state.closing() {
        return Err(ApiError::unavailable("the server is shutting down"));
    }
    let body: ResumeTask = optional_body(body)?;
    let interrupted = match body.interrupted.as_deref() {
        None => None,
        Some("retry") => Some(Decision::Retry),
        Some("skip") => Some(Decision::Skip),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "interrupted: `{other}` is not retry or skip"
            )));
        }
    };
    if let Some(client) = &state.cluster {
        return Ok(crate::cluster::resume(client, &id, body, interrupted)
            .await?
            .into_response());
    }
    let t = state.engine.task(&id)?;
    if t.status.is_final()
        && t.status != Status::Failed
        && state.engine.unfinished_undo(&t.id)?.is_none()
    {
        return Err(ApiError::conflict(format!(
            "task {} is {}; there is nothing to resume",
            t.id, t.status
        )));
    }
    let busy = || ApiError::conflict(format!("task {} is already running or queued to run", t.id));
    if state.engine.running().contains(&t.id) {
        return Err(busy());
    }
    // What would refuse the resume is said now, not only in the log.
    state
        .engine
        .check_plugins(&t.id, body.allow_changed_plugins)?;
    let started = state
        .spawn(
            t.id.clone(),
            RunOptions {
                interrupted,
                allow_changed_plugins: body.allow_changed_plugins,
            },
        )
        .await;
    if !started {
        return Err(busy());
    }
    Ok((StatusCode::ACCEPTED, Json(reference(&t))).into_response())
}

#[utoipa::path(post, path = "/v1/tasks/{id}/cancel", tag = "tasks", params(("id" = String, Path)),
    responses((status = 200, body = TaskRef),
        (status = 202, description = "Multi-node mode: cancellation asked; the task stops when its call in flight ends", body = TaskRef),
        (status = 404, body = crate::openapi::ErrorBody),
        (status = 409, description = "Already finished", body = crate::openapi::ErrorBody)),
    security(("bearer" = ["tasks"])))]
pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::response::Response, ApiError> {
    if let Some(client) = &state.cluster {
        return Ok(crate::cluster::cancel(client, &id).await?.into_response());
    }
    let t = state.engine.task(&id)?;
    let t = state
        .engine
        .cancel(&t.id, "cancelled through the API")
        .await?;
    Ok(Json(reference(&t)).into_response())
}

/// An optional JSON body: absent is the default, present must parse.
fn optional_body<T: serde::de::DeserializeOwned + Default>(
    body: Option<Json<serde_json::Value>>,
) -> Result<T, ApiError> {
    match body {
        Some(Json(v)) => {
            serde_json::from_value(v).map_err(|e| ApiError::bad_request(format!("body: {e}")))
        }
        None => Ok(T::default()),
    }
}

/// `POST /v1/tasks/{id}/undo`
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UndoTask {
    /// Restore paths that changed after the task too (their later changes
    /// are lost).
    #[serde(default)]
    pub force: bool,
    /// Say what would be restored; change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

#[utoipa::path(get, path = "/v1/tasks/{id}/diff", tag = "tasks", params(("id" = String, Path)),
    responses((status = 200, description = "`{\"task\": id, \"changes\": [{\"path\", \"change\": created|changed|deleted|moved, \"from\"?, \"before\", \"after\", \"diff\"? (unified, text files), \"added\", \"removed\"}]}`", body = Object),
        (status = 404, body = crate::openapi::ErrorBody)),
    security(("bearer" = ["tasks"])))]
pub async fn diff(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    single_node(&state, "diff")?;
    let (t, changes) = state.engine.diff(&id)?;
    Ok(Json(serde_json::json!({"task": t.id, "changes": changes})))
}

#[utoipa::path(post, path = "/v1/tasks/{id}/undo", tag = "tasks",
    params(("id" = String, Path)), request_body(content = UndoTask, description = "Optional"),
    responses((status = 200, description = "`{\"task\": id, \"undo\": {\"restored\": [[path, what]], \"already\", \"conflicts\", \"lost\", \"dry_run\"}}`", body = Object),
        (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody),
        (status = 409, description = "Paths changed after the task (nothing restored; `force` restores anyway), or the task is running", body = crate::openapi::ErrorBody)),
    security(("bearer" = ["tasks"])))]
pub async fn undo(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Option<Json<serde_json::Value>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    single_node(&state, "undo")?;
    let body: UndoTask = optional_body(body)?;
    let (t, report) = state.engine.undo(&id, body.force, body.dry_run).await?;
    Ok(Json(serde_json::json!({"task": t.id, "undo": report})))
}

/// Refuses what only the single-node mode has (before-images are kept by
/// the worker that ran each call).
pub(crate) fn single_node(state: &AppState, what: &str) -> Result<(), ApiError> {
    if state.cluster.is_some() {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "not_implemented",
            format!(
                "{what} is not available in the multi-node mode (`--engine restate`): each \
                 worker keeps the before-images of the calls it ran"
            ),
        ));
    }
    Ok(())
}

/// Whether the task stops (for now or for good) after this record.
fn ends_task(r: &Record) -> bool {
    Kind::of(r).is_some_and(Kind::ends_run)
}

fn sse(r: &Record) -> Event {
    Event::default()
        .id(r.seq.to_string())
        .event(r.kind.clone())
        .data(serde_json::to_string(r).unwrap_or_default())
}

#[utoipa::path(get, path = "/v1/tasks/{id}/events", tag = "tasks",
    params(("id" = String, Path), ("Last-Event-ID" = Option<String>, Header, description = "Continue after this record")),
    responses((status = 200, description = "Server-Sent Events: every journal record (event = its kind, id = its sequence number, data = the record as JSON) from the start, then live until the task stops", content_type = "text/event-stream"),
        (status = 404, body = crate::openapi::ErrorBody)),
    security(("bearer" = ["tasks"])))]
pub async fn events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<axum::response::Response, ApiError> {
    if let Some(client) = &state.cluster {
        return Ok(crate::cluster::events(client.clone(), &id, &headers)
            .await?
            .into_response());
    }
    let t = state.engine.task(&id)?;
    // Full-id lookups from here on (the stream polls the status).
    let reader = state.engine.reader();
    let after: Option<u64> = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    // Subscribe before reading the past, so nothing falls in between.
    let mut feed = state.engine.subscribe();
    let past = reader.records(&t.id)?;
    let id = t.id.clone();
    let stream = async_stream(move |tx| async move {
        let mut last = after;
        for r in past.iter().filter(|r| after.is_none_or(|a| r.seq > a)) {
            if tx.send(sse(r)).await.is_err() {
                return;
            }
            last = Some(r.seq);
        }
        // Sends what the journal holds after `last`; true when the stream
        // should end (the client left, or the task's last record was sent).
        let catch_up = async |last: &mut Option<u64>| -> bool {
            let Ok(all) = reader.records(&id) else {
                return true;
            };
            let from = *last;
            for r in all.iter().filter(|r| from.is_none_or(|l| r.seq > l)) {
                *last = Some(r.seq);
                if tx.send(sse(r)).await.is_err() || ends_task(r) {
                    return true;
                }
            }
            false
        };
        let live = |reader: &camina_coordinator::Reader| {
            matches!(
                reader.task(&id).map(|t| t.status),
                Ok(Status::Running | Status::Queued)
            )
        };
        // A task that is not running (or about to) ends the stream after
        // its history, including anything written since it was read.
        if !live(&reader) {
            catch_up(&mut last).await;
            return;
        }
        // The status is looked at now and then too: a queued task the
        // server will not start (shutting down) ends the stream.
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        tick.tick().await;
        loop {
            tokio::select! {
                msg = feed.recv() => match msg {
                    Ok((tid, r)) if tid == id => {
                        if last.is_some_and(|l| r.seq <= l) {
                            continue;
                        }
                        last = Some(r.seq);
                        let end = ends_task(&r);
                        if tx.send(sse(&r)).await.is_err() || end {
                            return;
                        }
                    }
                    Ok(_) => {}
                    // Fell behind: catch up from the records.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        if catch_up(&mut last).await {
                            return;
                        }
                    }
                    Err(_) => return,
                },
                _ = tick.tick() => {
                    if !live(&reader) || state.closing() {
                        catch_up(&mut last).await;
                        return;
                    }
                }
            }
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// A stream fed by a producer task through a channel.
fn async_stream<F, Fut>(producer: F) -> impl Stream<Item = Result<Event, std::convert::Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Event>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(producer(tx));
    futures_util::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), Ok)
}
