//! `camina mcp` driven by the official MCP SDK's client (rmcp) over stdio,
//! as an MCP client (Claude Desktop, Cursor…) runs it: initialize, the
//! tool list, calls, error results, list changes, the journal's
//! one-process rule.

use crate::engine::install_skills;
use crate::support::{artifacts, sandbox};
use camina_journal::{DecisionFilter, Journal};
use camina_registry::Registry;
use rmcp::model::{CallToolRequestParams, CallToolResult, Tool};
use rmcp::service::{NotificationContext, RoleClient, RunningService};
use rmcp::transport::TokioChildProcess;
use rmcp::{ClientHandler, ServiceExt};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// A client that notes `notifications/tools/list_changed` and progress
/// messages.
#[derive(Debug, Clone, Default)]
struct Client {
    changed: Arc<Notify>,
    progress: Arc<std::sync::Mutex<Vec<String>>>,
}

impl ClientHandler for Client {
    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.changed.notify_one();
    }

    async fn on_progress(
        &self,
        params: rmcp::model::ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.progress
            .lock()
            .unwrap()
            .push(params.message.unwrap_or_default());
    }
}

fn command(home: &Path, ws: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_camina"));
    cmd.arg("--home")
        .arg(home)
        .arg("mcp")
        .arg("--workspace")
        .arg(ws)
        .env_remove("CAMINA_HOME")
        .env("CAMINA_LOG", "warn")
        .stderr(std::process::Stdio::null());
    cmd
}

async fn connect(home: &Path, ws: &Path, client: Client) -> RunningService<RoleClient, Client> {
    let transport = TokioChildProcess::new(command(home, ws)).unwrap();
    client.serve(transport).await.unwrap()
}

async fn call(c: &RunningService<RoleClient, Client>, name: &str, args: Value) -> CallToolResult {
    let Value::Object(args) = args else {
        panic!("arguments are an object")
    };
    c.call_tool(CallToolRequestParams::new(name.to_owned()).with_arguments(args))
        .await
        .unwrap()
}

fn text(r: &CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect()
}

fn tool<'a>(tools: &'a [Tool], name: &str) -> &'a Tool {
    tools
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no tool {name}"))
}

async fn home_with_skills() -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    let registry = Registry::open(home.path(), sandbox()).unwrap();
    install_skills(&registry).await;
    home
}

#[tokio::test]
async fn mcp_offers_every_installed_tool_with_its_schema_and_hints() {
    let home = home_with_skills().await;
    let ws = tempfile::tempdir().unwrap();
    let c = connect(home.path(), ws.path(), Client::default()).await;
    let info = c.peer_info().unwrap();
    assert_eq!(info.server_info.as_ref().unwrap().name, "camina");
    assert!(info.capabilities.tools.as_ref().unwrap().list_changed == Some(true));
    let tools = c.list_all_tools().await.unwrap();
    // belter-fs and drummer-search both have read_file and grep: those are
    // offered under the plugin's name; the others under their own.
    for clash in [
        "belter-fs__read_file",
        "drummer-search__read_file",
        "belter-fs__grep",
        "drummer-search__grep",
    ] {
        tool(&tools, clash);
    }
    assert!(!tools.iter().any(|t| t.name == "read_file"));
    let registry = Registry::open(home.path(), sandbox()).unwrap();
    let write = registry.get("belter-fs").unwrap();
    let manifest = write.record.tools.iter().find(|t| t.name == "write_file");
    let w = tool(&tools, "write_file");
    assert_eq!(
        Value::Object((*w.input_schema).clone()),
        manifest.unwrap().input_schema,
        "the manifest's schema, as declared"
    );
    assert_eq!(
        w.description.as_deref(),
        Some(manifest.unwrap().description.as_str())
    );
    // Hints from the declared effects.
    let hints = |name: &str| tool(&tools, name).annotations.clone().unwrap();
    assert_eq!(hints("belter-fs__read_file").read_only_hint, Some(true));
    assert_eq!(hints("write_file").idempotent_hint, Some(true));
    assert_eq!(hints("write_file").read_only_hint, Some(false));
    assert_eq!(hints("append_file").destructive_hint, Some(true));
    assert_eq!(hints("append_file").idempotent_hint, Some(false));
    c.cancel().await.unwrap();
}

#[tokio::test]
async fn mcp_calls_run_sandboxed_and_every_failure_is_an_error_result() {
    let home = home_with_skills().await;
    let ws = tempfile::tempdir().unwrap();
    std::fs::write(ws.path().join("notes.txt"), "hello\n").unwrap();
    let c = connect(home.path(), ws.path(), Client::default()).await;

    let read = call(&c, "belter-fs__read_file", json!({"path": "notes.txt"})).await;
    assert_eq!(read.is_error, Some(false), "{}", text(&read));
    assert_eq!(
        read.structured_content.as_ref().unwrap()["content"],
        "hello\n"
    );
    let wrote = call(
        &c,
        "write_file",
        json!({"path": "out/new.txt", "content": "made"}),
    )
    .await;
    assert_eq!(wrote.is_error, Some(false), "{}", text(&wrote));
    assert_eq!(
        std::fs::read_to_string(ws.path().join("out/new.txt")).unwrap(),
        "made",
        "the call ran in the server's workspace"
    );

    // The skill's own error, a path out of the workspace, input against
    // the schema, a network call the policy does not allow, a tool that
    // does not exist: results with isError, and the server carries on.
    let cases = [
        (
            "belter-fs__read_file",
            json!({"path": "missing.txt"}),
            "not-found",
        ),
        (
            "belter-fs__read_file",
            json!({"path": "../../etc/passwd"}),
            "denied",
        ),
        ("write_file", json!({"path": "x.txt"}), "invalid-input"),
        ("http_get", json!({"url": "https://example.com/"}), "denied"),
        ("no_such_tool", json!({}), "no tool named `no_such_tool`"),
    ];
    for (name, args, says) in cases {
        let r = call(&c, name, args).await;
        assert_eq!(r.is_error, Some(true), "{name}: {}", text(&r));
        assert!(text(&r).contains(says), "{name}: {}", text(&r));
    }
    assert!(!ws.path().join("x.txt").exists());
    let again = call(&c, "belter-fs__read_file", json!({"path": "notes.txt"})).await;
    assert_eq!(again.is_error, Some(false), "still serving");
    c.cancel().await.unwrap();

    // Logged as `camina tool call` logs: the denied network request is in
    // the decision log once the server is gone.
    let journal = {
        let mut tries = 0;
        loop {
            match Journal::open(&home.path().join("journal")) {
                Ok((j, _)) => break j,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("{e}"),
            }
        }
    };
    let denied = journal
        .decision_log()
        .query(&DecisionFilter {
            denied_only: true,
            ..DecisionFilter::default()
        })
        .unwrap();
    assert!(
        denied
            .iter()
            .any(|d| d.plugin == "drummer-web" && d.target.contains("example.com")),
        "{denied:?}"
    );
}

#[tokio::test]
async fn mcp_tool_list_follows_installs_and_removals() {
    let home = tempfile::tempdir().unwrap();
    let ws = tempfile::tempdir().unwrap();
    let client = Client::default();
    let changed = client.changed.clone();
    let c = connect(home.path(), ws.path(), client).await;
    let names = |tools: Vec<Tool>| {
        tools
            .into_iter()
            .map(|t| t.name.to_string())
            .collect::<Vec<_>>()
    };
    // Only the host's own tool while no plugin is installed.
    assert_eq!(
        names(c.list_all_tools().await.unwrap()),
        [camina_mcp::RUN_TASK]
    );

    let registry = Registry::open(home.path(), sandbox()).unwrap();
    let policy = camina_registry::PolicySource {
        text: crate::support::shipped_policy("drummer-search"),
        name: "policies/drummer-search.toml".into(),
    };
    registry
        .install(
            &std::fs::read(artifacts::DRUMMER_SEARCH).unwrap(),
            Some(&policy),
            None,
            "drummer-search",
        )
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), changed.notified())
        .await
        .expect("list_changed after an install");
    let tools = c.list_all_tools().await.unwrap();
    tool(&tools, "find_files");

    registry.remove("drummer-search").unwrap();
    tokio::time::timeout(Duration::from_secs(20), changed.notified())
        .await
        .expect("list_changed after a removal");
    assert_eq!(
        names(c.list_all_tools().await.unwrap()),
        [camina_mcp::RUN_TASK]
    );
    c.cancel().await.unwrap();
}

#[tokio::test]
async fn mcp_says_so_when_another_camina_holds_the_journal() {
    let home = tempfile::tempdir().unwrap();
    let ws = tempfile::tempdir().unwrap();
    let (_held, _) = Journal::open(&home.path().join("journal")).unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        command(home.path(), ws.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .output(),
    )
    .await
    .expect("it does not hang")
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("in use by another camina process"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "nothing but JSON-RPC on stdout");
}

/// The Python with the official MCP SDK that `cargo xtask test` installs
/// (`target/py`, PyPI `mcp` 1.x), or `$CAMINA_TEST_PYTHON`.
fn python_with_mcp() -> std::path::PathBuf {
    let python = std::env::var_os("CAMINA_TEST_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(artifacts::ROOT).join("target/py/bin/python"));
    let has_sdk = std::process::Command::new(&python)
        .args(["-c", "import mcp"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        has_sdk,
        "{} with the `mcp` package is missing: run the tests with `cargo xtask test`, which \
         installs it",
        python.display()
    );
    python
}

/// Runs tests/mcp/python_client.py with `args`; what it saw, as JSON.
async fn python_client(python: std::path::PathBuf, args: &[&str]) -> Value {
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(python)
            .arg(Path::new(artifacts::ROOT).join("tests/mcp/python_client.py"))
            .args(args)
            .output(),
    )
    .await
    .expect("the Python client finishes")
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn mcp_works_with_the_official_python_sdk_client() {
    let python = python_with_mcp();
    let home = home_with_skills().await;
    let ws = tempfile::tempdir().unwrap();
    let camina = env!("CARGO_BIN_EXE_camina");
    let (home_arg, ws_arg) = (
        home.path().display().to_string(),
        ws.path().display().to_string(),
    );
    let seen = python_client(python, &["stdio", camina, &home_arg, &ws_arg]).await;
    assert_eq!(seen["server"], "camina");
    assert_eq!(seen["tools"]["belter-fs__read_file"]["readOnlyHint"], true);
    assert_eq!(
        seen["tools"]["write_file"]["required"],
        json!(["path", "content"])
    );
    assert_eq!(seen["ok"]["isError"], false, "{seen}");
    assert_eq!(seen["ok"]["structured"]["bytes_written"], 17);
    assert_eq!(
        std::fs::read_to_string(ws.path().join("from-python.txt")).unwrap(),
        "hello from python"
    );
    assert_eq!(seen["bad"]["isError"], true);
    assert!(
        seen["bad"]["text"]
            .as_str()
            .unwrap()
            .starts_with("invalid-input:"),
        "{seen}"
    );
}

const TOKEN: &str = "mcp-test-token-0123456789";

/// `camina mcp --http 127.0.0.1:0` with `$CAMINA_API_TOKEN` set; returns
/// the child (killed on drop) and the `/mcp` URL it printed.
async fn http_server(home: &Path, ws: &Path) -> (tokio::process::Child, String) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_camina"))
        .arg("--home")
        .arg(home)
        .args(["mcp", "--http", "127.0.0.1:0", "--workspace"])
        .arg(ws)
        .env_remove("CAMINA_HOME")
        .env("CAMINA_API_TOKEN", TOKEN)
        .env("CAMINA_LOG", "warn")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let url = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(url) = line.strip_prefix("MCP (Streamable HTTP) on ") {
                return url.to_owned();
            }
        }
        panic!("camina mcp --http stopped before listening")
    })
    .await
    .unwrap();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, url)
}

fn initialize() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "test", "version": "1"}}})
}

#[tokio::test]
async fn mcp_http_refuses_missing_tokens_foreign_origins_and_dns_rebinding() {
    let home = home_with_skills().await;
    let ws = tempfile::tempdir().unwrap();
    let (_child, url) = http_server(home.path(), ws.path()).await;
    let http = reqwest::Client::new();
    let post = |token: Option<&str>| {
        let mut r = http
            .post(&url)
            .header("accept", "application/json, text/event-stream")
            .json(&initialize());
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r
    };
    for token in [None, Some("wrong-token-0123456789")] {
        let r = post(token).send().await.unwrap();
        assert_eq!(r.status(), 401, "{token:?}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
    }
    // A page on another site (its own Origin), or one that rebinds its own
    // name to 127.0.0.1 (a foreign Host): refused even with the token.
    let r = post(Some(TOKEN))
        .header("origin", "http://attacker.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = post(Some(TOKEN))
        .header("host", "attacker.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // The token, from a local page or no browser at all: served.
    let r = post(Some(TOKEN))
        .header("origin", "http://localhost:3000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("\"serverInfo\""));
}

#[tokio::test]
async fn mcp_http_works_with_the_official_python_sdk_client() {
    let python = python_with_mcp();
    let home = home_with_skills().await;
    let ws = tempfile::tempdir().unwrap();
    let (_child, url) = http_server(home.path(), ws.path()).await;
    let seen = python_client(python, &["http", &url, TOKEN]).await;
    assert_eq!(seen["server"], "camina");
    assert_eq!(seen["ok"]["isError"], false, "{seen}");
    assert_eq!(
        std::fs::read_to_string(ws.path().join("from-python.txt")).unwrap(),
        "hello from python"
    );
    assert_eq!(seen["bad"]["isError"], true);
}

/// A home with the skills and every role on the fake Ollama.
async fn home_on(fake: &fake_ollama::FakeOllama) -> tempfile::TempDir {
    use crate::engine::{COORDINATOR, REASONER, WORKER};
    let home = home_with_skills().await;
    std::fs::write(
        home.path().join("config.toml"),
        format!(
            "[models]\ncoordinator = \"ollama:{COORDINATOR}\"\nreasoner = \"ollama:{REASONER}\"\n\
             belter = \"ollama:{WORKER}\"\ndrummer = \"ollama:{WORKER}\"\n[ollama]\nurl = \"{}\"\n",
            fake.url()
        ),
    )
    .unwrap();
    home
}

fn run_task_request(prompt: &str) -> rmcp::model::ClientRequest {
    let Value::Object(args) = json!({"prompt": prompt}) else {
        unreachable!()
    };
    rmcp::model::ClientRequest::CallToolRequest(rmcp::model::CallToolRequest::new(
        CallToolRequestParams::new(camina_mcp::RUN_TASK).with_arguments(args),
    ))
}

#[tokio::test]
async fn mcp_run_task_runs_the_crews_with_progress_and_is_journaled() {
    use crate::engine::{EXPECTED_TODO, PROMPT, models, project, todo_script};
    let fake = fake_ollama::FakeOllama::start(models(), todo_script);
    let home = home_on(&fake).await;
    let ws = tempfile::tempdir().unwrap();
    project(ws.path());
    let client = Client::default();
    let progress = client.progress.clone();
    let c = connect(home.path(), ws.path(), client).await;
    let tools = c.list_all_tools().await.unwrap();
    let run = tool(&tools, camina_mcp::RUN_TASK);
    assert_eq!(
        run.annotations.as_ref().unwrap().destructive_hint,
        Some(true)
    );
    // A request with a progress token (rmcp's cancellable requests carry
    // one), as clients that show progress send it.
    let handle = c
        .peer()
        .send_cancellable_request(
            run_task_request(PROMPT),
            rmcp::service::PeerRequestOptions::no_options(),
        )
        .await
        .unwrap();
    let rmcp::model::ServerResult::CallToolResult(result) = handle.await_response().await.unwrap()
    else {
        panic!("not a tool result")
    };
    assert_eq!(result.is_error, Some(false), "{}", text(&result));
    assert_eq!(text(&result), "The TODO lines are in todo.md.");
    let structured = result.structured_content.unwrap();
    assert_eq!(structured["status"], "succeeded");
    assert_eq!(
        std::fs::read_to_string(ws.path().join("todo.md")).unwrap(),
        EXPECTED_TODO
    );
    let seen = progress.lock().unwrap().clone();
    assert!(
        seen.iter().any(|m| m.starts_with("step 1 [drummer]"))
            && seen.iter().any(|m| m.starts_with("step 2 [belter]"))
            && seen.iter().any(|m| m == "answered"),
        "{seen:?}"
    );
    c.cancel().await.unwrap();

    // Journaled like any task: `camina task list` shows it.
    let tasks = task_list(home.path()).await;
    assert_eq!(tasks[0]["id"], structured["task"]);
    assert_eq!(tasks[0]["status"], "succeeded");
}

/// `camina task list --json`, once the server has let go of the journal.
async fn task_list(home: &Path) -> Value {
    for _ in 0..100 {
        let listed = tokio::process::Command::new(env!("CARGO_BIN_EXE_camina"))
            .arg("--home")
            .arg(home)
            .args(["task", "list", "--json"])
            .env_remove("CAMINA_HOME")
            .output()
            .await
            .unwrap();
        if listed.status.success() {
            return serde_json::from_slice(&listed.stdout).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the journal stayed locked")
}

#[tokio::test]
async fn mcp_run_task_refuses_bad_input_and_a_client_cancel_cancels_the_task() {
    use crate::engine::{models, project};
    // The coordinator never answers within the test: the client cancels.
    let fake = fake_ollama::FakeOllama::start(models(), |_| fake_ollama::Reply::Delayed {
        ms: 60_000,
        reply: Box::new(fake_ollama::Reply::text("{}")),
    });
    let home = home_on(&fake).await;
    let ws = tempfile::tempdir().unwrap();
    project(ws.path());
    let c = connect(home.path(), ws.path(), Client::default()).await;
    let bad = call(&c, camina_mcp::RUN_TASK, json!({"prompt": ""})).await;
    assert_eq!(bad.is_error, Some(true));
    assert!(text(&bad).starts_with("invalid-input:"), "{}", text(&bad));

    let handle = c
        .peer()
        .send_cancellable_request(
            run_task_request("Write hello into hello.txt"),
            rmcp::service::PeerRequestOptions::no_options(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    handle
        .cancel(Some("the user changed their mind".into()))
        .await
        .unwrap();
    // The task stops as cancelled (the server is stopped a moment later to
    // read its journal).
    tokio::time::sleep(Duration::from_secs(3)).await;
    c.cancel().await.unwrap();
    let tasks = task_list(home.path()).await;
    let status = tasks[0]["status"].as_str().unwrap_or_default().to_owned();
    // Cancelled by the client's request, with its reason (a client that
    // merely goes away leaves a task interrupted, not cancelled).
    assert!(
        tasks[0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("cancelled by the MCP client: the user changed their mind"),
        "{tasks}"
    );
    assert_eq!(status, "cancelled");
}

#[tokio::test]
async fn mcp_run_task_that_fails_is_an_error_result() {
    use crate::engine::{models, project};
    let fake = fake_ollama::FakeOllama::start(models(), |_| {
        fake_ollama::Reply::status(500, "the model is on fire")
    });
    let home = home_on(&fake).await;
    let ws = tempfile::tempdir().unwrap();
    project(ws.path());
    let c = connect(home.path(), ws.path(), Client::default()).await;
    let r = call(
        &c,
        camina_mcp::RUN_TASK,
        json!({"prompt": "Write hello into hello.txt"}),
    )
    .await;
    assert_eq!(r.is_error, Some(true), "{}", text(&r));
    assert!(text(&r).contains(" failed: "), "{}", text(&r));
    assert_eq!(r.structured_content.unwrap()["status"], "failed");
    c.cancel().await.unwrap();
}

#[tokio::test]
async fn mcp_client_going_away_leaves_its_task_resumable_not_cancelled() {
    use crate::engine::{models, project};
    let fake = fake_ollama::FakeOllama::start(models(), |_| fake_ollama::Reply::Delayed {
        ms: 60_000,
        reply: Box::new(fake_ollama::Reply::text("{}")),
    });
    let home = home_on(&fake).await;
    let ws = tempfile::tempdir().unwrap();
    project(ws.path());
    let c = connect(home.path(), ws.path(), Client::default()).await;
    let _pending = c
        .peer()
        .send_cancellable_request(
            run_task_request("Write hello into hello.txt"),
            rmcp::service::PeerRequestOptions::no_options(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The client quits (its stdin closes) without cancelling anything.
    c.cancel().await.unwrap();
    let tasks = task_list(home.path()).await;
    assert_eq!(tasks[0]["status"], "interrupted", "{tasks}");
}
