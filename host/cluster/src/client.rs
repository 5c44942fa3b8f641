//! Submitting and reading tasks through Restate's ingress, registering
//! workers through its admin API.

use crate::workflow::Decide;
use camina_coordinator::events::{Decision, Submitted};
use camina_journal::{Record, Status, TaskSummary};
use serde::de::DeserializeOwned;
use std::time::Duration;

/// Errors talking to Restate. Each names the URL or the request.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach Restate at {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error(
        "Restate did not answer {what} within {0:?} ({url}); reading a task runs on a worker: is one up?",
        TIMEOUT
    )]
    NoAnswer { what: String, url: String },
    #[error("Restate answered {status} to {what}: {body}")]
    Refused {
        what: String,
        status: u16,
        body: String,
    },
    #[error("Restate's answer to {what} is not what camina expects: {reason}")]
    Unexpected { what: String, reason: String },
    #[error("task {id} did not stop within {waited:?} (it is {status})")]
    Timeout {
        id: String,
        waited: Duration,
        status: String,
    },
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// How long one request to Restate may take.
const TIMEOUT: Duration = Duration::from_secs(15);

/// Whether `id` has the form of a task id (what goes into a query is only
/// ever this).
pub fn is_task_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Restate's ingress (tasks) and admin (deployments) endpoints.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    ingress: String,
    admin: String,
}

impl Client {
    /// `ingress`: e.g. `http://127.0.0.1:8080`; `admin`: e.g.
    /// `http://127.0.0.1:9070`.
    pub fn new(ingress: &str, admin: &str) -> Self {
        Self {
            // Reads run on the workers (Restate invokes the workflow's
            // shared handlers there): with none up they would wait forever.
            http: reqwest::Client::builder()
                .timeout(TIMEOUT)
                .build()
                .unwrap_or_default(),
            ingress: ingress.trim_end_matches('/').to_owned(),
            admin: admin.trim_end_matches('/').to_owned(),
        }
    }

    pub fn ingress(&self) -> &str {
        &self.ingress
    }

    /// The ingress URL of `handler` of task `id` (which must look like a
    /// task id: it goes into the path).
    fn task_url(&self, id: &str, handler: &str) -> Result<String> {
        if !is_task_id(id) {
            return Err(ClientError::Refused {
                what: format!("task `{id}`"),
                status: 404,
                body: "not a task id (letters, digits and `-`, at most 64)".into(),
            });
        }
        Ok(format!(
            "{}/{}/{id}/{handler}",
            self.ingress,
            crate::SERVICE
        ))
    }

    async fn post<T: DeserializeOwned>(
        &self,
        url: String,
        what: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T> {
        let mut req = self.http.post(&url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        self.send(req, url, what).await
    }

    /// Sends `req` (to `url`) and reads a JSON answer (an empty body is
    /// `null`); anything but 2xx is [`ClientError::Refused`] naming `what`.
    async fn send<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        url: String,
        what: &str,
    ) -> Result<T> {
        let unreachable = |source: reqwest::Error| {
            if source.is_timeout() {
                ClientError::NoAnswer {
                    what: what.to_owned(),
                    url: url.clone(),
                }
            } else {
                ClientError::Unreachable {
                    url: url.clone(),
                    source,
                }
            }
        };
        let resp = req.send().await.map_err(unreachable)?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(unreachable)?;
        if !(200..300).contains(&status) {
            return Err(ClientError::Refused {
                what: what.to_owned(),
                status,
                body: text,
            });
        }
        let text = if text.trim().is_empty() {
            "null"
        } else {
            &text
        };
        serde_json::from_str(text).map_err(|e| ClientError::Unexpected {
            what: what.to_owned(),
            reason: e.to_string(),
        })
    }

    /// Registers (or re-registers: `force`) the worker endpoint at `uri`
    /// with Restate, which then discovers its services. Retries while the
    /// admin API is not up yet, for up to `patience`.
    pub async fn register(&self, uri: &str, patience: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + patience;
        let mut said = false;
        loop {
            let r: Result<serde_json::Value> = self
                .post(
                    format!("{}/deployments", self.admin),
                    &format!("registering the worker {uri}"),
                    Some(serde_json::json!({ "uri": uri, "force": true })),
                )
                .await;
            match r {
                Ok(_) => return Ok(()),
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(e) => {
                    if !said {
                        tracing::warn!(
                            "cannot register with Restate yet ({e}); trying for {patience:?}"
                        );
                        said = true;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }

    /// Waits until a worker has registered the task workflow with Restate
    /// (for up to `patience`).
    pub async fn ready(&self, patience: Duration) -> Result<()> {
        let url = format!("{}/services/{}", self.admin, crate::SERVICE);
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let r = self.http.get(&url).send().await;
            match r {
                Ok(r) if r.status().is_success() => return Ok(()),
                _ if tokio::time::Instant::now() >= deadline => {
                    return Err(ClientError::Refused {
                        what: format!("waiting for a worker to register {}", crate::SERVICE),
                        status: 404,
                        body: format!("no worker registered within {patience:?}"),
                    });
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Submits a task (a new workflow instance); returns its id. Restate
    /// keeps it until a worker runs it.
    pub async fn submit(&self, submitted: &Submitted) -> Result<String> {
        let id = uuid::Uuid::now_v7().simple().to_string();
        self.submit_as(&id, submitted).await?;
        Ok(id)
    }

    /// Submits a task under a chosen id; submitting the same id again is
    /// accepted and starts nothing new.
    pub async fn submit_as(&self, id: &str, submitted: &Submitted) -> Result<()> {
        let body = serde_json::to_value(submitted).map_err(|e| ClientError::Unexpected {
            what: "the task".into(),
            reason: e.to_string(),
        })?;
        // A service a worker just registered reaches the ingress a moment
        // later: "not found" is tried again for a few seconds.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let r: Result<serde_json::Value> = self
                .post(
                    self.task_url(id, "run/send")?,
                    &format!("submitting task {id}"),
                    Some(body.clone()),
                )
                .await;
            match r {
                Err(ClientError::Refused { status: 404, .. })
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                r => return r.map(|_| ()),
            }
        }
    }

    /// The task's summary (`None`: no worker started it yet).
    pub async fn summary(&self, id: &str) -> Result<Option<TaskSummary>> {
        self.post(
            self.task_url(id, "summary")?,
            &format!("the summary of task {id}"),
            None,
        )
        .await
    }

    /// The task's records from sequence number `from` on.
    pub async fn records(&self, id: &str, from: u64) -> Result<Vec<Record>> {
        self.post(
            self.task_url(id, "records")?,
            &format!("the records of task {id}"),
            Some(serde_json::json!(from)),
        )
        .await
    }

    /// Runs a SQL query on Restate's introspection tables (admin API).
    async fn query(&self, sql: &str, what: &str) -> Result<Vec<serde_json::Value>> {
        let url = format!("{}/query", self.admin);
        let req = self
            .http
            .post(&url)
            .header("accept", "application/json")
            .json(&serde_json::json!({ "query": sql }));
        let v: serde_json::Value = self.send(req, url, what).await?;
        Ok(v["rows"].as_array().cloned().unwrap_or_default())
    }

    /// Every task Restate knows, newest id first: the summaries of tasks a
    /// worker started, and tasks still waiting for a worker (`queued`,
    /// prompt and workspace not known yet) or cancelled before one took
    /// them.
    pub async fn list(&self) -> Result<Vec<TaskSummary>> {
        let what = "the list of tasks";
        let rows = self
            .query(
                &format!(
                    "SELECT service_key, value_utf8 FROM state WHERE service_name = '{}' \
                     AND key = 'summary'",
                    crate::SERVICE
                ),
                what,
            )
            .await?;
        let mut tasks: Vec<TaskSummary> = rows
            .iter()
            .filter_map(|r| r["value_utf8"].as_str())
            .filter_map(|v| serde_json::from_str(v).ok())
            .collect();
        let known: std::collections::HashSet<String> = tasks.iter().map(|t| t.id.clone()).collect();
        for r in self
            .query(
                &format!(
                    "SELECT target_service_key, status, created_at FROM sys_invocation \
                     WHERE target_service_name = '{}' AND target_handler_name = 'run'",
                    crate::SERVICE
                ),
                what,
            )
            .await?
        {
            let Some(id) = r["target_service_key"].as_str() else {
                continue;
            };
            if known.contains(id) {
                continue;
            }
            let created = r["created_at"].as_str().unwrap_or_default().to_owned();
            tasks.push(TaskSummary {
                id: id.to_owned(),
                status: if r["status"] == "completed" {
                    Status::Cancelled
                } else {
                    Status::Queued
                },
                created_at: created.clone(),
                updated_at: created,
                prompt: String::new(),
                workspace: String::new(),
                answer: None,
                error: None,
                events: 0,
            });
        }
        tasks.sort_by(|a, b| b.id.cmp(&a.id));
        Ok(tasks)
    }

    /// The Restate invocation running task `id` and its status (`pending`,
    /// `running`, `suspended`, `backing-off`, `completed`, …), if any.
    pub async fn invocation(&self, id: &str) -> Result<Option<(String, String)>> {
        if !is_task_id(id) {
            return Ok(None);
        }
        let rows = self
            .query(
                &format!(
                    "SELECT id, status FROM sys_invocation WHERE target_service_name = '{}' \
                     AND target_handler_name = 'run' AND target_service_key = '{id}'",
                    crate::SERVICE
                ),
                &format!("the invocation of task {id}"),
            )
            .await?;
        Ok(rows.first().and_then(|r| {
            Some((
                r["id"].as_str()?.to_owned(),
                r["status"].as_str().unwrap_or_default().to_owned(),
            ))
        }))
    }

    /// Cancels task `id` through Restate: its next step (or the decision it
    /// waits for) ends with `cancelled`. False when Restate has no such
    /// task.
    pub async fn cancel(&self, id: &str) -> Result<bool> {
        let Some((invocation, _)) = self.invocation(id).await? else {
            return Ok(false);
        };
        let url = format!("{}/invocations/{invocation}/cancel", self.admin);
        let _: serde_json::Value = self
            .send(self.http.patch(&url), url, &format!("cancelling task {id}"))
            .await?;
        Ok(true)
    }

    /// Settles the interrupted call `key` of task `id`.
    pub async fn decide(&self, id: &str, key: &str, decision: Decision) -> Result<()> {
        let d = Decide {
            key: key.to_owned(),
            decision,
        };
        let _: serde_json::Value = self
            .post(
                self.task_url(id, "decide")?,
                &format!("the decision on {key}"),
                Some(
                    serde_json::to_value(d).map_err(|e| ClientError::Unexpected {
                        what: "the decision".into(),
                        reason: e.to_string(),
                    })?,
                ),
            )
            .await?;
        Ok(())
    }

    /// Waits until task `id` stops (succeeded, failed, cancelled) or needs
    /// review, polling its summary.
    pub async fn wait(&self, id: &str, patience: Duration) -> Result<TaskSummary> {
        self.wait_until(id, patience, |s| s.is_final() || s == Status::NeedsReview)
            .await
    }

    /// Waits until task `id` stops: succeeded, failed or cancelled.
    pub async fn wait_final(&self, id: &str, patience: Duration) -> Result<TaskSummary> {
        self.wait_until(id, patience, Status::is_final).await
    }

    async fn wait_until(
        &self,
        id: &str,
        patience: Duration,
        done: impl Fn(Status) -> bool,
    ) -> Result<TaskSummary> {
        let started = tokio::time::Instant::now();
        let mut last = "not started".to_owned();
        while started.elapsed() < patience {
            // Restate may be failing over: a failed read is tried again.
            if let Ok(Some(s)) = self.summary(id).await {
                if done(s.status) {
                    return Ok(s);
                }
                last = s.status.to_string();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(ClientError::Timeout {
            id: id.to_owned(),
            waited: patience,
            status: last,
        })
    }
}
