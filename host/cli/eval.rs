//! `camina eval`: run a suite of task cases and score the end states.
//!
//! A case is a TOML file: the workspace's files, the prompt, and what must
//! hold afterwards —
//!
//! ```toml
//! prompt = "Change the port in config.ini to 9090"
//! [files]
//! "config.ini" = "[server]\nhost = localhost\nport = 8080\n"
//! [expect]
//! status = "succeeded"              # or "failed": the task cannot be done
//! answer_contains = ["9090"]        # case-insensitive
//! [expect.files."config.ini"]
//! content = "[server]\nhost = localhost\nport = 9090\n"
//! ```
//!
//! Per file: `content` (exact, up to trailing newlines), `lines` (each is a
//! whole line of the file, trimmed), `contains` / `not_contains`
//! (substrings), `absent = true`, `unchanged = true`. Every file of the
//! workspace the expectations do not name must be unchanged, and no other
//! file may appear: an agent that touches what the task did not name fails
//! the case. Each case runs as a task of this home (journaled, visible in
//! `camina task list`) in a fresh workspace under `<home>/eval-work/`, kept
//! when the case fails.

use crate::{Context, UsageError};
use camina_coordinator::RunOptions;
use camina_coordinator::events::{Budgets, Event};
use camina_journal::Status;
use clap::Args;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A directory of case files (`*.toml`), or one case file.
    #[arg(default_value = "evals")]
    pub dir: PathBuf,
    /// Run every role on this model (`embedded`, `embedded:NAME`,
    /// `embedded:<path.gguf>`, `ollama:<name>`), overriding config.toml.
    #[arg(long, value_name = "SPEC")]
    pub model: Option<String>,
    /// Run each case K times; a case passes only if every run does
    /// (pass^k).
    #[arg(long, default_value_t = 1, value_name = "K")]
    pub repeat: u32,
    /// Only cases whose name contains this (repeatable).
    #[arg(long, value_name = "TEXT")]
    pub filter: Vec<String>,
    /// Running time allowed per task.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub max_time: std::time::Duration,
    /// Where to write the JSON report (default:
    /// <home>/eval-reports/<time>.json).
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Exit 1 when fewer than this share of cases pass (0..1).
    #[arg(long, value_name = "RATE")]
    pub min_pass: Option<f64>,
    /// Print the report as JSON on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// One case file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub prompt: String,
    /// What kind of task it is (free text, for the report).
    #[serde(default)]
    pub kind: Option<String>,
    /// Workspace files to create: path → content.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    #[serde(default)]
    pub expect: Expect,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// `succeeded` (default) or `failed`.
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub answer_contains: Vec<String>,
    #[serde(default)]
    pub files: BTreeMap<String, FileExpect>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileExpect {
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default)]
    pub lines: Vec<String>,
    #[serde(default)]
    pub contains: Vec<String>,
    #[serde(default)]
    pub not_contains: Vec<String>,
    #[serde(default)]
    pub absent: bool,
    #[serde(default)]
    pub unchanged: bool,
}

/// One run of one case.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub case: String,
    pub run: u32,
    pub passed: bool,
    pub failures: Vec<String>,
    pub task: Option<String>,
    pub status: Option<String>,
    pub answer: Option<String>,
    pub error: Option<String>,
    pub seconds: f64,
    pub model_calls: usize,
    pub prompt_tokens: u64,
    pub prompt_eval_tokens: u64,
    pub generated_tokens: u64,
    /// Kept for a failed case.
    pub workspace: Option<PathBuf>,
}

/// Loads the cases of `dir` (or the one file), by name.
pub fn load_cases(dir: &Path) -> anyhow::Result<Vec<(String, Case)>> {
    let files: Vec<PathBuf> = if dir.is_file() {
        vec![dir.to_path_buf()]
    } else {
        let entries =
            std::fs::read_dir(dir).map_err(|e| UsageError(format!("{}: {e}", dir.display())))?;
        let mut v: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        v.sort();
        v
    };
    let mut cases = Vec::new();
    for f in files {
        let text =
            std::fs::read_to_string(&f).map_err(|e| UsageError(format!("{}: {e}", f.display())))?;
        let case: Case = toml::from_str(&text)
            .map_err(|e| UsageError(format!("{}: not an eval case: {e}", f.display())))?;
        if case.prompt.trim().is_empty() {
            return Err(UsageError(format!("{}: `prompt` is empty", f.display())).into());
        }
        if let Some(s) = &case.expect.status
            && s != "succeeded"
            && s != "failed"
        {
            return Err(UsageError(format!(
                "{}: expect.status `{s}`: use \"succeeded\" or \"failed\"",
                f.display()
            ))
            .into());
        }
        for p in case.files.keys().chain(case.expect.files.keys()) {
            if Path::new(p).is_absolute() || p.split('/').any(|c| c == "..") {
                return Err(UsageError(format!(
                    "{}: `{p}`: paths are relative to the workspace, without `..`",
                    f.display()
                ))
                .into());
            }
        }
        let name = f
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        cases.push((name, case));
    }
    if cases.is_empty() {
        return Err(UsageError(format!("{}: no *.toml eval cases", dir.display())).into());
    }
    Ok(cases)
}

/// Every file under `root`, relative, with its content.
fn snapshot(root: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(meta) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if meta.is_dir() {
                walk(root, &p, out);
            } else if let Ok(rel) = p.strip_prefix(root) {
                let bytes = std::fs::read(&p).unwrap_or_default();
                out.insert(rel.to_string_lossy().replace('\\', "/"), bytes);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// What is wrong with the end state (empty: the case passed).
pub fn check(
    case: &Case,
    before: &BTreeMap<String, Vec<u8>>,
    after: &BTreeMap<String, Vec<u8>>,
    status: Option<Status>,
    answer: Option<&str>,
) -> Vec<String> {
    let mut failures = Vec::new();
    let want = case.expect.status.as_deref().unwrap_or("succeeded");
    let got = status.map(|s| s.to_string());
    if got.as_deref() != Some(want) {
        failures.push(format!(
            "status: expected {want}, got {}",
            got.as_deref().unwrap_or("none")
        ));
    }
    let answer_l = answer.unwrap_or_default().to_lowercase();
    for a in &case.expect.answer_contains {
        if !answer_l.contains(&a.to_lowercase()) {
            failures.push(format!("answer: does not contain {a:?}"));
        }
    }
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    for (path, fe) in &case.expect.files {
        let now = after.get(path);
        if fe.absent {
            if now.is_some() {
                failures.push(format!("{path}: should not exist"));
            }
            continue;
        }
        if fe.unchanged {
            if now != before.get(path) {
                failures.push(format!("{path}: changed"));
            }
            continue;
        }
        let Some(now) = now else {
            failures.push(format!("{path}: missing"));
            continue;
        };
        let now = text(now);
        if let Some(c) = &fe.content
            && now.trim_end_matches(['\n', '\r']) != c.trim_end_matches(['\n', '\r'])
        {
            failures.push(format!("{path}: content is {now:?}, expected {c:?}"));
        }
        let lines: Vec<&str> = now.lines().map(str::trim).collect();
        for l in &fe.lines {
            if !lines.contains(&l.trim()) {
                failures.push(format!("{path}: has no line {l:?} (it holds {now:?})"));
            }
        }
        for c in &fe.contains {
            if !now.contains(c.as_str()) {
                failures.push(format!("{path}: does not contain {c:?}"));
            }
        }
        for c in &fe.not_contains {
            if now.contains(c.as_str()) {
                failures.push(format!("{path}: contains {c:?}"));
            }
        }
    }
    // Nothing the task did not name may change or appear.
    for (path, old) in before {
        if !case.expect.files.contains_key(path) && after.get(path) != Some(old) {
            failures.push(format!(
                "{path}: {} although the task did not name it",
                if after.contains_key(path) {
                    "changed"
                } else {
                    "deleted"
                }
            ));
        }
    }
    for path in after.keys() {
        if !before.contains_key(path) && !case.expect.files.contains_key(path) {
            failures.push(format!("{path}: created although no expectation names it"));
        }
    }
    failures
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub async fn eval(cx: &Context, args: EvalArgs) -> anyhow::Result<()> {
    let mut cases = load_cases(&args.dir)?;
    if !args.filter.is_empty() {
        cases.retain(|(name, _)| args.filter.iter().any(|f| name.contains(f.as_str())));
        if cases.is_empty() {
            return Err(UsageError(format!("no case matches --filter {:?}", args.filter)).into());
        }
    }
    let repeat = args.repeat.max(1);
    let engine = crate::task::engine(cx, args.model.as_deref()).await?;
    let model = match engine
        .bridge()
        .resolve(camina_model::ModelRole::Coordinator)
        .await
    {
        Ok(r) => r.catalogue.clone().unwrap_or(r.model.clone()),
        Err(e) => return Err(anyhow::anyhow!("{e}")),
    };
    let work = cx.layout().eval_work();
    let started_all = Instant::now();
    if !args.json {
        eprintln!(
            "eval: {} case(s) × {repeat} on {model} ({})",
            cases.len(),
            args.dir.display()
        );
    }
    let mut results: Vec<RunResult> = Vec::new();
    for run in 0..repeat {
        for (name, case) in &cases {
            let ws = work.join(format!("{name}-{run}"));
            let _ = std::fs::remove_dir_all(&ws);
            std::fs::create_dir_all(&ws)?;
            for (path, content) in &case.files {
                let p = ws.join(path);
                if let Some(parent) = p.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::write(&p, content)?;
            }
            let before = snapshot(&ws);
            let budgets = Budgets {
                max_wall_ms: args.max_time.as_millis() as u64,
                ..Budgets::default()
            };
            let t0 = Instant::now();
            let submitted = engine.submit(&case.prompt, &ws, budgets).await?;
            let outcome = engine.run(&submitted.id, RunOptions::default()).await;
            let seconds = t0.elapsed().as_secs_f64();
            let (status, answer, error) = match &outcome {
                Ok(t) => (Some(t.status), t.answer.clone(), t.error.clone()),
                Err(e) => {
                    let t = engine.task(&submitted.id).ok();
                    (
                        t.as_ref().map(|t| t.status),
                        t.as_ref().and_then(|t| t.answer.clone()),
                        Some(e.to_string()),
                    )
                }
            };
            let records = engine.records(&submitted.id).unwrap_or_default();
            let replies: Vec<camina_model::ChatReply> = records
                .iter()
                .filter_map(|r| match Event::decode(r) {
                    Ok(Event::ModelReply(m)) => Some(m.reply),
                    _ => None,
                })
                .collect();
            let sum = |n: fn(&camina_model::ChatReply) -> u32| -> u64 {
                replies.iter().map(|r| u64::from(n(r))).sum()
            };
            let after = snapshot(&ws);
            let failures = check(case, &before, &after, status, answer.as_deref());
            let passed = failures.is_empty();
            if passed {
                let _ = std::fs::remove_dir_all(&ws);
            }
            let r = RunResult {
                case: name.clone(),
                run,
                passed,
                failures,
                task: Some(submitted.id.clone()),
                status: status.map(|s| s.to_string()),
                answer,
                error,
                seconds,
                model_calls: replies.len(),
                prompt_tokens: sum(|r| r.prompt_tokens),
                prompt_eval_tokens: sum(|r| r.prompt_eval_tokens.unwrap_or(0)),
                generated_tokens: sum(|r| r.completion_tokens),
                workspace: (!passed).then(|| ws.clone()),
            };
            if !args.json {
                eprintln!(
                    "{} {:28} {:6.1} s {:3} calls  {}",
                    if r.passed { "PASS" } else { "FAIL" },
                    name,
                    r.seconds,
                    r.model_calls,
                    r.failures.join("; ")
                );
            }
            results.push(r);
        }
    }
    // pass^k: a case passes when every one of its runs did.
    let passed_cases = cases
        .iter()
        .filter(|(name, _)| results.iter().filter(|r| &r.case == name).all(|r| r.passed))
        .count();
    let total = cases.len();
    let rate = passed_cases as f64 / total as f64;
    let mut times: Vec<f64> = results.iter().map(|r| r.seconds).collect();
    let median_s = median(&mut times);
    let false_success = results
        .iter()
        .filter(|r| r.status.as_deref() == Some("succeeded") && !r.passed)
        .count();
    let report = json!({
        "model": model,
        "cases_dir": args.dir,
        "repeat": repeat,
        "cases": total,
        "passed": passed_cases,
        "pass_rate": rate,
        "median_seconds": median_s,
        "total_seconds": started_all.elapsed().as_secs_f64(),
        "reported_succeeded_but_failed": false_success,
        "runs": results,
    });
    let path = args.report.clone().unwrap_or_else(|| {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        cx.layout().eval_reports().join(format!("{secs}.json"))
    });
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let k = if repeat > 1 {
            format!(" (pass^{repeat})")
        } else {
            String::new()
        };
        println!(
            "pass rate {passed_cases}/{total} ({:.0}%){k}, median {median_s:.1} s a task, {false_success} \
             run(s) reported succeeded but failed; report: {}",
            rate * 100.0,
            path.display()
        );
    }
    if let Some(min) = args.min_pass
        && rate < min
    {
        eprintln!(
            "eval: pass rate {:.0}% is below --min-pass {:.0}%",
            rate * 100.0,
            min * 100.0
        );
        return Err(crate::Reported.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(text: &str) -> Case {
        toml::from_str(text).unwrap()
    }

    fn tree(files: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        files
            .iter()
            .map(|(p, c)| (p.to_string(), c.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn end_states_are_checked_and_unnamed_files_guarded() {
        let c = case(
            r#"
prompt = "Append beta to a.txt"
[files]
"a.txt" = "alpha\n"
"b.txt" = "keep\n"
[expect]
answer_contains = ["Beta"]
[expect.files."a.txt"]
content = "alpha\nbeta\n"
lines = ["beta"]
"#,
        );
        let before = tree(&[("a.txt", "alpha\n"), ("b.txt", "keep\n")]);
        let good = tree(&[("a.txt", "alpha\nbeta"), ("b.txt", "keep\n")]);
        assert!(
            check(
                &c,
                &before,
                &good,
                Some(Status::Succeeded),
                Some("added beta")
            )
            .is_empty()
        );
        let f = check(&c, &before, &good, Some(Status::Failed), Some("x"));
        assert_eq!(f.len(), 2, "{f:?}");
        let bad = tree(&[("a.txt", "beta\n"), ("junk.txt", "")]);
        let f = check(&c, &before, &bad, Some(Status::Succeeded), Some("beta"));
        let all = f.join("\n");
        assert!(all.contains("a.txt: content"), "{all}");
        assert!(
            all.contains("b.txt: deleted although the task did not name it"),
            "{all}"
        );
        assert!(all.contains("junk.txt: created"), "{all}");
    }

    #[test]
    fn bad_case_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x.toml"), "prompt = 3").unwrap();
        let e = load_cases(dir.path()).unwrap_err().to_string();
        assert!(e.contains("x.toml: not an eval case"), "{e}");
        std::fs::write(
            dir.path().join("x.toml"),
            "prompt = \"p\"\n[expect]\nstatus = \"ok\"\n",
        )
        .unwrap();
        let e = load_cases(dir.path()).unwrap_err().to_string();
        assert!(e.contains("expect.status `ok`"), "{e}");
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
    }
}
