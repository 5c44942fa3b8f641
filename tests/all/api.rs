//! The HTTP API: every route and error through `router(state).oneshot(..)`,
//! and over real sockets: following a task over SSE, uploading a plugin and
//! using it in a task, and killing the server mid-task.

use crate::engine::{
    COORDINATOR, REASONER, WORKER, config, install_skills, models, project, todo_script,
};
use crate::support::{artifacts, sandbox, shipped_policy};
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use camina_api::{AppState, Scope, Settings, Token, router};
use camina_coordinator::Engine;
use camina_journal::Journal;
use camina_model::Bridge;
use camina_registry::Registry;
use fake_ollama::{FakeOllama, Reply};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

const TASKS_TOKEN: &str = "tasks-token-0123456789";
const ADMIN_TOKEN: &str = "admin-token-0123456789";
const BOTH_TOKEN: &str = "both-token-0123456789";

struct Api {
    state: AppState,
    home: tempfile::TempDir,
}

impl Api {
    fn root(&self) -> PathBuf {
        self.home.path().join("workspaces")
    }
}

async fn api(fake: &FakeOllama, tokens: bool) -> Api {
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

async fn call(
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

async fn send(api: &Api, req: Request<Body>) -> (StatusCode, Value) {
    let resp = router(api.state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 16 << 20)
        .await
        .unwrap();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| json!({"raw": String::from_utf8_lossy(&bytes)}));
    (status, value)
}

fn kind(v: &Value) -> &str {
    v["error"]["kind"].as_str().unwrap_or("")
}

async fn wait_final(api: &Api, id: &str) -> Value {
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
async fn todo_task(fake: &FakeOllama) -> (Api, PathBuf, String) {
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

fn multipart(fields: &[(&str, &str, Vec<u8>)]) -> (String, Vec<u8>) {
    let boundary = "----camina-test-boundary";
    let mut body = Vec::new();
    for (name, filename, data) in fields {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        let disposition = if filename.is_empty() {
            format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n")
        } else {
            format!(
                "Content-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
        };
        body.extend_from_slice(disposition.as_bytes());
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// An unsigned upload to a host that requires signatures is refused as
/// forbidden (403, `untrusted_signature`), not answered as a server error.
#[tokio::test]
async fn an_unsigned_upload_is_forbidden_where_signatures_are_required() {
    let fake = FakeOllama::start(models(), todo_script);
    let a = api(&fake, true).await;
    a.state.engine.registry().require_signatures(true);
    let (ct, body) = multipart(&[
        (
            "component",
            "b.wasm",
            std::fs::read(artifacts::BELTER_FS).unwrap(),
        ),
        ("policy", "", shipped_policy("belter-fs").into_bytes()),
    ]);
    let req = Request::post("/v1/plugins")
        .header(header::CONTENT_TYPE, ct)
        .header(header::AUTHORIZATION, format!("Bearer {ADMIN_TOKEN}"))
        .body(Body::from(body))
        .unwrap();
    let (s, v) = send(&a, req).await;
    assert_eq!(
        (s, kind(&v)),
        (StatusCode::FORBIDDEN, "untrusted_signature"),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("require_signatures"),
        "{v}"
    );
}

#[tokio::test]
async fn plugins_install_list_remove_and_audit() {
    let fake = FakeOllama::start(models(), todo_script);
    let a = api(&fake, true).await;
    let (s, _) = call(
        &a,
        "DELETE",
        "/v1/plugins/belter-fs",
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = call(
        &a,
        "DELETE",
        "/v1/plugins/belter-fs",
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!((s, kind(&v)), (StatusCode::NOT_FOUND, "not_found"));

    let upload = |fields: &[(&str, &str, Vec<u8>)]| {
        let (ct, body) = multipart(fields);
        Request::post("/v1/plugins")
            .header(header::CONTENT_TYPE, ct)
            .header(header::AUTHORIZATION, format!("Bearer {ADMIN_TOKEN}"))
            .body(Body::from(body))
            .unwrap()
    };
    let wasm = std::fs::read(artifacts::BELTER_FS).unwrap();
    let policy = shipped_policy("belter-fs").into_bytes();
    let (s, v) = send(
        &a,
        upload(&[
            ("component", "b.wasm", wasm.clone()),
            ("policy", "", policy.clone()),
        ]),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(
        (v["name"].as_str(), v["crew"].as_str()),
        (Some("belter-fs"), Some("belter"))
    );
    let (s, v) = send(
        &a,
        upload(&[
            ("component", "b.wasm", b"junk".to_vec()),
            ("policy", "", policy.clone()),
        ]),
    )
    .await;
    assert_eq!(
        (s, kind(&v)),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_plugin"),
        "{v}"
    );
    let (s, v) = send(
        &a,
        upload(&[
            ("component", "b.wasm", wasm.clone()),
            ("policy", "", b"plugin = 3".to_vec()),
        ]),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let (s, v) = send(
        &a,
        upload(&[
            ("component", "b.wasm", wasm.clone()),
            ("policy", "", policy.clone()),
            ("sha256", "", "00".repeat(32).into_bytes()),
        ]),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("digest mismatch")
    );
    let (s, v) = send(&a, upload(&[("policy", "", policy.clone())])).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, _) = send(
        &a,
        upload(&[
            ("component", "b.wasm", wasm.clone()),
            ("policy", "", policy),
            ("extra", "", vec![]),
        ]),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let big = vec![0u8; 9 * 1024 * 1024];
    let (s, v) = send(&a, upload(&[("component", "b.wasm", big)])).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{v}");

    let (s, list) = call(&a, "GET", "/v1/plugins", Some(TASKS_TOKEN), None).await;
    assert_eq!(s, StatusCode::OK);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["belter-fs", "drummer-search", "drummer-web"]);
    assert!(
        list[0]["policy"]["grants"][0]
            .as_str()
            .unwrap()
            .contains("read-write")
    );
    let (s, audit) = call(&a, "GET", "/v1/policies/audit", Some(ADMIN_TOKEN), None).await;
    assert_eq!(s, StatusCode::OK);
    let belter = audit["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["plugin"] == "belter-fs")
        .unwrap();
    assert_eq!(belter["grants"]["fs"][0]["access"], "read-write");
    assert_eq!(belter["grants"]["net"], json!([]));
}

// ---- over real sockets ----------------------------------------------------

async fn serve(a: &Api) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(a.state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_followed_over_sse_to_completion() {
    let fake = FakeOllama::start(models(), todo_script);
    let a = api(&fake, true).await;
    project(&a.root().join("proj"));
    let url = serve(&a).await;
    let http = reqwest::Client::new();
    let created: Value = http
        .post(format!("{url}/v1/tasks"))
        .bearer_auth(TASKS_TOKEN)
        .json(&json!({"prompt": "Collect the TODOs", "workspace": "proj"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap();
    let resp = http
        .get(format!("{url}/v1/tasks/{id}/events"))
        .bearer_auth(TASKS_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/event-stream");
    // The stream ends by itself when the task does.
    let text = tokio::time::timeout(Duration::from_secs(60), resp.text())
        .await
        .expect("the stream ends")
        .unwrap();
    let kinds: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(kinds.first(), Some(&"submitted"));
    assert_eq!(kinds.last(), Some(&"answer"), "{kinds:?}");
    for k in [
        "plan",
        "step_started",
        "tool_intent",
        "tool_result",
        "step_finished",
    ] {
        assert!(kinds.contains(&k), "{k} in {kinds:?}");
    }
    let ids: Vec<u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(
        ids,
        (0..ids.len() as u64).collect::<Vec<_>>(),
        "every record once, in order"
    );
    // Replaying a finished task's stream returns its history and ends.
    let again = http
        .get(format!("{url}/v1/tasks/{id}/events"))
        .bearer_auth(TASKS_TOKEN)
        .header("Last-Event-ID", "3")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(again.lines().any(|l| l == "id: 4") && !again.lines().any(|l| l == "id: 3"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uploaded_plugin_is_used_by_a_task() {
    let fake = FakeOllama::start(models(), todo_script);
    let a = api(&fake, true).await;
    a.state.engine.registry().remove("belter-fs").unwrap();
    project(&a.root().join("proj"));
    let url = serve(&a).await;
    let http = reqwest::Client::new();
    let form = reqwest::multipart::Form::new()
        .part(
            "component",
            reqwest::multipart::Part::bytes(std::fs::read(artifacts::BELTER_FS).unwrap())
                .file_name("belter_fs.wasm"),
        )
        .text("policy", shipped_policy("belter-fs"));
    let resp = http
        .post(format!("{url}/v1/plugins"))
        .bearer_auth(ADMIN_TOKEN)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let created: Value = http
        .post(format!("{url}/v1/tasks"))
        .bearer_auth(TASKS_TOKEN)
        .json(&json!({"prompt": "Collect the TODOs", "workspace": "proj"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let done = wait_final(&a, created["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(
        a.root().join("proj/todo.md").exists(),
        "the uploaded belter-fs wrote it"
    );
}

/// `camina serve` on a port the OS picks (no port is reserved and then
/// raced for); returns the child and its URL, read from its
/// `listening on http://…` line.
fn camina_serve(home: &Path) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_camina"))
        .arg("--home")
        .arg(home)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("CAMINA_API_TOKEN", BOTH_TOKEN)
        .env("CAMINA_LOG", "error")
        .env_remove("OLLAMA_HOST")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("camina serve stopped before listening")
            .unwrap();
        if let Some(url) = line.strip_prefix("listening on ") {
            break url.to_owned();
        }
    };
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (child, url)
}

async fn wait_up(url: &str) {
    for _ in 0..200 {
        if reqwest::get(format!("{url}/healthz")).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the server did not come up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_server_mid_task_and_restarting_finishes_the_task() {
    // The belter's first turn is slow, so the kill lands mid-task.
    let fake = FakeOllama::start(models(), |req| {
        let tools = req["tools"].to_string();
        if tools.contains("write_file")
            && req["messages"].as_array().unwrap().last().unwrap()["role"] == "user"
        {
            return Reply::Delayed {
                ms: 1500,
                reply: Box::new(todo_script(req)),
            };
        }
        todo_script(req)
    });
    let home = tempfile::tempdir().unwrap();
    for (file, name) in [
        (artifacts::BELTER_FS, "belter-fs"),
        (artifacts::DRUMMER_SEARCH, "drummer-search"),
    ] {
        let policy = Path::new(artifacts::ROOT).join(format!("policies/{name}.toml"));
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_camina"))
            .arg("--home")
            .arg(home.path())
            .args(["plugin", "install", file, "--policy"])
            .arg(policy)
            .output()
            .unwrap();
        assert!(o.status.success());
    }
    std::fs::write(
        home.path().join("config.toml"),
        format!(
            "[models]\ncoordinator = \"ollama:{COORDINATOR}\"\nreasoner = \"ollama:{REASONER}\"\nbelter = \"ollama:{WORKER}\"\ndrummer = \"ollama:{WORKER}\"\n[ollama]\nurl = \"{}\"\n",
            fake.url()
        ),
    )
    .unwrap();
    project(&home.path().join("workspaces/proj"));
    let (mut server, url) = camina_serve(home.path());
    wait_up(&url).await;
    let http = reqwest::Client::new();
    let created: Value = http
        .post(format!("{url}/v1/tasks"))
        .bearer_auth(BOTH_TOKEN)
        .json(&json!({"prompt": "Collect the TODOs", "workspace": "proj"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    // Wait for the second step to start, then kill -9 the server.
    for _ in 0..200 {
        let t: Value = http
            .get(format!("{url}/v1/tasks/{id}"))
            .bearer_auth(BOTH_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if t["steps"].as_array().is_some_and(|s| s.len() == 2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    server.kill().unwrap();
    server.wait().unwrap();
    assert!(
        !home.path().join("workspaces/proj/todo.md").exists(),
        "killed before the belter wrote"
    );

    // Restart: the interrupted task is resumed and finishes.
    let (mut server, url) = camina_serve(home.path());
    wait_up(&url).await;
    let mut done = Value::Null;
    for _ in 0..400 {
        done = http
            .get(format!("{url}/v1/tasks/{id}"))
            .bearer_auth(BOTH_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if done["status"] == "succeeded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(home.path().join("workspaces/proj/todo.md").exists());
    let starts = done["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "started")
        .count();
    assert_eq!(starts, 2, "run once, resumed once");

    // A graceful stop (SIGTERM) of an idle server exits cleanly.
    let pid = server.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let status = tokio::task::spawn_blocking(move || server.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn serve_refuses_a_public_address_without_a_token() {
    let home = tempfile::tempdir().unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_camina"))
        .arg("--home")
        .arg(home.path())
        .args(["serve", "--listen", "0.0.0.0:0"])
        .env_remove("CAMINA_API_TOKEN")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("refusing to listen on 0.0.0.0:0 without a token")
    );
}
