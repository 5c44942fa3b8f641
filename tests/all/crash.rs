//! The crash harness: a child `camina run` is killed — at every journal
//! boundary (the `CAMINA_CRASH_AFTER` failpoint aborts the process right
//! after its n-th append) and at pseudo-random times (SIGKILL) — then
//! resumed until it finishes. Every trial must end exactly like an
//! uninterrupted run: same workspace, the side-effecting append done exactly
//! once, no step lost, no tool call without a result.
//!
//! `CAMINA_CRASH_TRIALS` raises the number of random-time trials (the soak
//! script runs hundreds).

use crate::engine::{COORDINATOR, EXPECTED_TODO, REASONER, WORKER, models, project, todo_script};
use crate::support::artifacts;
use fake_ollama::FakeOllama;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const PROMPT: &str = "Collect every TODO line under src/ into todo.md";

fn camina(home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_camina"));
    c.arg("--home")
        .arg(home)
        .env_remove("CAMINA_CRASH_AFTER")
        .env_remove("OLLAMA_HOST")
        .env("CAMINA_LOG", "error");
    c
}

fn ok(o: Output, what: &str) -> Output {
    assert!(
        o.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    o
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// A home with the bundled skills installed and the fake models configured.
fn template(fake: &FakeOllama, dir: &Path) -> PathBuf {
    let home = dir.join("template");
    for (file, name) in [
        (artifacts::BELTER_FS, "belter-fs"),
        (artifacts::DRUMMER_SEARCH, "drummer-search"),
    ] {
        let policy = Path::new(artifacts::ROOT).join(format!("policies/{name}.toml"));
        ok(
            camina(&home)
                .args(["plugin", "install", file, "--policy"])
                .arg(policy)
                .output()
                .unwrap(),
            "install",
        );
    }
    std::fs::write(
        home.join("config.toml"),
        format!(
            "[models]\ncoordinator = \"ollama:{COORDINATOR}\"\nreasoner = \"ollama:{REASONER}\"\nbelter = \"ollama:{WORKER}\"\ndrummer = \"ollama:{WORKER}\"\n[ollama]\nurl = \"{}\"\n",
            fake.url()
        ),
    )
    .unwrap();
    home
}

fn tasks(home: &Path) -> Vec<Value> {
    let o = ok(
        camina(home)
            .args(["task", "list", "--json"])
            .output()
            .unwrap(),
        "task list",
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Resumes until the task is final, settling needs-review as a reviewer
/// would: look at the workspace, then retry or skip.
fn resume_to_the_end(home: &Path, ws: &Path) -> Value {
    for _ in 0..6 {
        let list = tasks(home);
        assert_eq!(list.len(), 1, "{list:?}");
        let t = &list[0];
        let id = t["id"].as_str().unwrap().to_owned();
        match t["status"].as_str().unwrap() {
            "succeeded" => return t.clone(),
            "needs-review" => {
                let done = std::fs::read_to_string(ws.join("log.txt"))
                    .unwrap_or_default()
                    .contains("collected");
                let flag = if done {
                    "--skip-interrupted"
                } else {
                    "--retry-interrupted"
                };
                let _ = camina(home)
                    .args(["task", "resume", &id, flag])
                    .output()
                    .unwrap();
            }
            "interrupted" | "queued" | "failed" | "running" => {
                let _ = camina(home).args(["task", "resume", &id]).output().unwrap();
            }
            other => panic!("unexpected status {other}"),
        }
    }
    panic!(
        "the task did not finish after several resumes: {:?}",
        tasks(home)
    );
}

fn check_trial(home: &Path, ws: &Path, label: &str) {
    let t = resume_to_the_end(home, ws);
    assert_eq!(t["answer"], "The TODO lines are in todo.md.", "{label}");
    assert_eq!(
        std::fs::read_to_string(ws.join("todo.md")).unwrap(),
        EXPECTED_TODO,
        "{label}"
    );
    assert_eq!(
        std::fs::read_to_string(ws.join("log.txt")).unwrap(),
        "collected\n",
        "{label}: the side-effecting append happened exactly once"
    );
    let id = t["id"].as_str().unwrap();
    let show = ok(
        camina(home)
            .args(["task", "show", id, "--json"])
            .output()
            .unwrap(),
        "show",
    );
    let v: Value = serde_json::from_slice(&show.stdout).unwrap();
    let events = v["events"].as_array().unwrap();
    for intent in events.iter().filter(|e| e["kind"] == "tool_intent") {
        let key = &intent["data"]["key"];
        assert!(
            events
                .iter()
                .any(|e| e["kind"] == "tool_result" && &e["data"]["key"] == key),
            "{label}: tool call {key} has no result"
        );
    }
    let steps = v["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "{label}: no step lost");
    assert!(steps.iter().all(|s| s["complete"] == true), "{label}");
}

/// A tiny deterministic generator for kill times.
fn lcg(seed: &mut u64) -> u64 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *seed >> 33
}

#[test]
fn killed_runs_resume_to_the_same_result() {
    let fake = FakeOllama::start(models(), todo_script);
    let dir = tempfile::tempdir().unwrap();
    let template = template(&fake, dir.path());

    // The uninterrupted reference run.
    let home = dir.path().join("reference");
    let ws = dir.path().join("reference-ws");
    copy_dir(&template, &home);
    project(&ws);
    let o = ok(
        camina(&home)
            .args(["run", PROMPT, "--workspace"])
            .arg(&ws)
            .output()
            .unwrap(),
        "reference run",
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.starts_with("task "),
        "the first stderr line names the task: {stderr}"
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "The TODO lines are in todo.md."
    );
    check_trial(&home, &ws, "reference");
    let id = tasks(&home)[0]["id"].as_str().unwrap().to_owned();
    let show = ok(
        camina(&home)
            .args(["task", "show", &id, "--json"])
            .output()
            .unwrap(),
        "show",
    );
    let appends = serde_json::from_slice::<Value>(&show.stdout).unwrap()["events"]
        .as_array()
        .unwrap()
        .len();
    assert!(appends > 20, "{appends}");

    let mut trials = 0;
    // A crash after every journal append.
    for n in 1..=appends {
        let home = dir.path().join(format!("fp{n}"));
        let ws = dir.path().join(format!("fp{n}-ws"));
        copy_dir(&template, &home);
        project(&ws);
        let o = camina(&home)
            .args(["run", PROMPT, "--workspace"])
            .arg(&ws)
            .env("CAMINA_CRASH_AFTER", n.to_string())
            .output()
            .unwrap();
        assert!(
            !o.status.success(),
            "append {n}: the failpoint should have killed the run"
        );
        check_trial(&home, &ws, &format!("crash after append {n}"));
        trials += 1;
    }

    // Kills at pseudo-random times.
    let random: u64 = std::env::var("CAMINA_CRASH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mut seed = 0x5eed_cafe;
    for k in 0..random {
        let home = dir.path().join(format!("kill{k}"));
        let ws = dir.path().join(format!("kill{k}-ws"));
        copy_dir(&template, &home);
        project(&ws);
        let mut child = camina(&home)
            .args(["run", PROMPT, "--workspace"])
            .arg(&ws)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20 + lcg(&mut seed) % 400));
        let _ = child.kill();
        let _ = child.wait();
        if tasks(&home).is_empty() {
            // Killed before the task was even submitted: nothing may have
            // happened; the user simply runs it again.
            assert!(
                !ws.join("todo.md").exists() && !ws.join("log.txt").exists(),
                "random kill {k}"
            );
            ok(
                camina(&home)
                    .args(["run", PROMPT, "--workspace"])
                    .arg(&ws)
                    .output()
                    .unwrap(),
                "rerun",
            );
        }
        check_trial(&home, &ws, &format!("random kill {k}"));
        trials += 1;
        let _ = std::fs::remove_dir_all(&home);
    }
    assert!(trials >= 50, "{trials} trials");
}
