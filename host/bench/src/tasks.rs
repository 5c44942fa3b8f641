//! P5 and P7: tasks on the replay backend.

use crate::Row;
use camina_coordinator::events::Budgets;
use camina_coordinator::{Engine, RunOptions};
use camina_journal::{Journal, Status};
use camina_model::config::{ModelsSection, OllamaSection};
use camina_model::replay::ReplayBackend;
use camina_model::{Bridge, Config, ModelSpec};
use camina_registry::{PolicySource, Registry};
use fake_ollama::{FakeModel, FakeOllama, Reply};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

const WORKER: &str = "mistral:7b";

fn since_user(req: &Value) -> usize {
    let msgs = req["messages"].as_array().cloned().unwrap_or_default();
    let last = msgs.iter().rposition(|m| m["role"] == "user").unwrap_or(0);
    msgs[last + 1..]
        .iter()
        .filter(|m| m["role"] == "tool")
        .count()
}

/// Scripted models: a plan of `steps` alternating crews, one tool call
/// per step, then an answer.
fn script(steps: usize) -> impl FnMut(&Value) -> Reply + Send + 'static {
    move |req| {
        let format = req["format"].to_string();
        if format.contains("oneOf") {
            let plan: Vec<Value> = (0..steps)
                .map(|i| {
                    if i % 2 == 0 {
                        json!({"crew": "drummer", "instruction": format!("List the text files ({i})")})
                    } else {
                        json!({"crew": "belter", "instruction": format!("Write note {i}")})
                    }
                })
                .collect();
            return Reply::text(&json!({ "steps": plan }).to_string());
        }
        if !format.is_empty() && format != "null" {
            return Reply::text(&json!({"answer": "done"}).to_string());
        }
        let tools = req["tools"].to_string();
        if tools.is_empty() || tools == "null" {
            return Reply::text("advice");
        }
        if since_user(req) > 0 {
            return Reply::text("finished the step");
        }
        let user = req["messages"]
            .as_array()
            .and_then(|m| m.last())
            .and_then(|m| m["content"].as_str())
            .unwrap_or_default()
            .to_owned();
        let n: String = user.chars().filter(char::is_ascii_digit).take(3).collect();
        if tools.contains("write_file") {
            Reply::tool_call(
                "write_file",
                json!({"path": format!("note{n}.txt"), "content": "n"}),
            )
        } else {
            Reply::tool_call("find_files", json!({"pattern": "*.txt"}))
        }
    }
}

fn config(fake: &FakeOllama) -> Config {
    Config {
        models: ModelsSection::all(ModelSpec::Ollama(WORKER.into())),
        ollama: OllamaSection {
            url: Some(fake.url().into()),
            timeout_s: Some(10),
        },
        ..Default::default()
    }
}

/// A registry under `home` with belter-fs and drummer-search installed.
/// They are compiled once per process (a template home) and copied with
/// their precompiled code, so each run's setup is not a compile.
pub(crate) async fn registry(home: &Path) -> Arc<Registry> {
    static TEMPLATE: tokio::sync::OnceCell<tempfile::TempDir> = tokio::sync::OnceCell::const_new();
    let template = TEMPLATE
        .get_or_init(|| async {
            let dir = tempfile::tempdir().expect("tmp");
            install(dir.path()).await;
            dir
        })
        .await;
    for sub in ["plugins", "blobs", "cache"] {
        copy_dir(&template.path().join(sub), &home.join(sub));
    }
    let sandbox = Arc::new(crate::sandbox());
    Arc::new(Registry::open(home, sandbox).expect("registry"))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir").flatten() {
        let target = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy");
        }
    }
}

async fn install(home: &Path) {
    let sandbox = Arc::new(crate::sandbox());
    let r = Registry::open(home, sandbox).expect("registry");
    for (file, name) in [
        (camina_test_artifacts::BELTER_FS, "belter-fs"),
        (camina_test_artifacts::DRUMMER_SEARCH, "drummer-search"),
    ] {
        let text = std::fs::read_to_string(
            Path::new(camina_test_artifacts::ROOT).join(format!("policies/{name}.toml")),
        )
        .expect("policy");
        let policy = PolicySource {
            text,
            name: name.into(),
        };
        r.install(
            &std::fs::read(file).expect("artifact"),
            Some(&policy),
            None,
            name,
        )
        .await
        .expect("install");
    }
}

/// Records a task with `steps` steps on the fake server; returns its
/// transcript and role models.
async fn record(
    steps: usize,
    ws: &Path,
) -> (
    Vec<camina_model::replay::Exchange>,
    std::collections::HashMap<camina_model::ModelRole, String>,
) {
    let fake = FakeOllama::start(
        vec![FakeModel::new(WORKER, &["completion", "tools", "thinking"])],
        script(steps),
    );
    let home = tempfile::tempdir().expect("tmp");
    let (journal, _) = Journal::open(&home.path().join("journal")).expect("journal");
    let bridge = Bridge::new(config(&fake), home.path()).expect("bridge");
    let engine = Engine::new(
        Arc::new(journal),
        registry(home.path()).await,
        Arc::new(bridge),
        home.path(),
    );
    let t = engine
        .submit(
            "bench",
            ws,
            Budgets {
                max_model_calls: 500,
                max_steps: 20,
                ..Budgets::default()
            },
        )
        .await
        .expect("submit");
    let done = engine.run(&t.id, RunOptions::default()).await.expect("run");
    assert_eq!(done.status, Status::Succeeded, "{:?}", done.error);
    camina_coordinator::replay::transcript(engine.journal(), &t.id).expect("transcript")
}

pub fn p5_p7(rt: &tokio::runtime::Runtime, rows: &mut Vec<Row>, p5: bool, p7: bool) {
    if p5 {
        let ws = tempfile::tempdir().expect("tmp");
        let (transcript, models) = rt.block_on(record(20, ws.path()));
        let calls = transcript.len();
        let mut runs = Vec::new();
        // The floor's sync latencies are sampled around each run, on the
        // same disk: this disk's fsync latency drifts over seconds, and a
        // floor measured only after all the runs compared them with
        // another moment's disk (the ratio moved 1.3-1.6× between reruns).
        let sync_dir = tempfile::tempdir_in(ws.path().parent().unwrap_or(ws.path())).expect("tmp");
        let mut syncs = Syncs::new(sync_dir.path());
        // Sampled before and after each run (the record bytes per flush
        // are known after the first).
        let mut per_flush = None;
        for _ in 0..7 {
            if let Some(bytes) = per_flush {
                syncs.sample(bytes, 8);
            }
            let home = tempfile::tempdir().expect("tmp");
            // The replay must start from the recorded (empty) workspace.
            for e in std::fs::read_dir(ws.path()).expect("ws").flatten() {
                std::fs::remove_file(e.path()).expect("clean");
            }
            let run = rt.block_on(async {
                let (journal, _) = Journal::open(&home.path().join("journal")).expect("journal");
                let replay = Arc::new(ReplayBackend::new(transcript.clone()));
                let bridge = Bridge::fixed(Config::default(), home.path(), replay, models.clone())
                    .expect("bridge");
                let engine = Engine::new(
                    Arc::new(journal),
                    registry(home.path()).await,
                    Arc::new(bridge),
                    home.path(),
                );
                let t = engine
                    .submit(
                        "bench",
                        ws.path(),
                        Budgets {
                            max_model_calls: 500,
                            max_steps: 20,
                            ..Budgets::default()
                        },
                    )
                    .await
                    .expect("submit");
                let flushes = engine.journal().flushes();
                let started = Instant::now();
                let done = engine.run(&t.id, RunOptions::default()).await.expect("run");
                let e = started.elapsed();
                assert_eq!(done.status, Status::Succeeded, "{:?}", done.error);
                // The bytes the task's records take (what its flushes
                // carry to disk, besides sled's own framing).
                let bytes: usize = engine
                    .journal()
                    .records(&t.id)
                    .expect("records")
                    .iter()
                    .map(|r| serde_json::to_vec(r).expect("json").len())
                    .sum();
                // The undo log's own durable writes (each append is synced;
                // each before-image kept is a synced file).
                let undo = camina_coordinator::undo::Store::new(home.path())
                    .entries(&t.id)
                    .expect("undo log");
                let afters: std::collections::HashSet<&str> = undo
                    .iter()
                    .filter(|e| e.at == "after")
                    .map(|e| e.step.as_str())
                    .collect();
                let kept =
                    std::fs::read_dir(home.path().join("undo/blobs")).map_or(0, |d| d.count());
                let undo_syncs =
                    undo.iter().filter(|e| e.at == "before").count() + afters.len() + kept;
                (e, engine.journal().flushes() - flushes, bytes, undo_syncs)
            });
            let bytes = run.2 / (run.1 as usize).max(1);
            syncs.sample(bytes, 8);
            per_flush = Some(bytes);
            runs.push(run);
        }
        runs.sort();
        let (time, flushes, bytes, undo_syncs) = runs[runs.len() / 2];
        let per_flush = bytes / (flushes as usize).max(1);
        let ms = time.as_secs_f64() * 1e3;
        let (fsync, append_sync) = syncs.medians();
        let tools = rt.block_on(tool_floor());
        let floor = flushes as f64 * fsync + undo_syncs as f64 * append_sync + tools;
        rows.push(Row {
            id: "P5".into(),
            what: format!(
                "20-step task on the replay backend ({calls} model calls, 20 tool calls): host time, median of 7"
            ),
            measured: format!("{ms:.1} ms ({flushes} flushes)"),
            baseline: format!(
                "{floor:.1} ms floor: {flushes} journal flushes × {fsync:.2} ms (sled insert of {:.1} KB, the task's record bytes per flush, + flush) \
                 + {undo_syncs} undo-log syncs × {append_sync:.2} ms (append + fdatasync) \
                 + {tools:.1} ms of the 20 tool calls themselves, all on the same disk; ≈ {} s of model time for a real 7B",
                per_flush as f64 / 1e3,
                calls * 2
            ),
            ratio: format!("{} floor", crate::ratio(ms, floor)),
            target: "≤ 1.5× floor".into(),
        });
    }
    if p7 {
        // Peak RSS of this row alone: reset the high-water mark left by
        // the rows before (Linux: `5` to clear_refs resets VmHWM).
        let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
        let before = vm_kib("VmRSS:");
        let shared_ws = tempfile::tempdir().expect("tmp");
        let (transcript, models) = rt.block_on(record(1, shared_ws.path()));
        let home = tempfile::tempdir().expect("tmp");
        let n = 1000;
        let (elapsed, failures) = rt.block_on(async {
            let (journal, _) = Journal::open(&home.path().join("journal")).expect("journal");
            let journal = Arc::new(journal);
            let registry = registry(home.path()).await;
            let mut set = tokio::task::JoinSet::new();
            let started = Instant::now();
            for i in 0..n {
                // The transcript names its workspace: every task uses it.
                let ws = shared_ws.path().to_path_buf();
                let _ = i;
                let replay = Arc::new(ReplayBackend::new(transcript.clone()));
                let bridge = Bridge::fixed(Config::default(), home.path(), replay, models.clone())
                    .expect("bridge");
                let engine = Engine::new(
                    journal.clone(),
                    registry.clone(),
                    Arc::new(bridge),
                    home.path(),
                );
                set.spawn(async move {
                    let t = engine
                        .submit(
                            "bench",
                            &ws,
                            Budgets {
                                max_model_calls: 500,
                                max_steps: 20,
                                ..Budgets::default()
                            },
                        )
                        .await?;
                    engine.run(&t.id, RunOptions::default()).await
                });
            }
            let mut failures = 0;
            let mut first: Option<String> = None;
            while let Some(r) = set.join_next().await {
                match r {
                    Ok(Ok(t)) if t.status == Status::Succeeded => {}
                    other => {
                        failures += 1;
                        if first.is_none() {
                            first = Some(match other {
                                Ok(Ok(t)) => format!("{}: {:?}", t.status, t.error),
                                Ok(Err(e)) => e.to_string(),
                                Err(e) => e.to_string(),
                            });
                        }
                    }
                }
            }
            if let Some(f) = first {
                eprintln!("P7: first failure: {f}");
            }
            (started.elapsed(), failures)
        });
        let rss = vm_kib("VmHWM:");
        rows.push(Row {
            id: "P7".into(),
            what: format!(
                "{n} concurrent tasks on the replay backend (1 crew step with a tool call each)"
            ),
            measured: format!(
                "peak RSS {} MiB{}, {failures} failures, {:.1} s",
                rss / 1024,
                if reset {
                    ""
                } else {
                    " (process peak: clear_refs refused)"
                },
                elapsed.as_secs_f64()
            ),
            baseline: format!("RSS before the row: {} MiB", before / 1024),
            ratio: "—".into(),
            target: "RSS ≤ 1 GiB, 0 failures".into(),
        });
    }
}

/// The sync latencies of P5's floor, on the same disk as the runs: one
/// durable write of the task's record bytes per flush (sled insert +
/// flush) and one synced append to a log file (what the undo log does per
/// entry).
struct Syncs {
    db: sled::Db,
    log: std::path::PathBuf,
    next: u32,
    flush: Vec<std::time::Duration>,
    append: Vec<std::time::Duration>,
}

impl Syncs {
    fn new(dir: &Path) -> Self {
        Self {
            db: sled::open(dir.join("fsync")).expect("sled"),
            log: dir.join("log.jsonl"),
            next: 0,
            flush: Vec::new(),
            append: Vec::new(),
        }
    }

    /// `n` samples of each, the write `per_flush` bytes long.
    fn sample(&mut self, per_flush: usize, n: usize) {
        use std::io::Write;
        for _ in 0..n {
            let t = Instant::now();
            self.db
                .insert(self.next.to_be_bytes(), vec![b'x'; per_flush])
                .expect("insert");
            self.db.flush().expect("flush");
            self.flush.push(t.elapsed());
            self.next += 1;
            let t = Instant::now();
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)
                .expect("log");
            f.write_all(&[b'x'; 200]).expect("append");
            f.sync_data().expect("sync");
            self.append.push(t.elapsed());
        }
    }

    /// The median latencies (flush, append), in ms.
    fn medians(&mut self) -> (f64, f64) {
        let median = |v: &mut Vec<std::time::Duration>| {
            v.sort();
            v[v.len() / 2].as_secs_f64() * 1e3
        };
        (median(&mut self.flush), median(&mut self.append))
    }
}

/// The time of P5's 20 tool calls made directly (10 `find_files`, 10
/// `write_file`, fresh sandbox each, in ms).
async fn tool_floor() -> f64 {
    // The tool calls, median of 5 (each on a fresh registry, as each task
    // run has: its first calls load the plugins).
    let mut times = Vec::new();
    for _ in 0..5 {
        let home = tempfile::tempdir().expect("tmp");
        let scratch = tempfile::tempdir().expect("tmp");
        let registry = registry(home.path()).await;
        let started = Instant::now();
        for i in 0..10 {
            let list = registry
                .call(
                    "drummer-search",
                    "find_files",
                    r#"{"pattern":"*.txt"}"#,
                    Some(scratch.path()),
                )
                .await
                .expect("find_files");
            assert!(list.result.is_ok(), "{:?}", list.result);
            let input = json!({"path": format!("note{i}.txt"), "content": "n"}).to_string();
            let write = registry
                .call("belter-fs", "write_file", &input, Some(scratch.path()))
                .await
                .expect("write_file");
            assert!(write.result.is_ok(), "{:?}", write.result);
        }
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// A `/proc/self/status` figure in KiB (0 when unavailable).
fn vm_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}
