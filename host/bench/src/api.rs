//! P4: API throughput over loopback with wrk, against an axum hello-world
//! route served by the same runtime.

use crate::Row;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

fn wrk(url: &str, script: Option<&Path>) -> Option<f64> {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t2", "-c32", "-d3s", "--latency"]);
    if let Some(s) = script {
        cmd.arg("-s").arg(s);
    }
    let out = cmd.arg(url).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
}

pub fn p4(rt: &tokio::runtime::Runtime, rows: &mut Vec<Row>) {
    if Command::new("wrk").arg("--version").output().is_err() {
        eprintln!(
            "P4 skipped: wrk is not installed (apt-get install wrk; cargo xtask bench does it)"
        );
        return;
    }
    let home = tempfile::tempdir().expect("tmp");
    // A model that never answers: POSTed tasks stay queued/running.
    let fake = fake_ollama::FakeOllama::start(
        vec![fake_ollama::FakeModel::new(
            "mistral:7b",
            &["completion", "tools"],
        )],
        |_| fake_ollama::Reply::Delayed {
            ms: 600_000,
            reply: Box::new(fake_ollama::Reply::text("late")),
        },
    );
    let (url, hello, id) = rt.block_on(async {
        let (journal, _) =
            camina_journal::Journal::open(&home.path().join("journal")).expect("journal");
        let sandbox = Arc::new(camina_sandbox::Sandbox::new().expect("sandbox"));
        let registry = camina_registry::Registry::open(home.path(), sandbox).expect("registry");
        let config = camina_model::Config {
            models: camina_model::config::ModelsSection::all(camina_model::ModelSpec::Ollama(
                "mistral:7b".into(),
            )),
            ollama: camina_model::config::OllamaSection {
                url: Some(fake.url().into()),
                timeout_s: Some(900),
            },
            ..Default::default()
        };
        let bridge = camina_model::Bridge::new(config, home.path()).expect("bridge");
        let engine = Arc::new(camina_coordinator::Engine::new(
            Arc::new(journal),
            Arc::new(registry),
            Arc::new(bridge),
            home.path(),
        ));
        let ws = home.path().join("workspaces/ws");
        std::fs::create_dir_all(&ws).expect("ws");
        let task = engine
            .submit("bench", &ws, Default::default())
            .await
            .expect("submit");
        let settings = camina_api::Settings {
            tokens: Vec::new(),
            workspace_root: home.path().join("workspaces"),
            max_running: 1,
            max_json_bytes: 1 << 20,
            max_upload_bytes: 1 << 20,
            request_timeout: Duration::from_secs(30),
        };
        let app = camina_api::router(camina_api::AppState::new(engine, settings));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", l.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(l, app).await.expect("serve") });
        let hello_app =
            axum::Router::new().route("/hello", axum::routing::get(|| async { "hello" }));
        let h = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let hello = format!("http://{}/hello", h.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(h, hello_app).await.expect("serve") });
        (url, hello, task.id)
    });
    let script = home.path().join("post.lua");
    std::fs::write(
        &script,
        "wrk.method = \"POST\"\nwrk.body = '{\"prompt\":\"bench\",\"workspace\":\"ws\"}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n",
    )
    .expect("lua");
    let base = wrk(&hello, None).unwrap_or(0.0);
    let get = wrk(&format!("{url}/v1/tasks/{id}"), None).unwrap_or(0.0);
    let post = wrk(&format!("{url}/v1/tasks"), Some(&script)).unwrap_or(0.0);
    for (label, value) in [
        ("GET /v1/tasks/{id}", get),
        ("POST /v1/tasks (durable create + queue)", post),
    ] {
        rows.push(Row {
            id: "P4".into(),
            what: format!("API {label}, wrk -t2 -c32 over loopback"),
            measured: format!("{value:.0} req/s"),
            baseline: format!("{base:.0} req/s (axum hello-world, same runtime)"),
            ratio: format!("{:.0}%", value / base * 100.0),
            target: "≥ 50% of hello-world".into(),
        });
    }
}
