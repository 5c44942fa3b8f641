//! One crew's step: its conversation with the model, turn by turn, every
//! turn a tool call or the finish call, with the host's objections.

use super::*;

impl Agent<'_> {
    pub(super) async fn crew_step(
        &mut self,
        i: usize,
        crew: &Crew,
        task: &str,
        instruction: &str,
        files: &[String],
        results: &[(String, StepFinished)],
    ) -> Flow<StepFinished> {
        let role = match crew.name {
            crate::toolbox::CrewKind::Belter => ModelRole::Belter,
            crate::toolbox::CrewKind::Drummer => ModelRole::Drummer,
        };
        let finish = crew.finish_name();
        // The last tool error not followed by a successful call, and
        // whether it was a change (a write, a move, a refusal): a step whose
        // changes ended in an error failed, whatever its report says.
        let mut unresolved: Option<(String, bool)> = None;
        let mut succeeded = 0usize;
        // Calls that ran, successful or not.
        let mut ran = 0usize;
        let mut changes: Vec<String> = Vec::new();
        let (mut nudged_idle, mut nudged_error, mut nudged_outputs, mut nudged_pattern) =
            (false, false, false, false);
        let (mut nudged_unchanged, mut nudged_result) = (false, false);
        // Whether a read-only call of the crew's own succeeded (not the
        // host's prefetch).
        let mut looked = false;
        let scope =
            crate::scope::Scope::of_task(task, std::path::Path::new(&self.submitted.workspace));
        let mut evidence: Vec<String> = Vec::new();
        let mut invalid = 0;
        let mut repeats = 0;
        // Calls made in this step (name, arguments): JSON equality, so the
        // same arguments in another key order are the same call.
        let mut done: Vec<(String, serde_json::Value)> = Vec::new();
        // What the step's successful lookups returned, shown again when a
        // lookup is repeated (after an objection a model often looks
        // again before it puts a write right).
        let mut looked_up: Vec<((String, serde_json::Value), String)> = Vec::new();
        let max_turns = self.submitted.budgets.max_turns;
        // Calls run in this step so far: the `n` of the key `task:step:n`.
        let mut calls = 0usize;
        // The files and directories the task names are read (listed) for
        // the crew before its first turn, as calls of the step, and shown
        // in its opening turn: it starts from their real content instead
        // of guessing it or having to think of looking.
        let prefetch = self.prefetch_calls(crew, task, files);
        // Earlier steps' results (with their calls' outputs) are what this
        // step builds on, also when they were replayed rather than run.
        for (_, r) in results {
            self.seen.add(&r.result);
        }
        // Text the task gives, and the coordinator's own words for the step.
        self.seen.add(&crate::ground::given(task));
        if instruction.trim() != task.trim() {
            self.seen.add(instruction);
        }
        let (sources, look_first) = {
            let (named_files, named_dirs) = crate::scope::named_existing(task, files);
            let look = !named_dirs.is_empty() && !self.outputs.is_empty();
            // A directory's path ends in `/`, as in the listing, so the
            // hints can tell the two apart.
            (
                named_files
                    .into_iter()
                    .chain(named_dirs.into_iter().map(|d| format!("{d}/")))
                    .collect::<Vec<_>>(),
                look,
            )
        };
        let mut attached: Vec<(String, String)> = Vec::new();
        for (k, call) in prefetch.iter().enumerate() {
            let step = format!("step/{i}/prefetch/{k}");
            let key = format!("{}:{i}:{calls}", self.d.task);
            calls += 1;
            let result = self.tool(&step, key, crew, call).await?;
            ran += 1;
            if result.error.is_none() {
                succeeded += 1;
                self.saw(call);
                self.seen.add(&result.for_model(8000));
                looked_up.push((
                    (call.name.clone(), call.arguments.clone()),
                    result.for_model(8000),
                ));
            }
            done.push((call.name.clone(), call.arguments.clone()));
            evidence.push(prompts::evidence(
                &call.name,
                &call.arguments,
                &result.for_model(1500),
            ));
            let path = call.arguments["path"].as_str().unwrap_or_default();
            let label = match call.arguments["pattern"].as_str() {
                Some(pattern) => format!("{} {path} for {pattern}", call.name),
                None => path.to_owned(),
            };
            attached.push((label, result.for_model(8000)));
        }
        let mut messages =
            prompts::crew_messages(crew, task, instruction, files, &attached, results);
        for turn in 0..max_turns {
            let req = prompts::crew_request(messages.clone(), crew, turn == 0);
            let reply = self
                .model(&format!("step/{i}/turn/{turn}"), role, req)
                .await?;
            messages.push(Message {
                role: Role::Assistant,
                content: reply.message.content.clone(),
                thinking: None,
                tool_calls: reply.message.tool_calls.clone(),
                tool_name: None,
            });
            // The report, when this turn ends the step: a finish call, or a
            // reply in text (backends that cannot force a call).
            let mut report: Option<String> = None;
            if reply.message.tool_calls.is_empty() {
                report = Some(reply.message.content.trim().to_owned());
            }
            for (k, call) in reply.message.tool_calls.iter().enumerate() {
                if call.name == finish {
                    let text = call
                        .arguments
                        .get("report")
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or_default();
                    let text = if text.trim().is_empty() {
                        reply.message.content.trim()
                    } else {
                        text.trim()
                    };
                    report = Some(text.to_owned());
                    break;
                }
                // The same call again: the model is looping. Say so instead
                // of running it; a model that keeps at it ends the step.
                let fingerprint = (call.name.clone(), call.arguments.clone());
                if done.contains(&fingerprint) {
                    repeats += 1;
                    if repeats > self.submitted.budgets.max_invalid_retries {
                        // The call it keeps asking for has been made: the
                        // step is judged on what its calls did, as if it
                        // had finished.
                        let failure = step_failure(&unresolved, succeeded).or_else(|| {
                            (succeeded == 0)
                                .then(|| "the crew kept repeating the same tool call".to_owned())
                        });
                        return Ok(StepFinished {
                            index: i,
                            result: prompts::compose(
                                "(the model kept repeating the same tool call; step ended)",
                                &evidence,
                            ),
                            complete: failure.is_none(),
                            failure,
                            changes,
                        });
                    }
                    let again = looked_up
                        .iter()
                        .find(|(f, _)| *f == fingerprint)
                        .map(|(_, shown)| shown);
                    messages.push(Message::tool(
                        call.name.clone(),
                        match again {
                            Some(shown) => {
                                format!("(the same call as before; its result again)\n{shown}")
                            }
                            None => format!(
                                "error: you already made exactly this call and its result is \
                                 above; do not repeat it. Make the next call your part needs, \
                                 or call {finish} with your report."
                            ),
                        },
                    ));
                    continue;
                }
                if crew.find(&call.name).is_none() {
                    invalid += 1;
                    if invalid > self.submitted.budgets.max_invalid_retries {
                        return Err(Halt::Failed(format!(
                            "the {role} model kept calling tools it does not have (last: `{}`); its tools are {}",
                            call.name,
                            crew.functions().join(", ")
                        )));
                    }
                    messages.push(Message::tool(
                        call.name.clone(),
                        format!(
                            "error: there is no tool named `{}`; your tools are: {}, {finish}",
                            call.name,
                            crew.functions().join(", ")
                        ),
                    ));
                    continue;
                }
                let step = format!("step/{i}/turn/{turn}/call/{k}");
                if let Some(r) = self.refused(&step, crew, call, &scope, &sources).await? {
                    let refusal = if r.question {
                        prompts::only_a_question()
                    } else if r.kept {
                        self.kept = true;
                        prompts::kept(&r.path)
                    } else if r.source {
                        prompts::a_source(&r.path, &self.outputs)
                    } else if r.not_read {
                        prompts::read_first(&r.path)
                    } else if !r.invented.is_empty() {
                        prompts::invented(&r.invented, &sources)
                    } else {
                        scope.refusal(&r.path)
                    };
                    // A refused call changed nothing: not a failure of
                    // the step (what the task asked for is judged on what
                    // the other calls did), and no objection. Nor is it
                    // evidence for later steps and the answer: it did not
                    // happen (the answer model took a refused delete of a
                    // file the task did not name for a part left undone).
                    unresolved = Some((format!("{} refused: {refusal}", call.name), false));
                    done.push(fingerprint);
                    messages.push(Message::tool(
                        call.name.clone(),
                        format!("error ({refusal})"),
                    ));
                    continue;
                }
                let key = format!("{}:{i}:{calls}", self.d.task);
                calls += 1;
                let result = self.tool(&step, key, crew, call).await?;
                ran += 1;
                let change = self.change_of(crew, call);
                match &result.error {
                    // A reviewer's skip of an interrupted call: their call,
                    // not a failure of the step (and its paths count as made:
                    // the reviewer judged them). It counts as done: a step
                    // whose only call was skipped did not "get nothing done".
                    Some((kind, _)) if kind == "skipped" => {
                        succeeded += 1;
                        if change.is_some() {
                            self.touch(call);
                        }
                    }
                    Some((kind, message)) => {
                        unresolved = Some((
                            format!("{} failed ({kind}): {message}", call.name),
                            change.is_some() || kind == "denied",
                        ));
                    }
                    None => {
                        unresolved = None;
                        succeeded += 1;
                        self.seen.add(&result.for_model(8000));
                        if let Some(change) = change {
                            changes.push(change);
                            self.touch(call);
                        } else {
                            looked = true;
                            self.saw(call);
                            looked_up.push((fingerprint.clone(), result.for_model(8000)));
                        }
                    }
                }
                done.push(fingerprint);
                evidence.push(prompts::evidence(
                    &call.name,
                    &call.arguments,
                    &result.for_model(1500),
                ));
                let mut shown = result.for_model(8000);
                if let Some((kind, _)) = &result.error
                    && kind == "not-found"
                    && let Some(hint) = call.arguments["path"]
                        .as_str()
                        .and_then(|p| prompts::elsewhere(p, files, &self.outputs))
                {
                    shown.push_str(&hint);
                }
                messages.push(Message::tool(call.name.clone(), shown));
            }
            let Some(report) = report else {
                continue;
            };
            // A finish is sent back once for each reason: nothing done yet,
            // a failed call not put right, a path the task names still not
            // made (small models stop early). The reason is the finish
            // call's result, or a user turn after a text reply.
            let objection = if ran == 0 && !nudged_idle {
                nudged_idle = true;
                Some(prompts::use_your_tools())
            } else if let Some((error, _)) = unresolved
                .as_ref()
                .filter(|(_, change)| *change && !nudged_error)
            {
                // Only a failed change: a failed lookup is a finding.
                nudged_error = true;
                Some(prompts::put_it_right(error))
            } else if crew.changes_files()
                && self.changes_files == Some(true)
                && self.touched.is_empty()
                && !self.kept
                && !nudged_unchanged
            {
                nudged_unchanged = true;
                Some(prompts::nothing_changed(if look_first && !looked {
                    &sources
                } else {
                    &[]
                }))
            } else if let Some(missing) = (crew.changes_files() && !nudged_outputs)
                .then(|| self.not_made())
                .filter(|m| !m.is_empty())
            {
                nudged_outputs = true;
                Some(prompts::not_made_yet(&missing))
            } else if let Some(left) = (crew.changes_files() && !nudged_pattern)
                .then(|| self.left_out(&scope, task, files))
                .filter(|l| !l.is_empty())
            {
                nudged_pattern = true;
                Some(prompts::left_out(&left))
            } else {
                None
            };
            let objection = match (objection, &self.check) {
                (Some(o), _) => Some(o),
                (None, Some(c))
                    if crew.changes_files()
                        && !nudged_result
                        && self.touched.iter().any(|t| t == c.output()) =>
                {
                    nudged_result = true;
                    let c = c.clone();
                    let workspace = std::path::PathBuf::from(&self.submitted.workspace);
                    let problems: Vec<String> = self
                        .d
                        .run(
                            &format!("step/{i}/turn/{turn}/check"),
                            Kind::Checked,
                            async { Ok(c.verify(&workspace)) },
                        )
                        .await?;
                    (!problems.is_empty()).then(|| prompts::result_wrong(&c, &problems))
                }
                (None, _) => None,
            };
            if let Some(objection) = objection
                && turn + 1 < max_turns
            {
                // The finish call leaves the conversation (a model that
                // sees its own report repeats it); the objection follows
                // the last results as a user turn.
                if let Some(last) = messages.last_mut()
                    && last.role == Role::Assistant
                {
                    last.tool_calls.retain(|c| c.name != finish);
                    if last.tool_calls.is_empty() {
                        messages.pop();
                    }
                }
                messages.push(Message::user(objection));
                continue;
            }
            let report = if report.is_empty() {
                "(no report)".to_owned()
            } else {
                report
            };
            let failure = step_failure(&unresolved, succeeded);
            return Ok(StepFinished {
                index: i,
                result: prompts::compose(&report, &evidence),
                complete: failure.is_none(),
                failure,
                changes,
            });
        }
        // Out of turns: judged on what its calls did, like a step ended
        // for repeating itself (the checks at the end of the task still
        // apply), not failed for a missing report.
        let failure = step_failure(&unresolved, succeeded).or_else(|| {
            (changes.is_empty() && crew.changes_files() && self.changes_files == Some(true))
                .then(|| format!("stopped after {max_turns} turns without a final report"))
        });
        Ok(StepFinished {
            index: i,
            result: prompts::compose(
                &format!("(stopped after {max_turns} turns without a final report)"),
                &evidence,
            ),
            complete: failure.is_none(),
            failure,
            changes,
        })
    }
}

/// Why a crew's step failed, from what its calls did: its last change (or
/// a call the sandbox denied) ended in an error that was not put right, or
/// no call of the step succeeded (it got nothing done and learnt nothing).
/// A lookup that failed after others succeeded is a finding for the
/// answer, not a failure.
pub(super) fn step_failure(
    unresolved: &Option<(String, bool)>,
    succeeded: usize,
) -> Option<String> {
    match (unresolved, succeeded) {
        (Some((e, true)), _) => Some(e.clone()),
        (_, 0) => Some(match unresolved {
            Some((e, _)) => e.clone(),
            None => "the crew made no successful tool call".to_owned(),
        }),
        _ => None,
    }
}
