//! The agent loop: consult the reasoner, plan, let the crews work, answer.
//! Written only against [`Durable`], so a resumed task replays it.

use crate::durable::Durable;
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

mod crew;
mod guards;

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
        match e {
            EngineError::Cancelled(reason) => Halt::Cancelled(reason),
            e => Halt::Engine(e),
        }
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

    /// A model call as a durable step: its request recorded (or compared
    /// with the recorded one), then its reply.
    async fn model(&mut self, step: &str, role: ModelRole, req: ChatRequest) -> Flow<ChatReply> {
        if let Some(reply) = self.d.request(step, role, &req).await? {
            self.model_calls += 1;
            return Ok(reply);
        }
        // What came before this call (the previous reply, tool results,
        // step records) is durable before the model is asked.
        self.d.sync().await?;
        let this = &*self;
        let live = async move {
            this.check()?;
            let mut cancel = this.cancel.clone();
            // A model call is abandoned for a pause too: asking again is
            // harmless.
            let reply = tokio::select! {
                r = this.bridge.chat(role, &req, None) => r,
                halt = Self::until_stopped(&mut cancel, true) => return Err(halt),
            };
            let reply = reply.map_err(|e| {
                Halt::Failed(format!("the {role} model failed: {}", e.with_causes()))
            })?;
            Ok(ModelReplyEvent { role, reply })
        };
        let (event, _) = self
            .d
            .step(
                step,
                Kind::ModelReply,
                Durability::Buffered,
                |_| Update::default(),
                live,
            )
            .await?;
        self.model_calls += 1;
        Ok(event.reply)
    }

    /// A tool call as a durable step: intent durable before it runs, result
    /// durable before the next model request (a side-effecting call's at
    /// once).
    async fn tool(
        &mut self,
        step: &str,
        key: String,
        crew: &Crew,
        call: &ToolCall,
    ) -> Flow<ToolResult> {
        let this = &*self;
        let intent_key = key.clone();
        let live = async move {
            this.check()?;
            let Some(ct) = crew.find(&call.name) else {
                return Err(Halt::Failed(format!(
                    "internal: unknown tool `{}` reached execution",
                    call.name
                )));
            };
            let plugin = this
                .registry
                .get(&ct.plugin)
                .map_err(|e| Halt::Failed(e.to_string()))?;
            let effect = plugin
                .record
                .tool(&ct.tool)
                .map_or(Effect::SideEffecting, |t| t.effect);
            Ok(ToolIntent {
                plugin: ct.plugin.clone(),
                digest: plugin.record.digest.clone(),
                policy_hash: plugin.record.policy.hash.clone(),
                tool: ct.tool.clone(),
                function: call.name.clone(),
                input: call.arguments.clone(),
                effect,
                key: intent_key,
            })
        };
        let (intent, fresh) = self
            .d
            .step(
                step,
                Kind::ToolIntent,
                Durability::Flush,
                |_| Update::default(),
                live,
            )
            .await?;
        if !fresh && self.d.external() && !self.opts.allow_changed_plugins {
            self.same_plugin(&intent)?;
        }
        // A lost result of a side-effecting call would need a human (was
        // it done?): flushed at once. Any other result is made durable
        // before the next model request (`sync`); losing it re-runs a
        // harmless call.
        let durability = if intent.effect == Effect::SideEffecting {
            Durability::Flush
        } else {
            Durability::Buffered
        };
        // An intent recorded by an earlier run whose result is not
        // recorded: the call started and was interrupted. Run again unless
        // it has side effects.
        let interrupted = !fresh && intent.effect == Effect::SideEffecting;
        let this = &*self;
        let live = async {
            if interrupted {
                return Ok(None);
            }
            this.execute(step, &intent).await.map(Some)
        };
        if let Some(result) = self
            .d
            .maybe(step, Kind::ToolResult, durability, live)
            .await?
        {
            return Ok(result);
        }
        let mut reviews = 0u32;
        loop {
            let reason = format!(
                "the side-effecting call {} {} {} (key {key}) was interrupted; it may or may not \
                 have taken effect. Resume with --retry-interrupted or --skip-interrupted",
                intent.plugin, intent.tool, intent.input
            );
            // The decision the resume came with settles the first review
            // only.
            let given = if reviews == 0 {
                self.opts.interrupted
            } else {
                None
            };
            let decision = self.d.review(&key, reviews, reason, given).await?;
            let fresh_review = self
                .d
                .record_fresh(
                    step,
                    Kind::Review,
                    &Review {
                        key: key.clone(),
                        decision,
                    },
                    Durability::Flush,
                )
                .await?;
            if decision == Decision::Skip {
                let skipped = ToolResult {
                    key,
                    output: None,
                    error: Some((
                        "skipped".into(),
                        "this call was interrupted before its result was recorded and was not \
                         run again; whether it took effect is unknown"
                            .into(),
                    )),
                    elapsed_ms: 0,
                    denials: Vec::new(),
                };
                let (result, _) = self
                    .d
                    .step(
                        step,
                        Kind::ToolResult,
                        Durability::Flush,
                        |_| Update::default(),
                        async { Ok(skipped) },
                    )
                    .await?;
                return Ok(result);
            }
            // Retry. On an outside engine a replayed review with no result
            // after it means the retry itself was cut off: it needs a new
            // decision, not a silent third run.
            let again = !fresh_review && self.d.external();
            let this = &*self;
            let live = async {
                if again {
                    return Ok(None);
                }
                this.execute(step, &intent).await.map(Some)
            };
            if let Some(result) = self
                .d
                .maybe(step, Kind::ToolResult, Durability::Flush, live)
                .await?
            {
                return Ok(result);
            }
            reviews += 1;
        }
    }

    /// Refuses to replay an intent recorded with another build or policy of
    /// its plugin than this process has (the journal's engine checks every
    /// intent before the run; see [`crate::Engine::check_plugins`]).
    fn same_plugin(&self, intent: &ToolIntent) -> Flow<()> {
        let now = self
            .registry
            .get(&intent.plugin)
            .ok()
            .map(|p| (p.record.digest.clone(), p.record.policy.hash.clone()));
        if now.as_ref() == Some(&(intent.digest.clone(), intent.policy_hash.clone())) {
            return Ok(());
        }
        Err(EngineError::PluginChanged {
            task: self.d.task.clone(),
            plugin: intent.plugin.clone(),
            was: format!("{} / {}", intent.digest, intent.policy_hash),
            now: now.map_or_else(
                || "(not installed)".to_owned(),
                |(d, p)| format!("{d} / {p}"),
            ),
        }
        .into())
    }

    /// Runs the call in the sandbox now; the caller records the result.
    async fn execute(&self, step: &str, intent: &ToolIntent) -> Flow<ToolResult> {
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
        if let Err(e) = self.d.journal().decision_log().record(entries) {
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
                (
                    None,
                    Some((kind.to_owned(), camina_sandbox::error_chain(&e))),
                    d,
                )
            }
            Err(e) => (
                None,
                Some(("failed".to_owned(), camina_sandbox::error_chain(&e))),
                Vec::new(),
            ),
        };
        Ok(ToolResult {
            key: intent.key.clone(),
            output,
            error,
            elapsed_ms: started.elapsed().as_millis() as u64,
            denials: denied,
        })
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
        let this = &*self;
        let (t, ws) = (&task, &workspace);
        let live = async move {
            if this.crews.is_empty() {
                return Err(Halt::Failed(
                        "no crew has tools: install plugins with a policy naming crew \"belter\" or \"drummer\""
                            .into(),
                    ));
            }
            let reasoner = match this.bridge.resolve(ModelRole::Reasoner).await {
                Ok(r) => r,
                Err(e) => return Err(Halt::Failed(e.to_string())),
            };
            let coordinator = match this.bridge.resolve(ModelRole::Coordinator).await {
                Ok(r) => r,
                Err(e) => return Err(Halt::Failed(e.to_string())),
            };
            // The same model giving itself advice first adds a call and
            // nothing it would not think of when planning.
            let consult = reasoner.backend != coordinator.backend
                || reasoner.model != coordinator.model
                || reasoner.can("thinking");
            let setup = Setup {
                crews: this.crews.clone(),
                think: reasoner.can("thinking"),
                consult,
                files: crate::toolbox::workspace_listing(std::path::Path::new(ws), 60),
                outputs: crate::scope::expected_outputs(t, std::path::Path::new(ws)),
                // Measured on the embedded default (1.5B): its plans
                // for one-crew tasks (verification steps, a drummer
                // "fetching web pages" for a local search, one file per
                // step) were the first cause of failure on tasks the
                // prompts were not tuned on; the task in the user's
                // own words to one crew did better. Ollama models plan.
                plans: coordinator.backend != camina_model::Backend::Embedded,
            };
            Ok(setup)
        };
        let (setup, _): (Setup, _) = self
            .d
            .step(
                "setup",
                Kind::Setup,
                Durability::Buffered,
                |_| Update::default(),
                live,
            )
            .await?;
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
        let this = &*self;
        let live = async move {
            // The models' word against the workspace: a path the task
            // names that was not there at the start and is not there now
            // was not made.
            let missing = crate::scope::missing(
                &this.outputs,
                std::path::Path::new(&this.submitted.workspace),
                &this.touched,
            );
            let a = if done && !missing.is_empty() {
                Answer {
                    text: format!(
                        "{answer}\n(Not done: the task names {}, which does not exist.)",
                        missing.join(", ")
                    ),
                    done: false,
                }
            } else if let Some(problems) = this
                .check
                .as_ref()
                .filter(|_| done)
                .map(|c| c.verify(std::path::Path::new(&this.submitted.workspace)))
                .filter(|p| !p.is_empty())
            {
                Answer {
                    text: format!("{answer}\n(Not done: {}.)", problems.join("; ")),
                    done: false,
                }
            } else if done
                && this.changes_files == Some(true)
                && this.touched.is_empty()
                && !this.kept
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
            Ok(a)
        };
        let update = |a: &Answer| {
            if a.done {
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
            }
        };
        let (a, _): (Answer, _) = self
            .d
            .step("answer", Kind::Answer, Durability::Flush, update, live)
            .await?;
        if !a.done {
            return Err(Halt::Failed(format!(
                "the coordinator reports the task not done: {}",
                a.text
            )));
        }
        Ok(a.text)
    }
}
