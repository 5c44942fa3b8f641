//! The agent loop: consult the reasoner, plan, let the crews work, answer.
//! Written only against [`Durable`], so a resumed task replays it.

use crate::durable::{Durable, decode};
use crate::events::*;
use crate::prompts;
use crate::toolbox::Crew;
use crate::{EngineError, RunOptions};
use camina_journal::{Durability, Update};
use camina_model::{Bridge, ChatReply, ChatRequest, Message, ModelRole, Role, ToolCall};
use camina_registry::Registry;
use camina_sandbox::{CallError, Effect};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Why the loop stopped without an answer.
#[derive(Debug)]
pub enum Halt {
    Engine(EngineError),
    Failed(String),
    Cancelled(String),
    /// The engine is shutting down: stop at the next boundary, resume later.
    Paused,
    Review {
        key: String,
        reason: String,
    },
}

/// A request to stop a running task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// For good, at once (in-flight calls are abandoned).
    Cancel(String),
    /// For now, at the next boundary (in-flight tool calls finish).
    Pause,
}

impl From<EngineError> for Halt {
    fn from(e: EngineError) -> Self {
        Halt::Engine(e)
    }
}

pub type Flow<T> = std::result::Result<T, Halt>;

#[derive(Debug)]
pub struct Agent<'e> {
    pub d: Durable<'e>,
    pub bridge: &'e Bridge,
    pub registry: &'e Registry,
    pub submitted: Submitted,
    pub crews: Vec<Crew>,
    pub opts: RunOptions,
    pub cancel: tokio::sync::watch::Receiver<Option<Stop>>,
    pub model_calls: u32,
    /// The task's expected outputs (from its setup).
    pub outputs: Vec<String>,
    /// Paths successful calls of this task changed (from the replayed or
    /// live results, so decisions made from it replay the same).
    pub touched: Vec<String>,
    /// Paths successful read-only calls of this task looked at (likewise
    /// from the replayed or live results).
    pub read: Vec<String>,
    /// The triage: whether the task asks for changes (`None`: unknown).
    pub changes_files: Option<bool>,
    /// Whether a call was refused because the task says to leave its path
    /// as it is: the task's condition held, so no change is the outcome it
    /// asked for.
    pub kept: bool,
    /// The words of every successful result the task's calls returned
    /// (replayed or live) and of earlier steps' reports: what text written
    /// for the task must come from (see [`crate::ground`]).
    pub seen: crate::ground::Seen,
    /// What the task's words say its result must be, if they say it in a
    /// form the host checks (recorded at the start; see [`crate::checks`]).
    pub check: Option<crate::checks::Check>,
    /// Where the task's before-images go.
    pub undo: crate::undo::Store,
}

impl Agent<'_> {
    fn check(&self) -> Flow<()> {
        match self.cancel.borrow().clone() {
            Some(Stop::Cancel(reason)) => return Err(Halt::Cancelled(reason)),
            Some(Stop::Pause) => return Err(Halt::Paused),
            None => {}
        }
        let b = &self.submitted.budgets;
        if self.model_calls >= b.max_model_calls {
            return Err(Halt::Failed(format!(
                "budget exhausted: {} model calls (max_model_calls)",
                b.max_model_calls
            )));
        }
        let elapsed = self.d.elapsed_ms();
        if elapsed >= b.max_wall_ms {
            return Err(Halt::Failed(format!(
                "budget exhausted: {} s of running time (max_wall_ms {})",
                elapsed / 1000,
                b.max_wall_ms
            )));
        }
        Ok(())
    }

    /// Resolves when a stop is requested: any stop, or only cancellation.
    async fn until_stopped(
        rx: &mut tokio::sync::watch::Receiver<Option<Stop>>,
        pause_too: bool,
    ) -> Halt {
        loop {
            match rx.borrow().clone() {
                Some(Stop::Cancel(r)) => return Halt::Cancelled(r),
                Some(Stop::Pause) if pause_too => return Halt::Paused,
                _ => {}
            }
            if rx.changed().await.is_err() {
                // The engine dropped the sender: never stopped.
                std::future::pending::<()>().await;
            }
        }
    }

    /// A model call as a durable step.
    async fn model(&mut self, step: &str, role: ModelRole, req: ChatRequest) -> Flow<ChatReply> {
        if let Some(r) = self.d.take(step)? {
            match Kind::of(&r) {
                Some(Kind::ModelRequest) => {
                    let recorded: ModelRequestEvent = decode(&r)?;
                    if recorded.request != req || recorded.role != role {
                        return Err(EngineError::Diverged {
                            seq: r.seq,
                            recorded: format!("a different {} request at `{step}`", recorded.role),
                            now: format!(
                                "this {role} request (code, plugins or configuration changed)"
                            ),
                        }
                        .into());
                    }
                    if let Some(reply) = self.d.take_kind(step, Kind::ModelReply)? {
                        self.model_calls += 1;
                        return Ok(decode::<ModelReplyEvent>(&reply)?.reply);
                    }
                    // Asked, but the answer was never recorded: ask again.
                    return self.ask(step, role, req, false).await;
                }
                Some(Kind::ModelReply) => {
                    self.model_calls += 1;
                    return Ok(decode::<ModelReplyEvent>(&r)?.reply);
                }
                _ => {
                    return Err(EngineError::Diverged {
                        seq: r.seq,
                        recorded: format!("{} `{}`", r.kind, r.step),
                        now: format!("model call `{step}`"),
                    }
                    .into());
                }
            }
        }
        self.ask(step, role, req, true).await
    }

    async fn ask(
        &mut self,
        step: &str,
        role: ModelRole,
        req: ChatRequest,
        record_request: bool,
    ) -> Flow<ChatReply> {
        self.check()?;
        if record_request {
            let event = ModelRequestEvent {
                role,
                request: req.clone(),
            };
            self.d
                .record(step, Kind::ModelRequest, &event, Durability::Buffered)
                .await?;
        }
        // What came before this call (the previous reply, tool results,
        // step records) is durable before the model is asked again.
        self.d.sync().await?;
        let mut cancel = self.cancel.clone();
        // A model call is abandoned for a pause too: asking again is harmless.
        let reply = tokio::select! {
            r = self.bridge.chat(role, &req, None) => r,
            halt = Self::until_stopped(&mut cancel, true) => return Err(halt),
        };
        let reply = reply.map_err(|e| Halt::Failed(format!("the {role} model failed: {e}")))?;
        self.model_calls += 1;
        let event = ModelReplyEvent {
            role,
            reply: reply.clone(),
        };
        self.d
            .record(step, Kind::ModelReply, &event, Durability::Buffered)
            .await?;
        Ok(reply)
    }

    /// A tool call as a durable step: intent durable before it runs, result
    /// durable before the next model request.
    async fn tool(
        &mut self,
        step: &str,
        key: String,
        crew: &Crew,
        call: &ToolCall,
    ) -> Flow<ToolResult> {
        if let Some(r) = self.d.take_kind(step, Kind::ToolIntent)? {
            let intent: ToolIntent = decode(&r)?;
            if let Some(result) = self.d.take_kind(step, Kind::ToolResult)? {
                return Ok(decode(&result)?);
            }
            // The call started but its result was never recorded.
            if intent.effect == Effect::SideEffecting {
                match self.opts.interrupted {
                    Some(Decision::Retry) => {
                        self.d
                            .record(
                                step,
                                Kind::Review,
                                &Review {
                                    key: key.clone(),
                                    decision: Decision::Retry,
                                },
                                Durability::Flush,
                            )
                            .await?;
                    }
                    Some(Decision::Skip) => {
                        self.d
                            .record(
                                step,
                                Kind::Review,
                                &Review {
                                    key: key.clone(),
                                    decision: Decision::Skip,
                                },
                                Durability::Flush,
                            )
                            .await?;
                        let result = ToolResult {
                            key,
                            output: None,
                            error: Some((
                                "skipped".into(),
                                "this call was interrupted before its result was recorded and was not run \
                                 again; whether it took effect is unknown"
                                    .into(),
                            )),
                            elapsed_ms: 0,
                            denials: Vec::new(),
                        };
                        self.d
                            .record(step, Kind::ToolResult, &result, Durability::Flush)
                            .await?;
                        return Ok(result);
                    }
                    None => {
                        return Err(Halt::Review {
                            reason: format!(
                                "the side-effecting call {} {} {} (key {key}) was interrupted; it may or may \
                                 not have taken effect. Resume with --retry-interrupted or --skip-interrupted",
                                intent.plugin, intent.tool, intent.input
                            ),
                            key,
                        });
                    }
                }
            }
            return self.execute(step, &intent).await;
        }
        self.check()?;
        let Some(ct) = crew.find(&call.name) else {
            return Err(Halt::Failed(format!(
                "internal: unknown tool `{}` reached execution",
                call.name
            )));
        };
        let plugin = self
            .registry
            .get(&ct.plugin)
            .map_err(|e| Halt::Failed(e.to_string()))?;
        let effect = plugin
            .record
            .tool(&ct.tool)
            .map_or(Effect::SideEffecting, |t| t.effect);
        let intent = ToolIntent {
            plugin: ct.plugin.clone(),
            digest: plugin.record.digest.clone(),
            policy_hash: plugin.record.policy.hash.clone(),
            tool: ct.tool.clone(),
            function: call.name.clone(),
            input: call.arguments.clone(),
            effect,
            key,
        };
        self.d
            .record(step, Kind::ToolIntent, &intent, Durability::Flush)
            .await?;
        self.execute(step, &intent).await
    }

    async fn execute(&mut self, step: &str, intent: &ToolIntent) -> Flow<ToolResult> {
        let started = Instant::now();
        let workspace = PathBuf::from(&self.submitted.workspace);
        let input = intent.input.to_string();
        let mut cancel = self.cancel.clone();
        // A tool call is only abandoned when cancelled: a pause lets it
        // finish (it has its own time limit) so no side effect is left
        // half-recorded.
        // A call that may change the workspace keeps the before-image of
        // every path it touches first (see [`crate::undo`]).
        let keeper = (intent.effect != Effect::ReadOnly).then(|| {
            Arc::new(crate::undo::Keeper::new(
                self.undo.clone(),
                &self.d.task,
                step,
                &workspace,
            ))
        });
        let preserve = keeper
            .clone()
            .map(|k| k as Arc<dyn camina_sandbox::Preserve>);
        let outcome = tokio::select! {
            r = self.registry.call_preserving(
                &intent.plugin, &intent.tool, &input, Some(&workspace), preserve,
            ) => r,
            halt = Self::until_stopped(&mut cancel, false) => return Err(halt),
        };
        if let Some(k) = keeper
            && let Err(e) = k.after()
        {
            tracing::warn!(task = %self.d.task, step, "logging the state after the call: {e}");
        }
        // Every sandbox decision goes to the decision log, with the task
        // and step it belongs to.
        let logged: &[camina_sandbox::Decision] = match &outcome {
            Ok(o) => &o.decisions,
            Err(camina_registry::Error::Call(e)) => e.decisions(),
            Err(_) => &[],
        };
        let entries: Vec<camina_journal::DecisionEntry> = logged
            .iter()
            .map(|d| camina_journal::DecisionEntry {
                task: Some(self.d.task.clone()),
                step: Some(step.to_owned()),
                capability: d.capability.as_str().to_owned(),
                action: d.action.clone(),
                target: d.target.clone(),
                allowed: d.allowed,
                detail: d.detail.clone(),
                ..camina_journal::DecisionEntry::now(&intent.plugin, &intent.digest)
            })
            .collect();
        if let Err(e) = self.d.journal().decision_log().record(&entries) {
            tracing::warn!("decision log: {e}");
        }
        let denials = |ds: &[camina_sandbox::Decision]| {
            ds.iter()
                .filter(|d| !d.allowed)
                .map(|d| {
                    format!(
                        "{} {} {}: {}",
                        d.capability,
                        d.action,
                        d.target,
                        d.detail.as_deref().unwrap_or("denied")
                    )
                })
                .collect::<Vec<_>>()
        };
        let (output, error, denied) = match outcome {
            Ok(o) => match o.result {
                Ok(json) => (Some(json), None, denials(&o.decisions)),
                Err(e) => (
                    None,
                    Some((e.kind.as_str().to_owned(), e.message)),
                    denials(&o.decisions),
                ),
            },
            Err(camina_registry::Error::Call(e)) => {
                let kind = match &e {
                    CallError::Limit { .. } => "limit",
                    CallError::Trap { .. } => "trap",
                    _ => "failed",
                };
                let d = denials(e.decisions());
                (None, Some((kind.to_owned(), e.to_string())), d)
            }
            Err(e) => (None, Some(("failed".to_owned(), e.to_string())), Vec::new()),
        };
        let result = ToolResult {
            key: intent.key.clone(),
            output,
            error,
            elapsed_ms: started.elapsed().as_millis() as u64,
            denials: denied,
        };
        // A lost result of a side-effecting call would need a human (was
        // it done?): flushed now. Any other result is made durable before
        // the next model request (`sync`); losing it re-runs a harmless call.
        let durability = if intent.effect == Effect::SideEffecting {
            Durability::Flush
        } else {
            Durability::Buffered
        };
        self.d
            .record(step, Kind::ToolResult, &result, durability)
            .await?;
        Ok(result)
    }

    /// Asks `role` for JSON until `parse` accepts it (with corrective
    /// turns), as steps `<name>/attempt/<k>`.
    async fn decide<T>(
        &mut self,
        name: &str,
        role: ModelRole,
        mut req: ChatRequest,
        parse: impl Fn(&str) -> std::result::Result<T, String>,
    ) -> Flow<T> {
        let attempts = self.submitted.budgets.max_invalid_retries + 1;
        let mut last = String::new();
        for k in 0..attempts {
            let reply = self
                .model(&format!("{name}/attempt/{k}"), role, req.clone())
                .await?;
            let content = reply.message.content.clone();
            match parse(&content) {
                Ok(v) => return Ok(v),
                Err(reason) => {
                    let reason = if reply.truncated() {
                        format!("{reason}; the reply was cut off at the token limit")
                    } else {
                        reason
                    };
                    tracing::info!(step = name, attempt = k, "invalid model output: {reason}");
                    req.messages.push(Message::assistant(content));
                    req.messages.push(prompts::correction(&reason));
                    last = reason;
                }
            }
        }
        Err(Halt::Failed(format!(
            "the {role} model gave no valid {name} after {attempts} attempts: {last}"
        )))
    }

    /// The whole task; returns the answer.
    pub async fn drive(&mut self) -> Flow<String> {
        let task = self.submitted.prompt.clone();
        let workspace = self.submitted.workspace.clone();

        // 0. What the task works with: recorded at the first start and
        // replayed after, so installing a plugin (or a different reasoner)
        // between a crash and the resume does not change the questions.
        let setup: Setup = match self.d.take_kind("setup", Kind::Setup)? {
            Some(r) => decode(&r)?,
            None => {
                if self.crews.is_empty() {
                    return Err(Halt::Failed(
                        "no crew has tools: install plugins with a policy naming crew \"belter\" or \"drummer\""
                            .into(),
                    ));
                }
                let reasoner = match self.bridge.resolve(ModelRole::Reasoner).await {
                    Ok(r) => r,
                    Err(e) => return Err(Halt::Failed(e.to_string())),
                };
                let coordinator = match self.bridge.resolve(ModelRole::Coordinator).await {
                    Ok(r) => r,
                    Err(e) => return Err(Halt::Failed(e.to_string())),
                };
                // The same model giving itself advice first adds a call and
                // nothing it would not think of when planning.
                let consult = reasoner.backend != coordinator.backend
                    || reasoner.model != coordinator.model
                    || reasoner.can("thinking");
                let setup = Setup {
                    crews: self.crews.clone(),
                    think: reasoner.can("thinking"),
                    consult,
                    files: crate::toolbox::workspace_listing(std::path::Path::new(&workspace), 60),
                    outputs: crate::scope::expected_outputs(
                        &task,
                        std::path::Path::new(&workspace),
                    ),
                    // Measured on the embedded default (1.5B): its plans
                    // for one-crew tasks (verification steps, a drummer
                    // "fetching web pages" for a local search, one file per
                    // step) were the first cause of failure on tasks the
                    // prompts were not tuned on; the task in the user's
                    // own words to one crew did better. Ollama models plan.
                    plans: coordinator.backend != camina_model::Backend::Embedded,
                };
                self.d
                    .record("setup", Kind::Setup, &setup, Durability::Buffered)
                    .await?;
                setup
            }
        };
        let crews = setup.crews.clone();
        let think = setup.think;
        self.outputs = setup.outputs.clone();
        self.check = {
            let (files, dirs) = crate::scope::named_existing(&task, &setup.files);
            let (outputs, ws) = (self.outputs.clone(), workspace.clone());
            let t = task.clone();
            self.d
                .run("check", Kind::Check, async move {
                    Ok(crate::checks::Check::from_task(
                        &t,
                        &files,
                        &dirs,
                        &outputs,
                        std::path::Path::new(&ws),
                    ))
                })
                .await?
        };

        // 1. The reasoner.
        let advice = if setup.consult {
            let reply = self
                .model(
                    "reasoner",
                    ModelRole::Reasoner,
                    prompts::reasoner(&task, &workspace, &crews, think),
                )
                .await?;
            // A reasoner cut off while still thinking has no answer yet: its
            // thinking so far is the advice.
            let text = match (&reply.message.content, &reply.message.thinking) {
                (c, Some(t)) if c.trim().is_empty() => t.clone(),
                (c, _) => c.clone(),
            };
            let advice = Advice {
                text,
                thinking: reply.message.thinking.clone(),
            };
            let advice: Advice = self
                .d
                .run("advice", Kind::Advice, async { Ok(advice) })
                .await?;
            advice.text
        } else {
            String::new()
        };

        // 1b. The triage: does the task ask for changes? A question is
        // answered without changing anything (its crews' changes are
        // refused), and a change asked for must have been made.
        let reply = self
            .model("triage", ModelRole::Coordinator, prompts::triage(&task))
            .await?;
        let triage = Triage {
            changes_files: prompts::parse_triage(&reply.message.content),
        };
        let triage: Triage = self
            .d
            .run("triage", Kind::Triage, async { Ok(triage) })
            .await?;
        self.changes_files = triage.changes_files;

        // 2. The plan.
        let max_steps = self.submitted.budgets.max_steps;
        let alone = if setup.plans {
            None
        } else {
            prompts::one_crew(&task, self.changes_files, &crews)
        };
        let plan = match alone {
            Some(step) => Plan {
                steps: vec![step],
                answer: None,
                done: None,
            },
            None => {
                let req = prompts::plan(&task, &setup.files, &advice, &crews, max_steps);
                self.decide("plan", ModelRole::Coordinator, req, |c| {
                    prompts::parse_plan(c, &crews, max_steps)
                })
                .await?
            }
        };
        let plan: Plan = self.d.run("plan", Kind::Plan, async { Ok(plan) }).await?;
        if let Some(answer) = plan.answer {
            let done = plan.done.unwrap_or(true);
            return self.finish(answer, done).await;
        }

        // 3. The crews, step by step.
        let mut results: Vec<(String, StepFinished)> = Vec::new();
        for (i, s) in plan.steps.iter().enumerate() {
            let started = StepStarted {
                index: i,
                crew: s.crew,
                instruction: s.instruction.clone(),
            };
            let step = format!("step/{i}");
            self.d
                .run(&step, Kind::StepStarted, async { Ok(started) })
                .await?;
            let Some(crew) = crews.iter().find(|c| c.name == s.crew) else {
                return Err(Halt::Failed(format!(
                    "step {}: crew `{}` has no tools any more",
                    i + 1,
                    s.crew
                )));
            };
            // A plan of one step hands the crew the whole task: the user's
            // own words are its job (a paraphrase can only lose something).
            let instruction = if plan.steps.len() == 1 {
                task.as_str()
            } else {
                s.instruction.as_str()
            };
            let finished = self
                .crew_step(i, crew, &task, instruction, &setup.files, &results)
                .await?;
            let finished: StepFinished = self
                .d
                .run(&step, Kind::StepFinished, async { Ok(finished) })
                .await?;
            let failed = !finished.complete;
            results.push((instruction.to_owned(), finished));
            // A failed step ends the plan: the steps after it build on its
            // work (a belter writing what a failed search did not find
            // damages files), and the task was not done.
            if failed {
                break;
            }
        }

        // 4. The answer. A failed step is the answer (no model call needed
        // to say the task was not done).
        if let Some((instruction, r)) = results.iter().find(|(_, r)| !r.complete) {
            let skipped = plan.steps.len() - results.len();
            let mut answer = format!(
                "The task was not done: step {} ({instruction}) failed: {}",
                r.index + 1,
                r.failure.as_deref().unwrap_or("not finished")
            );
            if skipped > 0 {
                answer.push_str(&format!("; the {skipped} step(s) after it were not run"));
            }
            let all: Vec<&str> = results
                .iter()
                .flat_map(|(_, r)| r.changes.iter().map(String::as_str))
                .collect();
            if !all.is_empty() {
                answer.push_str(&format!(
                    ". Changes made before it stopped: {}",
                    all.join("; ")
                ));
            }
            return self.finish(answer, false).await;
        }
        let question = self.changes_files == Some(false);
        let (answer, done) = self
            .decide(
                "answer",
                ModelRole::Coordinator,
                prompts::answer(&task, &results, question),
                prompts::parse_answer,
            )
            .await?;
        self.finish(answer, done).await
    }

    /// Records the answer. A task not done ends `failed`, its answer kept.
    async fn finish(&mut self, answer: String, done: bool) -> Flow<String> {
        let a: Answer = if let Some(r) = self.d.take_kind("answer", Kind::Answer)? {
            decode(&r)?
        } else {
            // The models' word against the workspace: a path the task
            // names that was not there at the start and is not there now
            // was not made.
            let missing = crate::scope::missing(
                &self.outputs,
                std::path::Path::new(&self.submitted.workspace),
                &self.touched,
            );
            let a = if done && !missing.is_empty() {
                Answer {
                    text: format!(
                        "{answer}\n(Not done: the task names {}, which does not exist.)",
                        missing.join(", ")
                    ),
                    done: false,
                }
            } else if let Some(problems) = self
                .check
                .as_ref()
                .filter(|_| done)
                .map(|c| c.verify(std::path::Path::new(&self.submitted.workspace)))
                .filter(|p| !p.is_empty())
            {
                Answer {
                    text: format!("{answer}\n(Not done: {}.)", problems.join("; ")),
                    done: false,
                }
            } else if done
                && self.changes_files == Some(true)
                && self.touched.is_empty()
                && !self.kept
            {
                Answer {
                    text: format!(
                        "{answer}\n(Not done: the task asks for changes to files, and no tool \
                         call made one.)"
                    ),
                    done: false,
                }
            } else {
                Answer { text: answer, done }
            };
            let update = if a.done {
                Update {
                    status: Some(camina_journal::Status::Succeeded),
                    answer: Some(a.text.clone()),
                    clear_error: true,
                    ..Default::default()
                }
            } else {
                Update {
                    answer: Some(a.text.clone()),
                    ..Default::default()
                }
            };
            self.d
                .record_with("answer", Kind::Answer, &a, Durability::Flush, update)
                .await?;
            a
        };
        if !a.done {
            return Err(Halt::Failed(format!(
                "the coordinator reports the task not done: {}",
                a.text
            )));
        }
        Ok(a.text)
    }

    /// What a successful call changed, in a few words (`write_file a.txt`,
    /// `move_path a.txt → b.txt`); None for a read-only tool.
    fn change_of(&self, crew: &Crew, call: &ToolCall) -> Option<String> {
        let ct = crew.find(&call.name)?;
        let plugin = self.registry.get(&ct.plugin).ok()?;
        let effect = plugin.record.tool(&ct.tool).map(|t| t.effect);
        if effect == Some(Effect::ReadOnly) {
            return None;
        }
        let a = &call.arguments;
        let s = |k: &str| a.get(k).and_then(serde_json::Value::as_str);
        Some(match (s("path"), s("from"), s("to")) {
            (Some(p), _, _) => format!("{} {p}", call.name),
            (None, Some(f), Some(t)) => format!("{} {f} → {t}", call.name),
            _ => format!("{} {}", call.name, a),
        })
    }

    /// Whether `call` is refused before it runs: it would change a path
    /// the task does not name, or rewrite an existing file nobody in this
    /// task has read (its change would be written blind: small models
    /// "edit" text they never saw). Decided once and recorded, so a resumed
    /// task replays the same refusals whatever the workspace holds by then.
    async fn refused(
        &mut self,
        step: &str,
        crew: &Crew,
        call: &ToolCall,
        scope: &crate::scope::Scope,
        sources: &[String],
    ) -> Flow<Option<ToolRefused>> {
        match self.d.peek_kind(step) {
            Some(Kind::ToolRefused) => {
                if let Some(r) = self.d.take_kind(step, Kind::ToolRefused)? {
                    return Ok(Some(decode::<ToolRefused>(&r)?));
                }
            }
            Some(_) => return Ok(None),
            None => {}
        }
        let Some(ct) = crew.find(&call.name) else {
            return Ok(None);
        };
        let effect = self
            .registry
            .get(&ct.plugin)
            .ok()
            .and_then(|p| p.record.tool(&ct.tool).map(|t| t.effect));
        if effect == Some(Effect::ReadOnly) {
            return Ok(None);
        }
        let workspace = std::path::Path::new(&self.submitted.workspace);
        let mut refusal = None;
        if self.changes_files == Some(false) {
            let path = ["path", "from", "to"]
                .iter()
                .find_map(|k| call.arguments.get(*k).and_then(serde_json::Value::as_str))
                .unwrap_or_default();
            refusal = Some(ToolRefused {
                tool: call.name.clone(),
                path: path.to_owned(),
                question: true,
                ..ToolRefused::default()
            });
        }
        for key in ["path", "from", "to"] {
            if refusal.is_some() {
                break;
            }
            let Some(path) = call.arguments.get(key).and_then(serde_json::Value::as_str) else {
                continue;
            };
            let at = workspace.join(crate::scope::normal(path));
            let base = ToolRefused {
                tool: call.name.clone(),
                path: path.to_owned(),
                ..ToolRefused::default()
            };
            let why = if scope.keeps(path) {
                Some(ToolRefused { kept: true, ..base })
            } else if key != "to" && scope.protects(path, key == "from") {
                Some(ToolRefused {
                    source: true,
                    ..base
                })
            } else if !scope.allows(path, at.exists()) {
                Some(base)
            } else if key == "path" && ct.writes_content() && at.is_file() && !self.knows(path) {
                Some(ToolRefused {
                    not_read: true,
                    ..base
                })
            } else {
                None
            };
            if why.is_some() {
                refusal = why;
                break;
            }
        }
        // Text for a task that takes its content from other paths it names
        // must come from somewhere (see `crate::ground`).
        let target = call
            .arguments
            .get("path")
            .and_then(serde_json::Value::as_str)
            .map(crate::scope::normal);
        if refusal.is_none()
            && ct.writes_content()
            && let Some(target) = target
            && sources.iter().any(|s| s.trim_end_matches('/') != target)
        {
            let text: Vec<&str> = call
                .arguments
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, _)| !matches!(k.as_str(), "path" | "from" | "to" | "old_text"))
                .filter_map(|(_, v)| v.as_str())
                .collect();
            let invented = self.seen.invented(&text.join("\n"));
            if !invented.is_empty() {
                refusal = Some(ToolRefused {
                    tool: call.name.clone(),
                    path: target.to_owned(),
                    invented,
                    ..ToolRefused::default()
                });
            }
        }
        if let Some(r) = &refusal {
            self.d
                .record(step, Kind::ToolRefused, r, Durability::Buffered)
                .await?;
        }
        Ok(refusal)
    }

    /// Files that match a pattern the task names ("every .tmp file") and
    /// that no call changed, while calls of the task did change others that
    /// match it: the job was done for some and not all. Only files under
    /// the directories the task names, if it names any; from the listing
    /// of the task's start.
    fn left_out(&self, scope: &crate::scope::Scope, task: &str, files: &[String]) -> Vec<String> {
        let changed = |f: &str| self.touched.iter().any(|t| t == f);
        if !self.touched.iter().any(|t| scope.matches_pattern(t)) {
            return Vec::new();
        }
        let (_, dirs) = crate::scope::named_existing(task, files);
        files
            .iter()
            .filter(|f| !f.ends_with('/') && *f != "…")
            .filter(|f| scope.matches_pattern(f) && !changed(f))
            .filter(|f| {
                dirs.is_empty()
                    || dirs
                        .iter()
                        .any(|d| std::path::Path::new(f.as_str()).starts_with(d))
            })
            .cloned()
            .collect()
    }

    /// The reads (and listings) made for a crew before its first turn: the
    /// files and directories the task names that existed when it started
    /// (from the task's recorded setup, so a resume makes the same calls),
    /// through the crew's own read-only `read_file` / `list_dir` tools.
    fn prefetch_calls(&self, crew: &Crew, task: &str, files: &[String]) -> Vec<ToolCall> {
        const MAX_FILES: usize = 4;
        const MAX_DIRS: usize = 2;
        let read_only = |name: &str| {
            crew.tools.iter().find(|t| {
                t.tool == name
                    && self.registry.get(&t.plugin).ok().is_some_and(|p| {
                        p.record.tool(&t.tool).map(|x| x.effect) == Some(Effect::ReadOnly)
                    })
            })
        };
        let (named_files, named_dirs) = crate::scope::named_existing(task, files);
        let mut calls = Vec::new();
        if let Some(read) = read_only("read_file") {
            calls.extend(named_files.iter().take(MAX_FILES).map(|f| ToolCall {
                name: read.function.clone(),
                arguments: serde_json::json!({"path": f}),
            }));
        }
        if let Some(list) = read_only("list_dir") {
            calls.extend(named_dirs.iter().take(MAX_DIRS).map(|d| ToolCall {
                name: list.function.clone(),
                arguments: serde_json::json!({"path": d, "recursive": true}),
            }));
        }
        // A task that collects the lines carrying a marker from its
        // sources (the check derived from its words says which): the
        // search it describes, made for the crew that writes the result
        // like the reads above (measured: the 1.5B model otherwise greps,
        // then reads one file and copies its code).
        if let Some(crate::checks::Check::Lines(c)) = &self.check
            && crew.changes_files()
            && let Some(grep) = read_only("grep")
        {
            calls.extend(c.sources.iter().take(MAX_DIRS).map(|s| ToolCall {
                name: grep.function.clone(),
                arguments: serde_json::json!({
                    "path": s.trim_end_matches('/'),
                    "pattern": regex_escape(&c.marker),
                    "case_insensitive": false,
                }),
            }));
        }
        calls
    }

    /// Whether a call of this task has read or written `path`.
    fn knows(&self, path: &str) -> bool {
        let path = crate::scope::normal(path);
        self.read.iter().chain(&self.touched).any(|p| p == path)
    }

    /// Notes the path a successful read-only call looked at.
    fn saw(&mut self, call: &ToolCall) {
        if let Some(p) = call
            .arguments
            .get("path")
            .and_then(serde_json::Value::as_str)
        {
            self.read.push(crate::scope::normal(p).to_owned());
        }
    }

    /// Notes the paths a successful change made (a move's both ends).
    fn touch(&mut self, call: &ToolCall) {
        for key in ["path", "from", "to"] {
            if let Some(p) = call.arguments.get(key).and_then(serde_json::Value::as_str) {
                self.touched.push(crate::scope::normal(p).to_owned());
            }
        }
    }

    /// The expected outputs no successful call has made yet.
    fn not_made(&self) -> Vec<String> {
        self.outputs
            .iter()
            .filter(|o| {
                !self.touched.iter().any(|t| {
                    t == *o
                        || std::path::Path::new(t).starts_with(o.as_str())
                        || (!o.contains('/') && t.ends_with(&format!("/{o}")))
                })
            })
            .cloned()
            .collect()
    }

    async fn crew_step(
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
                    // the reviewer judged them).
                    Some((kind, _)) if kind == "skipped" => {
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
fn step_failure(unresolved: &Option<(String, bool)>, succeeded: usize) -> Option<String> {
    match (unresolved, succeeded) {
        (Some((e, true)), _) => Some(e.clone()),
        (_, 0) => Some(match unresolved {
            Some((e, _)) => e.clone(),
            None => "the crew made no successful tool call".to_owned(),
        }),
        _ => None,
    }
}

/// `text` as a regular expression that matches it literally.
fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
