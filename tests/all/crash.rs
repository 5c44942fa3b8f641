//! The crash harness: a child `camina run` is killed — at every journal
//! boundary (the `CAMINA_CRASH_AFTER` failpoint aborts the process right
//! after its n-th append), right before every tool result is written
//! (`CAMINA_CRASH_BEFORE`: the tool ran, its result is lost) and at
//! pseudo-random points (SIGKILL after a random progress line plus a random
//! delay, so the kill lands wherever the process is) — then resumed until
//! it finishes. Every
//! trial must end exactly like an uninterrupted run: same workspace, the
//! side-effecting append done exactly once, no step lost, no tool call
//! without a result, never `failed`, and no model asked again beyond the
//! one call a crash can lose.
//!
//! `CAMINA_CRASH_TRIALS` sets the number of random kills that must
//! interrupt the task (default 20; a soak runs hundreds).

use crate::engine::{COORDINATOR, EXPECTED_TODO, REASONER, WORKER, models, project, todo_script};
use crate::support::artifacts;
use fake_ollama::FakeOllama;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Names both files the scripted belter writes (a task may change only the
/// paths it names).
const PROMPT: &str = "Collect every TODO line under src/ into todo.md and note it in log.txt";

fn camina(home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_camina"));
    c.arg("--home")
        .arg(home)
        .env_remove("CAMINA_CRASH_AFTER")
        .env_remove("CAMINA_CRASH_BEFORE")
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
/// would: look at the workspace, then retry or skip. Returns the task and
/// whether it stopped in needs-review on the way.
fn resume_to_the_end(home: &Path, ws: &Path, label: &str) -> (Value, bool) {
    let mut reviewed = false;
    for _ in 0..6 {
        let list = tasks(home);
        assert_eq!(list.len(), 1, "{list:?}");
        let t = &list[0];
        let id = t["id"].as_str().unwrap().to_owned();
        match t["status"].as_str().unwrap() {
            "succeeded" => return (t.clone(), reviewed),
            "failed" => panic!("{label}: a crash made the task fail: {t}"),
            "needs-review" => {
                reviewed = true;
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
            "interrupted" | "queued" | "running" => {
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

/// Checks a trial's end state; returns whether it went through
/// needs-review.
fn check_trial(home: &Path, ws: &Path, label: &str) -> bool {
    let (t, reviewed) = resume_to_the_end(home, ws, label);
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
    reviewed
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
    let mut child = camina(&home)
        .args(["run", PROMPT, "--workspace"])
        .arg(&ws)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first_line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stderr.as_mut().unwrap()),
        &mut first_line,
    )
    .unwrap();
    let o = ok(child.wait_with_output().unwrap(), "reference run");
    let stderr = format!("{first_line}{}", String::from_utf8_lossy(&o.stderr));
    // Random kills land after a random progress line (each is a journal
    // record), plus a random delay: wherever the process is by then.
    let progress_lines = stderr.lines().count() as u64;
    assert!(progress_lines > 5, "{stderr}");
    assert!(
        stderr.starts_with("task "),
        "the first stderr line names the task: {stderr}"
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "The TODO lines are in todo.md."
    );
    assert!(!check_trial(&home, &ws, "reference"));
    let reference_chats = fake.chats().len();
    let id = tasks(&home)[0]["id"].as_str().unwrap().to_owned();
    let show = ok(
        camina(&home)
            .args(["task", "show", &id, "--json"])
            .output()
            .unwrap(),
        "show",
    );
    let events = serde_json::from_slice::<Value>(&show.stdout).unwrap()["events"]
        .as_array()
        .unwrap()
        .clone();
    let appends = events.len();
    assert!(appends > 20, "{appends}");

    // One trial: a run killed by `failpoint` = `n`, resumed to the end.
    // Models may be asked again only for the one reply a crash can lose.
    let failpoint_trial = |failpoint: &str, n: usize| -> bool {
        let label = format!("{failpoint}={n}");
        let home = dir.path().join(&label);
        let ws = dir.path().join(format!("{label}-ws"));
        copy_dir(&template, &home);
        project(&ws);
        let chats = fake.chats().len();
        let o = camina(&home)
            .args(["run", PROMPT, "--workspace"])
            .arg(&ws)
            .env(failpoint, n.to_string())
            .output()
            .unwrap();
        assert!(
            !o.status.success(),
            "{label}: the failpoint should have killed the run"
        );
        let reviewed = check_trial(&home, &ws, &label);
        let asked = fake.chats().len() - chats;
        assert!(
            asked <= reference_chats + 1,
            "{label}: models were asked {asked} times, the run needs {reference_chats}"
        );
        let _ = std::fs::remove_dir_all(&home);
        reviewed
    };

    let mut trials = 0;
    // A crash after every journal append.
    for n in 1..=appends {
        failpoint_trial("CAMINA_CRASH_AFTER", n);
        trials += 1;
    }
    // A crash after each tool ran, before its result was written. Only the
    // side-effecting append may (and must) stop in needs-review; the read
    // and the idempotent write are simply run again.
    for (i, e) in events.iter().enumerate() {
        if e["kind"] != "tool_result" {
            continue;
        }
        let tool = events
            .iter()
            .find(|x| x["kind"] == "tool_intent" && x["data"]["key"] == e["data"]["key"])
            .map(|x| x["data"]["tool"].as_str().unwrap().to_owned())
            .unwrap();
        let reviewed = failpoint_trial("CAMINA_CRASH_BEFORE", i + 1);
        assert_eq!(
            reviewed,
            tool == "append_file",
            "crash before the result of {tool}: needs-review iff side-effecting"
        );
        trials += 1;
    }

    // Kills at pseudo-random times, until `random` of them interrupted
    // the task (a kill that lands after the end proves nothing).
    let random: u64 = std::env::var("CAMINA_CRASH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mut seed = 0x5eed_cafe;
    let mut interrupted = 0;
    for k in 0..random * 3 {
        if interrupted == random {
            break;
        }
        let home = dir.path().join(format!("kill{k}"));
        let ws = dir.path().join(format!("kill{k}-ws"));
        copy_dir(&template, &home);
        project(&ws);
        let mut child = camina(&home)
            .args(["run", PROMPT, "--workspace"])
            .arg(&ws)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let after = 1 + lcg(&mut seed) % (progress_lines - 1);
        let mut lines =
            std::io::BufRead::lines(std::io::BufReader::new(child.stderr.take().unwrap()));
        for _ in 0..after {
            if lines.next().is_none() {
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_micros(lcg(&mut seed) % 3000));
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
        let unfinished = tasks(&home)
            .first()
            .is_some_and(|t| t["status"] != "succeeded");
        check_trial(&home, &ws, &format!("random kill {k}"));
        // Only a kill that interrupted the task counts as a trial.
        if unfinished {
            trials += 1;
            interrupted += 1;
        }
        let _ = std::fs::remove_dir_all(&home);
    }
    eprintln!("crash harness: {trials} trials, {interrupted} of them random kills");
    assert_eq!(
        interrupted, random,
        "random kills that interrupted the task"
    );
    assert!(trials >= 50, "{trials} trials");
}
