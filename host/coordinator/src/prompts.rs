//! What each role is told, and the JSON schemas of the coordinator's
//! decisions. One protocol for every backend: the same role prompts, the
//! same `{"steps":[…]}` plan schema and the same tool definitions go to an
//! Ollama model and to an embedded one (which declares and calls the tools
//! in its own chat template's format).
//!
//! The prompts are generic: no worked examples, nothing fitted to a task.
//! System turns hold only what is the same for every task of a role (the
//! role, its crews or tools, the reply format), so a backend that caches
//! prompt prefixes evaluates them once; the task comes in the user turn.

use crate::events::{Plan, StepFinished};
use crate::toolbox::Crew;
use camina_model::{ChatRequest, Message, Options, ToolChoice};
use serde_json::{Value, json};

/// Longest instruction and answer the schemas allow.
const MAX_INSTRUCTION: u64 = 400;
const MAX_ANSWER: u64 = 2000;
/// How much of a step's result later prompts see.
pub const RESULT_CAP: usize = 6000;

fn deterministic(num_predict: u32) -> Options {
    Options {
        temperature: Some(0.0),
        seed: Some(42),
        num_predict: Some(num_predict),
        ..Default::default()
    }
}

/// The crews as the reasoner and the planner see them: what each can do,
/// in words. The tools' function names are the crews' business; a planner
/// shown them writes its instructions as calls.
fn crew_lines(crews: &[Crew]) -> String {
    crews
        .iter()
        .map(|c| {
            let tools: Vec<String> = c
                .tools
                .iter()
                .map(|t| first_sentence(&t.description).to_lowercase())
                .collect();
            format!(
                "- {} ({}). It can: {}",
                c.name,
                c.purpose(),
                tools.join("; ")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The tool a plan instruction is written as, if it is one: it starts with
/// a tool's function name or calls one (`read_file(…)`). The crew decides
/// its calls; an instruction says what to achieve.
fn tool_call_in(instruction: &str, crews: &[Crew]) -> Option<String> {
    let text = instruction.trim_start().to_lowercase();
    crews
        .iter()
        .flat_map(|c| c.tools.iter().map(|t| t.function.to_lowercase()))
        .find(|f| {
            let starts = text
                .strip_prefix(f.as_str())
                .is_some_and(|rest| !rest.starts_with(|c: char| c.is_alphanumeric() || c == '_'));
            starts || text.contains(&format!("{f}("))
        })
}

fn first_sentence(s: &str) -> &str {
    s.split_inclusive(". ")
        .next()
        .unwrap_or(s)
        .trim_end_matches(". ")
        .trim_end_matches('.')
}

/// Step 1: the reasoner's advice (thinking on where the model can).
pub fn reasoner(task: &str, workspace: &str, crews: &[Crew], think: bool) -> ChatRequest {
    let messages = vec![
        Message::system(format!(
            "You are the reasoner behind a coordinator of worker crews. Think about how the \
             user's task can be done with the crews below. Give short, concrete advice: which \
             crew should do what, in which order, and what could go wrong. Do not do the task \
             yourself.\nCrews:\n{}",
            crew_lines(crews)
        )),
        Message::user(format!("Task: {task}\nWorkspace: {workspace}")),
    ];
    ChatRequest {
        messages,
        think,
        // A thinking model spends its budget on the thinking first
        // (deepseek-r1 easily uses a thousand tokens before answering).
        options: deterministic(if think { 2048 } else { 300 }),
        ..Default::default()
    }
}

/// The plan's JSON schema: steps for the installed crews, or an answer.
pub fn plan_schema(crews: &[Crew], max_steps: u32) -> Value {
    let names: Vec<&str> = crews.iter().map(|c| c.name.as_str()).collect();
    json!({
        "oneOf": [
            {
                "type": "object",
                "properties": {
                    "steps": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": max_steps,
                        "items": {
                            "type": "object",
                            "properties": {
                                "crew": {"enum": names},
                                "instruction": {"type": "string", "minLength": 1, "maxLength": MAX_INSTRUCTION}
                            },
                            "required": ["crew", "instruction"]
                        }
                    }
                },
                "required": ["steps"]
            },
            answer_schema()
        ]
    })
}

/// Step 2: the plan.
pub fn plan(
    task: &str,
    files: &[String],
    advice: &str,
    crews: &[Crew],
    max_steps: u32,
) -> ChatRequest {
    let system = format!(
        "You are Caminaå, the coordinator of worker crews. The user's task is about the files \
         of a workspace; you cannot see or change them yourself: your crews do the work with \
         their tools.\nCrews:\n{}\n\nPlan the task. Reply with JSON only:\n\
         {{\"steps\": [{{\"crew\": \"<crew>\", \"instruction\": \"<what to do>\"}}]}}: the jobs, \
         in the order they must happen. Use as few steps as the task needs (usually one): a \
         crew does a whole job with several tool calls, and each step sees the results of the \
         steps before it. Only belters change files. An instruction is an English sentence \
         addressed to the crew, not code and not a tool call: it says what to do, with every \
         file name, text and value of the task copied exactly, and what to report back.\n\
         Or {{\"answer\": \"<text>\", \"done\": true}} only when the task needs no file, search \
         or web page at all. A question about the workspace's files needs steps: never answer \
         it from memory.",
        crew_lines(crews)
    );
    let mut user = String::new();
    if !files.is_empty() {
        user.push_str(&format!(
            "Files in the workspace:\n{}\n\n",
            files.join("\n")
        ));
    }
    let advice = advice.trim();
    if !advice.is_empty() {
        user.push_str(&format!("Advice: {advice}\n\n"));
    }
    user.push_str(&format!("Task: {task}"));
    ChatRequest {
        messages: vec![Message::system(system), Message::user(user)],
        format: Some(plan_schema(crews, max_steps)),
        options: deterministic(512),
        ..Default::default()
    }
}

/// Checks a plan reply against the schema's rules; the reason is shown to
/// the model on retry.
pub fn parse_plan(content: &str, crews: &[Crew], max_steps: u32) -> Result<Plan, String> {
    let value: Value =
        serde_json::from_str(content.trim()).map_err(|e| format!("not JSON ({e})"))?;
    let plan: Plan = serde_json::from_value(value).map_err(|e| format!("not a plan ({e})"))?;
    match (&plan.answer, plan.steps.is_empty()) {
        (Some(a), true) if !a.trim().is_empty() => return Ok(plan),
        (Some(_), false) => return Err("give either steps or an answer, not both".into()),
        (_, true) => return Err("the plan has no steps and no answer".into()),
        _ => {}
    }
    if plan.steps.len() > max_steps as usize {
        return Err(format!("at most {max_steps} steps"));
    }
    for (i, s) in plan.steps.iter().enumerate() {
        if !crews.iter().any(|c| c.name == s.crew) {
            let names: Vec<&str> = crews.iter().map(|c| c.name.as_str()).collect();
            return Err(format!(
                "step {}: unknown crew `{}` (crews: {})",
                i + 1,
                s.crew,
                names.join(", ")
            ));
        }
        if s.instruction.trim().is_empty() {
            return Err(format!("step {}: the instruction is empty", i + 1));
        }
        if let Some(tool) = tool_call_in(&s.instruction, crews) {
            return Err(format!(
                "step {}: the instruction is written as a `{tool}` call; write it as an \
                 English sentence saying what the crew must achieve (the crew chooses its own \
                 tool calls)",
                i + 1
            ));
        }
    }
    Ok(plan)
}

/// The corrective turn after invalid output.
pub fn correction(reason: &str) -> Message {
    Message::user(format!(
        "That reply was not valid: {reason}. Reply again with only the JSON, following the format."
    ))
}

/// The results of earlier steps, as later prompts see them.
fn earlier(results: &[(String, StepFinished)]) -> String {
    if results.is_empty() {
        return "(none)".into();
    }
    results
        .iter()
        .map(|(instruction, r)| {
            let status = match &r.failure {
                Some(why) => format!(" [FAILED: {why}]"),
                None if !r.complete => " [NOT FINISHED]".to_owned(),
                None => String::new(),
            };
            format!(
                "Step {} ({instruction}){status}:\n{}",
                r.index + 1,
                r.result
            )
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// A step's result as later prompts see it: the crew's report plus the
/// evidence of its tool calls (`call args → output`), capped.
pub fn compose(report: &str, evidence: &[String]) -> String {
    let mut out = report.to_owned();
    if !evidence.is_empty() {
        out.push_str("\nTool calls:");
        for e in evidence {
            out.push_str("\n- ");
            out.push_str(e);
        }
    }
    if out.len() > RESULT_CAP {
        let mut end = RESULT_CAP;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        out.push('…');
    }
    out
}

/// One piece of evidence: a call and what it returned.
pub fn evidence(function: &str, arguments: &Value, output: &str) -> String {
    format!("{function} {arguments} → {output}")
}

/// Step 3: a crew's opening messages. The system turn is the same for
/// every task of the crew; the task, earlier results and the instruction
/// come in the user turn.
pub fn crew_messages(
    crew: &Crew,
    task: &str,
    instruction: &str,
    results: &[(String, StepFinished)],
) -> Vec<Message> {
    let system = format!(
        "You are a {} of Caminaå's crew: {}. Carry out your instruction \
         (your part of the user's task) with your tools: one call at a time, reading each result before the next call. \
         Paths are relative to the workspace. Work only on the files the task names, and write \
         exactly the text it asks for, nothing more. Do not guess what a file holds: read it. \
         Once the work is done, or cannot be done, stop calling tools and reply in plain \
         words: what you did, what you found (quote the exact text later steps need), and \
         anything that could not be done, with the reason.",
        crew.member(),
        crew.purpose()
    );
    let mut user = String::new();
    if !results.is_empty() {
        user.push_str(&format!(
            "Results of earlier steps:\n{}\n\n",
            earlier(results)
        ));
    }
    user.push_str(&format!(
        "The user's task: {task}\n\nYour instruction from the coordinator (your part of that \
         task): {instruction}"
    ));
    vec![Message::system(system), Message::user(user)]
}

/// A crew's turn. `must_call`: the reply has to be a tool call (a crew's
/// first turn, and the turn after it was told it had done nothing: a step
/// without a call did nothing, whatever its text says).
pub fn crew_request(messages: Vec<Message>, crew: &Crew, must_call: bool) -> ChatRequest {
    ChatRequest {
        messages,
        tools: crew.specs(),
        tool_choice: if must_call {
            ToolChoice::Required
        } else {
            ToolChoice::Auto
        },
        options: deterministic(1024),
        ..Default::default()
    }
}

/// The answer's schema. `done` says whether the task was carried out.
pub fn answer_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "answer": {"type": "string", "minLength": 1, "maxLength": MAX_ANSWER},
            "done": {"type": "boolean"}
        },
        "required": ["answer", "done"]
    })
}

/// What the steps' calls changed, as the host saw it (not as the crews
/// reported it).
fn changes(results: &[(String, StepFinished)]) -> String {
    let all: Vec<&str> = results
        .iter()
        .flat_map(|(_, r)| r.changes.iter().map(String::as_str))
        .collect();
    if all.is_empty() {
        "Changes made to the workspace (from the tool calls): none.".to_owned()
    } else {
        format!(
            "Changes made to the workspace (from the tool calls): {}.",
            all.join("; ")
        )
    }
}

/// The corrective turn for a crew that answered without using its tools:
/// a step with no tool call did nothing.
pub fn use_your_tools() -> Message {
    Message::user(
        "You have not called any tool, so nothing was done yet. Do the instruction now with \
         your tools (one call), or, if it truly cannot be done with them, say why.",
    )
}

/// The reminder for a belter that stops while paths the task names are
/// still not made.
pub fn not_made_yet(paths: &[String]) -> Message {
    let names: Vec<String> = paths
        .iter()
        .map(|p| {
            if crate::scope::has_extension(p) {
                format!("the file {p}, which has not been written yet")
            } else {
                format!("{p}, which does not exist yet")
            }
        })
        .collect();
    Message::user(format!(
        "The task names {}. If making it is part of your instruction, do that now with \
         your tools; otherwise reply with your report.",
        names.join("; ")
    ))
}

/// The corrective turn for a crew that stopped right after a failed call.
pub fn put_it_right(error: &str) -> Message {
    Message::user(format!(
        "Your last tool call failed: {error}. The work is not done. Put it right with your \
         tools if you can (check the real names and paths first), or, if it truly cannot be \
         done, say why."
    ))
}

/// Step 4: the final answer, and whether the task was done.
pub fn answer(task: &str, results: &[(String, StepFinished)]) -> ChatRequest {
    let system = "You are Caminaå, the coordinator. Your crews have worked on the user's task; \
        their reports and tool calls are below. Write the final answer for the user from them: \
        what was done, and what was found, with the exact facts the results show (never \
        invented ones). Reply with JSON only: {\"answer\": \"<text>\", \"done\": <true|false>}. \
        \"done\" is true only when the results show that everything the task asked for was \
        carried out; when a step failed, a tool reported an error that was not put right, or \
        something the task asked for is missing, \"done\" is false and the answer says what \
        is missing.";
    ChatRequest {
        messages: vec![
            Message::system(system),
            Message::user(format!(
                "Task: {task}\n\nStep results:\n{}\n\n{}",
                earlier(results),
                changes(results)
            )),
        ],
        format: Some(answer_schema()),
        options: deterministic(768),
        ..Default::default()
    }
}

/// The answer and whether the task was done (a missing `done` is true, so
/// models scripted with `{"answer": …}` keep working).
pub fn parse_answer(content: &str) -> Result<(String, bool), String> {
    let value: Value =
        serde_json::from_str(content.trim()).map_err(|e| format!("not JSON ({e})"))?;
    let done = match value.get("done") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(other) => return Err(format!("\"done\" must be true or false, not {other}")),
    };
    match value.get("answer").and_then(Value::as_str) {
        Some(a) if !a.trim().is_empty() => Ok((a.to_owned(), done)),
        _ => Err("no non-empty \"answer\" string".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::toolbox::Crew;
    use camina_model::Role;

    fn crews() -> Vec<Crew> {
        vec![Crew::empty("belter"), Crew::empty("drummer")]
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
            parameters: json!({"type": "object"}),
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
        // The planner is told what the crews can do, not their function names.
        let req = plan_request_text(&c);
        assert!(
            req.contains("read a text file") && !req.contains("read_file"),
            "{req}"
        );
    }

    fn plan_request_text(c: &[Crew]) -> String {
        plan("t", &[], "", c, 8).messages[0].content.clone()
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
        let x = crew_messages(&c[0], "t1", "i1", &[]);
        let y = crew_messages(&c[0], "t2", "i2", &[]);
        assert_eq!(x[0], y[0]);
        assert!(y[1].content.contains("t2") && y[1].content.contains("i2"));
        let p = answer("t", &[]);
        let q = answer("u", &[]);
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
        let req = answer("Rename a.txt to b.txt", &results);
        assert!(
            req.messages[1]
                .content
                .contains("Step 1 (Rename a.txt) [FAILED: move_path failed: not found]"),
            "{}",
            req.messages[1].content
        );
        assert!(
            req.messages[1]
                .content
                .ends_with("Changes made to the workspace (from the tool calls): none."),
            "{}",
            req.messages[1].content
        );
    }
}
