//! The HTTP API: every route and error through `router(state).oneshot(..)`,
//! and over real sockets: following a task over SSE, uploading a plugin and
//! using it in a task, and killing the server mid-task.

use crate::engine::{config, install_skills, models, project, todo_script};
use crate::support::sandbox;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use camina_api::{AppState, Scope, Settings, Token, router};
use camina_coordinator::Engine;
use camina_journal::Journal;
use camina_model::Bridge;
use camina_registry::Registry;
use fake_ollama::FakeOllama;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

pub(crate) const TASKS_TOKEN: &str = "tasks-token-0123456789";
pub(crate) const ADMIN_TOKEN: &str = "admin-token-0123456789";
pub(crate) const BOTH_TOKEN: &str = "both-token-0123456789";

pub(crate) struct Api {
    pub(crate) state: AppState,
    pub(crate) home: tempfile::TempDir,
}

impl Api {
    pub(crate) fn root(&self) -> PathBuf {
        self.home.path().join("workspaces")
    }
}

pub(crate) async fn api(fake: &FakeOllama, tokens: bool) -> Api {
    let home = tempfile::tempdir().unwrap();
    let registry = Registry::open(home.path(), sandbox()).unwrap();
    install_skills(&registry).await;
    let (journal, _) = Journal::open(&home.path().join("journal")).unwrap();
    let bridge = Bridge::new(config(fake), home.path()).unwrap();
    let engine = Engine::new(
        Arc::new(journal),
        Arc::new(registry),
        Arc::new(bridge),
        home.path(),
    );
    let tokens = if tokens {
        vec![
            Token {
                token: TASKS_TOKEN.into(),
                scopes: vec![Scope::Tasks],
            },
            Token {
                token: ADMIN_TOKEN.into(),
                scopes: vec![Scope::Admin],
            },
            Token {
                token: BOTH_TOKEN.into(),
                scopes: vec![Scope::Tasks, Scope::Admin],
            },
        ]
    } else {
        Vec::new()
    };
    let settings = Settings {
        tokens,
        workspace_root: home.path().join("workspaces"),
        max_running: 2,
        max_json_bytes: 64 * 1024,
        max_upload_bytes: 8 * 1024 * 1024,
        request_timeout: Duration::from_secs(30),
    };
    Api {
        state: AppState::new(Arc::new(engine), settings),
        home,
    }
}

pub(crate) async fn call(
    api: &Api,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = match body {
        Some(b) => req
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    }
    .unwrap();
    send(api, req).await
}

pub(crate) async fn send(api: &Api, req: Request<Body>) -> (StatusCode, Value) {
    let resp = router(api.state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 16 << 20)
        .await
        .unwrap();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| json!({"raw": String::from_utf8_lossy(&bytes)}));
    (status, value)
}

pub(crate) fn kind(v: &Value) -> &str {
    v["error"]["kind"].as_str().unwrap_or("")
}

pub(crate) async fn wait_final(api: &Api, id: &str) -> Value {
    for _ in 0..600 {
        let (_, v) = call(
            api,
            "GET",
            &format!("/v1/tasks/{id}"),
            Some(BOTH_TOKEN),
            None,
        )
        .await;
        if matches!(
            v["status"].as_str(),
            Some("succeeded" | "failed" | "cancelled" | "needs-review")
        ) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("task {id} did not finish");
}

#[tokio::test]
async fn health_and_openapi_need_no_token_and_the_document_is_complete() {
    let fake = FakeOllama::start(models(), todo_script);
    let a = api(&fake, true).await;
    let (s, v) = call(&a, "GET", "/healthz", None, None).await;
    assert_eq!((s, v), (StatusCode::OK, json!({"status": "ok"})));
    let (s, doc) = call(&a, "GET", "/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    for (path, methods) in [
        ("/healthz", vec!["get"]),
        ("/v1/tasks", vec!["get", "post"]),
        ("/v1/tasks/{id}", vec!["get"]),
        ("/v1/tasks/{id}/events", vec!["get"]),
        ("/v1/tasks/{id}/resume", vec!["post"]),
        ("/v1/tasks/{id}/cancel", vec!["post"]),
        ("/v1/tasks/{id}/diff", vec!["get"]),
        ("/v1/tasks/{id}/undo", vec!["post"]),
        ("/v1/plugins", vec!["get", "post"]),
        ("/v1/plugins/{name}", vec!["delete"]),
        ("/v1/policies/audit", vec!["get"]),
    ] {
        for m in methods {
            assert!(
                doc["paths"][path][m].is_object(),
                "{m} {path} is documented"
            );
            assert!(
                doc["paths"][path][m]["responses"].is_object(),
                "{m} {path} has responses"
            );
        }
    }
    // Every reference resolves.
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                if let Some(Value::String(r)) = o.get("$ref") {
                    out.push(r.clone());
                }
                o.values().for_each(|x| refs(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in all {
        let pointer = r.trim_start_matches('#');
        assert!(doc.pointer(pointer).is_some(), "dangling $ref {r}");
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}

#[tokio::test]
async fn auth_and_scope_matrix() {
    let fake = FakeOllama::start(models(), todo_script);
    let a = api(&fake, true).await;
    let cases: [(&str, &str, Option<&str>, StatusCode); 10] = [
        ("GET", "/v1/tasks", None, StatusCode::UNAUTHORIZED),
        (
            "GET",
            "/v1/tasks",
            Some("wrong-token-0123456789"),
            StatusCode::UNAUTHORIZED,
        ),
        ("GET", "/v1/tasks", Some(TASKS_TOKEN), StatusCode::OK),
        ("GET", "/v1/tasks", Some(ADMIN_TOKEN), StatusCode::FORBIDDEN),
        ("GET", "/v1/plugins", Some(TASKS_TOKEN), StatusCode::OK),
        (
            "GET",
            "/v1/policies/audit",
            Some(TASKS_TOKEN),
            StatusCode::FORBIDDEN,
        ),
        (
            "GET",
            "/v1/policies/audit",
            Some(ADMIN_TOKEN),
            StatusCode::OK,
        ),
        (
            "DELETE",
            "/v1/plugins/drummer-web",
            Some(TASKS_TOKEN),
            StatusCode::FORBIDDEN,
        ),
        (
            "DELETE",
            "/v1/plugins/drummer-web",
            None,
            StatusCode::UNAUTHORIZED,
        ),
        (
            "GET",
            "/v1/tasks/abc/events",
            None,
            StatusCode::UNAUTHORIZED,
        ),
    ];
    for (method, uri, token, want) in cases {
        let (s, v) = call(&a, method, uri, token, None).await;
        assert_eq!(s, want, "{method} {uri} with {token:?}: {v}");
        if !s.is_success() {
            assert!(v["error"]["message"].is_string(), "{v}");
        }
    }
    let (s, v) = call(&a, "GET", "/v1/tasks", None, None).await;
    assert_eq!((s, kind(&v)), (StatusCode::UNAUTHORIZED, "unauthorized"));
    let (s, v) = call(&a, "GET", "/v1/tasks", Some(ADMIN_TOKEN), None).await;
    assert_eq!((s, kind(&v)), (StatusCode::FORBIDDEN, "forbidden"));
    assert!(v["error"]["message"].as_str().unwrap().contains("`tasks`"));
}

#[tokio::test]
async fn creating_tasks_validates_the_body() {
    let fake = FakeOllama::start(models(), todo_script);
    let a = api(&fake, false).await;
    let (s, v) = call(&a, "POST", "/v1/tasks", None, Some(json!({"prompt": 5}))).await;
    assert_eq!((s, kind(&v)), (StatusCode::BAD_REQUEST, "bad_request"));
    assert!(
        v["error"]["message"].as_str().unwrap().contains("prompt"),
        "{v}"
    );
    let (s, v) = call(
        &a,
        "POST",
        "/v1/tasks",
        None,
        Some(json!({"workspace": "x"})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("missing field `prompt`"),
        "{v}"
    );
    let (s, v) = call(
        &a,
        "POST",
        "/v1/tasks",
        None,
        Some(json!({"prompt": "x", "priority": 9})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("priority"),
        "{v}"
    );
    let (s, _) = call(&a, "POST", "/v1/tasks", None, Some(json!({"prompt": "  "}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let req = Request::post("/v1/tasks")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{nope"))
        .unwrap();
    let (s, v) = send(&a, req).await;
    assert_eq!((s, kind(&v)), (StatusCode::BAD_REQUEST, "bad_request"));
    let huge = json!({"prompt": "x".repeat(200 * 1024)});
    let (s, v) = call(&a, "POST", "/v1/tasks", None, Some(huge)).await;
    assert_eq!(
        (s, kind(&v)),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
        "{v}"
    );
    let (s, v) = call(&a, "GET", "/v1/tasks?status=sleeping", None, None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, _) = call(&a, "GET", "/v1/tasks?limit=0", None, None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, v) = call(&a, "GET", "/v1/tasks/ffffffff", None, None).await;
    assert_eq!((s, kind(&v)), (StatusCode::NOT_FOUND, "not_found"));
    let (s, _) = call(&a, "POST", "/v1/tasks/ffffffff/cancel", None, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = call(&a, "GET", "/nowhere", None, None).await;
    assert_eq!((s, kind(&v)), (StatusCode::NOT_FOUND, "not_found"));
}

#[tokio::test]
async fn a_task_runs_to_completion_and_its_details_and_lists_show_it() {
    let fake = FakeOllama::start(models(), todo_script);
    let a = api(&fake, false).await;
    project(&a.root().join("proj"));
    let (s, v) = call(
        &a,
        "POST",
        "/v1/tasks",
        None,
        Some(json!({"prompt": "Collect the TODOs", "workspace": "proj"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    assert!(matches!(v["status"].as_str(), Some("queued" | "running")));
    let done = wait_final(&a, &id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["answer"], "The TODO lines are in todo.md.");
    assert_eq!(done["steps"].as_array().unwrap().len(), 2);
    assert_eq!(done["steps"][1]["tool_calls"][0]["tool"], "write_file");
    assert!(done["steps"][1]["tool_calls"][0]["outcome"]["output"].is_string());
    assert!(done["created_at"].is_string() && done["updated_at"].is_string());
    assert!(a.root().join("proj/todo.md").exists());
    // Polling a task (as `wait_final` just did, while it ran) never serves
    // a stale document; an unchanged one is served again as it was.
    let (s, again) = call(&a, "GET", &format!("/v1/tasks/{id}"), None, None).await;
    assert_eq!((s, &again), (StatusCode::OK, &done));

    let (s, v) = call(&a, "POST", &format!("/v1/tasks/{id}/resume"), None, None).await;
    assert_eq!((s, kind(&v)), (StatusCode::CONFLICT, "conflict"));
    let (s, _) = call(&a, "POST", &format!("/v1/tasks/{id}/cancel"), None, None).await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, v) = call(
        &a,
        "POST",
        &format!("/v1/tasks/{id}/resume"),
        None,
        Some(json!({"interrupted": "maybe"})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");

    // A second task, then the list: newest first, filters, pages. It
    // gets a fresh workspace: in `proj` todo.md now exists, and the script
    // would overwrite it unread, which the agent refuses.
    project(&a.root().join("proj2"));
    let (_, v2) = call(
        &a,
        "POST",
        "/v1/tasks",
        None,
        Some(json!({"prompt": "again", "workspace": "proj2"})),
    )
    .await;
    let id2 = v2["id"].as_str().unwrap().to_owned();
    wait_final(&a, &id2).await;
    let (_, page) = call(&a, "GET", "/v1/tasks?limit=1", None, None).await;
    assert_eq!(page["tasks"][0]["id"], id2);
    let next = page["next"].as_str().unwrap().to_owned();
    let (_, page2) = call(
        &a,
        "GET",
        &format!("/v1/tasks?limit=1&cursor={next}"),
        None,
        None,
    )
    .await;
    assert_eq!(page2["tasks"][0]["id"], id);
    assert!(page2["next"].is_null());
    let (_, filtered) = call(&a, "GET", "/v1/tasks?status=failed", None, None).await;
    assert_eq!(filtered["tasks"], json!([]));
    let (_, ok) = call(&a, "GET", "/v1/tasks?status=succeeded", None, None).await;
    assert_eq!(ok["tasks"].as_array().unwrap().len(), 2);
}

/// A server on `fake`, and a task of the scripted to-do job that
/// succeeded in the workspace `proj`: `(api, workspace, task id)`.
pub(crate) async fn todo_task(fake: &FakeOllama) -> (Api, PathBuf, String) {
    let a = api(fake, false).await;
    let ws = a.root().join("proj");
    project(&ws);
    let (_, v) = call(
        &a,
        "POST",
        "/v1/tasks",
        None,
        Some(json!({"prompt": "Collect the TODOs", "workspace": "proj"})),
    )
    .await;
    let id = v["id"].as_str().unwrap().to_owned();
    assert_eq!(wait_final(&a, &id).await["status"], "succeeded");
    (a, ws, id)
}

#[tokio::test]
async fn a_task_is_reviewed_and_undone_over_the_api() {
    let fake = FakeOllama::start(models(), todo_script);
    let (a, ws, id) = todo_task(&fake).await;

    let (s, d) = call(&a, "GET", &format!("/v1/tasks/{id}/diff"), None, None).await;
    assert_eq!(s, StatusCode::OK, "{d}");
    let created = d["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["path"] == "todo.md")
        .expect("todo.md is in the diff");
    assert_eq!(created["change"], "created");
    assert!(created["diff"].as_str().unwrap().contains("+++ b/todo.md"));

    // Edited since: refused with the path named, nothing restored.
    std::fs::write(ws.join("todo.md"), "mine\n").unwrap();
    let (s, v) = call(&a, "POST", &format!("/v1/tasks/{id}/undo"), None, None).await;
    assert_eq!(
        (s, kind(&v)),
        (StatusCode::CONFLICT, "changed_since"),
        "{v}"
    );
    assert!(v["error"]["message"].as_str().unwrap().contains("todo.md"));
    assert!(ws.join("todo.md").exists());
    let (s, v) = call(
        &a,
        "POST",
        &format!("/v1/tasks/{id}/undo"),
        None,
        Some(json!({"force": true, "dry_run": true})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(ws.join("todo.md").exists(), "a dry run changes nothing");
    let (s, v) = call(
        &a,
        "POST",
        &format!("/v1/tasks/{id}/undo"),
        None,
        Some(json!({"force": true})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["undo"]["conflicts"], json!(["todo.md"]));
    assert!(!ws.join("todo.md").exists());
    let (s, v) = call(
        &a,
        "POST",
        &format!("/v1/tasks/{id}/undo"),
        None,
        Some(json!({"forse": true})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
}

#[tokio::test]
async fn the_server_finishes_an_undo_cut_short_when_it_starts() {
    let fake = FakeOllama::start(models(), todo_script);
    let (a, ws, id) = todo_task(&fake).await;
    assert!(ws.join("todo.md").exists());
    // A previous process started an undo and died before it finished.
    a.state
        .engine
        .journal()
        .append(
            &id,
            camina_journal::NewRecord {
                step: "undo".into(),
                kind: "undo_started".into(),
                data: json!({"force": false}),
                elapsed_ms: 0,
            },
            camina_journal::Update::default(),
            camina_journal::Durability::Flush,
        )
        .await
        .unwrap();
    assert_eq!(a.state.engine.unfinished_undo(&id).unwrap(), Some(false));
    let resumed = a.state.resume_interrupted().await.unwrap();
    assert_eq!(resumed, std::slice::from_ref(&id));
    for _ in 0..200 {
        if a.state.engine.unfinished_undo(&id).unwrap().is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(a.state.engine.unfinished_undo(&id).unwrap(), None);
    assert!(!ws.join("todo.md").exists(), "the undo was finished");
    let (_, v) = call(&a, "GET", &format!("/v1/tasks/{id}"), None, None).await;
    assert_eq!(
        v["status"], "succeeded",
        "the task itself is unchanged: {v}"
    );
}

/// `/openapi.json` is a valid OpenAPI 3.1 document: checked against the
/// OpenAPI Initiative's own schema (and a broken copy is not).
#[tokio::test]
async fn openapi_document_validates_against_the_openapi_3_1_schema() {
    let fake = FakeOllama::start(models(), todo_script);
    let a = api(&fake, false).await;
    let (s, doc) = call(&a, "GET", "/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let schema: Value =
        serde_json::from_str(include_str!("../data/openapi-3.1-schema.json")).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&doc)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    let mut broken = doc.clone();
    broken["paths"]["/healthz"]["get"]["responses"] = json!("none");
    assert!(
        !validator.is_valid(&broken),
        "the validator checks something"
    );
    let mut broken = doc;
    broken["info"] = json!({"version": 1});
    assert!(!validator.is_valid(&broken));
}

/// Errors axum produces itself (method, path, content type, multipart)
/// come in the same `{"error": {"kind", "message"}}` shape as ours.
#[tokio::test]
async fn every_error_is_json_with_its_status() {
    let fake = FakeOllama::start(models(), todo_script);
    let a = api(&fake, false).await;
    let (s, v) = call(&a, "PUT", "/v1/tasks", None, None).await;
    assert_eq!(
        (s, kind(&v)),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        "{v}"
    );
    let (s, v) = call(&a, "GET", "/v1/nothing", None, None).await;
    assert_eq!((s, kind(&v)), (StatusCode::NOT_FOUND, "not_found"), "{v}");
    let req = Request::builder()
        .method("POST")
        .uri("/v1/tasks")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from("prompt=x"))
        .unwrap();
    let (s, v) = send(&a, req).await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{v}");
    assert_eq!(kind(&v), "unsupported_media_type");
    assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    let req = Request::builder()
        .method("POST")
        .uri("/v1/plugins")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{}"))
        .unwrap();
    let (s, v) = send(&a, req).await;
    assert!(s.is_client_error(), "{s}");
    assert!(v["error"]["kind"].is_string(), "{v}");
    let (s, v) = call(
        &a,
        "POST",
        "/v1/tasks/abc/resume",
        None,
        Some(json!({"interrupted": "retry", "extra": 1})),
    )
    .await;
    assert_eq!(
        (s, kind(&v)),
        (StatusCode::BAD_REQUEST, "bad_request"),
        "{v}"
    );
}

/// `DELETE /v1/plugins/..%2F..%2Fx`: axum decodes the `%2F`, and the name
/// must not turn into a path outside the plugin store.
#[tokio::test]
async fn plugin_delete_path_traversal() {
    let fake = FakeOllama::start(models(), todo_script);
    let a = api(&fake, false).await;
    std::fs::write(a.home.path().join("victim.json"), "{}").unwrap();
    for name in ["..%2Fvictim", "..%2F..%2Fvictim", "%2E%2E"] {
        let (s, v) = call(&a, "DELETE", &format!("/v1/plugins/{name}"), None, None).await;
        assert_eq!(
            (s, kind(&v)),
            (StatusCode::NOT_FOUND, "not_found"),
            "{name}: {v}"
        );
    }
    assert!(a.home.path().join("victim.json").exists());
    let (_, list) = call(&a, "GET", "/v1/plugins", None, None).await;
    assert_eq!(
        list.as_array().unwrap().len(),
        3,
        "the installed plugins are intact"
    );
}

#[tokio::test]
async fn an_idempotency_key_returns_the_same_task() {
    let fake = FakeOllama::start(models(), todo_script);
    let a = api(&fake, false).await;
    let post = || {
        Request::post("/v1/tasks")
            .header(header::CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", "order-42")
            .body(Body::from(
                json!({"prompt": "Collect the TODOs"}).to_string(),
            ))
            .unwrap()
    };
    let (s1, v1) = send(&a, post()).await;
    let (s2, v2) = send(&a, post()).await;
    assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::OK));
    assert_eq!(v1["id"], v2["id"]);
    let (_, list) = call(&a, "GET", "/v1/tasks", None, None).await;
    assert_eq!(list["tasks"].as_array().unwrap().len(), 1);
    // The same key with another request is refused, not silently mapped
    // to the first task.
    let other = Request::post("/v1/tasks")
        .header(header::CONTENT_TYPE, "application/json")
        .header("Idempotency-Key", "order-42")
        .body(Body::from(
            json!({"prompt": "Delete the TODOs"}).to_string(),
        ))
        .unwrap();
    let (s3, v3) = send(&a, other).await;
    assert_eq!(s3, StatusCode::UNPROCESSABLE_ENTITY, "{v3}");
    assert!(
        v3["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Idempotency-Key"),
        "{v3}"
    );
    let (_, list) = call(&a, "GET", "/v1/tasks", None, None).await;
    assert_eq!(list["tasks"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn workspace_escapes_are_rejected() {
    let fake = FakeOllama::start(models(), todo_script);
    let a = api(&fake, false).await;
    std::fs::create_dir_all(a.root()).unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), a.root().join("sneaky")).unwrap();
    for ws in [
        "../escape".to_owned(),
        "proj/../../x".to_owned(),
        outside.path().display().to_string(),
        "/etc".to_owned(),
        "sneaky".to_owned(),
        a.root().join("sneaky").display().to_string(),
        // Creating beneath a planted symlink must not create outside.
        "sneaky/new".to_owned(),
        // The root itself holds every other task's workspace.
        ".".to_owned(),
        "./".to_owned(),
        a.root().display().to_string(),
    ] {
        let (s, v) = call(
            &a,
            "POST",
            "/v1/tasks",
            None,
            Some(json!({"prompt": "x", "workspace": ws})),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{ws}: {v}");
        assert_eq!(kind(&v), "bad_request");
    }
    assert!(!a.home.path().join("escape").exists());
    assert!(
        !outside.path().join("new").exists(),
        "a directory was created outside the root through the symlink"
    );
    let (_, list) = call(&a, "GET", "/v1/tasks", None, None).await;
    assert_eq!(list["tasks"], json!([]), "no task was created");
    // Missing: a fresh directory under the root.
    let (s, v) = call(&a, "POST", "/v1/tasks", None, Some(json!({"prompt": "x"}))).await;
    assert_eq!(s, StatusCode::CREATED);
    let (_, t) = call(
        &a,
        "GET",
        &format!("/v1/tasks/{}", v["id"].as_str().unwrap()),
        None,
        None,
    )
    .await;
    assert!(
        Path::new(t["workspace"].as_str().unwrap()).starts_with(a.root().canonicalize().unwrap())
    );
}

/// The server resolves its workspace root once; a root removed or
/// replaced while it serves is found again, and confinement still holds
/// under the new one.
#[tokio::test]
async fn a_workspace_root_removed_or_replaced_while_serving_is_found_again() {
    let fake = FakeOllama::start(models(), todo_script);
    let a = api(&fake, false).await;
    let post = |ws: &'static str| {
        call(
            &a,
            "POST",
            "/v1/tasks",
            None,
            Some(json!({"prompt": "x", "workspace": ws})),
        )
    };
    let (s, v) = post("first").await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert!(a.root().join("first").is_dir());
    std::fs::remove_dir_all(a.root()).unwrap();
    let (s, v) = post("second").await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert!(
        a.root().join("second").is_dir(),
        "the root was not made again"
    );
    // Renamed away and made anew: workspaces go under the new root, not
    // the directory the server had open.
    let moved = a.home.path().join("moved-root");
    std::fs::rename(a.root(), &moved).unwrap();
    std::fs::create_dir(a.root()).unwrap();
    let (s, v) = post("renamed").await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert!(a.root().join("renamed").is_dir());
    assert!(!moved.join("renamed").exists());
    // Replaced by a symlink to another directory: workspaces go where the
    // root leads now.
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::remove_dir_all(a.root()).unwrap();
    std::os::unix::fs::symlink(elsewhere.path(), a.root()).unwrap();
    let (s, v) = post("third").await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert!(elsewhere.path().join("third").is_dir());
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), a.root().join("sneaky")).unwrap();
    let (s, v) = post("sneaky/new").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(!outside.path().join("new").exists());
}
