//! The host's guards on a crew's calls, end to end: made-up text is not
//! written, a question changes nothing, sources and kept files are not
//! overwritten, blind overwrites wait for a read, "nothing changed" is not
//! done.

use crate::scripts::*;
use camina_coordinator::RunOptions;
use camina_coordinator::events::Budgets;
use camina_journal::Status;
use fake_ollama::{FakeOllama, Reply};
use serde_json::json;

#[tokio::test]
async fn text_made_up_instead_of_read_is_not_written() {
    // Refused before it runs, with the lines named; a crew that then looks
    // inside writes the real lines, one that does not leaves the task
    // failed (and no file behind).
    let prompt = "Collect every TODO line under src/ into todo.md";
    for then_search in [false, true] {
        let fake = FakeOllama::start(
            models(),
            one_step_script("belter", true, inventing_belter(then_search)),
        );
        let s = setup(&fake).await;
        let t = s
            .engine
            .submit(prompt, &s.ws, Budgets::default())
            .await
            .unwrap();
        let done = s.engine.run(&t.id, RunOptions::default()).await.unwrap();
        let records = s.engine.journal().records(&t.id).unwrap();
        let refused = records.iter().find(|r| r.kind == "tool_refused").unwrap();
        assert_eq!(
            refused.data["invented"],
            json!(["- [ ] Implement feature A", "- [ ] Fix bug B"]),
            "{}",
            refused.data
        );
        assert!(told(
            &fake,
            "this text is not in the task or in anything you have read"
        ));
        if then_search {
            assert_eq!(done.status, Status::Succeeded, "{:?}", done.error);
            assert_eq!(
                std::fs::read_to_string(s.ws.join("todo.md")).unwrap(),
                "// TODO: write docs\n// TODO: parse args\n"
            );
        } else {
            assert_eq!(done.status, Status::Failed);
            assert!(
                done.error
                    .as_deref()
                    .unwrap_or_default()
                    .contains("todo.md"),
                "{:?}",
                done.error
            );
            assert!(!s.ws.join("todo.md").exists());
        }
    }
}

#[tokio::test]
async fn a_question_cannot_change_files() {
    // The triage says the task only asks; the belter tries to "tidy up"
    // anyway: refused before it runs, and the answer still comes.
    let fake = FakeOllama::start(
        models(),
        one_step_script("belter", false, |_, made| match made {
            0 => Reply::tool_call(
                "write_file",
                json!({"path": "src/main.rs", "content": "", "overwrite": true}),
            ),
            _ => finish("src/main.rs has one TODO."),
        }),
    );
    let s = setup(&fake).await;
    let before = std::fs::read_to_string(s.ws.join("src/main.rs")).unwrap();
    let t = s
        .engine
        .submit(
            "How many TODO lines does src/main.rs have?",
            &s.ws,
            Budgets::default(),
        )
        .await
        .unwrap();
    let done = s.engine.run(&t.id, RunOptions::default()).await.unwrap();
    assert_eq!(done.status, Status::Succeeded, "{:?}", done.error);
    assert_eq!(
        std::fs::read_to_string(s.ws.join("src/main.rs")).unwrap(),
        before
    );
    let records = s.engine.journal().records(&t.id).unwrap();
    let intents: Vec<&str> = records
        .iter()
        .filter(|r| r.kind == "tool_intent")
        .map(|r| r.data["tool"].as_str().unwrap())
        .collect();
    assert_eq!(
        intents,
        ["read_file"],
        "only the read made for the crew ran"
    );
    let refused = records.iter().find(|r| r.kind == "tool_refused").unwrap();
    assert_eq!(refused.data["question"], true);
    // The crew was shown the file the task names before its first turn.
    let first = fake
        .chats()
        .into_iter()
        .find(|c| offers(c, "write_file"))
        .unwrap();
    assert!(
        last_user(&first).contains("[src/main.rs]")
            && last_user(&first).contains("TODO: parse args"),
        "{}",
        last_user(&first)
    );
}

#[tokio::test]
async fn an_agent_cannot_edit_the_file_it_copies_from() {
    // "Copy … of src/lib.rs into notes.md": src/lib.rs is the source. A
    // belter that edits it is refused; the copy it then writes is done.
    let fake = FakeOllama::start(
        models(),
        one_step_script("belter", true, |_, made| match made {
            0 => Reply::tool_call(
                "edit_file",
                json!({"path": "src/lib.rs", "old_text": "TODO", "new_text": "DONE"}),
            ),
            1 => Reply::tool_call(
                "write_file",
                json!({"path": "notes.md", "content": "// TODO: write docs\n"}),
            ),
            _ => finish("Copied."),
        }),
    );
    let s = setup(&fake).await;
    let before = std::fs::read_to_string(s.ws.join("src/lib.rs")).unwrap();
    let t = s
        .engine
        .submit(
            "Copy the first line of src/lib.rs into notes.md",
            &s.ws,
            Budgets::default(),
        )
        .await
        .unwrap();
    let done = s.engine.run(&t.id, RunOptions::default()).await.unwrap();
    assert_eq!(done.status, Status::Succeeded, "{:?}", done.error);
    assert_eq!(
        std::fs::read_to_string(s.ws.join("src/lib.rs")).unwrap(),
        before
    );
    assert_eq!(
        std::fs::read_to_string(s.ws.join("notes.md")).unwrap(),
        "// TODO: write docs\n"
    );
    refused_and_told(
        &s.engine,
        &t.id,
        &fake,
        "source",
        "the task reads from src/lib.rs",
    );
}

#[tokio::test]
async fn overwriting_a_file_the_task_says_to_keep_is_refused() {
    // "… unless it already exists": it exists. The belter overwrites it
    // anyway (as a small model does after write_file's "pass overwrite");
    // refused, and leaving it as it is is what the task asked for.
    let fake = FakeOllama::start(
        models(),
        one_step_script("belter", true, |_, made| match made {
            0 => Reply::tool_call(
                "write_file",
                json!({"path": "hello.txt", "content": "Hello", "overwrite": true}),
            ),
            _ => finish("Left hello.txt as it is."),
        }),
    );
    let s = setup(&fake).await;
    std::fs::write(s.ws.join("hello.txt"), "Bonjour\n").unwrap();
    let t = s
        .engine
        .submit(
            "Create hello.txt containing Hello, unless it already exists.",
            &s.ws,
            Budgets::default(),
        )
        .await
        .unwrap();
    let done = s.engine.run(&t.id, RunOptions::default()).await.unwrap();
    assert_eq!(done.status, Status::Succeeded, "{:?}", done.error);
    assert_eq!(
        std::fs::read_to_string(s.ws.join("hello.txt")).unwrap(),
        "Bonjour\n"
    );
    refused_and_told(
        &s.engine,
        &t.id,
        &fake,
        "kept",
        "the task says to leave it as it is",
    );
}

#[tokio::test]
async fn a_change_task_that_changes_nothing_is_not_done() {
    // The belter only reads and claims success; it is told once that
    // nothing changed, claims again: the task ends failed, not succeeded.
    let fake = FakeOllama::start(
        models(),
        one_step_script("belter", true, |_, made| match made {
            0 => Reply::tool_call("read_file", json!({"path": "src/lib.rs"})),
            _ => finish("I changed TODO to DONE in src/lib.rs."),
        }),
    );
    let s = setup(&fake).await;
    let t = s
        .engine
        .submit(
            "In src/lib.rs, change TODO to DONE",
            &s.ws,
            Budgets::default(),
        )
        .await
        .unwrap();
    let done = s.engine.run(&t.id, RunOptions::default()).await.unwrap();
    assert_eq!(done.status, Status::Failed);
    assert!(
        done.error
            .as_deref()
            .unwrap()
            .contains("the task asks for changes to files, and no tool call made one"),
        "{:?}",
        done.error
    );
    let objected = fake.chats().iter().any(|c| {
        c["messages"].as_array().unwrap().iter().any(|m| {
            m["role"] == "user"
                && m["content"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("Not finished: no file has been changed yet")
        })
    });
    assert!(objected, "the crew was told nothing changed");
}

#[tokio::test]
async fn a_blind_overwrite_is_refused_until_the_file_is_read() {
    // The task names no file, so nothing is read for the crew: its edit of
    // an existing file it never read is refused; after reading, it runs.
    let fake = FakeOllama::start(
        models(),
        one_step_script("belter", true, |_, made| match made {
            0 => Reply::tool_call(
                "edit_file",
                json!({"path": "src/lib.rs", "old_text": "TODO", "new_text": "DONE"}),
            ),
            1 => Reply::tool_call("read_file", json!({"path": "src/lib.rs"})),
            2 => Reply::tool_call(
                "edit_file",
                json!({"path": "src/lib.rs", "old_text": "TODO: write docs", "new_text": "DONE: write docs"}),
            ),
            _ => finish("Marked the TODO done."),
        }),
    );
    let s = setup(&fake).await;
    let t = s
        .engine
        .submit(
            "Mark the documentation TODO as done",
            &s.ws,
            Budgets::default(),
        )
        .await
        .unwrap();
    let done = s.engine.run(&t.id, RunOptions::default()).await.unwrap();
    assert_eq!(done.status, Status::Succeeded, "{:?}", done.error);
    assert_eq!(
        std::fs::read_to_string(s.ws.join("src/lib.rs")).unwrap(),
        "// DONE: write docs\npub fn f() {}\n"
    );
    let records = s.engine.journal().records(&t.id).unwrap();
    let refused: Vec<_> = records
        .iter()
        .filter(|r| r.kind == "tool_refused")
        .collect();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].data["not_read"], true);
}
