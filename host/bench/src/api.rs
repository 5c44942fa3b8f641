//! P4: API throughput over loopback with wrk, against an axum hello-world
//! route served by the same runtime.

use crate::Row;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

/// Requests per second wrk measured, or why there is no figure (wrk
/// failed, or some answers were errors: a fast error is no throughput).
fn wrk(url: &str, script: Option<&Path>) -> Result<f64, String> {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t2", "-c32", "-d3s", "--latency"]);
    if let Some(s) = script {
        cmd.arg("-s").arg(s);
    }
    let out = cmd.arg(url).output().map_err(|e| format!("wrk: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if let Some(bad) = text
        .lines()
        .find(|l| l.trim_start().starts_with("Non-2xx or 3xx responses:"))
    {
        return Err(format!("{url}: {}", bad.trim()));
    }
    text.lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("wrk printed no rate: {}", text.trim()))
}

/// P4 runs on its own runtime, dropped at the end, so the API server and
/// the tasks wrk created do not run on into the later rows.
pub fn p4(rows: &mut Vec<Row>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    p4_on(&rt, rows);
    rt.shutdown_timeout(Duration::from_secs(2));
}

fn p4_on(rt: &tokio::runtime::Runtime, rows: &mut Vec<Row>) {
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
        // The bundled skills, so a task gets as far as asking the model
        // (which never answers): with no skills it would fail at once and
        // the row would measure task runs, not creates.
        let registry = crate::tasks::registry(home.path()).await;
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
            registry,
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
    let base = wrk(&hello, None);
    let get = wrk(&format!("{url}/v1/tasks/{id}"), None);
    let post = wrk(&format!("{url}/v1/tasks"), Some(&script));
    for (label, value) in [
        ("GET /v1/tasks/{id}", get),
        ("POST /v1/tasks (durable create + queue)", post),
    ] {
        let (measured, ratio) = match (&value, &base) {
            (Ok(v), Ok(b)) => (format!("{v:.0} req/s"), format!("{:.0}%", v / b * 100.0)),
            (Err(e), _) | (_, Err(e)) => (format!("no figure: {e}"), "—".into()),
        };
        rows.push(Row {
            id: "P4".into(),
            what: format!("API {label}, wrk -t2 -c32 over loopback"),
            measured,
            baseline: match &base {
                Ok(b) => format!("{b:.0} req/s (axum hello-world, same runtime)"),
                Err(e) => format!("no figure: {e}"),
            },
            ratio,
            target: if label.starts_with("POST") {
                "≥ 25% of hello-world".into()
            } else {
                "≥ 50% of hello-world".into()
            },
        });
    }
}
