//! The HTTP API's plugin routes (upload, list, remove, audit) and the
//! server over real sockets: following a task over SSE, an uploaded plugin
//! used by a task, killing `camina serve` mid-task, refusing a public
//! address without a token.

use crate::api::*;
use crate::engine::{COORDINATOR, REASONER, WORKER, models, project, todo_script};
use crate::support::{artifacts, shipped_policy};
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use camina_api::router;
use fake_ollama::{FakeOllama, Reply};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

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
