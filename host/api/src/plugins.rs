//! `/v1/plugins…` and `/v1/policies/audit`

use crate::{ApiError, AppState};
use axum::Json;
use axum::extract::{Multipart, Path, State};
use axum::http::StatusCode;
use camina_registry::{PluginRecord, PolicySource};
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

/// An installed plugin as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct PluginView {
    pub name: String,
    pub version: String,
    pub description: String,
    pub digest: String,
    pub crew: Option<String>,
    /// `[{name, description, effect, input_schema}]`
    #[schema(value_type = Vec<Object>)]
    pub tools: Vec<Value>,
    /// `{hash, file, grants}`; grants in words.
    #[schema(value_type = Object)]
    pub policy: Value,
    pub installed_at: String,
}

fn view(r: &PluginRecord) -> PluginView {
    let grants = r
        .policy()
        .map(|p| p.summary())
        .unwrap_or_else(|e| vec![format!("invalid policy: {e}")]);
    PluginView {
        name: r.name.clone(),
        version: r.version.clone(),
        description: r.description.clone(),
        digest: r.digest.to_string(),
        crew: r.crew.map(|c| c.as_str().to_owned()),
        tools: r
            .tools
            .iter()
            .map(|t| json!({"name": t.name, "description": t.description, "effect": t.effect, "input_schema": t.input_schema}))
            .collect(),
        policy: json!({"hash": r.policy.hash, "file": r.policy.file, "grants": grants}),
        installed_at: r.installed_at.clone(),
    }
}

#[utoipa::path(get, path = "/v1/plugins", tag = "plugins",
    responses((status = 200, body = Vec<PluginView>), (status = 401, body = crate::openapi::ErrorBody)),
    security(("bearer" = ["tasks"])))]
pub async fn list(State(state): State<AppState>) -> Result<Json<Vec<PluginView>>, ApiError> {
    let records = state.engine.registry().list()?;
    Ok(Json(records.iter().map(view).collect()))
}

#[utoipa::path(post, path = "/v1/plugins", tag = "plugins",
    request_body(content_type = "multipart/form-data", description = "`component` (the .wasm), `policy` (TOML), optional `sha256`"),
    responses((status = 201, body = PluginView), (status = 400, body = crate::openapi::ErrorBody),
        (status = 403, description = "Not an admin token, or signatures are required (`untrusted_signature`)", body = crate::openapi::ErrorBody),
        (status = 413, body = crate::openapi::ErrorBody),
        (status = 422, description = "Invalid component or policy (`invalid_plugin`), digest mismatch, or a signature that does not verify (`invalid_signature`)", body = crate::openapi::ErrorBody)),
    security(("bearer" = ["admin"])))]
pub async fn install(
    State(state): State<AppState>,
    mut form: Multipart,
) -> Result<(StatusCode, Json<PluginView>), ApiError> {
    crate::tasks::single_node(
        &state,
        "installing plugins through the API (install them on each worker: `camina plugin install`)",
    )?;
    let mut component: Option<Vec<u8>> = None;
    let mut policy: Option<String> = None;
    let mut sha256: Option<String> = None;
    let too_big = |e: axum::extract::multipart::MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                e.body_text(),
            )
        } else {
            ApiError::bad_request(format!("multipart body: {}", e.body_text()))
        }
    };
    while let Some(field) = form.next_field().await.map_err(too_big)? {
        let name = field.name().unwrap_or_default().to_owned();
        match name.as_str() {
            "component" => component = Some(field.bytes().await.map_err(too_big)?.to_vec()),
            "policy" => policy = Some(field.text().await.map_err(too_big)?),
            "sha256" => sha256 = Some(field.text().await.map_err(too_big)?),
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown form field `{other}` (component, policy, sha256)"
                )));
            }
        }
    }
    let component =
        component.ok_or_else(|| ApiError::bad_request("the form has no `component` field"))?;
    let policy = policy.ok_or_else(|| ApiError::bad_request("the form has no `policy` field"))?;
    let source = PolicySource {
        text: policy,
        name: "uploaded policy".into(),
    };
    let report = state
        .engine
        .registry()
        .install(
            &component,
            Some(&source),
            sha256.as_deref(),
            "uploaded component",
        )
        .await?;
    Ok((StatusCode::CREATED, Json(view(&report.record))))
}

#[utoipa::path(delete, path = "/v1/plugins/{name}", tag = "plugins", params(("name" = String, Path)),
    responses((status = 200, body = PluginView), (status = 404, body = crate::openapi::ErrorBody),
        (status = 403, body = crate::openapi::ErrorBody)),
    security(("bearer" = ["admin"])))]
pub async fn remove(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<PluginView>, ApiError> {
    crate::tasks::single_node(
        &state,
        "removing plugins through the API (remove them on each worker: `camina plugin remove`)",
    )?;
    let record = state.engine.registry().remove(&name)?;
    Ok(Json(view(&record)))
}

#[utoipa::path(get, path = "/v1/policies/audit", tag = "plugins",
    responses((status = 200, description = "The policy audit report: per plugin its effective grants, approval state and findings (level, code, message); the JSON of `camina policy audit --json`", body = Object),
        (status = 403, body = crate::openapi::ErrorBody)),
    security(("bearer" = ["admin"])))]
pub async fn audit(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
    let report = state
        .engine
        .registry()
        .audit(&state.settings.workspace_root, home.as_deref())?;
    Ok(Json(
        serde_json::to_value(report).map_err(ApiError::internal)?,
    ))
}

/// Query of `GET /v1/audit`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    pub plugin: Option<String>,
    /// Task id or prefix.
    pub task: Option<String>,
    /// Only refused accesses.
    pub denied: Option<bool>,
    /// RFC 3339 time, or a duration back from now (`1h`).
    pub since: Option<String>,
    /// At most this many, newest first (default 200, max 5000).
    pub limit: Option<usize>,
}

#[utoipa::path(get, path = "/v1/audit", tag = "plugins", params(AuditQuery),
    responses((status = 200, description = "Capability decisions, newest first: at, plugin, digest, task, step, capability, action, target, allowed, detail", body = Vec<Object>),
        (status = 400, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody)),
    security(("bearer" = ["admin"])))]
pub async fn decisions(
    State(state): State<AppState>,
    query: Result<axum::extract::Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let axum::extract::Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let since_unix_ms = q
        .since
        .as_deref()
        .map(|t| {
            camina_journal::decisions::parse_since(t).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "since: `{t}` is not an RFC 3339 time or a duration"
                ))
            })
        })
        .transpose()?;
    let limit = q.limit.unwrap_or(200);
    if !(1..=5000).contains(&limit) {
        return Err(ApiError::bad_request("limit: must be from 1 to 5000"));
    }
    let entries = state.engine.decisions(&camina_journal::DecisionFilter {
        plugin: q.plugin,
        task: q.task,
        denied_only: q.denied.unwrap_or(false),
        since_unix_ms,
        limit,
    })?;
    Ok(Json(
        serde_json::to_value(entries).map_err(ApiError::internal)?,
    ))
}
