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
            http: reqwest::Client::new(),
            ingress: ingress.trim_end_matches('/').to_owned(),
            admin: admin.trim_end_matches('/').to_owned(),
        }
    }

    pub fn ingress(&self) -> &str {
        &self.ingress
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
        let resp = req
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: url.clone(),
                source,
            })?;
        let status = resp.status().as_u16();
        let text = resp
            .text()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: url.clone(),
                source,
            })?;
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
                    tracing::debug!("registering with Restate: {e}; trying again");
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
                    format!("{}/{}/{id}/run/send", self.ingress, crate::SERVICE),
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
            format!("{}/{}/{id}/summary", self.ingress, crate::SERVICE),
            &format!("the summary of task {id}"),
            None,
        )
        .await
    }

    /// The task's records from sequence number `from` on.
    pub async fn records(&self, id: &str, from: u64) -> Result<Vec<Record>> {
        self.post(
            format!("{}/{}/{id}/records", self.ingress, crate::SERVICE),
            &format!("the records of task {id}"),
            Some(serde_json::json!(from)),
        )
        .await
    }

    /// Settles the interrupted call `key` of task `id`.
    pub async fn decide(&self, id: &str, key: &str, decision: Decision) -> Result<()> {
        let d = Decide {
            key: key.to_owned(),
            decision,
        };
        let _: serde_json::Value = self
            .post(
                format!("{}/{}/{id}/decide", self.ingress, crate::SERVICE),
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
