//! The model bridge against a fake Ollama server speaking the real wire
//! format, and per-role routing (the embedded backend: `embedded.rs`). `-- --ignored real_ollama` also runs the Ollama checks against
//! a real server (`OLLAMA_HOST`, default 127.0.0.1:11434).

use crate::embedded::gguf;
use camina_model::config::{ModelsSection, OllamaSection};
use camina_model::ollama::OllamaBackend;
use camina_model::{
    Bridge, ChatBackend, ChatRequest, Config, Message, ModelError, ModelRole, ModelSpec, ToolSpec,
};
use fake_ollama::{FakeModel, FakeOllama, Reply};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn backend(fake: &FakeOllama) -> OllamaBackend {
    OllamaBackend::new(fake.url(), Duration::from_secs(10)).unwrap()
}

pub(crate) fn ask(text: &str) -> ChatRequest {
    ChatRequest {
        messages: vec![Message::system("You are terse."), Message::user(text)],
        ..Default::default()
    }
}

pub(crate) fn read_file_tool() -> ToolSpec {
    ToolSpec {
        name: "read_file".into(),
        description: "Read a file".into(),
        parameters: json!({"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}).into(),
    }
}

fn mistral() -> FakeModel {
    FakeModel::new("mistral:7b", &["completion", "tools"])
}

fn deepseek() -> FakeModel {
    FakeModel::new("deepseek-r1:7b", &["completion", "thinking"])
}

#[tokio::test]
async fn ollama_answers_streamed_and_not() {
    let fake = FakeOllama::start(vec![mistral()], |_| {
        Reply::text("Paris is the capital of France.")
    });
    let b = backend(&fake);
    let reply = b.chat("mistral:7b", &ask("capital?"), None).await.unwrap();
    assert_eq!(reply.message.content, "Paris is the capital of France.");
    assert_eq!(
        (reply.backend.as_str(), reply.model.as_str()),
        ("ollama", "mistral:7b")
    );
    assert_eq!(reply.done_reason.as_deref(), Some("stop"));
    assert!(reply.completion_tokens > 0 && reply.prompt_tokens > 0);
    // The digest /api/tags lists goes with the reply (and into the journal).
    assert_eq!(
        reply.model_digest.as_deref(),
        Some(fake_ollama::digest("mistral:7b").as_str())
    );
    assert_eq!(fake.chats()[0]["stream"], false);

    let pieces = Mutex::new(Vec::new());
    let progress = |c: &str, _t: &str| pieces.lock().unwrap().push(c.to_owned());
    let reply = b
        .chat("mistral:7b", &ask("capital?"), Some(&progress))
        .await
        .unwrap();
    assert_eq!(reply.message.content, "Paris is the capital of France.");
    let pieces = pieces.into_inner().unwrap();
    assert!(pieces.len() > 1, "the reply arrived in pieces: {pieces:?}");
    assert_eq!(pieces.concat(), reply.message.content);
    assert_eq!(fake.chats()[1]["stream"], true);
    assert_eq!(fake.chats()[1]["messages"][0]["role"], "system");
}

#[tokio::test]
async fn ollama_tool_calls_and_tool_results() {
    let fake = FakeOllama::start(vec![mistral()], |req| {
        let last = req["messages"].as_array().unwrap().last().unwrap().clone();
        if last["role"] == "tool" {
            Reply::text(&format!(
                "the file says {}",
                last["content"].as_str().unwrap()
            ))
        } else {
            Reply::tool_call("read_file", json!({"path": "notes.txt"}))
        }
    });
    let b = backend(&fake);
    let mut req = ask("what is in notes.txt?");
    req.tools = vec![read_file_tool()];
    for progress in [false, true] {
        let sink = |_: &str, _: &str| {};
        let reply = b
            .chat("mistral:7b", &req, progress.then_some(&sink as _))
            .await
            .unwrap();
        assert_eq!(reply.message.tool_calls.len(), 1);
        assert_eq!(reply.message.tool_calls[0].name, "read_file");
        assert_eq!(
            reply.message.tool_calls[0].arguments,
            json!({"path": "notes.txt"})
        );
    }
    let wire = &fake.chats()[0];
    assert_eq!(wire["tools"][0]["type"], "function");
    assert_eq!(
        wire["tools"][0]["function"]["parameters"]["required"],
        json!(["path"])
    );

    let mut follow = req.clone();
    follow.messages.push(Message {
        tool_calls: vec![camina_model::ToolCall {
            name: "read_file".into(),
            arguments: json!({"path": "notes.txt"}),
        }],
        ..Message::assistant("")
    });
    follow.messages.push(Message::tool("read_file", "hello"));
    let reply = b.chat("mistral:7b", &follow, None).await.unwrap();
    assert_eq!(reply.message.content, "the file says hello");
    let wire = fake.chats().last().unwrap().clone();
    assert_eq!(wire["messages"][3]["tool_name"], "read_file");
    assert_eq!(
        wire["messages"][2]["tool_calls"][0]["function"]["name"],
        "read_file"
    );
}

/// The fake cuts its streams mid-line and inside multi-byte characters:
/// the reply must come out whole and intact.
#[tokio::test]
async fn ollama_stream_split_inside_lines_and_characters() {
    const TEXT: &str = "Grüße aus Köln — naïve café ✓ 東京";
    let fake = FakeOllama::start(vec![mistral()], |_| Reply::text(TEXT));
    let b = backend(&fake);
    let progress = |_: &str, _: &str| {};
    let reply = b
        .chat("mistral:7b", &ask("hi"), Some(&progress))
        .await
        .unwrap();
    assert_eq!(reply.message.content, TEXT);
}

#[tokio::test]
async fn ollama_thinking_is_separate() {
    let fake = FakeOllama::start(vec![deepseek()], |_| {
        Reply::thinking(
            "The user wants a plan. Step one…",
            "Plan: read, then write.",
        )
    });
    let b = backend(&fake);
    let mut req = ask("plan it");
    req.think = true;
    let thoughts = Mutex::new(String::new());
    let progress = |_: &str, t: &str| thoughts.lock().unwrap().push_str(t);
    let reply = b
        .chat("deepseek-r1:7b", &req, Some(&progress))
        .await
        .unwrap();
    assert_eq!(reply.message.content, "Plan: read, then write.");
    assert_eq!(
        reply.message.thinking.as_deref(),
        Some("The user wants a plan. Step one…")
    );
    assert_eq!(
        thoughts.into_inner().unwrap(),
        "The user wants a plan. Step one…"
    );
    assert_eq!(fake.chats()[0]["think"], true);
}

#[tokio::test]
async fn ollama_errors_are_typed() {
    let fake = FakeOllama::start(vec![mistral(), deepseek()], |req| {
        match req["messages"][1]["content"].as_str() {
            Some("boom") => Reply::status(500, "llama runner process has terminated"),
            _ => Reply::text("ok"),
        }
    });
    let b = backend(&fake);
    let err = b.chat("llama9:404b", &ask("hi"), None).await.unwrap_err();
    assert!(
        matches!(&err, ModelError::ModelNotFound { model, message } if model == "llama9:404b" && message.contains("not found")),
        "{err}"
    );
    assert!(
        err.to_string().contains("ollama pull llama9:404b"),
        "the error says how to fix it: {err}"
    );

    let mut tools = ask("hi");
    tools.tools = vec![read_file_tool()];
    let err = b.chat("deepseek-r1:7b", &tools, None).await.unwrap_err();
    assert!(
        matches!(&err, ModelError::ToolsUnsupported { message, .. } if message.contains("does not support tools")),
        "{err}"
    );

    let mut think = ask("hi");
    think.think = true;
    let err = b.chat("mistral:7b", &think, None).await.unwrap_err();
    assert!(
        matches!(err, ModelError::ThinkingUnsupported { .. }),
        "{err}"
    );

    let err = b.chat("mistral:7b", &ask("boom"), None).await.unwrap_err();
    assert!(
        matches!(&err, ModelError::Http { status: 500, message } if message.contains("terminated")),
        "{err}"
    );
    // 4xx and 5xx other than 503 are never retried.
    assert_eq!(fake.chats().len(), 4);
}

#[tokio::test]
async fn ollama_503_is_retried_then_succeeds() {
    let calls = Arc::new(Mutex::new(0));
    let seen = calls.clone();
    let fake = FakeOllama::start(vec![mistral()], move |_| {
        let mut n = seen.lock().unwrap();
        *n += 1;
        if *n <= 2 {
            Reply::status(
                503,
                "server busy, please try again. maximum pending requests exceeded",
            )
        } else {
            Reply::text("finally")
        }
    });
    let reply = backend(&fake)
        .chat("mistral:7b", &ask("hi"), None)
        .await
        .unwrap();
    assert_eq!(reply.message.content, "finally");
    assert_eq!(*calls.lock().unwrap(), 3);

    let always = FakeOllama::start(vec![mistral()], |_| Reply::status(503, "server busy"));
    let err = backend(&always)
        .chat("mistral:7b", &ask("hi"), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ModelError::Busy { message } if message.contains("server busy")),
        "{err}"
    );
    assert_eq!(always.chats().len(), 5, "one try and four retries");
}

#[tokio::test]
async fn ollama_mid_stream_error_is_detected() {
    let fake = FakeOllama::start(vec![mistral()], |_| Reply::MidStreamError {
        content_before: "The answer is".into(),
        message: "an error was encountered while running the model: CUDA error".into(),
    });
    let sink = |_: &str, _: &str| {};
    let err = backend(&fake)
        .chat("mistral:7b", &ask("hi"), Some(&sink))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ModelError::Stream { message } if message.contains("CUDA error")),
        "{err}"
    );

    let cut = FakeOllama::start(vec![mistral()], |_| Reply::Cut {
        content: "half an ans".into(),
    });
    let err = backend(&cut)
        .chat("mistral:7b", &ask("hi"), Some(&sink))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ModelError::Stream { message } if message.contains("before")),
        "{err}"
    );
}

#[tokio::test]
async fn ollama_truncation_is_reported() {
    let fake = FakeOllama::start(vec![mistral()], |_| {
        Reply::truncated("This answer goes on and on and")
    });
    let reply = backend(&fake)
        .chat("mistral:7b", &ask("hi"), None)
        .await
        .unwrap();
    assert!(reply.truncated());
    assert_eq!(reply.done_reason.as_deref(), Some("length"));
}

#[tokio::test]
async fn ollama_unreachable_is_typed() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let b =
        OllamaBackend::new(&format!("http://127.0.0.1:{port}"), Duration::from_secs(2)).unwrap();
    let err = b.chat("mistral:7b", &ask("hi"), None).await.unwrap_err();
    assert!(
        matches!(&err, ModelError::Unreachable { url, .. } if url.contains(&port.to_string())),
        "{err}"
    );
}

fn config_for(fake: &FakeOllama, models: ModelsSection) -> Config {
    Config {
        models,
        ollama: OllamaSection {
            url: Some(fake.url().to_owned()),
            timeout_s: Some(10),
        },
        ..Default::default()
    }
}

#[tokio::test]
async fn the_bridge_refuses_tools_for_a_model_without_the_capability() {
    let fake = FakeOllama::start(vec![mistral(), deepseek()], |_| Reply::text("unused"));
    let home = tempfile::tempdir().unwrap();
    let bridge = Bridge::new(
        config_for(
            &fake,
            ModelsSection::all(ModelSpec::Ollama("deepseek-r1:7b".into())),
        ),
        home.path(),
    )
    .unwrap();
    let mut req = ask("hi");
    req.tools = vec![read_file_tool()];
    let err = bridge
        .chat(ModelRole::Reasoner, &req, None)
        .await
        .unwrap_err();
    assert!(matches!(err, ModelError::ToolsUnsupported { .. }), "{err}");
    assert!(fake.chats().is_empty(), "nothing was sent");
    // Thinking is fine for it.
    let mut think = ask("hi");
    think.think = true;
    assert!(bridge.chat(ModelRole::Reasoner, &think, None).await.is_ok());
}

#[tokio::test]
async fn auto_picks_ollama_when_the_seed_model_is_there_else_embedded() {
    let fake = FakeOllama::start(vec![mistral(), deepseek()], |_| Reply::text("ok"));
    let home = tempfile::tempdir().unwrap();
    // No embedded model either: the configured file is missing.
    let mut config = config_for(&fake, ModelsSection::default());
    config.embedded.gguf = Some(home.path().join("missing.gguf").display().to_string());
    let bridge = Bridge::new(config, home.path()).unwrap();
    let belter = bridge.resolve(ModelRole::Belter).await.unwrap();
    assert_eq!(
        (belter.backend.as_str(), belter.model.as_str()),
        ("ollama", "mistral:7b")
    );
    assert!(belter.can("tools"));
    let reasoner = bridge.resolve(ModelRole::Reasoner).await.unwrap();
    assert!(reasoner.can("thinking") && !reasoner.can("tools"));
    // mistral-small:22b is missing and there is no embedded model in this
    // home: a clear error saying how to get either.
    let err = bridge
        .resolve(ModelRole::Coordinator)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("mistral-small:22b") && err.contains("camina model fetch"),
        "{err}"
    );
    // With the embedded model present, auto falls back to it.
    let with_model = Bridge::new(
        Config {
            embedded: camina_model::config::EmbeddedSection {
                gguf: Some(gguf().display().to_string()),
                ..Default::default()
            },
            ..config_for(&fake, ModelsSection::default())
        },
        home.path(),
    )
    .unwrap();
    let coord = with_model.resolve(ModelRole::Coordinator).await.unwrap();
    assert_eq!(coord.backend, camina_model::Backend::Embedded);
}

#[test]
fn model_ask_resends_a_recorded_request() {
    let fake = FakeOllama::start(vec![mistral()], |req| {
        if req["tools"].is_array() {
            Reply::tool_call("grep", json!({"path": "src", "pattern": "TODO"}))
        } else {
            Reply::text("no tools")
        }
    });
    let home = tempfile::tempdir().unwrap();
    std::fs::write(
        home.path().join("config.toml"),
        format!("[ollama]\nurl = \"{}\"\n", fake.url()),
    )
    .unwrap();
    // A request as `camina task show --json` records it.
    let request = json!({
        "messages": [
            {"role": "system", "content": "You are a Drummer."},
            {"role": "user", "content": "Instruction: find the TODO lines"}
        ],
        "tools": [{"name": "grep", "description": "Search", "parameters": {"type": "object", "properties": {"pattern": {"type": "string"}}}}],
        "options": {"temperature": 0.0, "seed": 42}
    });
    let file = home.path().join("req.json");
    std::fs::write(&file, request.to_string()).unwrap();
    let ask = |file: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_camina"))
            .arg("--home")
            .arg(home.path())
            .args(["model", "ask", "--role", "drummer", "--json", "--request"])
            .arg(file)
            .env_remove("OLLAMA_HOST")
            .output()
            .unwrap()
    };
    let o = ask(&file);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let reply: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(reply["message"]["tool_calls"][0]["name"], "grep");
    let sent = fake.chats().pop().unwrap();
    assert_eq!(sent["messages"][0]["content"], "You are a Drummer.");
    assert_eq!(sent["tools"][0]["function"]["name"], "grep");
    assert_eq!(sent["options"]["seed"], 42);

    // Not a request: a usage error naming the file.
    let bad = home.path().join("bad.json");
    std::fs::write(&bad, "{\"prompt\": 1}").unwrap();
    let o = ask(&bad);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("bad.json") && err.contains("not a chat request"),
        "{err}"
    );
}

#[test]
fn model_check_tells_the_truth_against_the_fake_server() {
    let fake = FakeOllama::start(vec![mistral(), deepseek()], |_| Reply::text("ok"));
    let home = tempfile::tempdir().unwrap();
    let run = |extra: &[&str], gguf: &str| {
        std::fs::write(
            home.path().join("config.toml"),
            format!(
                "[ollama]\nurl = \"{}\"\n[embedded]\ngguf = \"{gguf}\"\n",
                fake.url()
            ),
        )
        .unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_camina"))
            .arg("--home")
            .arg(home.path())
            .args(["model", "check"])
            .args(extra)
            .env_remove("OLLAMA_HOST")
            .output()
            .unwrap()
    };
    let o = run(&["--json"], "/nonexistent/model.gguf");
    assert_eq!(o.status.code(), Some(1), "the coordinator has no model");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let role = |name: &str| {
        v["roles"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["role"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(role("belter")["backend"], "ollama");
    assert_eq!(role("belter")["model"], "mistral:7b");
    assert_eq!(
        role("belter")["capabilities"],
        json!(["completion", "tools"])
    );
    assert_eq!(
        role("reasoner")["capabilities"],
        json!(["completion", "thinking"])
    );
    assert_eq!(role("coordinator")["present"], false);
    assert!(
        role("coordinator")["error"]
            .as_str()
            .unwrap()
            .contains("camina model fetch")
    );

    let o = run(&[], &gguf().display().to_string());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("coordinator  embedded"), "{text}");
    assert!(text.contains("belter       ollama   mistral:7b"), "{text}");

    // A file that is not a model is not reported as present.
    let junk = home.path().join("junk.gguf");
    std::fs::write(&junk, "<html>not found</html>").unwrap();
    let o = run(&["--json"], &junk.display().to_string());
    assert_eq!(o.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let coord = v["roles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["role"] == "coordinator")
        .unwrap()
        .clone();
    assert_eq!(coord["present"], false, "{coord}");
    assert!(
        coord["error"].as_str().unwrap().contains("not a GGUF"),
        "{coord}"
    );
}

/// The machine of the README's main command: no Ollama at all, the
/// embedded model fetched. Every role runs embedded, and check says so.
#[test]
fn model_check_without_ollama_chooses_the_embedded_model() {
    let home = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    std::fs::write(
        home.path().join("config.toml"),
        format!(
            "[ollama]\nurl = \"http://{closed}\"\n[embedded]\ngguf = \"{}\"\n",
            gguf().display()
        ),
    )
    .unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_camina"))
        .arg("--home")
        .arg(home.path())
        .args(["model", "check", "--json"])
        .env_remove("OLLAMA_HOST")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    for r in v["roles"].as_array().unwrap() {
        assert_eq!(r["backend"], "embedded", "{r}");
        assert_eq!(r["present"], true, "{r}");
    }
}

#[test]
fn a_bad_config_file_names_file_line_and_key() {
    let home = tempfile::tempdir().unwrap();
    std::fs::write(
        home.path().join("config.toml"),
        "[models]\ncoordinator = \"gpt-5\"\n",
    )
    .unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_camina"))
        .arg("--home")
        .arg(home.path())
        .args(["model", "check"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("config.toml:2:") && err.contains("`gpt-5` is not a model"),
        "{err}"
    );
}

/// The same checks against a real Ollama server: not run by default (it
/// shows as ignored, not passed); `cargo test --test all -- --ignored
/// real_ollama` with OLLAMA_HOST (and CAMINA_OLLAMA_MODEL) set runs it.
#[tokio::test]
#[ignore = "needs a real Ollama server (OLLAMA_HOST); run with --ignored"]
async fn real_ollama_server() {
    let home = tempfile::tempdir().unwrap();
    let bridge = Bridge::new(Config::default(), home.path()).unwrap();
    let model = std::env::var("CAMINA_OLLAMA_MODEL").unwrap_or_else(|_| "mistral:7b".into());
    let b = bridge.ollama();
    assert!(b.has_model(&model).await.unwrap(), "pull {model} first");
    let reply = b.chat(&model, &ask("Say hello."), None).await.unwrap();
    assert!(!reply.message.content.is_empty());
    let mut req = ask("Read notes.txt");
    req.tools = vec![read_file_tool()];
    let reply = b.chat(&model, &req, None).await.unwrap();
    assert!(
        reply
            .message
            .tool_calls
            .iter()
            .all(|c| c.name == "read_file")
    );
    let err = b
        .chat("no-such-model:1b", &ask("hi"), None)
        .await
        .unwrap_err();
    assert!(matches!(err, ModelError::ModelNotFound { .. }), "{err}");
    // Streaming, with the pieces adding up to the reply.
    let pieces = Mutex::new(String::new());
    let progress = |c: &str, _: &str| pieces.lock().unwrap().push_str(c);
    let reply = b
        .chat(&model, &ask("Count to three."), Some(&progress))
        .await
        .unwrap();
    assert_eq!(pieces.into_inner().unwrap(), reply.message.content);
    assert!(reply.model_digest.is_some(), "the digest from /api/tags");
    // A thinking model, when the server has one (CAMINA_OLLAMA_THINKING,
    // default deepseek-r1:7b): thinking comes apart from the answer, and
    // tools are refused before anything is sent (no tools capability).
    let thinker =
        std::env::var("CAMINA_OLLAMA_THINKING").unwrap_or_else(|_| "deepseek-r1:7b".into());
    if b.has_model(&thinker).await.unwrap() {
        let mut req = ask("What is 2 + 2?");
        req.think = true;
        let reply = b.chat(&thinker, &req, None).await.unwrap();
        assert!(reply.message.thinking.is_some(), "{reply:?}");
        let raw_400 = {
            let mut req = ask("Read notes.txt");
            req.tools = vec![read_file_tool()];
            b.chat(&thinker, &req, None).await.unwrap_err()
        };
        assert!(
            matches!(raw_400, ModelError::ToolsUnsupported { .. }),
            "{raw_400}"
        );
    } else {
        eprintln!("{thinker} is not on the server: thinking checks skipped");
    }
}
