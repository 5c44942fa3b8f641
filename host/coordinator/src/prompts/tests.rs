//! The prompts' tests: plan and answer parsing, the one-crew rule, hints.

use super::*;
use crate::toolbox::Crew;
use camina_model::Role;

fn crews() -> Vec<Crew> {
    vec![
        Crew::empty(CrewKind::Belter),
        Crew::empty(CrewKind::Drummer),
    ]
}

#[test]
fn plans_are_checked() {
    let c = crews();
    assert!(
        parse_plan(
            r#"{"steps":[{"crew":"belter","instruction":"write x"}]}"#,
            &c,
            8
        )
        .is_ok()
    );
    assert!(parse_plan(r#"{"answer":"42"}"#, &c, 8).is_ok());
    assert!(parse_plan(r#"{"answer":"42","done":true}"#, &c, 8).is_ok());
    for (bad, why) in [
        ("nope", "not JSON"),
        (r#"{"steps":[]}"#, "no steps"),
        (
            r#"{"steps":[{"crew":"pilot","instruction":"fly"}]}"#,
            "unknown crew",
        ),
        (
            r#"{"steps":[{"crew":"belter","instruction":" "}]}"#,
            "empty",
        ),
        (r#"{"steps":[{"crew":"belter"}]}"#, "not a plan"),
    ] {
        let e = parse_plan(bad, &c, 8).unwrap_err();
        assert!(e.contains(why), "{bad}: {e}");
    }
}

#[test]
fn plan_instructions_written_as_tool_calls_are_sent_back() {
    let mut c = crews();
    c[0].tools.push(crate::toolbox::CrewTool {
        function: "read_file".into(),
        plugin: "belter-fs".into(),
        tool: "read_file".into(),
        description: "Read a text file. More.".into(),
        parameters: json!({"type": "object"}).into(),
    });
    for bad in [
        "read_file(README.md); write it to a.txt",
        "read_file README.md",
        "Read_File notes.txt",
        "then call read_file(x)",
    ] {
        let plan = json!({"steps": [{"crew": "belter", "instruction": bad}]}).to_string();
        let e = parse_plan(&plan, &c, 8).unwrap_err();
        assert!(e.contains("written as a `read_file` call"), "{bad}: {e}");
    }
    for good in [
        "Read README.md and write its first line to title.txt",
        "read_files_list.txt holds the names; copy it",
        "Use the read_file tool on notes.txt",
    ] {
        let plan = json!({"steps": [{"crew": "belter", "instruction": good}]}).to_string();
        assert!(parse_plan(&plan, &c, 8).is_ok(), "{good}");
    }
    // The planner is told what the crews are for, neither their
    // function names nor their tools' descriptions (it copies those).
    let req = plan_request_text(&c);
    assert!(
        req.contains("- belter: makes the changes")
            && !req.contains("read_file")
            && !req.contains("Read a text file"),
        "{req}"
    );
}

fn plan_request_text(c: &[Crew]) -> String {
    plan("t", &[], "", c, 8).messages[0].content.clone()
}

#[test]
fn consecutive_steps_of_one_crew_are_one_step() {
    let c = crews();
    let plan = parse_plan(
        r#"{"steps":[
            {"crew":"belter","instruction":"Read config.py"},
            {"crew":"belter","instruction":"change MAX_USERS to 25."},
            {"crew":"drummer","instruction":"Check the result"},
            {"crew":"belter","instruction":"Report"}]}"#,
        &c,
        8,
    )
    .unwrap();
    let steps: Vec<(&str, &str)> = plan
        .steps
        .iter()
        .map(|s| (s.crew.as_str(), s.instruction.as_str()))
        .collect();
    assert_eq!(
        steps,
        [
            ("belter", "Read config.py. Then change MAX_USERS to 25."),
            ("drummer", "Check the result"),
            ("belter", "Report"),
        ]
    );
}

#[test]
fn a_crew_sees_the_named_files_the_task_and_its_part() {
    let c = crews();
    let attached = vec![(
        "notes.txt".to_owned(),
        "{\"size\":3}\ncontent:\nhi\n".to_owned(),
    )];
    let m = crew_messages(
        &c[0],
        "Fix notes.txt",
        "Fix notes.txt",
        &["notes.txt".into()],
        &attached,
        &[],
    );
    let user = &m[1].content;
    assert!(
        user.contains("Files in the workspace when the task started:\nnotes.txt"),
        "{user}"
    );
    assert!(
        user.contains("[notes.txt]\n{\"size\":3}\ncontent:\nhi\n[end of notes.txt]"),
        "{user}"
    );
    // The task last; the instruction only when it says something else.
    assert!(user.ends_with("The user's task: Fix notes.txt\n"), "{user}");
    let m = crew_messages(&c[0], "Fix notes.txt", "Read notes.txt", &[], &[], &[]);
    assert!(
        m[1].content
            .ends_with("Your part, from the coordinator: Read notes.txt\n")
    );
}

#[test]
fn every_crew_turn_is_a_call_and_the_first_cannot_finish() {
    let c = crews();
    let first = crew_request(Vec::new(), &c[0], true);
    assert_eq!(first.tool_choice, ToolChoice::Required);
    assert_eq!(first.unavailable, ["finish"]);
    assert!(first.tools.iter().any(|t| t.name == "finish"));
    let later = crew_request(Vec::new(), &c[0], false);
    assert!(later.unavailable.is_empty());
    // Declared the same way on every turn: one cached prefix.
    assert_eq!(first.tools, later.tools);
}

#[test]
fn answers_say_whether_the_task_was_done() {
    assert_eq!(
        parse_answer(r#"{"answer":"done"}"#).unwrap(),
        ("done".into(), true)
    );
    assert_eq!(
        parse_answer(r#"{"answer":"no such file","done":false}"#).unwrap(),
        ("no such file".into(), false)
    );
    assert!(parse_answer(r#"{"answer":"x","done":"yes"}"#).is_err());
    assert!(parse_answer(r#"{"answer":""}"#).is_err());
    assert!(parse_answer("done").is_err());
}

#[test]
fn system_turns_hold_no_task_so_prefixes_are_shared() {
    let c = crews();
    let a = plan("Create a.txt", &["x.txt".into()], "", &c, 8);
    let b = plan("Delete b.txt", &[], "", &c, 8);
    assert_eq!(a.messages[0], b.messages[0]);
    assert_eq!(
        a.messages.iter().map(|m| m.role).collect::<Vec<_>>(),
        [Role::System, Role::User]
    );
    assert!(a.messages[1].content.contains("Create a.txt"));
    let x = crew_messages(&c[0], "t1", "i1", &[], &[], &[]);
    let y = crew_messages(&c[0], "t2", "i2", &["a.txt".into()], &[], &[]);
    assert_eq!(x[0], y[0]);
    assert!(y[1].content.contains("t2") && y[1].content.contains("i2"));
    let p = answer("t", &[], false);
    let q = answer("u", &[], false);
    assert_eq!(p.messages[0], q.messages[0]);
}

#[test]
fn failed_steps_are_marked_for_later_prompts() {
    let results = vec![(
        "Rename a.txt".to_owned(),
        StepFinished {
            index: 0,
            result: "error".into(),
            complete: false,
            failure: Some("move_path failed: not found".into()),
            changes: Vec::new(),
        },
    )];
    let req = answer("Rename a.txt to b.txt", &results, false);
    assert!(
        req.messages[1]
            .content
            .contains("Step 1 (Rename a.txt) [FAILED: move_path failed: not found]"),
        "{}",
        req.messages[1].content
    );
    assert!(
        req.messages[1].content.ends_with(
            "Changes made to the workspace (from the tool calls): none.\n\nThe user's \
             task: Rename a.txt to b.txt"
        ),
        "{}",
        req.messages[1].content
    );
}

#[test]
fn a_missing_path_points_at_the_file_of_that_name() {
    let files: Vec<String> = ["app.py", "logs/", "server.log", "logs/error.log"]
        .map(String::from)
        .to_vec();
    assert_eq!(
        elsewhere("logs/server.log", &files, &[]).as_deref(),
        Some("\n(There is no logs/server.log; the workspace has server.log.)")
    );
    assert_eq!(
        elsewhere("./error.log", &files, &[]).as_deref(),
        Some("\n(There is no error.log; the workspace has logs/error.log.)")
    );
    // Nothing of that name, or the path itself: no hint.
    assert_eq!(elsewhere("notes.txt", &files, &[]), None);
    assert_eq!(elsewhere("server.log", &files, &[]), None);
    assert_eq!(elsewhere("", &files, &[]), None);
    // A file the task is to make, looked for in another directory.
    let outputs = ["todo.md".to_owned()];
    assert_eq!(
        elsewhere("logs/todo.md", &files, &outputs).as_deref(),
        Some("\n(There is no logs/todo.md; the task names todo.md, which does not exist yet.)")
    );
    assert_eq!(elsewhere("todo.md", &files, &outputs), None);
    assert_eq!(
        left_out(&["server.log".into()]),
        "Not finished: this path (relative to the workspace) also matches what the task \
         asks for and was not changed: server.log. Do the same for it now if the task \
         asks you to."
    );
}

#[test]
fn a_task_for_one_crew_needs_no_plan() {
    let c = crews();
    let step = |t: &str, change: Option<bool>| one_crew(t, change, &c).map(|s| s.crew);
    assert_eq!(
        step("Delete the .tmp files.", Some(true)),
        Some(CrewKind::Belter)
    );
    assert_eq!(
        one_crew("Delete the .tmp files.", Some(true), &c)
            .unwrap()
            .instruction,
        "Delete the .tmp files."
    );
    assert_eq!(
        step("How many lines does crew.txt have?", Some(false)),
        Some(CrewKind::Drummer)
    );
    // The web needs a drummer, files a belter: planned.
    assert_eq!(
        step("Download https://example.com/a.csv into a.csv", Some(true)),
        None
    );
    // A question about nothing in the workspace, or an unknown triage.
    assert_eq!(step("What is 12 times 12?", Some(false)), None);
    assert_eq!(step("Tidy up", None), None);
    // No crew of that kind installed.
    assert_eq!(
        one_crew(
            "Delete a.tmp",
            Some(true),
            &[Crew::empty(CrewKind::Drummer)]
        ),
        None
    );
}
