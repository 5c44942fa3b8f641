//! Tasks as Restate workflows (issue 17), against a real `restate-server`
//! (the npm package's binary, which `cargo xtask test` fetches) on
//! loopback, the scripted fake Ollama and the shipped skills:
//!
//! - the conformance test runs the sample task on the sled journal and on
//!   Restate and wants the same records, answer, workspace and model calls;
//! - a `camina worker` killed while a model thinks is replayed by another
//!   worker (its own home): no finished step asked or run again, the
//!   side-effecting append done once;
//! - a worker that dies between a side-effecting call and its journaled
//!   result leaves the task `needs-review` until a decision arrives on its
//!   durable promise;
//! - the API in front of Restate (`camina serve --engine restate`);
//! - the cluster run `cargo xtask cluster` prints: three Restate nodes with
//!   replication 2, two workers behind one URL, 20 tasks over the API, a
//!   worker and a node killed mid-run.

use crate::engine::{
    COORDINATOR, EXPECTED_TODO, PROMPT, REASONER, WORKER, is_answer, last_user, models,
    one_step_script, setup, todo_script,
};
use crate::support::artifacts;
use camina_cluster::Client;
use camina_coordinator::RunOptions;
use camina_coordinator::events::{Budgets, Decision, Submitted};
use camina_journal::{Record, Status};
use fake_ollama::{FakeOllama, Reply};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// The Restate server binary `cargo xtask test` fetches from npm
/// (`$CAMINA_TEST_RESTATE`, else the cache it puts it in).
fn restate_server() -> PathBuf {
    let path = std::env::var_os("CAMINA_TEST_RESTATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| camina_model::fetch::cache_dir().join("restate/1.7.12/restate-server"));
    assert!(
        path.is_file(),
        "{} is missing: run the tests with `cargo xtask test`, which fetches it \
         (npm @restatedev/restate-server), or `cargo xtask restate`",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` distinct free loopback ports: all held open while they are
/// picked, so one process is never handed the same port twice (another
/// may still take one before it is bound: see [`Cluster::start`]).
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// A child process killed (SIGKILL) when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One Restate node on loopback.
struct Restate {
    _child: Killed,
    ingress: String,
    admin: String,
    dir: tempfile::TempDir,
}

impl Restate {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let p = free_ports(3);
        let (ingress, admin, node) = (p[0], p[1], p[2]);
        let log = std::fs::File::create(dir.path().join("restate.log")).unwrap();
        let child = Command::new(restate_server())
            .args(["--no-logo", "--listen-mode", "tcp", "--base-dir"])
            .arg(dir.path().join("data"))
            .args(["--bind-address", &format!("127.0.0.1:{node}")])
            .args(["--advertised-address", &format!("http://127.0.0.1:{node}")])
            .args(["--default-num-partitions", "2"])
            .env(
                "RESTATE_INGRESS__BIND_ADDRESS",
                format!("127.0.0.1:{ingress}"),
            )
            .env("RESTATE_ADMIN__BIND_ADDRESS", format!("127.0.0.1:{admin}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let r = Self {
            _child: Killed(child),
            ingress: format!("http://127.0.0.1:{ingress}"),
            admin: format!("http://127.0.0.1:{admin}"),
            dir,
        };
        let http = reqwest::Client::new();
        for _ in 0..300 {
            let up = |url: String| {
                let http = http.clone();
                async move {
                    http.get(url)
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success())
                }
            };
            if up(format!("{}/health", r.admin)).await
                && up(format!("{}/restate/health", r.ingress)).await
            {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("restate-server did not come up:\n{}", r.log());
    }

    fn client(&self) -> Client {
        Client::new(&self.ingress, &self.admin)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("restate.log")).unwrap_or_default()
    }
}

fn camina(home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_camina"));
    c.arg("--home")
        .arg(home)
        .env_remove("CAMINA_CRASH_IN_STEP")
        .env_remove("OLLAMA_HOST")
        .env("CAMINA_LOG", "warn");
    c
}

/// A worker home: the bundled skills installed, the fake models
/// configured. Each worker has its own.
fn worker_home(fake: &FakeOllama, dir: &Path) -> PathBuf {
    worker_home_with(fake, dir, None)
}

/// [`worker_home`], belter-fs under `belter_policy` if given.
fn worker_home_with(fake: &FakeOllama, dir: &Path, belter_policy: Option<&Path>) -> PathBuf {
    let home = dir.to_path_buf();
    for (file, name) in [
        (artifacts::BELTER_FS, "belter-fs"),
        (artifacts::DRUMMER_SEARCH, "drummer-search"),
        (artifacts::DRUMMER_WEB, "drummer-web"),
    ] {
        let policy = match belter_policy {
            Some(p) if name == "belter-fs" => p.to_path_buf(),
            _ => Path::new(artifacts::ROOT).join(format!("policies/{name}.toml")),
        };
        let o = camina(&home)
            .args(["plugin", "install", file, "--policy"])
            .arg(policy)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    std::fs::write(
        home.join("config.toml"),
        format!(
            "[models]\ncoordinator = \"ollama:{COORDINATOR}\"\nreasoner = \"ollama:{REASONER}\"\n\
             belter = \"ollama:{WORKER}\"\ndrummer = \"ollama:{WORKER}\"\n[ollama]\nurl = \"{}\"\n\
             [server]\nworkspace_root = \"{}\"\n",
            fake.url(),
            std::env::temp_dir().canonicalize().unwrap().display()
        ),
    )
    .unwrap();
    home
}

/// The `camina worker` command for `home`, serving on `port`, registering
/// with the Restate at `ingress`/`admin` (stdout discarded).
fn worker_command(home: &Path, ingress: &str, admin: &str, port: u16) -> std::process::Command {
    let mut c = camina(home);
    c.args(["worker", "--restate", ingress, "--restate-admin", admin])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null());
    c
}

/// `camina worker` serving on `port`, registered with `restate`.
fn spawn_worker(home: &Path, restate: &Restate, port: u16, crash_in: Option<&str>) -> Killed {
    let mut c = worker_command(home, &restate.ingress, &restate.admin, port);
    c.stderr(Stdio::inherit());
    if let Some(step) = crash_in {
        c.env("CAMINA_CRASH_IN_STEP", step);
    }
    Killed(c.spawn().unwrap())
}

/// The sample task's models, the final answer taking 30 s the first time
/// it is asked (a worker can be killed while the model thinks).
fn slow_answer_fake() -> FakeOllama {
    let mut slow = true;
    FakeOllama::start(models(), move |req| {
        let reply = todo_script(req);
        if is_answer(req) && std::mem::take(&mut slow) {
            Reply::Delayed {
                ms: 30_000,
                reply: Box::new(reply),
            }
        } else {
            reply
        }
    })
}

/// Waits until the final answer is asked for; the model calls so far.
async fn answer_asked(fake: &FakeOllama, restate: &Restate) -> usize {
    for _ in 0..600 {
        let chats = fake.chats();
        if chats.iter().any(is_answer) {
            return chats.len();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the task never reached its answer\n{}", restate.log());
}

/// Whether the process exits within a minute (a failpoint fired).
async fn died(worker: &mut Killed) -> bool {
    for _ in 0..600 {
        if worker.0.try_wait().unwrap().is_some() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// The sample project in a fresh directory; the task for it.
fn project() -> (tempfile::TempDir, Submitted) {
    let dir = tempfile::tempdir().unwrap();
    crate::engine::project(dir.path());
    let ws = dir.path().canonicalize().unwrap();
    let submitted = Submitted {
        prompt: PROMPT.into(),
        workspace: ws.display().to_string(),
        budgets: Budgets::default(),
    };
    (dir, submitted)
}

/// What a run did, independent of ids, times, workspace directories and
/// which process ran it: each record's step, kind and data (the task id and
/// the workspace path replaced), the process-specific `started` data left
/// out.
fn shape(records: &[Record], id: &str, ws: &str) -> Vec<(String, String, String)> {
    records
        .iter()
        .map(|r| {
            let data = match r.kind.as_str() {
                "started" | "submitted" => String::new(),
                _ => {
                    let mut data = r.data.clone();
                    untimed(&mut data);
                    data.to_string()
                        .replace(id, "<task>")
                        .replace(ws, "<workspace>")
                }
            };
            (r.step.clone(), r.kind.clone(), data)
        })
        .collect()
}

/// The sample task on the sled journal: its records (and the step of its
/// side-effecting append).
async fn on_the_journal() -> (Vec<(String, String, String)>, String) {
    let fake = FakeOllama::start(models(), todo_script);
    let s = setup(&fake).await;
    let t = s
        .engine
        .submit(PROMPT, &s.ws, Budgets::default())
        .await
        .unwrap();
    let done = s.engine.run(&t.id, RunOptions::default()).await.unwrap();
    assert_eq!(done.status, Status::Succeeded, "{:?}", done.error);
    let records = s.engine.journal().records(&t.id).unwrap();
    let append = records
        .iter()
        .find(|r| r.kind == "tool_intent" && r.data["tool"] == "append_file")
        .unwrap()
        .step
        .clone();
    let ws = s.ws.canonicalize().unwrap();
    (shape(&records, &t.id, &ws.display().to_string()), append)
}

/// Leaves out how long things took (tool and model timings).
fn untimed(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.remove("elapsed_ms");
            m.remove("timing");
            m.values_mut().for_each(untimed);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(untimed),
        _ => {}
    }
}

/// The two runs recorded the same steps with the same data.
fn same_story(journal: &[(String, String, String)], restate: &[(String, String, String)]) {
    for (i, (a, b)) in journal.iter().zip(restate).enumerate() {
        assert_eq!(
            a, b,
            "record {i} differs between the journal (left) and Restate (right)"
        );
    }
    assert_eq!(
        journal.len(),
        restate.len(),
        "records on the journal and on Restate"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sample_task_runs_the_same_on_restate_as_on_the_journal() {
    let (journal, _) = on_the_journal().await;

    let restate = Restate::start().await;
    let fake = FakeOllama::start(models(), todo_script);
    let s = setup(&fake).await;
    let client = restate.client();
    let (stop, serving) = in_process_worker(s.engine, &client).await;

    let (ws, submitted) = project();
    let id = client.submit(&submitted).await.unwrap();
    let done = client
        .wait(&id, Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", restate.log()));
    assert_eq!(done.status, Status::Succeeded, "{:?}", done.error);
    assert_eq!(
        done.answer.as_deref(),
        Some("The TODO lines are in todo.md.")
    );
    assert_eq!(
        std::fs::read_to_string(ws.path().join("todo.md")).unwrap(),
        EXPECTED_TODO
    );
    assert_eq!(
        std::fs::read_to_string(ws.path().join("log.txt")).unwrap(),
        "collected\n"
    );
    let records = client.records(&id, 0).await.unwrap();
    assert_eq!(done.events, records.len() as u64);
    assert_eq!(
        records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (0..records.len() as u64).collect::<Vec<_>>()
    );
    let restate_shape = shape(&records, &id, &submitted.workspace);
    same_story(&journal, &restate_shape);
    // A submitted id names one task: submitting it again starts nothing.
    client.submit_as(&id, &submitted).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(client.records(&id, 0).await.unwrap().len(), records.len());

    let _ = stop.send(());
    serving.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_mid_task_is_replayed_by_another_without_reasking_or_repeating() {
    let (journal, _) = on_the_journal().await;
    // The final answer takes long the first time: the worker is killed
    // while the model thinks.
    let fake = slow_answer_fake();
    let restate = Restate::start().await;
    let homes = tempfile::tempdir().unwrap();
    let first = worker_home(&fake, &homes.path().join("a"));
    let second = worker_home(&fake, &homes.path().join("b"));
    let port = free_port();
    let worker = spawn_worker(&first, &restate, port, None);
    let client = restate.client();
    client.ready(Duration::from_secs(60)).await.unwrap();
    let (ws, submitted) = project();
    let id = client.submit(&submitted).await.unwrap();

    let asked = answer_asked(&fake, &restate).await;
    drop(worker); // SIGKILL, mid model call
    let _worker = spawn_worker(&second, &restate, port, None);

    let done = client
        .wait(&id, Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", restate.log()));
    assert_eq!(done.status, Status::Succeeded, "{:?}", done.error);
    assert_eq!(
        fake.chats().len(),
        asked + 1,
        "only the call in flight is asked again"
    );
    assert_eq!(
        std::fs::read_to_string(ws.path().join("log.txt")).unwrap(),
        "collected\n",
        "the append ran once"
    );
    assert_eq!(
        std::fs::read_to_string(ws.path().join("todo.md")).unwrap(),
        EXPECTED_TODO
    );
    let records = client.records(&id, 0).await.unwrap();
    same_story(&journal, &shape(&records, &id, &submitted.workspace));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_side_effecting_call_cut_off_by_a_worker_death_waits_for_a_decision_skip() {
    cut_off_append(Decision::Skip).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_side_effecting_call_cut_off_by_a_worker_death_waits_for_a_decision_retry() {
    cut_off_append(Decision::Retry).await;
}

/// A worker dies between the append and its journaled result; another
/// one takes the task, which waits for `decision`.
async fn cut_off_append(decision: Decision) {
    let (_, append) = on_the_journal().await;
    let fake = FakeOllama::start(models(), todo_script);
    let restate = Restate::start().await;
    let homes = tempfile::tempdir().unwrap();
    let first = worker_home(&fake, &homes.path().join("a"));
    let second = worker_home(&fake, &homes.path().join("b"));
    let port = free_port();
    // Dies after the append ran, before Restate journaled its result.
    let crash = format!("{append} tool_result?");
    let mut worker = spawn_worker(&first, &restate, port, Some(&crash));
    let client = restate.client();
    client.ready(Duration::from_secs(60)).await.unwrap();
    let (ws, submitted) = project();
    let id = client.submit(&submitted).await.unwrap();
    assert!(
        died(&mut worker).await,
        "the failpoint did not fire\n{}",
        restate.log()
    );
    assert_eq!(
        std::fs::read_to_string(ws.path().join("log.txt")).unwrap(),
        "collected\n",
        "the append ran before the worker died"
    );

    let _worker = spawn_worker(&second, &restate, port, None);
    let review = client
        .wait(&id, Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", restate.log()));
    assert_eq!(review.status, Status::NeedsReview, "{:?}", review.error);
    let reason = review.error.unwrap();
    assert!(reason.contains("append_file"), "{reason}");
    let records = client.records(&id, 0).await.unwrap();
    let key = records
        .iter()
        .rev()
        .find(|r| r.kind == "tool_intent")
        .unwrap()
        .data["key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(key, format!("{id}:1:3"));
    assert_eq!(
        std::fs::read_to_string(ws.path().join("log.txt")).unwrap(),
        "collected\n",
        "not run again without a decision"
    );

    client.decide(&id, &key, decision).await.unwrap();
    let done = client
        .wait_final(&id, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(done.status, Status::Succeeded, "{:?}", done.error);
    let records = client.records(&id, 0).await.unwrap();
    let word = match decision {
        Decision::Skip => "skip",
        Decision::Retry => "retry",
    };
    assert!(
        records
            .iter()
            .any(|r| r.kind == "review" && r.data["decision"] == word)
    );
    let log = std::fs::read_to_string(ws.path().join("log.txt")).unwrap();
    match decision {
        Decision::Skip => {
            assert_eq!(log, "collected\n", "skipped, not run again");
            assert!(
                records
                    .iter()
                    .any(|r| r.kind == "tool_result" && r.data["error"][0] == "skipped"),
                "the model was told the call was skipped"
            );
        }
        Decision::Retry => {
            // The reviewer asked for it again: it ran again.
            assert_eq!(log, "collected\ncollected\n");
            let appended = records
                .iter()
                .filter(|r| {
                    r.kind == "tool_result"
                        && r.data["output"]
                            .as_str()
                            .is_some_and(|o| o.contains("bytes_appended"))
                })
                .count();
            assert_eq!(appended, 1, "one recorded result for the call");
        }
    }
}

/// Serves the task workflow in this process on a fresh port; stops when
/// the sender is dropped or sent to.
async fn in_process_worker(
    engine: camina_coordinator::Engine,
    client: &Client,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), camina_cluster::ClientError>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = {
        let client = client.clone();
        tokio::spawn(async move {
            camina_cluster::worker::serve(
                Arc::new(engine),
                None,
                listener,
                &client,
                &url,
                || {},
                async {
                    let _ = stopped.await;
                },
            )
            .await
        })
    };
    client.ready(Duration::from_secs(60)).await.unwrap();
    (stop, serving)
}

/// `camina serve --engine restate`'s router over a socket: the same routes
/// as one machine, the tasks run by a worker through Restate.
#[tokio::test(flavor = "multi_thread")]
async fn the_api_submits_lists_watches_shows_and_cancels_tasks_through_restate() {
    // A task that says "slowly" gets a reasoner that takes its time, so it
    // can be cancelled while it runs (the cancellation lands when the call
    // in flight ends: a step is not interrupted).
    let fake = FakeOllama::start(models(), |req| {
        let reply = todo_script(req);
        if req["model"] == REASONER && req.to_string().contains("slowly") {
            Reply::Delayed {
                ms: 3_000,
                reply: Box::new(reply),
            }
        } else {
            reply
        }
    });
    let restate = Restate::start().await;
    let client = restate.client();
    let worker_side = setup(&fake).await;
    let (_stop, _serving) = in_process_worker(worker_side.engine, &client).await;

    let api_side = setup(&fake).await;
    let root = tempfile::tempdir().unwrap();
    crate::engine::project(&root.path().join("proj"));
    let settings = camina_api::Settings {
        tokens: Vec::new(),
        workspace_root: root.path().to_path_buf(),
        max_running: 2,
        max_json_bytes: 64 * 1024,
        max_upload_bytes: 1024 * 1024,
        request_timeout: Duration::from_secs(30),
    };
    let state =
        camina_api::AppState::new(Arc::new(api_side.engine), settings).with_cluster(client.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, camina_api::router(state))
            .await
            .unwrap();
    });
    let http = reqwest::Client::new();

    let created = http
        .post(format!("{api}/v1/tasks"))
        .json(&serde_json::json!({"prompt": PROMPT, "workspace": "proj"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let task: serde_json::Value = created.json().await.unwrap();
    let id = task["id"].as_str().unwrap().to_owned();
    assert_eq!(task["status"], "queued");

    // The event stream follows the task to its answer, then ends.
    let events = tokio::time::timeout(
        Duration::from_secs(120),
        http.get(format!("{api}/v1/tasks/{id}/events")).send(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(events.status(), 200);
    let stream = tokio::time::timeout(Duration::from_secs(120), events.text())
        .await
        .expect("the stream ends with the task")
        .unwrap();
    for kind in [
        "submitted",
        "started",
        "tool_intent",
        "tool_result",
        "answer",
    ] {
        assert!(
            stream.contains(&format!("event: {kind}\n")),
            "{kind} missing from the stream"
        );
    }
    assert!(
        stream.contains("id: 0\n"),
        "events carry their sequence numbers"
    );
    assert_eq!(
        std::fs::read_to_string(root.path().join("proj/todo.md")).unwrap(),
        EXPECTED_TODO
    );

    let shown: serde_json::Value = http
        .get(format!("{api}/v1/tasks/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["status"], "succeeded", "{shown}");
    assert_eq!(shown["answer"], "The TODO lines are in todo.md.");
    assert!(
        shown["steps"].as_array().is_some_and(|s| s.len() == 2),
        "{shown}"
    );

    // A resumed stream starts after the last event it saw.
    let tail = http
        .get(format!("{api}/v1/tasks/{id}/events"))
        .header(
            "last-event-id",
            (shown["events"].as_array().unwrap().len() - 2).to_string(),
        )
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(tail.matches("event: ").count(), 1, "{tail}");

    // An idempotency key names one task; another request under it is 422.
    let keyed = |prompt: &str| {
        http.post(format!("{api}/v1/tasks"))
            .header("idempotency-key", "nightly-todo-slowly")
            .json(&serde_json::json!({"prompt": prompt, "workspace": "proj"}))
            .send()
    };
    let slow_prompt = format!("{PROMPT}, slowly");
    let first = keyed(&slow_prompt).await.unwrap();
    assert_eq!(first.status(), 201);
    let slow: serde_json::Value = first.json().await.unwrap();
    let slow_id = slow["id"].as_str().unwrap().to_owned();
    let mut running = false;
    for _ in 0..300 {
        if client
            .summary(&slow_id)
            .await
            .unwrap()
            .is_some_and(|s| s.status == Status::Running)
        {
            running = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(running, "the second task never started");
    let again = keyed(&slow_prompt).await.unwrap();
    assert_eq!(again.status(), 200);
    let again: serde_json::Value = again.json().await.unwrap();
    assert_eq!(again["id"], slow_id.as_str());
    assert_eq!(keyed("something else").await.unwrap().status(), 422);

    let listed: serde_json::Value = http
        .get(format!("{api}/v1/tasks"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let statuses: Vec<(String, String)> = listed["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["id"].as_str().unwrap().to_owned(),
                t["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        statuses.contains(&(id.clone(), "succeeded".into())),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&(slow_id.clone(), "running".into())),
        "{statuses:?}"
    );

    // Cancelling reaches the task after its model call.
    let cancelled = http
        .post(format!("{api}/v1/tasks/{slow_id}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), 200);
    let cancelled: serde_json::Value = cancelled.json().await.unwrap();
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    let again = http
        .post(format!("{api}/v1/tasks/{slow_id}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);
    // What only one machine has says so.
    let diff = http
        .get(format!("{api}/v1/tasks/{id}/diff"))
        .send()
        .await
        .unwrap();
    assert_eq!(diff.status(), 501);
    let unknown = http
        .get(format!("{api}/v1/tasks/0123456789abcdef0123456789abcdef"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
}

/// A Restate cluster on loopback: `n` nodes running every role (the
/// metadata store and the log replicated), `replication` copies of each
/// partition's log and state.
struct Cluster {
    nodes: Vec<Option<Killed>>,
    ingress: Vec<String>,
    admin: Vec<String>,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// `n` nodes on fresh loopback ports. A port another process took
    /// between being picked and being bound makes that node exit ("Address
    /// in use"); the cluster is then started again on other ports (up to
    /// three times).
    async fn start(n: usize, replication: usize) -> Self {
        let mut tries = 0;
        loop {
            tries += 1;
            match Self::try_start(n, replication).await {
                Ok(c) => return c,
                // Only a taken port is worth another start (not a timeout).
                Err(c) if tries < 3 && c.logs().contains("Address in use") => {
                    eprintln!(
                        "a Restate node could not bind its port; starting again:\n{}",
                        c.logs()
                    );
                }
                Err(c) => panic!("the Restate cluster did not come up:\n{}", c.logs()),
            }
        }
    }

    /// [`Self::start`], once: `Err` when a node exits because its port was
    /// taken, or the cluster is not up within 60 s.
    async fn try_start(n: usize, replication: usize) -> Result<Self, Self> {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16, u16)> = free_ports(3 * n)
            .chunks(3)
            .map(|p| (p[0], p[1], p[2]))
            .collect();
        let metadata: Vec<String> = ports
            .iter()
            .map(|(node, _, _)| format!("\"http://127.0.0.1:{node}\""))
            .collect();
        let mut nodes = Vec::new();
        for (i, (node, ingress, admin)) in ports.iter().enumerate() {
            let config = dir.path().join(format!("n{i}.toml"));
            std::fs::write(
                &config,
                format!(
                    "cluster-name = \"camina\"\nnode-name = \"n{i}\"\nauto-provision = {}\n\
                     default-replication = {replication}\ndefault-num-partitions = 4\n\
                     disable-telemetry = true\nbase-dir = \"{}\"\n\
                     bind-address = \"127.0.0.1:{node}\"\n\
                     advertised-address = \"http://127.0.0.1:{node}\"\n\
                     [metadata-client]\naddresses = [{}]\n\
                     [admin]\nbind-address = \"127.0.0.1:{admin}\"\n\
                     [ingress]\nbind-address = \"127.0.0.1:{ingress}\"\n",
                    i == 0,
                    dir.path().join(format!("d{i}")).display(),
                    metadata.join(", "),
                ),
            )
            .unwrap();
            let log = std::fs::File::create(dir.path().join(format!("n{i}.log"))).unwrap();
            nodes.push(Some(Killed(
                Command::new(restate_server())
                    .args(["--no-logo", "--listen-mode", "tcp", "--config-file"])
                    .arg(&config)
                    .stdout(log.try_clone().unwrap())
                    .stderr(log)
                    .spawn()
                    .unwrap(),
            )));
        }
        let mut c = Self {
            nodes,
            ingress: ports
                .iter()
                .map(|(_, i, _)| format!("http://127.0.0.1:{i}"))
                .collect(),
            admin: ports
                .iter()
                .map(|(_, _, a)| format!("http://127.0.0.1:{a}"))
                .collect(),
            dir,
        };
        let http = reqwest::Client::new();
        for _ in 0..600 {
            let mut up = 0;
            for i in &c.ingress {
                if http
                    .get(format!("{i}/restate/health"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
                {
                    up += 1;
                }
            }
            if up == n {
                return Ok(c);
            }
            let exited = c
                .nodes
                .iter_mut()
                .flatten()
                .any(|k| k.0.try_wait().is_ok_and(|s| s.is_some()));
            if exited && c.logs().contains("Address in use") {
                return Err(c);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(c)
    }

    fn kill(&mut self, node: usize) {
        self.nodes[node] = None;
    }

    fn logs(&self) -> String {
        (0..self.nodes.len())
            .map(|i| {
                let log = std::fs::read_to_string(self.dir.path().join(format!("n{i}.log")))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                format!(
                    "--- node {i}\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// One URL for several workers (what a load balancer does in front of a
/// deployment): each connection goes to the next worker that accepts it.
async fn balancer(workers: Vec<u16>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut next = 0usize;
        while let Ok((mut inbound, _)) = listener.accept().await {
            let mut chosen = None;
            for k in 0..workers.len() {
                let p = workers[(next + k) % workers.len()];
                if let Ok(s) = tokio::net::TcpStream::connect(("127.0.0.1", p)).await {
                    next = (next + k + 1) % workers.len();
                    chosen = Some(s);
                    break;
                }
            }
            if let Some(mut outbound) = chosen {
                tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
            }
        }
    });
    port
}

/// The multi-node mode end to end, as `cargo xtask cluster` runs it: three
/// Restate nodes (replication 2), two `camina worker`s behind one URL, and
/// `camina serve --engine restate`; tasks that each append one line to
/// their own workspace's log.txt are submitted over the API; one worker
/// and one Restate node are killed mid-run. Every task must end
/// `succeeded` with its line in its log exactly once (an interrupted
/// append is settled the way a reviewer would: skip if the line is there,
/// retry if not). `CAMINA_CLUSTER_TASKS` sets how many (default 20).
#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_two_workers_survive_a_worker_kill_and_a_node_kill() {
    let tasks: usize = std::env::var("CAMINA_CLUSTER_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let marker = |req: &serde_json::Value| -> String {
        let user = last_user(req);
        user.split_whitespace()
            .find(|w| w.starts_with("cluster-"))
            .unwrap_or("cluster-?")
            .trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '-')
            .to_owned()
    };
    let mut script = one_step_script("belter", true, move |req, made| match made {
        0 => Reply::tool_call(
            "append_file",
            serde_json::json!({"path": "log.txt", "content": format!("{}\n", marker(req))}),
        ),
        _ => Reply::tool_call(
            "finish",
            serde_json::json!({"report": "Appended the line."}),
        ),
    });
    // Every reply takes a moment, so the kills land while tasks run.
    let fake = FakeOllama::start(models(), move |req| Reply::Delayed {
        ms: 150,
        reply: Box::new(script(req)),
    });
    let started = std::time::Instant::now();
    let mut cluster = Cluster::start(3, 2).await;
    let homes = tempfile::tempdir().unwrap();
    // The workers' and the API's ports, distinct.
    let ports = free_ports(3);
    let (worker_ports, api_port) = (&ports[..2], ports[2]);
    let url = format!("http://127.0.0.1:{}", balancer(worker_ports.to_vec()).await);
    let mut workers: Vec<Option<Killed>> = worker_ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            let home = worker_home(&fake, &homes.path().join(format!("w{i}")));
            let mut c = worker_command(&home, &cluster.ingress[0], &cluster.admin[0], *port);
            c.args(["--advertise", &url]).stderr(Stdio::null());
            Some(Killed(c.spawn().unwrap()))
        })
        .collect();
    let client = Client::new(&cluster.ingress[0], &cluster.admin[0]);
    client.ready(Duration::from_secs(60)).await.unwrap();

    // The API, on its own home, in front of node 0.
    let api_home = homes.path().join("api");
    std::fs::create_dir_all(&api_home).unwrap();
    let _api = Killed(
        camina(&api_home)
            .args([
                "serve",
                "--engine",
                "restate",
                "--restate",
                &cluster.ingress[0],
            ])
            .args([
                "--restate-admin",
                &cluster.admin[0],
                "--listen",
                &format!("127.0.0.1:{api_port}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let api = format!("http://127.0.0.1:{api_port}");
    let http = reqwest::Client::new();
    for _ in 0..300 {
        if http.get(format!("{api}/healthz")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut ids = Vec::new();
    for n in 0..tasks {
        let r = http
            .post(format!("{api}/v1/tasks"))
            .json(&serde_json::json!({
                "prompt": format!("Append the line cluster-{n:02} to log.txt"),
                "workspace": format!("t{n:02}"),
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        let t: serde_json::Value = r.json().await.unwrap();
        ids.push(t["id"].as_str().unwrap().to_owned());
    }
    let workspace = |n: usize| api_home.join(format!("workspaces/t{n:02}"));
    let statuses = async |http: &reqwest::Client| -> Vec<(String, String)> {
        let Ok(r) = http.get(format!("{api}/v1/tasks?limit=200")).send().await else {
            return Vec::new();
        };
        let page: serde_json::Value = r.json().await.unwrap_or_default();
        page["tasks"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                (
                    t["id"].as_str().unwrap_or_default().to_owned(),
                    t["status"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    };
    // Mid-run: a few tasks done, most not.
    let mut killed = false;
    for _ in 0..1200 {
        let done = statuses(&http)
            .await
            .iter()
            .filter(|(_, s)| s == "succeeded")
            .count();
        if done >= tasks / 4 {
            assert!(done < tasks, "every task finished before the kills");
            workers[0] = None;
            cluster.kill(2);
            killed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(killed, "tasks did not progress\n{}", cluster.logs());

    // Until every task is final; an interrupted append is settled as a
    // reviewer would, from the workspace.
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    let mut reviewed = 0;
    loop {
        let now = statuses(&http).await;
        let mine: Vec<&(String, String)> = now.iter().filter(|(id, _)| ids.contains(id)).collect();
        for (id, status) in &mine {
            if status == "needs-review" {
                let n = ids.iter().position(|i| i == id).unwrap();
                let log = std::fs::read_to_string(workspace(n).join("log.txt")).unwrap_or_default();
                let decision = if log.contains(&format!("cluster-{n:02}")) {
                    "skip"
                } else {
                    "retry"
                };
                let r = http
                    .post(format!("{api}/v1/tasks/{id}/resume"))
                    .json(&serde_json::json!({"interrupted": decision}))
                    .send()
                    .await
                    .unwrap();
                if r.status() == 202 {
                    reviewed += 1;
                }
            }
        }
        if mine.len() == tasks
            && mine
                .iter()
                .all(|(_, s)| matches!(s.as_str(), "succeeded" | "failed" | "cancelled"))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "tasks still running after 5 minutes: {mine:?}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(workers);
    // Which worker ran which calls: each keeps its own decision log.
    let ran: Vec<usize> = (0..2)
        .map(|i| {
            let o = camina(&homes.path().join(format!("w{i}")))
                .args(["audit", "log", "--json", "--limit", "100000"])
                .output()
                .unwrap();
            let entries: Vec<serde_json::Value> =
                serde_json::from_slice(&o.stdout).unwrap_or_default();
            let mut tasks: Vec<&str> = entries.iter().filter_map(|e| e["task"].as_str()).collect();
            tasks.sort();
            tasks.dedup();
            tasks.len()
        })
        .collect();
    let now = statuses(&http).await;
    let succeeded = ids
        .iter()
        .filter(|id| now.iter().any(|(i, s)| i == *id && s == "succeeded"))
        .count();
    let (mut lost, mut duplicated) = (0, 0);
    for n in 0..tasks {
        let log = std::fs::read_to_string(workspace(n).join("log.txt")).unwrap_or_default();
        match log.matches(&format!("cluster-{n:02}\n")).count() {
            0 => lost += 1,
            1 => {}
            _ => duplicated += 1,
        }
        assert!(
            log.lines().all(|l| l == format!("cluster-{n:02}")),
            "task {n}'s log holds another task's line: {log:?}"
        );
    }
    println!(
        "cluster: {tasks} tasks, {succeeded} succeeded, {lost} lost, {duplicated} duplicated side \
         effects, worker kill + node kill survived ({reviewed} interrupted append(s) reviewed; \
         workers ran calls of {} and {} tasks; {:.0} s)",
        ran[0],
        ran[1],
        started.elapsed().as_secs_f64()
    );
    if succeeded != tasks {
        // Why the others stopped, for the failure message.
        // The list carries each summary's error (reading one task can
        // time out while a killed worker's connections are retried).
        let page: serde_json::Value =
            match http.get(format!("{api}/v1/tasks?limit=200")).send().await {
                Ok(r) => r.json().await.unwrap_or_default(),
                Err(_) => serde_json::Value::Null,
            };
        let why: Vec<String> = page["tasks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["status"] != "succeeded")
            .map(|t| format!("{} {}: {}", t["id"], t["status"], t["error"]))
            .collect();
        panic!(
            "{succeeded} of {tasks} tasks succeeded:\n{}\n{}",
            why.join("\n"),
            cluster.logs()
        );
    }
    assert_eq!((lost, duplicated), (0, 0));
}

/// Workers must have the same plugins: one whose belter-fs has another
/// policy refuses to replay the calls a task recorded with the shipped one
/// (nothing recorded, no model asked), and the task goes on once a worker
/// with the same plugins takes it.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_with_another_policy_refuses_to_replay_a_tasks_calls() {
    let fake = slow_answer_fake();
    let restate = Restate::start().await;
    let homes = tempfile::tempdir().unwrap();
    let first = worker_home(&fake, &homes.path().join("a"));
    let last = worker_home(&fake, &homes.path().join("c"));
    // The same component under a policy that differs in one limit.
    let policy =
        std::fs::read_to_string(Path::new(artifacts::ROOT).join("policies/belter-fs.toml"))
            .unwrap()
            .replace("memory_mib     = 64", "memory_mib     = 65");
    assert!(policy.contains("memory_mib     = 65"));
    let policy_file = homes.path().join("belter-fs.toml");
    std::fs::write(&policy_file, policy).unwrap();
    let other = worker_home_with(&fake, &homes.path().join("b"), Some(&policy_file));

    let port = free_port();
    let worker = spawn_worker(&first, &restate, port, None);
    let client = restate.client();
    client.ready(Duration::from_secs(60)).await.unwrap();
    let (ws, submitted) = project();
    let id = client.submit(&submitted).await.unwrap();
    let asked = answer_asked(&fake, &restate).await;
    // Read while a worker is up: Restate runs the read handlers on workers.
    let before = client.records(&id, 0).await.unwrap().len();
    drop(worker);

    let log = homes.path().join("b.log");
    let mut c = worker_command(&other, &restate.ingress, &restate.admin, port);
    c.stderr(std::fs::File::create(&log).unwrap());
    let refusing = Killed(c.spawn().unwrap());
    let mut refused = String::new();
    for _ in 0..300 {
        refused = std::fs::read_to_string(&log).unwrap_or_default();
        if refused.contains("changed since task") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        refused.contains("plugin `belter-fs` changed since task"),
        "{refused}\n{}",
        restate.log()
    );
    assert_eq!(
        client.records(&id, 0).await.unwrap().len(),
        before,
        "nothing recorded by the refusing worker"
    );
    assert_eq!(fake.chats().len(), asked, "no model asked by it");
    drop(refusing);

    let _worker = spawn_worker(&last, &restate, port, None);
    let done = client
        .wait(&id, Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", restate.log()));
    assert_eq!(done.status, Status::Succeeded, "{:?}", done.error);
    assert_eq!(fake.chats().len(), asked + 1);
    assert_eq!(
        std::fs::read_to_string(ws.path().join("log.txt")).unwrap(),
        "collected\n"
    );
}

/// A retried call that is cut off again asks for a new decision instead of
/// running a third time.
#[tokio::test(flavor = "multi_thread")]
async fn a_retry_cut_off_again_asks_for_a_new_decision() {
    let (_, append) = on_the_journal().await;
    let fake = FakeOllama::start(models(), todo_script);
    let restate = Restate::start().await;
    let homes = tempfile::tempdir().unwrap();
    let port = free_port();
    let crash = format!("{append} tool_result?");
    let client = restate.client();
    let (ws, submitted) = project();
    let log = || std::fs::read_to_string(ws.path().join("log.txt")).unwrap_or_default();

    // The first worker dies after the append ran.
    let mut first = spawn_worker(
        &worker_home(&fake, &homes.path().join("a")),
        &restate,
        port,
        Some(&crash),
    );
    client.ready(Duration::from_secs(60)).await.unwrap();
    let id = client.submit(&submitted).await.unwrap();
    assert!(
        died(&mut first).await,
        "the failpoint did not fire\n{}",
        restate.log()
    );
    assert_eq!(log(), "collected\n");

    // The second finds it interrupted, is told to retry, and dies after
    // the retried append ran.
    let mut second = spawn_worker(
        &worker_home(&fake, &homes.path().join("b")),
        &restate,
        port,
        Some(&crash),
    );
    let review = client.wait(&id, Duration::from_secs(120)).await.unwrap();
    assert_eq!(review.status, Status::NeedsReview, "{:?}", review.error);
    let key = format!("{id}:1:3");
    client.decide(&id, &key, Decision::Retry).await.unwrap();
    assert!(
        died(&mut second).await,
        "the retry's failpoint did not fire\n{}",
        restate.log()
    );
    assert_eq!(log(), "collected\ncollected\n", "retried once");

    // The third must not run it a third time on its own.
    let _third = spawn_worker(
        &worker_home(&fake, &homes.path().join("c")),
        &restate,
        port,
        None,
    );
    let mut again = None;
    for _ in 0..600 {
        if let Ok(Some(s)) = client.summary(&id).await
            && s.status == Status::NeedsReview
            && client
                .records(&id, 0)
                .await
                .unwrap()
                .iter()
                .any(|r| r.kind == "review")
        {
            again = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(again.is_some(), "no second review\n{}", restate.log());
    assert_eq!(log(), "collected\ncollected\n", "not run a third time");
    client.decide(&id, &key, Decision::Skip).await.unwrap();
    let done = client
        .wait_final(&id, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(done.status, Status::Succeeded, "{:?}", done.error);
    assert_eq!(log(), "collected\ncollected\n");
    // A decision nobody waits for is refused.
    assert!(client.decide(&id, &key, Decision::Retry).await.is_err());
}
