//! The durable task engine against a scripted fake Ollama and the real
//! skills: a multi-step task end to end, invalid model output, unknown
//! tools, model errors mid-task, budgets, cancellation, and resumption.

pub(crate) use crate::scripts::*;
use crate::support::{artifacts, shipped_policy};
use camina_coordinator::RunOptions;
use camina_coordinator::events::{Budgets, Decision};
use camina_journal::Status;
use camina_model::config::ModelsSection;
use camina_model::{Config, ModelSpec};
use camina_registry::PolicySource;
use fake_ollama::{FakeOllama, Reply};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

#[tokio::test]
async fn a_multi_step_task_produces_the_workspace_and_the_answer() {
    let fake = FakeOllama::start(models(), todo_script);
    let s = setup(&fake).await;
    let task = s
        .engine
        .submit(PROMPT, &s.ws, Budgets::default())
        .await
        .unwrap();
    assert_eq!(task.status, Status::Queued);
    let done = s.engine.run(&task.id, RunOptions::default()).await.unwrap();
    assert_eq!(done.status, Status::Succeeded, "{:?}", done.error);
    assert_eq!(
        done.answer.as_deref(),
        Some("The TODO lines are in todo.md.")
    );
    assert_eq!(
        std::fs::read_to_string(s.ws.join("todo.md")).unwrap(),
        EXPECTED_TODO
    );
    assert_eq!(
        std::fs::read_to_string(s.ws.join("log.txt")).unwrap(),
        "collected\n"
    );

    // The protocol, as the models saw it.
    let chats = fake.chats();
    let reasoner = chats.iter().find(|c| c["model"] == REASONER).unwrap();
    assert_eq!(reasoner["think"], true);
    assert!(
        reasoner.get("tools").is_none(),
        "the reasoner gets no tools"
    );
    let plan = chats
        .iter()
        .find(|c| c["model"] == COORDINATOR && c["format"].to_string().contains("oneOf"))
        .unwrap();
    assert!(
        plan["format"].to_string().contains("\"belter\"")
            && plan["format"].to_string().contains("\"drummer\"")
    );
    let belter = chats.iter().find(|c| offers(c, "write_file")).unwrap();
    assert!(
        offers(belter, "append_file") && offers(belter, "grep") && !offers(belter, "http_get"),
        "belters get belter tools only"
    );
    let drummer = chats.iter().find(|c| is_drummer(c)).unwrap();
    assert!(offers(drummer, "http_get") && !offers(drummer, "write_file"));
    // Every crew turn may end the step with the host's finish tool, except
    // the first (Ollama cannot be held to it; the request says so).
    assert!(offers(belter, "finish") && offers(drummer, "finish"));
    // The belter was shown the directory the task names (listed for it
    // before its first turn, as a call of its step).
    assert!(last_user(belter).contains("[src]"), "{}", last_user(belter));
    // A step sees the results of the steps before it.
    let belter_user = last_user(belter);
    assert!(
        belter_user.contains("src/main.rs:2:     // TODO: parse args"),
        "{belter_user}"
    );
    // The task collects marked lines from src/: the belter, which writes
    // them, is shown that search's result in its opening turn.
    assert!(
        belter_user.contains("[grep src for TODO]")
            && belter_user.contains(r#""text":"    // TODO: parse args""#),
        "{belter_user}"
    );

    // The journal holds the whole story, durable tool intents included.
    let records = s.engine.journal().records(&task.id).unwrap();
    let kinds: Vec<&str> = records.iter().map(|r| r.kind.as_str()).collect();
    for k in [
        "submitted",
        "started",
        "model_request",
        "model_reply",
        "advice",
        "plan",
        "step_started",
        "tool_intent",
        "tool_result",
        "step_finished",
        "triage",
        "answer",
    ] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    let intent = records
        .iter()
        .find(|r| r.kind == "tool_intent" && r.data["tool"] == "append_file")
        .unwrap();
    assert_eq!(intent.data["effect"], "side-effecting");
    // The idempotency key is `task:step:n`: the append is the second
    // plan step's fourth call (after the listing of src/, the search for
    // the TODO lines made for the belter, and write_file).
    assert_eq!(intent.data["key"], format!("{}:1:3", task.id));
    assert!(
        intent.data["digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    let advice = records.iter().find(|r| r.kind == "advice").unwrap();
    assert_eq!(
        advice.data["thinking"],
        "The task needs a search and a write."
    );
}

#[tokio::test]
async fn resuming_a_finished_task_is_refused_and_nothing_is_redone() {
    let fake = FakeOllama::start(models(), todo_script);
    let s = setup(&fake).await;
    let task = s
        .engine
        .submit(PROMPT, &s.ws, Budgets::default())
        .await
        .unwrap();
    s.engine.run(&task.id, RunOptions::default()).await.unwrap();
    let before = fake.chats().len();
    let err = s
        .engine
        .run(&task.id, RunOptions::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("succeeded"), "{err}");
    assert_eq!(fake.chats().len(), before);
}

#[tokio::test]
async fn invalid_plan_json_gets_a_correction_then_fails_with_a_reason() {
    let attempts = Arc::new(Mutex::new(0));
    let seen = attempts.clone();
    let fake = FakeOllama::start(models(), move |req| {
        if req["model"] == COORDINATOR && req["format"].to_string().contains("oneOf") {
            let mut n = seen.lock().unwrap();
            *n += 1;
            return match *n {
                1 => Reply::text("{\"steps\": [{\"crew\": \"pilot\", \"instruction\": \"fly\"}]}"),
                2 => Reply::text("not json at all"),
                _ => Reply::text(&json!({"answer": "nothing to do"}).to_string()),
            };
        }
        todo_script(req)
    });
    let s = setup(&fake).await;
    // A task that names no file, so an answer without steps can be right.
    let t = s
        .engine
        .submit("Is there anything to do?", &s.ws, Budgets::default())
        .await
        .unwrap();
    let done = s.engine.run(&t.id, RunOptions::default()).await.unwrap();
    assert_eq!(
        done.status,
        Status::Succeeded,
        "the third attempt was valid"
    );
    assert_eq!(done.answer.as_deref(), Some("nothing to do"));
    let plans: Vec<Value> = fake
        .chats()
        .into_iter()
        .filter(|c| c["format"].to_string().contains("oneOf"))
        .collect();
    assert_eq!(plans.len(), 3);
    let correction = last_user(&plans[1]);
    assert!(
        correction.contains("unknown crew `pilot`"),
        "the model is told what was wrong: {correction}"
    );

    let never = FakeOllama::start(models(), |req| {
        if req["model"] == COORDINATOR {
            Reply::text("{\"steps\": []}")
        } else {
            todo_script(req)
        }
    });
    let s = setup(&never).await;
    let t = s
        .engine
        .submit(PROMPT, &s.ws, Budgets::default())
        .await
        .unwrap();
    let done = s.engine.run(&t.id, RunOptions::default()).await.unwrap();
    assert_eq!(done.status, Status::Failed);
    let reason = done.error.unwrap();
    assert!(
        reason.contains("no valid plan after 3 attempts") && reason.contains("no steps"),
        "{reason}"
    );
}

#[tokio::test]
async fn unknown_tools_are_corrected_and_bounded() {
    // Once wrong, then right: the correction works.
    let fake = FakeOllama::start(models(), |req| {
        if is_drummer(req) {
            match since_user(req).len() {
                0 => return Reply::tool_call("rm_rf", json!({"path": "/"})),
                // Told the tool does not exist: the real search.
                2 => return Reply::tool_call("grep", json!({"pattern": "TODO", "path": "src"})),
                _ => {}
            }
        }
        todo_script(req)
    });
    let s = setup(&fake).await;
    let t = s
        .engine
        .submit(PROMPT, &s.ws, Budgets::default())
        .await
        .unwrap();
    let done = s.engine.run(&t.id, RunOptions::default()).await.unwrap();
    assert_eq!(done.status, Status::Succeeded, "{:?}", done.error);
    let corrected = fake.chats().iter().any(|c| {
        since_user(c).iter().any(|m| {
            m["role"] == "tool"
                && m["content"]
                    .as_str()
                    .unwrap_or("")
                    .contains("no tool named `rm_rf`")
        })
    });
    assert!(corrected, "the model was told the tool does not exist");

    // Always wrong: after the bound the task fails, naming the tool and
    // the real ones.
    let stubborn = FakeOllama::start(models(), |req| {
        if is_drummer(req) {
            return Reply::tool_call("rm_rf", json!({"path": "/"}));
        }
        todo_script(req)
    });
    let s = setup(&stubborn).await;
    let t = s
        .engine
        .submit(PROMPT, &s.ws, Budgets::default())
        .await
        .unwrap();
    let done = s.engine.run(&t.id, RunOptions::default()).await.unwrap();
    assert_eq!(done.status, Status::Failed);
    let reason = done.error.unwrap();
    assert!(
        reason.contains("rm_rf") && reason.contains("grep"),
        "{reason}"
    );
}

#[tokio::test]
async fn a_repeated_call_is_not_run_again_even_with_its_keys_reordered() {
    // The belter keeps asking for the same side-effecting append, its
    // arguments' keys in a different order each time.
    let fake = FakeOllama::start(models(), |req| {
        if offers(req, "append_file") {
            let n = since_user(req).len();
            let args = if n.is_multiple_of(4) {
                json!({"path": "log.txt", "content": "collected\n"})
            } else {
                json!({"content": "collected\n", "path": "log.txt"})
            };
            return Reply::tool_call("append_file", args);
        }
        todo_script(req)
    });
    let s = setup(&fake).await;
    // This belter only appends: a task that names only log.txt.
    let t = s
        .engine
        .submit(
            "Collect the TODO lines, then note it in log.txt",
            &s.ws,
            Budgets::default(),
        )
        .await
        .unwrap();
    let done = s.engine.run(&t.id, RunOptions::default()).await.unwrap();
    assert_eq!(done.status, Status::Succeeded, "{:?}", done.error);
    assert_eq!(
        std::fs::read_to_string(s.ws.join("log.txt")).unwrap(),
        "collected\n",
        "the append ran once"
    );
    let records = s.engine.journal().records(&t.id).unwrap();
    let appends = records
        .iter()
        .filter(|r| r.kind == "tool_intent" && r.data["tool"] == "append_file")
        .count();
    assert_eq!(appends, 1);
    let finished = records.iter().rfind(|r| r.kind == "step_finished").unwrap();
    assert!(
        finished.data["result"]
            .as_str()
            .unwrap()
            .contains("kept repeating the same tool call"),
        "{}",
        finished.data
    );
}

#[tokio::test]
async fn a_model_error_mid_task_fails_it_and_resume_does_not_reask() {
    let broken = Arc::new(Mutex::new(true));
    let flag = broken.clone();
    let fake = FakeOllama::start(models(), move |req| {
        if is_answer(req) && *flag.lock().unwrap() {
            return Reply::status(500, "llama runner process has terminated: signal: killed");
        }
        todo_script(req)
    });
    let s = setup(&fake).await;
    let t = s
        .engine
        .submit(PROMPT, &s.ws, Budgets::default())
        .await
        .unwrap();
    let done = s.engine.run(&t.id, RunOptions::default()).await.unwrap();
    assert_eq!(done.status, Status::Failed);
    assert!(
        done.error
            .as_deref()
            .unwrap()
            .contains("llama runner process has terminated")
    );
    assert!(
        s.ws.join("todo.md").exists(),
        "the steps before the failure happened"
    );

    *broken.lock().unwrap() = false;
    let before = fake.chats().len();
    let done = s.engine.run(&t.id, RunOptions::default()).await.unwrap();
    assert_eq!(done.status, Status::Succeeded, "{:?}", done.error);
    assert_eq!(
        fake.chats().len(),
        before + 1,
        "only the failed answer request is sent again"
    );
    assert_eq!(
        std::fs::read_to_string(s.ws.join("log.txt")).unwrap(),
        "collected\n",
        "finished tool calls are not re-run"
    );
}

#[tokio::test]
async fn a_failed_step_ends_the_plan_and_the_later_steps_do_not_run() {
    // The drummer never searches (a failed lookup would be a finding; no
    // lookup at all is a failed step): the belter's write, which would
    // build on the search, must not happen, and the task ends failed
    // naming the step, without asking for an answer.
    let fake = FakeOllama::start(models(), |req| {
        if is_drummer(req) {
            return Reply::text("I would rather not search.");
        }
        todo_script(req)
    });
    let s = setup(&fake).await;
    let t = s
        .engine
        .submit(PROMPT, &s.ws, Budgets::default())
        .await
        .unwrap();
    let done = s.engine.run(&t.id, RunOptions::default()).await.unwrap();
    assert_eq!(done.status, Status::Failed);
    let reason = done.error.unwrap();
    assert!(
        reason.contains("step 1")
            && reason.contains("no successful tool call")
            && reason.contains("1 step(s) after it were not run"),
        "{reason}"
    );
    assert!(
        !s.ws.join("todo.md").exists(),
        "the belter step did not run"
    );
    assert!(
        !fake.chats().iter().any(|c| offers(c, "write_file")),
        "no belter was asked"
    );
    assert!(
        !fake.chats().iter().any(is_answer),
        "no answer was asked for: the failure is the answer"
    );
}

#[tokio::test]
async fn budgets_stop_a_task() {
    let fake = FakeOllama::start(models(), todo_script);
    let s = setup(&fake).await;
    let budgets = Budgets {
        max_model_calls: 4,
        ..Budgets::default()
    };
    let t = s.engine.submit(PROMPT, &s.ws, budgets).await.unwrap();
    let done = s.engine.run(&t.id, RunOptions::default()).await.unwrap();
    assert_eq!(done.status, Status::Failed);
    assert!(
        done.error
            .as_deref()
            .unwrap()
            .contains("budget exhausted: 4 model calls"),
        "{:?}",
        done.error
    );
    assert_eq!(fake.chats().len(), 4);

    // Turns per step: a crew that never stops calling tools ends its step,
    // which is then judged on what its calls did (lookups that succeeded:
    // complete, its results passed on).
    let looping = FakeOllama::start(models(), |req| {
        if is_drummer(req) {
            let n = since_user(req)
                .iter()
                .filter(|m| m["role"] == "tool")
                .count();
            return Reply::tool_call("find_files", json!({"pattern": format!("*.{n}")}));
        }
        todo_script(req)
    });
    let s = setup(&looping).await;
    let budgets = Budgets {
        max_turns: 3,
        ..Budgets::default()
    };
    let t = s.engine.submit(PROMPT, &s.ws, budgets).await.unwrap();
    s.engine.run(&t.id, RunOptions::default()).await.unwrap();
    let records = s.engine.journal().records(&t.id).unwrap();
    let finished = records.iter().find(|r| r.kind == "step_finished").unwrap();
    assert_eq!(finished.data["complete"], true, "{}", finished.data);
    assert!(
        finished.data["result"]
            .as_str()
            .unwrap()
            .contains("stopped after 3 turns")
    );
    let searches = records
        .iter()
        .filter(|r| r.kind == "tool_intent" && r.data["tool"] == "find_files")
        .count();
    assert_eq!(searches, 3, "one call a turn, three turns");
}

#[tokio::test]
async fn a_change_task_out_of_turns_with_nothing_changed_fails() {
    let fake = FakeOllama::start(
        models(),
        one_step_script("belter", true, |_, made| {
            Reply::tool_call("list_dir", json!({"path": "src", "max_entries": made + 1}))
        }),
    );
    let s = setup(&fake).await;
    let budgets = Budgets {
        max_turns: 3,
        ..Budgets::default()
    };
    let t = s
        .engine
        .submit("Write the TODO lines to todo.md", &s.ws, budgets)
        .await
        .unwrap();
    let done = s.engine.run(&t.id, RunOptions::default()).await.unwrap();
    assert_eq!(done.status, Status::Failed);
    assert!(
        done.error
            .as_deref()
            .unwrap()
            .contains("stopped after 3 turns without a final report"),
        "{:?}",
        done.error
    );
    assert!(!s.ws.join("todo.md").exists());
}

#[tokio::test]
async fn cancel_mid_step_stops_the_task() {
    let fake = FakeOllama::start(models(), |req| {
        if is_drummer(req) {
            return Reply::Delayed {
                ms: 5_000,
                reply: Box::new(todo_script(req)),
            };
        }
        todo_script(req)
    });
    let s = setup(&fake).await;
    let t = s
        .engine
        .submit(PROMPT, &s.ws, Budgets::default())
        .await
        .unwrap();
    let engine = Arc::new(s.engine);
    let runner = {
        let engine = engine.clone();
        let id = t.id.clone();
        tokio::spawn(async move { engine.run(&id, RunOptions::default()).await })
    };
    // Wait until the drummer's model call is in flight.
    let mut feed = engine.journal().subscribe();
    loop {
        let (id, rec) = feed.recv().await.unwrap();
        if id == t.id && rec.kind == "model_request" && rec.step == "step/0/turn/0" {
            break;
        }
    }
    let started = std::time::Instant::now();
    let cancelled = engine
        .cancel(&t.id, "the user changed their mind")
        .await
        .unwrap();
    assert_eq!(cancelled.status, Status::Cancelled);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "no waiting for the model"
    );
    let done = runner.await.unwrap().unwrap();
    assert_eq!(done.status, Status::Cancelled);
    assert_eq!(done.error.as_deref(), Some("the user changed their mind"));
    assert!(!s.ws.join("todo.md").exists());
    let err = engine.run(&t.id, RunOptions::default()).await.unwrap_err();
    assert!(err.to_string().contains("cancelled"), "{err}");
    let _ = s.home;
}

#[tokio::test]
async fn a_changed_plugin_blocks_resume_unless_allowed() {
    let broken = Arc::new(Mutex::new(true));
    let flag = broken.clone();
    let fake = FakeOllama::start(models(), move |req| {
        if is_answer(req) && *flag.lock().unwrap() {
            return Reply::status(500, "down");
        }
        todo_script(req)
    });
    let s = setup(&fake).await;
    let t = s
        .engine
        .submit(PROMPT, &s.ws, Budgets::default())
        .await
        .unwrap();
    s.engine.run(&t.id, RunOptions::default()).await.unwrap();
    *broken.lock().unwrap() = false;
    // Reinstall belter-fs with another policy: its policy hash changes.
    let policy = PolicySource {
        text: format!("{}\n# changed\n", shipped_policy("belter-fs")),
        name: "changed.toml".into(),
    };
    s.engine
        .registry()
        .install(
            &std::fs::read(artifacts::BELTER_FS).unwrap(),
            Some(&policy),
            None,
            "b",
        )
        .await
        .unwrap();
    let err = s
        .engine
        .run(&t.id, RunOptions::default())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("plugin `belter-fs` changed"),
        "{err}"
    );
    let done = s
        .engine
        .run(
            &t.id,
            RunOptions {
                allow_changed_plugins: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(done.status, Status::Succeeded);
}

/// The history a run killed between `tool`'s intent and its result leaves:
/// runs `prompt` to the end, then copies its records up to and including
/// the first intent to call `tool` into a new task, which it returns.
async fn killed_at_intent(s: &Setup, prompt: &str, tool: &str) -> String {
    let t = s
        .engine
        .submit(prompt, &s.ws, Budgets::default())
        .await
        .unwrap();
    s.engine.run(&t.id, RunOptions::default()).await.unwrap();
    let records = s.engine.journal().records(&t.id).unwrap();
    let cut = records
        .iter()
        .position(|r| r.kind == "tool_intent" && r.data["tool"] == tool)
        .unwrap();
    let copy = s
        .engine
        .submit(prompt, &s.ws, Budgets::default())
        .await
        .unwrap();
    for r in records[2..=cut].iter() {
        let mut data = r.data.clone();
        if let Some(k) = data.get_mut("key") {
            *k = json!(k.as_str().unwrap().replace(&t.id, &copy.id));
        }
        s.engine
            .journal()
            .append(
                &copy.id,
                camina_journal::NewRecord {
                    step: r.step.clone(),
                    kind: r.kind.clone(),
                    data,
                    elapsed_ms: r.elapsed_ms,
                },
                Default::default(),
                camina_journal::Durability::Flush,
            )
            .await
            .unwrap();
    }
    copy.id
}

/// Resumes `task` the way a reviewer who answers `skip` does.
async fn resume_skipping(s: &Setup, task: &str) -> camina_journal::TaskSummary {
    s.engine
        .run(
            task,
            RunOptions {
                interrupted: Some(Decision::Skip),
                ..Default::default()
            },
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn an_interrupted_side_effecting_call_needs_review() {
    // Simulate a crash between the intent and the result of append_file by
    // writing the history a crashed run leaves, then resuming.
    let fake = FakeOllama::start(models(), todo_script);
    let s = setup(&fake).await;
    let copy = killed_at_intent(&s, PROMPT, "append_file").await;
    std::fs::write(s.ws.join("log.txt"), "").unwrap();
    let before = fake.chats().len();
    let done = s.engine.run(&copy, RunOptions::default()).await.unwrap();
    assert_eq!(done.status, Status::NeedsReview);
    assert!(
        done.error.as_deref().unwrap().contains("append_file"),
        "{:?}",
        done.error
    );
    assert_eq!(
        fake.chats().len(),
        before,
        "no model was asked while replaying"
    );
    assert_eq!(
        std::fs::read_to_string(s.ws.join("log.txt")).unwrap(),
        "",
        "not run again"
    );

    let done = resume_skipping(&s, &copy).await;
    assert_eq!(done.status, Status::Succeeded, "{:?}", done.error);
    assert_eq!(
        std::fs::read_to_string(s.ws.join("log.txt")).unwrap(),
        "",
        "skipped, not run"
    );
    let records = s.engine.journal().records(&copy).unwrap();
    let skipped = records
        .iter()
        .find(|r| r.kind == "tool_result" && r.data["error"][0] == "skipped");
    assert!(skipped.is_some(), "the model was told the call was skipped");
}

/// A one-step task whose only call is an append, killed between the
/// append's intent and its result: the reviewer sees the line is there and
/// skips the call. The step did what it was asked (the reviewer says so),
/// so the task succeeds — it must not fail as "made no successful tool
/// call" (it did, in three-node runs where a worker died mid-append).
#[tokio::test]
async fn a_step_whose_only_call_was_skipped_by_the_reviewer_succeeds() {
    const ONLY_APPEND: &str = "Append `collected` to log.txt";
    let script = |req: &Value| {
        if req["model"] == REASONER {
            return Reply::thinking("One append.", "A belter appends the line.");
        }
        if is_triage(req) {
            return Reply::text(&json!({"changes_files": true}).to_string());
        }
        if req["model"] == COORDINATOR && req["format"].to_string().contains("oneOf") {
            return Reply::text(
                &json!({"steps": [{"crew": "belter", "instruction": ONLY_APPEND}]}).to_string(),
            );
        }
        if req["model"] == COORDINATOR {
            return Reply::text(&json!({"answer": "log.txt says collected."}).to_string());
        }
        if since_user(req).is_empty() {
            return Reply::tool_call(
                "append_file",
                json!({"path": "log.txt", "content": "collected\n"}),
            );
        }
        Reply::text("Appended the line.")
    };
    let fake = FakeOllama::start(models(), script);
    let s = setup(&fake).await;
    let copy = killed_at_intent(&s, ONLY_APPEND, "append_file").await;
    // The first run appended; the killed one had appended too before it
    // died (the reviewer finds the line there).
    assert_eq!(
        std::fs::read_to_string(s.ws.join("log.txt")).unwrap(),
        "collected\n"
    );
    let done = s.engine.run(&copy, RunOptions::default()).await.unwrap();
    assert_eq!(done.status, Status::NeedsReview, "{:?}", done.error);

    let done = resume_skipping(&s, &copy).await;
    assert_eq!(done.status, Status::Succeeded, "{:?}", done.error);
    assert_eq!(
        std::fs::read_to_string(s.ws.join("log.txt")).unwrap(),
        "collected\n",
        "skipped, not appended twice"
    );
    let calls: Vec<_> = s
        .engine
        .journal()
        .records(&copy)
        .unwrap()
        .into_iter()
        .filter(|r| r.kind == "tool_result")
        .collect();
    assert_eq!(calls.len(), 1, "the step's only call: {calls:?}");
    assert_eq!(calls[0].data["error"][0], "skipped");
}

/// The README's sample task with every role on the default embedded model
/// (Qwen2.5-Coder 1.5B Instruct), end to end, through the same prompts and
/// plan schema Ollama models get: the reasoner is not consulted (it is the
/// coordinator's own model), the crews call tools in the model's own
/// format, later turns reuse the KV cache of earlier ones, and the outcome
/// is honest: either `succeeded` with todo.md holding both TODO lines, or
/// `failed` with a reason — and the sources are never changed. (Whether the
/// 1.5B model gets it done is measured by `camina eval`, not asserted here;
/// see project_plan.md.) Decoding is greedy: the run is the same each time
/// on a given CPU.
#[cfg(feature = "embedded")]
#[tokio::test]
async fn the_embedded_model_runs_the_readme_sample_task_honestly() {
    let gguf = ModelSpec::Embedded(camina_model::config::EmbeddedModel::File(
        crate::embedded::gguf(),
    ));
    let s = setup_with(Config {
        models: ModelsSection::all(gguf),
        ..Default::default()
    })
    .await;
    let before: Vec<(std::path::PathBuf, String)> = ["src/main.rs", "src/lib.rs"]
        .iter()
        .map(|p| (s.ws.join(p), std::fs::read_to_string(s.ws.join(p)).unwrap()))
        .collect();
    let engine = &s.engine;
    let task = engine
        .submit(PROMPT, &s.ws, Budgets::default())
        .await
        .unwrap();
    let done = engine.run(&task.id, RunOptions::default()).await.unwrap();
    let records = engine.journal().records(&task.id).unwrap();
    let trace: Vec<String> = records
        .iter()
        .filter(|r| {
            matches!(
                r.kind.as_str(),
                "plan" | "tool_intent" | "tool_result" | "answer"
            )
        })
        .map(|r| format!("{} {}", r.kind, r.data))
        .collect();
    eprintln!("{:?} {:?}\n{trace:#?}", done.status, done.error);
    let todo = std::fs::read_to_string(s.ws.join("todo.md")).unwrap_or_default();
    let has_both = ["TODO: write docs", "TODO: parse args"]
        .iter()
        .all(|l| todo.contains(l));
    match done.status {
        Status::Succeeded => assert!(has_both, "succeeded, but todo.md is {todo:?}\n{trace:#?}"),
        Status::Failed => assert!(
            done.error.as_deref().is_some_and(|e| !e.is_empty()),
            "a failure says why"
        ),
        other => panic!("{other:?}: {:?}", done.error),
    }
    for (path, text) in before {
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            text,
            "{}",
            path.display()
        );
    }

    let setup = records.iter().find(|r| r.kind == "setup").unwrap();
    assert_eq!(setup.data["consult"], false, "{}", setup.data);
    assert!(!records.iter().any(|r| r.step == "reasoner"));

    // Prompt tokens sent vs evaluated are journaled, and some turn
    // evaluated only part of its prompt.
    let replies: Vec<&Value> = records
        .iter()
        .filter(|r| r.kind == "model_reply")
        .map(|r| &r.data["reply"])
        .collect();
    assert!(replies.iter().all(|r| r["prompt_eval_tokens"].is_u64()));
    assert!(
        replies
            .iter()
            .any(|r| r["prompt_eval_tokens"].as_u64() < r["prompt_tokens"].as_u64()),
        "no prefix was reused: {replies:#?}"
    );
}
