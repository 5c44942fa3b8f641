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

use crate::events::{Plan, PlanStep, StepFinished};
use crate::toolbox::{Crew, CrewKind};
use camina_model::{ChatRequest, Message, Options, ToolChoice, ToolSpec};
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

/// The crews as the reasoner and the planner see them: what each is for,
/// in words. Neither the tools' function names nor their descriptions: a
/// planner shown them writes its instructions as calls, or copies the
/// descriptions in place of the job.
fn crew_lines(crews: &[Crew]) -> String {
    crews
        .iter()
        .map(|c| format!("- {}: {}", c.name, c.purpose()))
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

/// Step 1b: what kind of task it is. Asked on its own because a small
/// model answers this one question reliably where it cannot judge, after
/// the work, whether the work was done.
pub fn triage(task: &str) -> ChatRequest {
    ChatRequest {
        messages: vec![
            Message::system(
                "Classify the user's task. Reply with JSON only: {\"changes_files\": true} when \
                 the task asks to create, write, change, append to, copy into, move, rename or \
                 delete files or directories; {\"changes_files\": false} when it only asks a \
                 question or asks for information.",
            ),
            Message::user(format!("Task: {task}")),
        ],
        format: Some(json!({
            "type": "object",
            "properties": {"changes_files": {"type": "boolean"}},
            "required": ["changes_files"]
        })),
        options: deterministic(24),
        ..Default::default()
    }
}

/// The triage's answer; `None` when the reply does not say (the task is
/// then treated as before triage existed: changes allowed, none required).
pub fn parse_triage(content: &str) -> Option<bool> {
    serde_json::from_str::<Value>(content.trim())
        .ok()?
        .get("changes_files")?
        .as_bool()
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
         {{\"steps\": [{{\"crew\": \"<crew>\", \"instruction\": \"<the job>\"}}]}}\n\
         A crew does a whole job with many tool calls, so most tasks are one step: a task that \
         changes files goes to the crew that makes changes, a question to a crew that changes \
         nothing. Use more steps only when one crew needs something that only another crew can \
         get first, in the order they must happen; each step sees the results of the steps \
         before it. Never add a step only to check or verify: crews check their own work. An \
         instruction is an English sentence addressed to the crew, not code and not a tool \
         call: the job, with every file name, text and value copied exactly from the task.\n\
         Reply {{\"answer\": \"<text>\", \"done\": true}} instead only when the task needs \
         no file, search or web page at all. A question about the workspace's files needs \
         steps: never answer it from memory.",
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
/// The one step of a task one crew can do alone, without a plan: a task
/// that names no URL (only drummers reach the web), handed in the user's
/// own words to the belters when it asks for changes, to the drummers when
/// it only asks about paths it names. `None`: the coordinator plans (a
/// URL, an unknown triage, or a question about nothing in the workspace,
/// which the coordinator may answer itself).
pub fn one_crew(task: &str, changes_files: Option<bool>, crews: &[Crew]) -> Option<PlanStep> {
    if task.contains("://") {
        return None;
    }
    let crew = match changes_files? {
        true => CrewKind::Belter,
        false if crate::scope::names_paths(task) => CrewKind::Drummer,
        false => return None,
    };
    crews.iter().any(|c| c.name == crew).then(|| PlanStep {
        crew,
        instruction: task.to_owned(),
    })
}

pub fn parse_plan(content: &str, crews: &[Crew], max_steps: u32) -> Result<Plan, String> {
    let value: Value =
        serde_json::from_str(content.trim()).map_err(|e| format!("not JSON ({e})"))?;
    // A crew the host does not have is named as such, with the crews it
    // has (before the typed parse, which would only list every crew kind).
    let installed: Vec<&str> = crews.iter().map(|c| c.name.as_str()).collect();
    for (i, s) in value["steps"].as_array().into_iter().flatten().enumerate() {
        if let Some(crew) = s["crew"].as_str()
            && !installed.contains(&crew)
        {
            return Err(format!(
                "step {}: unknown crew `{crew}` (crews: {})",
                i + 1,
                installed.join(", ")
            ));
        }
    }
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
    Ok(merge_steps(plan))
}

/// Consecutive steps of one crew become one step: a crew does a whole job
/// in one conversation, and a job cut into steps loses what the crew saw
/// in the earlier ones (small planners cut "edit the file" into "read it",
/// "change it", "save it").
fn merge_steps(mut plan: Plan) -> Plan {
    let mut merged: Vec<crate::events::PlanStep> = Vec::new();
    for step in plan.steps.drain(..) {
        match merged.last_mut() {
            Some(last) if last.crew == step.crew => {
                let sep = if last.instruction.trim_end().ends_with(['.', '!', '?']) {
                    " Then "
                } else {
                    ". Then "
                };
                last.instruction = format!(
                    "{}{sep}{}",
                    last.instruction.trim_end(),
                    step.instruction.trim()
                );
            }
            _ => merged.push(step),
        }
    }
    plan.steps = merged;
    plan
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
                "Step {} ({instruction}){status}:\nReport: {}",
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
/// every task of the crew; the workspace's files, earlier results, the
/// task and the instruction come in the user turn (the instruction last).
pub fn crew_messages(
    crew: &Crew,
    task: &str,
    instruction: &str,
    files: &[String],
    attached: &[(String, String)],
    results: &[(String, StepFinished)],
) -> Vec<Message> {
    let system = format!(
        "You are a {} of Caminaå's crew: {}. You do your part of the user's task with tool \
         calls, one call at a time, reading each result before the next call. Paths are \
         relative to the workspace.\n\
         - Look before you act: read a file before you change it or quote it, and search or \
         list before you say what exists.\n\
         - Change only what the task asks to change, and write exactly the text it asks for.\n\
         - When your part is done, or cannot be done, call {} with your report: what you did \
         and what you found, quoting the exact text (lines, paths, values) the task asks for.",
        crew.member(),
        crew.purpose(),
        crew.finish_name(),
    );
    let mut user = String::new();
    if !files.is_empty() {
        user.push_str(&format!(
            "Files in the workspace when the task started:\n{}\n\n",
            files.join("\n")
        ));
    }
    if !attached.is_empty() {
        user.push_str("The files the task names, as they are now (read for you):\n");
        // `attached` holds (label, text): a path, or a search ("grep src for TODO").
        for (path, text) in attached {
            // A file's own last newline ends its last line: no blank line
            // is shown that the file does not have.
            let nl = if text.ends_with('\n') { "" } else { "\n" };
            user.push_str(&format!("[{path}]\n{text}{nl}[end of {path}]\n"));
        }
        user.push('\n');
    }
    if !results.is_empty() {
        user.push_str(&format!(
            "Results of earlier steps:\n{}\n\n",
            earlier(results)
        ));
    }
    user.push_str(&format!("The user's task: {task}\n"));
    if instruction.trim() != task.trim() {
        user.push_str(&format!("Your part, from the coordinator: {instruction}\n"));
    }
    vec![Message::system(system), Message::user(user)]
}

/// The tool that ends a crew's step (the host's, not a plugin's): every
/// turn of a crew is a call, and the last one carries the report, so a
/// model never describes work in prose instead of doing it.
pub fn finish_spec(crew: &Crew) -> ToolSpec {
    ToolSpec {
        name: crew.finish_name().to_owned(),
        description: "End your step: call this once your part of the task is done, or cannot \
                      be done. The report says what you did and what you found, with the exact \
                      facts (paths, lines, values)."
            .into(),
        parameters: FINISH_PARAMETERS.clone(),
    }
}

/// The finish tool's arguments schema, built once.
static FINISH_PARAMETERS: std::sync::LazyLock<std::sync::Arc<Value>> =
    std::sync::LazyLock::new(|| {
        std::sync::Arc::new(json!({
            "type": "object",
            "properties": {
                "report": {"type": "string", "minLength": 1, "maxLength": MAX_ANSWER}
            },
            "required": ["report"]
        }))
    });

/// A crew's turn: always a call (one of its tools, or the finish tool;
/// on the first turn only its tools: a step starts by doing something).
/// Backends that cannot force a call (Ollama) may still reply in text,
/// which counts as the report.
pub fn crew_request(messages: Vec<Message>, crew: &Crew, first: bool) -> ChatRequest {
    let mut tools = crew.specs();
    tools.push(finish_spec(crew));
    ChatRequest {
        messages,
        tools,
        tool_choice: ToolChoice::Required,
        unavailable: if first {
            vec![crew.finish_name().to_owned()]
        } else {
            Vec::new()
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

/// The answer to a change in a task that only asks a question.
pub fn only_a_question() -> String {
    "not run: the task only asks for information, so nothing may be changed; answer it from \
     what you read and found"
        .to_owned()
}

/// The answer to a change of a path the task reads from.
pub fn a_source(path: &str, outputs: &[String]) -> String {
    let makes = if outputs.is_empty() {
        String::new()
    } else {
        format!(
            "; it asks you to make {} ({})",
            outputs.join(", "),
            outputs
                .iter()
                .map(|p| make_call(p))
                .collect::<Vec<_>>()
                .join("; ")
        )
    };
    format!("not run: the task reads from {path} and does not ask to change it{makes}")
}

/// The answer to a change of a path the task says to leave as it is.
pub fn kept(path: &str) -> String {
    format!(
        "not run: {path} exists, and the task says to leave it as it is in that case; it \
         needs no change, so finish and say that it was left as it is"
    )
}

/// The answer to a call that would rewrite a file nobody read.
pub fn read_first(path: &str) -> String {
    format!(
        "not run: {path} exists and you have not read it; read it first, then make the change \
         from its real content"
    )
}

/// How a crew sees what the task's sources hold (belter-fs and drummer
/// tools), as the calls to make: `sources` are paths, a directory's with a
/// trailing `/`. Small models follow a call they are shown far more often
/// than one described in words.
fn look_inside(sources: &[String]) -> String {
    let dir = sources.iter().find_map(|s| s.strip_suffix('/'));
    let file = sources.iter().find(|s| !s.ends_with('/'));
    let mut ways = Vec::new();
    if let Some(d) = dir {
        ways.push(format!(
            "grep {{\"path\": \"{d}\", \"pattern\": \"<the text to find>\"}} finds the \
             matching lines in every file under {d}"
        ));
    }
    match file {
        Some(f) => ways.push(format!("read_file {{\"path\": \"{f}\"}} reads {f}")),
        None => ways.push("read_file reads one file".to_owned()),
    }
    ways.join("; ")
}

/// The answer to a write of text that comes from neither the task nor
/// anything read (see [`crate::ground`]).
pub fn invented(lines: &[String], sources: &[String]) -> String {
    let shown: Vec<String> = lines.iter().take(3).map(|l| format!("\"{l}\"")).collect();
    format!(
        "not run: this text is not in the task or in anything you have read ({}). The task \
         takes its content from {}: look inside first ({}), then write what is really there",
        shown.join(", "),
        sources.join(", "),
        look_inside(sources)
    )
}

/// Why a finish is sent back: the crew did nothing yet.
pub fn use_your_tools() -> String {
    "Nothing has been done yet: no tool was used. Do the task with your tools now.".to_owned()
}

/// Why a finish is sent back: paths the task names are still not made.
pub fn not_made_yet(paths: &[String]) -> String {
    let names: Vec<String> = paths
        .iter()
        .map(|p| {
            if crate::scope::has_extension(p) {
                format!("the file {p} does not exist yet")
            } else {
                format!("{p} does not exist yet")
            }
        })
        .collect();
    format!(
        "Not finished: {}. Make it now if the task asks you to.",
        names.join(", ")
    )
}

/// The tool that makes `path`, in words (no template a model could copy
/// as the content): a name with an extension is a file.
fn make_call(path: &str) -> String {
    if crate::scope::has_extension(path) {
        format!("write_file with the path {path}")
    } else {
        format!("make_dir with the path {path}")
    }
}

/// Why a finish is sent back: the task asks for a change and none was made.
pub fn nothing_changed(unread: &[String]) -> String {
    if unread.is_empty() {
        "Not finished: no file has been changed yet; reading is not changing. Make the change \
         the task asks for now with your tools."
            .to_owned()
    } else {
        format!(
            "Not finished: no file has been changed yet. The task takes its content from {}: \
             look inside first ({}), then make the change the task asks for.",
            unread.join(", "),
            look_inside(unread)
        )
    }
}

/// Why a finish is sent back: files matching the task's pattern were left.
pub fn left_out(paths: &[String]) -> String {
    let (these, verb) = if paths.len() == 1 {
        ("this path", "matches")
    } else {
        ("these paths", "match")
    };
    format!(
        "Not finished: {these} (relative to the workspace) also {verb} what the task asks for \
         and {} not changed: {}. Do the same for {} now if the task asks you to.",
        if paths.len() == 1 { "was" } else { "were" },
        paths.join(", "),
        if paths.len() == 1 { "it" } else { "them" },
    )
}

/// Why a finish is sent back: the result is not what the task's words
/// say it must be (see [`crate::checks`]).
pub fn result_wrong(check: &crate::checks::Check, problems: &[String]) -> String {
    format!(
        "Not finished: {}. Put it right: {}.",
        problems.join("; "),
        check.remedy()
    )
}

/// A hint after a `not-found` error: the workspace's paths (as listed
/// when the task started) with the same last component as `path`, which
/// the model most likely meant (it often puts a file in the directory it
/// just looked at).
pub fn elsewhere(path: &str, files: &[String], outputs: &[String]) -> Option<String> {
    let path = crate::scope::normal(path);
    let name = path.rsplit('/').next().filter(|n| !n.is_empty())?;
    let found: Vec<&str> = files
        .iter()
        .map(|f| crate::scope::normal(f))
        .filter(|f| *f != path && f.rsplit('/').next() == Some(name))
        .take(5)
        .collect();
    if !found.is_empty() {
        return Some(format!(
            "\n(There is no {path}; the workspace has {}.)",
            found.join(", ")
        ));
    }
    // A path the task names but that is not there yet, looked for in
    // another directory.
    let output = outputs
        .iter()
        .map(|o| crate::scope::normal(o))
        .find(|o| *o != path && o.rsplit('/').next() == Some(name))?;
    Some(format!(
        "\n(There is no {path}; the task names {output}, which does not exist yet.)"
    ))
}

/// Why a finish is sent back: the last call failed.
pub fn put_it_right(error: &str) -> String {
    format!(
        "Not finished: your last call failed ({error}). Put it right with your tools if you \
         can; if it cannot be done, finish and say why."
    )
}

/// Step 4: the final answer, and whether the task was done. `question`:
/// the triage found the task asks only for information.
pub fn answer(task: &str, results: &[(String, StepFinished)], question: bool) -> ChatRequest {
    let system = if question {
        "You are Caminaå, the coordinator. The user asked a question about the workspace; \
         your crews looked it up, and their reports and tool calls are below. Answer the \
         question for the user with the exact facts the results show (never invented ones). \
         Reply with JSON only: {\"answer\": \"<text>\", \"done\": <true|false>}. \"done\" is \
         true when the results answer the question, also when the answer is that nothing \
         matches or none; false only when the information could not be read, and then the \
         answer says what is missing."
    } else {
        "You are Caminaå, the coordinator. Your crews have worked on the user's task; below \
         are their reports, their tool calls and the changes the host saw them make. Write \
         the final answer for the user: what was done and what was found, with the exact facts \
         the results show (never invented ones). Reply with JSON only: {\"answer\": \
         \"<text>\", \"done\": <true|false>}. \"done\" is true when the results show that the \
         task was carried out; false when a step failed or something the task asked for is \
         missing, and then the answer says what is missing."
    };
    ChatRequest {
        messages: vec![
            Message::system(system),
            Message::user(format!(
                "{}\n\n{}\n\nThe user's task: {task}",
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
mod tests;
