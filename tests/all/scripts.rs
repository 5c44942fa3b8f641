//! Fixtures the engine, API, crash and MCP tests share: the fake Ollama's
//! models, the scripted sample task (collect the TODO lines under src/),
//! the sample project, and an engine over the shipped skills.

use crate::support::{artifacts, sandbox, shipped_policy};
use camina_coordinator::Engine;
use camina_journal::Journal;
use camina_model::config::{ModelsSection, OllamaSection};
use camina_model::{Bridge, Config, ModelSpec};
use camina_registry::{PolicySource, Registry};
use fake_ollama::{FakeModel, FakeOllama, Reply};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub(crate) const COORDINATOR: &str = "mistral-small:22b";
pub(crate) const REASONER: &str = "deepseek-r1:7b";
pub(crate) const WORKER: &str = "mistral:7b";

pub(crate) fn models() -> Vec<FakeModel> {
    vec![
        FakeModel::new(COORDINATOR, &["completion", "tools"]),
        FakeModel::new(REASONER, &["completion", "thinking"]),
        FakeModel::new(WORKER, &["completion", "tools"]),
    ]
}

/// The messages after the last user message (the current turn's history).
pub(crate) fn since_user(req: &Value) -> Vec<Value> {
    let msgs = req["messages"].as_array().cloned().unwrap_or_default();
    let last_user = msgs.iter().rposition(|m| m["role"] == "user").unwrap_or(0);
    msgs[last_user + 1..].to_vec()
}

pub(crate) fn last_user(req: &Value) -> String {
    req["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_owned()
}

pub(crate) fn offers(req: &Value, tool: &str) -> bool {
    req["tools"]
        .as_array()
        .is_some_and(|t| t.iter().any(|t| t["function"]["name"] == tool))
}

/// A drummer's turn (belters grep too, but only drummers find files by
/// name).
pub(crate) fn is_drummer(req: &Value) -> bool {
    offers(req, "find_files")
}

/// The coordinator's triage: does the task ask for changes?
pub(crate) fn is_triage(req: &Value) -> bool {
    req["model"] == COORDINATOR && req["format"].to_string().contains("changes_files")
}

/// The coordinator's final answer.
pub(crate) fn is_answer(req: &Value) -> bool {
    req["model"] == COORDINATOR
        && req["format"].to_string().contains("\"done\"")
        && !req["format"].to_string().contains("oneOf")
}

/// `src/x.rs:3: text` lines (grep's matches as the drummer reported them).
pub(crate) fn match_lines(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| {
            l.starts_with("src/")
                && l.split(':')
                    .nth(1)
                    .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
        })
        .collect()
}

/// The scripted models of the sample task: collect the TODO lines under
/// src/ into todo.md and note it in log.txt (a side-effecting append).
pub(crate) fn todo_script(req: &Value) -> Reply {
    let model = req["model"].as_str().unwrap_or_default();
    let format = req["format"].to_string();
    let turn = since_user(req);
    if model == REASONER {
        return Reply::thinking(
            "The task needs a search and a write.",
            "A drummer should grep for TODO in src/, then a belter writes todo.md.",
        );
    }
    if is_triage(req) {
        // A question asks for no change.
        let question = last_user(req).trim_end().ends_with('?');
        return Reply::text(&json!({"changes_files": !question}).to_string());
    }
    if model == COORDINATOR && format.contains("oneOf") {
        return Reply::text(
            &json!({"steps": [
                {"crew": "drummer", "instruction": "Find every TODO line under src/"},
                {"crew": "belter", "instruction": "Write the TODO lines to todo.md, then append `collected` to log.txt"}
            ]})
            .to_string(),
        );
    }
    if model == COORDINATOR {
        return Reply::text(&json!({"answer": "The TODO lines are in todo.md."}).to_string());
    }
    if is_drummer(req) {
        return match turn.last() {
            None => Reply::tool_call("grep", json!({"pattern": "TODO", "path": "src"})),
            Some(result) => {
                let v: Value = serde_json::from_str(result["content"].as_str().unwrap_or("{}"))
                    .unwrap_or_default();
                let lines: Vec<String> = v["matches"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|m| {
                        format!(
                            "{}:{}: {}",
                            m["file"].as_str().unwrap_or(""),
                            m["line"],
                            m["text"].as_str().unwrap_or("")
                        )
                    })
                    .collect();
                Reply::text(&format!("TODO lines:\n{}", lines.join("\n")))
            }
        };
    }
    if offers(req, "write_file") {
        let calls = turn.iter().filter(|m| m["role"] == "tool").count();
        return match calls {
            0 => {
                let user = last_user(req);
                let lines = match_lines(&user);
                Reply::tool_call(
                    "write_file",
                    json!({"path": "todo.md", "content": format!("{}\n", lines.join("\n"))}),
                )
            }
            1 => Reply::tool_call(
                "append_file",
                json!({"path": "log.txt", "content": "collected\n"}),
            ),
            _ => Reply::text("Wrote todo.md and noted it in log.txt."),
        };
    }
    Reply::status(500, "the script has no answer for this request")
}

/// A workspace with TODOs in src/.
pub(crate) fn project(dir: &Path) {
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(
        dir.join("src/main.rs"),
        "fn main() {\n    // TODO: parse args\n}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("src/lib.rs"),
        "// TODO: write docs\npub fn f() {}\n",
    )
    .unwrap();
}

/// grep keeps each line's indentation.
pub(crate) const EXPECTED_TODO: &str =
    "src/lib.rs:1: // TODO: write docs\nsrc/main.rs:2:     // TODO: parse args\n";

/// Installs the bundled skills with their shipped policies into `home`.
pub(crate) async fn install_skills(registry: &Registry) {
    for (file, name) in [
        (artifacts::BELTER_FS, "belter-fs"),
        (artifacts::DRUMMER_SEARCH, "drummer-search"),
        (artifacts::DRUMMER_WEB, "drummer-web"),
    ] {
        let policy = PolicySource {
            text: shipped_policy(name),
            name: format!("policies/{name}.toml"),
        };
        registry
            .install(&std::fs::read(file).unwrap(), Some(&policy), None, name)
            .await
            .unwrap();
    }
}

pub(crate) fn config(fake: &FakeOllama) -> Config {
    Config {
        models: ModelsSection {
            coordinator: ModelSpec::Ollama(COORDINATOR.into()),
            reasoner: ModelSpec::Ollama(REASONER.into()),
            belter: ModelSpec::Ollama(WORKER.into()),
            drummer: ModelSpec::Ollama(WORKER.into()),
        },
        ollama: OllamaSection {
            url: Some(fake.url().into()),
            timeout_s: Some(10),
        },
        ..Default::default()
    }
}

pub(crate) struct Setup {
    pub home: tempfile::TempDir,
    pub ws: PathBuf,
    pub engine: Engine,
    pub _ws_dir: tempfile::TempDir,
}

pub(crate) async fn setup(fake: &FakeOllama) -> Setup {
    setup_with(config(fake)).await
}

/// The sample project, the shipped skills and an engine on `config`.
pub(crate) async fn setup_with(config: Config) -> Setup {
    let home = tempfile::tempdir().unwrap();
    let ws_dir = tempfile::tempdir().unwrap();
    let ws = ws_dir.path().to_path_buf();
    project(&ws);
    let registry = Registry::open(home.path(), sandbox()).unwrap();
    install_skills(&registry).await;
    let (journal, _) = Journal::open(&home.path().join("journal")).unwrap();
    let bridge = Bridge::new(config, home.path()).unwrap();
    let engine = Engine::new(
        Arc::new(journal),
        Arc::new(registry),
        Arc::new(bridge),
        home.path(),
    );
    Setup {
        home,
        ws,
        engine,
        _ws_dir: ws_dir,
    }
}

/// Names both files the scripted belter writes (a task may change only the
/// paths it names).
pub(crate) const PROMPT: &str =
    "Collect every TODO line under src/ into todo.md and note it in log.txt";

/// A one-step plan for `crew`, a triage answer, a final answer, and the
/// crew's turns from `turns` (given the request and how many of its own
/// calls the crew has made since the user turn).
pub(crate) fn one_step_script(
    crew: &'static str,
    changes_files: bool,
    turns: impl Fn(&Value, usize) -> Reply + Send + 'static,
) -> impl FnMut(&Value) -> Reply + Send + 'static {
    move |req: &Value| {
        if is_triage(req) {
            return Reply::text(&json!({"changes_files": changes_files}).to_string());
        }
        if req["model"] == COORDINATOR && req["format"].to_string().contains("oneOf") {
            return Reply::text(
                &json!({"steps": [{"crew": crew, "instruction": "Do the task."}]}).to_string(),
            );
        }
        if is_answer(req) {
            return Reply::text(&json!({"answer": "Done.", "done": true}).to_string());
        }
        if req["model"] == REASONER {
            return Reply::thinking("t", "Do it.");
        }
        let made = since_user(req)
            .iter()
            .filter(|m| m["role"] == "assistant")
            .count();
        turns(req, made)
    }
}

/// The task's first refused call carries `flag`, and the crew was told
/// why (a tool result saying `why`).
pub(crate) fn refused_and_told(
    engine: &Engine,
    task: &str,
    fake: &FakeOllama,
    flag: &str,
    why: &str,
) {
    let records = engine.journal().records(task).unwrap();
    let refused = records.iter().find(|r| r.kind == "tool_refused").unwrap();
    assert_eq!(refused.data[flag], true, "{}", refused.data);
    assert!(told(fake, why), "the crew was told why");
}

/// Whether a tool result the crew saw says `text`.
pub(crate) fn told(fake: &FakeOllama, text: &str) -> bool {
    fake.chats().iter().any(|c| {
        since_user(c)
            .iter()
            .any(|m| m["role"] == "tool" && m["content"].as_str().unwrap_or("").contains(text))
    })
}

pub(crate) fn finish(report: &str) -> Reply {
    Reply::tool_call("finish", json!({"report": report}))
}

/// A belter that writes a to-do list of its own instead of the lines the
/// task asks it to collect, and then (`then_search`) greps for them.
pub(crate) fn inventing_belter(
    then_search: bool,
) -> impl Fn(&Value, usize) -> Reply + Send + 'static {
    move |req, made| match made {
        0 => Reply::tool_call(
            "write_file",
            json!({"path": "todo.md", "content": "- [ ] Implement feature A\n- [ ] Fix bug B\n"}),
        ),
        1 if then_search => Reply::tool_call("grep", json!({"pattern": "TODO", "path": "src"})),
        2 if then_search => {
            let found = since_user(req)
                .iter()
                .rev()
                .find(|m| m["role"] == "tool")
                .and_then(|m| serde_json::from_str::<Value>(m["content"].as_str()?).ok())
                .unwrap_or_default();
            let lines: Vec<&str> = found["matches"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m["text"].as_str())
                .map(str::trim)
                .collect();
            Reply::tool_call(
                "write_file",
                json!({"path": "todo.md", "content": format!("{}\n", lines.join("\n"))}),
            )
        }
        _ => finish("Collected the TODO lines into todo.md."),
    }
}
