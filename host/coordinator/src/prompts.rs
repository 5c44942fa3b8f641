//! What each role is told, and the JSON schemas of the coordinator's
//! decisions. Prompts are plain and example-led so that small models (the
//! embedded base model completes them as text, constrained by grammar) and
//! large ones (Ollama, chat templates) both follow them. The examples are
//! generic; nothing here knows any task's answer.

use crate::events::{Plan, StepFinished};
use crate::toolbox::Crew;
use camina_model::{ChatRequest, Message, Options, ToolCall};
use serde_json::{Value, json};

/// Longest instruction and answer the schemas allow.
const MAX_INSTRUCTION: u64 = 200;
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

fn crew_lines(crews: &[Crew]) -> String {
    crews
        .iter()
        .map(|c| {
            let tools: Vec<String> = c
                .tools
                .iter()
                .map(|t| format!("{} ({})", t.function, first_sentence(&t.description)))
                .collect();
            format!("- {} ({}): {}", c.name, c.purpose(), tools.join("; "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn first_sentence(s: &str) -> &str {
    s.split_inclusive(". ")
        .next()
        .unwrap_or(s)
        .trim_end_matches(". ")
        .trim_end_matches('.')
}

/// Whether the worked examples apply: a drummer that greps and a belter
/// that writes files.
fn examples_apply(crews: &[Crew]) -> bool {
    let has = |crew: &str, tool: &str| {
        crews
            .iter()
            .any(|c| c.name == crew && c.find(tool).is_some())
    };
    has("drummer", "grep") && has("belter", "write_file")
}

/// Step 1: the reasoner's advice (thinking on where the model can). Two
/// worked examples precede the task.
pub fn reasoner(task: &str, workspace: &str, crews: &[Crew], think: bool) -> ChatRequest {
    let mut messages = vec![Message::system(format!(
        "You are the reasoner behind a coordinator of worker crews. Think about how the \
         user's task can be done with the crews below. Give short, concrete advice: which \
         crew should do what, in which order, and what could go wrong. Do not do the task \
         yourself.\nCrews:\n{}",
        crew_lines(crews)
    ))];
    if examples_apply(crews) {
        for ex in &EXAMPLES {
            messages.push(Message::user(format!(
                "Task: {}\nWorkspace: /home/user/project",
                ex.task
            )));
            messages.push(Message::assistant(ex.advice()));
        }
    }
    messages.push(Message::user(format!(
        "Task: {task}\nWorkspace: {workspace}"
    )));
    ChatRequest {
        messages,
        think,
        // A thinking model spends its budget on the thinking first
        // (deepseek-r1 easily uses a thousand tokens before answering).
        options: deterministic(if think { 2048 } else { 200 }),
        ..Default::default()
    }
}

/// A worked example (generic: no user's task, no answer to one). Two of
/// them, differing in every detail, show small models what varies with the
/// task.
struct Example {
    task: &'static str,
    find: &'static str,
    save: &'static str,
    pattern: &'static str,
    dir: &'static str,
    out: &'static str,
    /// The matches (file, line, text); the examples differ in how many.
    hits: &'static [(&'static str, u32, &'static str)],
}

const EXAMPLES: [Example; 2] = [
    Example {
        task: "Find every line mentioning deadline in docs/ and save them to deadlines.txt",
        find: "Find every line mentioning deadline in docs/",
        save: "Save the lines mentioning deadline to deadlines.txt",
        pattern: "deadline",
        dir: "docs",
        out: "deadlines.txt",
        hits: &[("docs/plan.md", 4, "The deadline is Friday.")],
    },
    Example {
        task: "Gather the FIXME lines under lib/ into fixme.log",
        find: "Gather the FIXME lines under lib/",
        save: "Write the FIXME lines to fixme.log",
        pattern: "FIXME",
        dir: "lib",
        out: "fixme.log",
        hits: &[
            ("lib/io.rs", 12, "// FIXME: handle errors"),
            ("lib/net.rs", 3, "    // FIXME: retry"),
        ],
    },
];

impl Example {
    /// What a reasoner would advise for the example task.
    fn advice(&self) -> String {
        format!(
            "A drummer searches {}/ for {} and reports every matching line with its file and \
             line number; then a belter writes exactly those lines to the file the task names. \
             If nothing matches, the answer says so.",
            self.dir, self.pattern
        )
    }

    /// The matches as `file:line:text` lines, as grep prints them.
    fn lines(&self) -> Vec<String> {
        self.hits
            .iter()
            .map(|(f, l, t)| format!("{f}:{l}:{t}"))
            .collect()
    }

    /// What the belter writes: the lines, verbatim.
    fn content(&self) -> String {
        self.lines().iter().map(|l| format!("{l}\n")).collect()
    }

    /// The matches as grep returns them.
    fn grep_output(&self) -> Value {
        let matches: Vec<Value> = self
            .hits
            .iter()
            .map(|(f, l, t)| json!({"file": f, "line": l, "text": t}))
            .collect();
        json!({"lines": self.lines(), "matches": matches, "truncated": false, "files_searched": 5})
    }

    /// The drummer's report. It neither restates nor counts the matches:
    /// they reach later steps as evidence anyway, and a small model makes
    /// up both lines and counts.
    fn found(&self) -> String {
        "Found the matching lines.".to_owned()
    }

    fn saved(&self) -> String {
        format!("Wrote the lines to {}.", self.out)
    }

    /// The coordinator's answer: what was done, then the lines themselves.
    fn answer(&self) -> String {
        format!(
            "Saved the {} lines to {}:\n{}",
            self.pattern,
            self.out,
            self.lines().join("\n")
        )
    }

    fn grep_args(&self) -> Value {
        json!({"path": self.dir, "pattern": self.pattern})
    }

    fn write_args(&self) -> Value {
        json!({"path": self.out, "content": self.content()})
    }

    fn write_output(&self) -> Value {
        json!({"path": self.out, "bytes_written": self.content().len()})
    }

    /// What the example's drummer step hands on, as [`earlier`] shows it.
    fn found_step(&self) -> String {
        format!(
            "Step 1 ({}):\n{}",
            self.find,
            compose(
                &self.found(),
                &[evidence(
                    "grep",
                    &self.grep_args(),
                    &self.grep_output().to_string()
                )]
            )
        )
    }

    /// What the example's two steps hand on.
    fn step_results(&self) -> String {
        format!(
            "{}\n\nStep 2 ({}):\n{}",
            self.found_step(),
            self.save,
            compose(
                &self.saved(),
                &[evidence(
                    "write_file",
                    &self.write_args(),
                    &self.write_output().to_string()
                )]
            ),
        )
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
            {
                "type": "object",
                "properties": {"answer": {"type": "string", "minLength": 1, "maxLength": MAX_ANSWER}},
                "required": ["answer"]
            }
        ]
    })
}

/// Step 2: the plan. Two worked examples precede the task.
pub fn plan(task: &str, advice: &str, crews: &[Crew], max_steps: u32) -> ChatRequest {
    let messages = vec![Message::system(format!(
        "You are Caminaå, the coordinator. Plan how your crews do the user's task. Reply with \
         JSON only: {{\"steps\": [{{\"crew\": ..., \"instruction\": ...}}]}} with one step per \
         job, in the order they must happen (a step sees the results of the steps before it; \
         each instruction uses the task's own words), or {{\"answer\": ...}} when the task \
         needs no files or web pages.\nCrews:\n{}",
        crew_lines(crews)
    ))];
    plan_request(
        messages,
        task,
        advice,
        crews,
        plan_schema(crews, max_steps),
        |ex| {
            json!({"steps": [
                {"crew": "drummer", "instruction": ex.find},
                {"crew": "belter", "instruction": ex.save}
            ]})
        },
    )
}

/// The rest of a plan question after its system message: a worked example
/// that answers directly, the two delegating examples (their replies from
/// `example_reply`) when the crews have their tools, then the real advice
/// and task. The examples have the shape of the real question (advice,
/// then the task), so a small model completes it the same way.
fn plan_request(
    mut messages: Vec<Message>,
    task: &str,
    advice: &str,
    crews: &[Crew],
    format: Value,
    example_reply: impl Fn(&Example) -> Value,
) -> ChatRequest {
    messages.push(Message::user(
        "Advice: No files or web pages are needed: answer directly.\n\nTask: What is the \
         capital of France?",
    ));
    messages.push(Message::assistant(
        json!({"answer": "Paris is the capital of France."}).to_string(),
    ));
    if examples_apply(crews) {
        for ex in &EXAMPLES {
            messages.push(Message::user(format!(
                "Advice: {}\n\nTask: {}",
                ex.advice(),
                ex.task
            )));
            messages.push(Message::assistant(example_reply(ex).to_string()));
        }
    }
    let advice = advice.trim();
    messages.push(Message::user(if advice.is_empty() {
        format!("Task: {task}")
    } else {
        format!("Advice: {advice}\n\nTask: {task}")
    }));
    ChatRequest {
        messages,
        format: Some(format),
        options: deterministic(512),
        ..Default::default()
    }
}

/// The crews in the order a crew-by-crew plan asks about them: gathering
/// information (drummers) before file work (belters), other crews after.
fn slot_order(crews: &[Crew]) -> Vec<&Crew> {
    let rank = |c: &Crew| match c.name.as_str() {
        "drummer" => 0,
        "belter" => 1,
        _ => 2,
    };
    let mut v: Vec<&Crew> = crews.iter().collect();
    v.sort_by(|a, b| rank(a).cmp(&rank(b)).then_with(|| a.name.cmp(&b.name)));
    v
}

/// The crew-by-crew plan's schema: one instruction per crew (empty: the
/// crew has no part), or an answer.
pub fn crew_plan_schema(crews: &[Crew]) -> Value {
    let order = slot_order(crews);
    let mut props = serde_json::Map::new();
    for c in &order {
        props.insert(
            c.name.clone(),
            json!({"type": "string", "maxLength": MAX_INSTRUCTION}),
        );
    }
    let names: Vec<&str> = order.iter().map(|c| c.name.as_str()).collect();
    json!({
        "oneOf": [
            {"type": "object", "properties": props, "required": names},
            {
                "type": "object",
                "properties": {"answer": {"type": "string", "minLength": 1, "maxLength": MAX_ANSWER}},
                "required": ["answer"]
            }
        ]
    })
}

/// Step 2 for a small coordinator (the embedded base model): instead of a
/// list of steps it fills in each crew's part in a fixed order, which a
/// 270M model does reliably where it stops a list after copying the task
/// into the first step. The parts become the same [`Plan`] (steps in slot
/// order, empty parts left out), so everything after the plan is shared.
pub fn crew_plan(task: &str, advice: &str, crews: &[Crew]) -> ChatRequest {
    let order = slot_order(crews);
    let keys = order
        .iter()
        .map(|c| format!("\"{}\": ...", c.name))
        .collect::<Vec<_>>()
        .join(", ");
    let messages = vec![Message::system(format!(
        "You are Caminaå, the coordinator. Decide what each of your crews does for the user's \
         task. Reply with JSON only: {{{keys}}}, one instruction per crew in the task's own words \
         (an empty string when that crew has no part; the crews work in this order and each \
         sees what the ones before it found), or {{\"answer\": ...}} when the task needs no files \
         or web pages.\nCrews:\n{}",
        crew_lines(crews)
    ))];
    plan_request(
        messages,
        task,
        advice,
        crews,
        crew_plan_schema(crews),
        |ex| {
            let parts: serde_json::Map<String, Value> = order
                .iter()
                .map(|c| {
                    let part = match c.name.as_str() {
                        "drummer" => ex.find,
                        "belter" => ex.save,
                        _ => "",
                    };
                    (c.name.clone(), json!(part))
                })
                .collect();
            Value::Object(parts)
        },
    )
}

/// Reads a crew-by-crew plan into a [`Plan`].
pub fn parse_crew_plan(content: &str, crews: &[Crew], max_steps: u32) -> Result<Plan, String> {
    let value: Value =
        serde_json::from_str(content.trim()).map_err(|e| format!("not JSON ({e})"))?;
    let Some(obj) = value.as_object() else {
        return Err("not a JSON object".into());
    };
    if let Some(answer) = obj.get("answer") {
        return match answer.as_str() {
            Some(a) if !a.trim().is_empty() => Ok(Plan {
                steps: Vec::new(),
                answer: Some(a.to_owned()),
            }),
            _ => Err("the answer is empty".into()),
        };
    }
    if let Some(unknown) = obj.keys().find(|k| !crews.iter().any(|c| &c.name == *k)) {
        let names: Vec<&str> = crews.iter().map(|c| c.name.as_str()).collect();
        return Err(format!(
            "unknown crew `{unknown}` (crews: {})",
            names.join(", ")
        ));
    }
    let mut steps = Vec::new();
    for c in slot_order(crews) {
        match obj.get(&c.name) {
            None => {}
            Some(Value::String(s)) if s.trim().is_empty() => {}
            Some(Value::String(s)) => steps.push(crate::events::PlanStep {
                crew: c.name.clone(),
                instruction: s.trim().to_owned(),
            }),
            Some(_) => return Err(format!("`{}` must be a string", c.name)),
        }
    }
    if steps.is_empty() {
        return Err("no crew has a part and there is no answer".into());
    }
    if steps.len() > max_steps as usize {
        return Err(format!("at most {max_steps} crews may have a part"));
    }
    Ok(Plan {
        steps,
        answer: None,
    })
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
    }
    Ok(plan)
}

/// The corrective turn after invalid output.
pub fn correction(reason: &str) -> Message {
    Message::user(format!(
        "That reply was not valid: {reason}. Reply again with only the JSON, following the format."
    ))
}

fn earlier(results: &[(String, StepFinished)]) -> String {
    if results.is_empty() {
        return "(none)".into();
    }
    results
        .iter()
        .map(|(instruction, r)| format!("Step {} ({instruction}):\n{}", r.index + 1, r.result))
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// A step's result as later prompts see it: the crew's report plus the
/// evidence of its tool calls (`call args → output`), capped.
pub fn compose(report: &str, evidence: &[String]) -> String {
    let mut out = report.to_owned();
    if !evidence.is_empty() {
        out.push_str("\nTool results:");
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

/// Worked examples for the crew, if it has the tools they use.
fn crew_examples(crew: &Crew) -> Vec<Message> {
    let mut out = Vec::new();
    for ex in &EXAMPLES {
        let (instruction, earlier, tool, args, output, report) = match crew.name.as_str() {
            "drummer" => (
                ex.find.to_owned(),
                "(none)".to_owned(),
                "grep",
                ex.grep_args(),
                ex.grep_output(),
                ex.found(),
            ),
            "belter" => (
                ex.save.to_owned(),
                // What the drummer's step in the other example hands on.
                ex.found_step(),
                "write_file",
                ex.write_args(),
                ex.write_output(),
                ex.saved(),
            ),
            _ => return Vec::new(),
        };
        if crew.find(tool).is_none() {
            return Vec::new();
        }
        out.push(Message::user(format!(
            "Results of earlier steps:\n{earlier}\n\nInstruction: {instruction}"
        )));
        out.push(Message {
            tool_calls: vec![ToolCall {
                name: tool.to_owned(),
                arguments: args,
            }],
            ..Message::assistant("")
        });
        out.push(Message::tool(tool, output.to_string()));
        out.push(Message::assistant(report));
    }
    out
}

/// Step 3: a crew's opening messages (with a worked example).
pub fn crew_messages(
    crew: &Crew,
    instruction: &str,
    results: &[(String, StepFinished)],
) -> Vec<Message> {
    let mut messages = vec![Message::system(format!(
        "You are a {} of Caminaå's crew: {}. Carry out the instruction with your tools, one call \
         at a time, reading each result. Paths are relative to the workspace. When the \
         instruction is done, reply without a tool call: a short report of what you did and what \
         you found, quoting the exact text the next steps need.",
        crew.member(),
        crew.purpose()
    ))];
    messages.extend(crew_examples(crew));
    messages.push(Message::user(format!(
        "Results of earlier steps:\n{}\n\nInstruction: {instruction}",
        earlier(results)
    )));
    messages
}

pub fn crew_request(messages: Vec<Message>, crew: &Crew) -> ChatRequest {
    ChatRequest {
        messages,
        tools: crew.specs(),
        options: deterministic(768),
        ..Default::default()
    }
}

pub fn answer_schema() -> Value {
    json!({
        "type": "object",
        "properties": {"answer": {"type": "string", "minLength": 1, "maxLength": MAX_ANSWER}},
        "required": ["answer"]
    })
}

/// Step 4: the final answer. A small (guided) coordinator gets worked
/// examples; on its own it copies the format's placeholder. Their findings
/// never reach the answer: the examples' lines are not the task's evidence,
/// and the embedded backend's copier only follows the last turn's.
pub fn answer(task: &str, results: &[(String, StepFinished)], guided: bool) -> ChatRequest {
    let mut messages = vec![Message::system(
        "You are Caminaå, the coordinator. Your crews have worked on the user's task. Write the \
         final answer for the user from their results: what was done, and what was found. Reply \
         with JSON only: {\"answer\": \"...\"}.",
    )];
    if guided {
        for ex in &EXAMPLES {
            messages.push(Message::user(format!(
                "Task: {}\n\nStep results:\n{}",
                ex.task,
                ex.step_results()
            )));
            messages.push(Message::assistant(
                json!({"answer": ex.answer()}).to_string(),
            ));
        }
    }
    messages.push(Message::user(format!(
        "Task: {task}\n\nStep results:\n{}",
        earlier(results)
    )));
    ChatRequest {
        messages,
        format: Some(answer_schema()),
        options: deterministic(768),
        ..Default::default()
    }
}

pub fn parse_answer(content: &str) -> Result<String, String> {
    let value: Value =
        serde_json::from_str(content.trim()).map_err(|e| format!("not JSON ({e})"))?;
    match value.get("answer").and_then(Value::as_str) {
        Some(a) if !a.trim().is_empty() => Ok(a.to_owned()),
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
    fn crew_plans_ask_drummers_first_and_become_plans() {
        let c = crews();
        let schema = crew_plan_schema(&c);
        let slots: Vec<&String> = schema["oneOf"][0]["properties"]
            .as_object()
            .unwrap()
            .keys()
            .collect();
        assert_eq!(slots, ["drummer", "belter"]);
        let plan = parse_crew_plan(
            r#"{"drummer":"find the TODO lines","belter":"write them to todo.md"}"#,
            &c,
            8,
        )
        .unwrap();
        let order: Vec<(&str, &str)> = plan
            .steps
            .iter()
            .map(|s| (s.crew.as_str(), s.instruction.as_str()))
            .collect();
        assert_eq!(
            order,
            [
                ("drummer", "find the TODO lines"),
                ("belter", "write them to todo.md")
            ]
        );
        // An empty part is no step; an answer is an answer.
        let plan = parse_crew_plan(r#"{"drummer":" ","belter":"make notes.md"}"#, &c, 8).unwrap();
        assert_eq!(plan.steps.len(), 1);
        assert_eq!(plan.steps[0].crew, "belter");
        let plan = parse_crew_plan(r#"{"answer":"Paris"}"#, &c, 8).unwrap();
        assert_eq!(plan.answer.as_deref(), Some("Paris"));
        for (bad, why) in [
            (r#"{"drummer":"","belter":""}"#, "no crew has a part"),
            (r#"{"pilot":"fly"}"#, "unknown crew `pilot`"),
            (r#"{"drummer":3}"#, "must be a string"),
            (r#"{"answer":""}"#, "empty"),
            ("[]", "not a JSON object"),
        ] {
            let e = parse_crew_plan(bad, &c, 8).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        // The step budget holds here too.
        let e = parse_crew_plan(r#"{"drummer":"a","belter":"b"}"#, &c, 1).unwrap_err();
        assert!(e.contains("at most 1"), "{e}");
    }

    #[test]
    fn answers_are_checked() {
        assert_eq!(parse_answer(r#"{"answer":"done"}"#).unwrap(), "done");
        assert!(parse_answer(r#"{"answer":""}"#).is_err());
        assert!(parse_answer("done").is_err());
    }

    #[test]
    fn only_a_guided_answer_request_carries_worked_examples() {
        let plain = answer("Collect the TODO lines", &[], false);
        let roles: Vec<Role> = plain.messages.iter().map(|m| m.role).collect();
        assert_eq!(roles, [Role::System, Role::User]);
        let guided = answer("Collect the TODO lines", &[], true);
        assert_eq!(guided.messages.len(), 2 + 2 * EXAMPLES.len());
        // The task comes last; the examples answer with the lines themselves.
        assert!(
            guided
                .messages
                .last()
                .unwrap()
                .content
                .starts_with("Task: Collect the TODO lines")
        );
        let first: Value = serde_json::from_str(&guided.messages[2].content).unwrap();
        assert_eq!(
            first["answer"],
            "Saved the deadline lines to deadlines.txt:\ndocs/plan.md:4:The deadline is Friday."
        );
        assert_eq!(guided.format, plain.format);
    }
}
