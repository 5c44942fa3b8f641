//! `camina run` and `camina task …`

use crate::{Context, Reported, UsageError};
use anyhow::Context as _;
use camina_coordinator::events::{Budgets, Decision, Event, Kind, ModelReplyEvent};
use camina_coordinator::runner::Runner;
use camina_coordinator::{Engine, RunOptions};
use camina_journal::{Record, Status, TaskSummary};
use camina_model::ModelRole;
use clap::{Args, Subcommand};
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// What to do, in words.
    pub prompt: String,
    /// The task's workspace: what Belters may change and Drummers search
    /// (default: the current directory).
    #[arg(long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// Run every role on this model (`auto`, `ollama:<name>`, `embedded`,
    /// `embedded:<path.gguf>`), overriding config.toml.
    #[arg(long, value_name = "SPEC")]
    pub model: Option<String>,
    /// Model turns per crew step.
    #[arg(long, default_value_t = Budgets::default().max_turns)]
    pub max_turns: u32,
    /// Steps a plan may have.
    #[arg(long, default_value_t = Budgets::default().max_steps)]
    pub max_steps: u32,
    /// Model calls for the whole task.
    #[arg(long, default_value_t = Budgets::default().max_model_calls)]
    pub max_model_calls: u32,
    /// Running time for the whole task (e.g. `30m`, `90s`).
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    pub max_time: std::time::Duration,
    /// Print the finished task as JSON instead of the answer.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum TaskCommand {
    /// Tasks, newest first.
    List {
        #[arg(long)]
        json: bool,
        /// Only tasks in this state.
        #[arg(long)]
        status: Option<String>,
    },
    /// One task: plan, steps, tool calls, model replies, answer.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Finish an interrupted, failed or needs-review task without redoing
    /// finished work.
    Resume {
        /// The task id (or a unique prefix).
        #[arg(required_unless_present = "all")]
        id: Option<String>,
        /// Resume every interrupted task.
        #[arg(long, conflicts_with = "id")]
        all: bool,
        /// Run an interrupted side-effecting call again.
        #[arg(long, conflicts_with = "skip_interrupted")]
        retry_interrupted: bool,
        /// Do not run an interrupted side-effecting call again.
        #[arg(long)]
        skip_interrupted: bool,
        /// Accept plugins whose digest or policy changed since the task
        /// called them.
        #[arg(long)]
        allow_changed_plugins: bool,
        #[arg(long)]
        json: bool,
    },
    /// Stop a task (a running one at once).
    Cancel { id: String },
    /// What a task changed in its workspace: every path it created,
    /// changed, moved or deleted, with unified diffs for text files.
    Diff {
        id: String,
        /// Only one line per path (what changed, lines added/removed).
        #[arg(long)]
        stat: bool,
        #[arg(long)]
        json: bool,
    },
    /// Put every path a task changed back as it was before the task.
    /// Refuses, touching nothing, if a path changed after the task.
    Undo {
        id: String,
        /// Restore paths that changed after the task too (their later
        /// changes are lost).
        #[arg(long)]
        force: bool,
        /// Say what would be restored; change nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
}

/// Lists every interrupted task (other than `except`) on stderr, so a user
/// starting new work learns what a crash left behind.
fn note_interrupted(engine: &Engine, except: &str) {
    let Ok(tasks) = engine.tasks() else {
        return;
    };
    let ids: Vec<&str> = tasks
        .iter()
        .filter(|t| t.status == Status::Interrupted && t.id != except)
        .map(|t| t.id.as_str())
        .collect();
    if !ids.is_empty() {
        eprintln!(
            "note: {} task(s) were interrupted: {}; resume with `camina task resume --all`",
            ids.len(),
            ids.join(", ")
        );
    }
}

/// Opens the engine; a journal held by another process is reported as
/// such.
pub async fn engine(cx: &Context, model: Option<&str>) -> anyhow::Result<Arc<Engine>> {
    let path = cx.layout().journal();
    let (journal, _) = camina_journal::Journal::open(&path)?;
    journal
        .decision_log()
        .set_retention(cx.config.audit.retention())?;
    let registry = cx.registry()?;
    let mut config = cx.config.model_config();
    if let Some(spec) = model {
        let spec = camina_model::ModelSpec::try_from(spec.to_owned())
            .map_err(|e| UsageError(format!("--model: {e}")))?;
        config.models = camina_model::config::ModelsSection::all(spec);
    }
    let bridge = camina_model::Bridge::new(config, &cx.home)?;
    let engine = Engine::new(
        Arc::new(journal),
        Arc::new(registry),
        Arc::new(bridge),
        &cx.home,
    );
    // Before-images past `[journal] keep_undo` / `max_undo_mib` go now,
    // while this process holds the journal (no task is writing images).
    let (keep, cap) = cx.config.journal.undo_limits();
    if keep.is_some() || cap.is_some() {
        match engine.undo_store().prune(keep, cap) {
            Ok(pruned) if !pruned.is_empty() => eprintln!(
                "note: pruned the before-images of {} task(s) ([journal] keep_undo / \
                 max_undo_mib): their changes can no longer be undone",
                pruned.len()
            ),
            Ok(_) => {}
            Err(e) => eprintln!(
                "warning: pruning before-images under {}: {e}",
                cx.home.display()
            ),
        }
    }
    Ok(Arc::new(engine))
}

fn clip(s: &str, n: usize) -> String {
    let one_line: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= n {
        one_line
    } else {
        format!("{}…", one_line.chars().take(n).collect::<String>())
    }
}

/// One journal record as a progress line (None: not worth a line).
fn render(r: &Record) -> Option<String> {
    let event = Event::decode(r).ok()?;
    Some(match event {
        Event::Started(s) => {
            if s.resumed {
                "▶ resumed".into()
            } else {
                "▶ started".into()
            }
        }
        Event::Advice(a) => format!("reasoner: {}", clip(&a.text, 200)),
        Event::Plan(p) if !p.steps.is_empty() => {
            let mut out = format!("plan: {} step(s)", p.steps.len());
            for (i, st) in p.steps.iter().enumerate() {
                out.push_str(&format!(
                    "\n  {}. [{}] {}",
                    i + 1,
                    st.crew,
                    clip(&st.instruction, 160)
                ));
            }
            out
        }
        Event::Plan(_) => "plan: answer directly".into(),
        Event::StepStarted(s) => format!(
            "step {} [{}]: {}",
            s.index + 1,
            s.crew,
            clip(&s.instruction, 200)
        ),
        Event::ToolIntent(i) => format!(
            "  → {} {} {}",
            i.plugin,
            i.tool,
            clip(&i.input.to_string(), 160)
        ),
        Event::ToolResult(res) => match (&res.output, &res.error) {
            (Some(o), _) => format!("    ✓ {} ms: {}", res.elapsed_ms, clip(o, 160)),
            (_, Some((kind, message))) => format!("    ✗ {kind}: {}", clip(message, 200)),
            _ => "    ✓".into(),
        },
        Event::StepFinished(f) => {
            if f.complete {
                format!("  done: {}", clip(&f.result, 200))
            } else {
                format!("  stopped: {}", clip(&f.result, 200))
            }
        }
        Event::ModelReply(m) => {
            let msg = &m.reply.message;
            if matches!(m.role, ModelRole::Belter | ModelRole::Drummer)
                && msg.tool_calls.is_empty()
                && !msg.content.is_empty()
            {
                format!("  {}: {}", m.role, clip(&msg.content, 200))
            } else {
                return None;
            }
        }
        Event::Answer(_) => "✓ answered".into(),
        Event::Failed(r) => format!("✗ failed: {}", r.reason),
        Event::Cancelled(r) => format!("✗ cancelled: {}", r.reason),
        Event::NeedsReview(n) => format!("⏸ needs review: {}", n.reason),
        Event::Review(r) => format!(
            "  review decision for {}: {}",
            r.key,
            match r.decision {
                Decision::Retry => "retry",
                Decision::Skip => "skip",
            }
        ),
        _ => return None,
    })
}

/// Runs `id` on `engine`, printing progress to stderr.
async fn drive(
    engine: &Arc<Engine>,
    id: &str,
    opts: RunOptions,
    json_out: bool,
) -> anyhow::Result<()> {
    let mut feed = engine.subscribe();
    // The last record printed: history before this run is not. Progress
    // is printed live from the feed; whatever it missed (it lagged, or
    // the task ended first) is printed from the journal, in order.
    let before = engine.task(id)?.events as i64 - 1;
    let printed = Arc::new(std::sync::atomic::AtomicI64::new(before));
    let catch_up = {
        let (reader, printed, id) = (engine.reader(), printed.clone(), id.to_owned());
        move || {
            if let Ok(records) = reader.records(&id) {
                for rec in records {
                    print_once(&rec, &printed);
                }
            }
        }
    };
    let printer = {
        let (printed, task_id, catch_up) = (printed.clone(), id.to_owned(), catch_up.clone());
        tokio::spawn(async move {
            loop {
                match feed.recv().await {
                    Ok((tid, rec)) if tid == task_id => print_once(&rec, &printed),
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => catch_up(),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        })
    };
    // One task in the foreground, through the engine's runner (the same
    // scheduling as `camina serve` and `camina mcp`).
    let result = Runner::new(engine.clone(), 1)
        .run(id, opts)
        .await
        .unwrap_or(Err(camina_coordinator::EngineError::ShuttingDown));
    printer.abort();
    let _ = printer.await;
    catch_up();
    let summary = result?;
    finish(&summary, json_out)
}

/// Prints a record's progress line unless it (or a later one) was printed.
fn print_once(rec: &camina_journal::Record, printed: &std::sync::atomic::AtomicI64) {
    use std::sync::atomic::Ordering;
    let seq = rec.seq as i64;
    if printed.fetch_max(seq, Ordering::SeqCst) < seq
        && let Some(line) = render(rec)
    {
        eprintln!("{line}");
    }
}

fn finish(summary: &TaskSummary, json_out: bool) -> anyhow::Result<()> {
    if json_out {
        println!("{}", serde_json::to_string_pretty(summary)?);
    }
    match summary.status {
        Status::Succeeded => {
            if !json_out {
                println!("{}", summary.answer.as_deref().unwrap_or_default());
            }
            Ok(())
        }
        status => {
            eprintln!(
                "task {} {status}{}",
                summary.id,
                summary
                    .error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            );
            Err(Reported.into())
        }
    }
}

pub async fn run(cx: &Context, args: RunArgs) -> anyhow::Result<()> {
    let workspace = match &args.workspace {
        Some(w) => w.clone(),
        None => std::env::current_dir().context("cannot read the current directory")?,
    };
    if !workspace.is_dir() {
        return Err(UsageError(format!(
            "--workspace {} is not a directory",
            workspace.display()
        ))
        .into());
    }
    if args.prompt.trim().is_empty() {
        return Err(UsageError("the task prompt is empty".into()).into());
    }
    let engine = engine(cx, args.model.as_deref()).await?;
    let budgets = Budgets {
        max_turns: args.max_turns.max(1),
        max_model_calls: args.max_model_calls.max(1),
        max_steps: args.max_steps.clamp(1, 50),
        max_wall_ms: args.max_time.as_millis() as u64,
        ..Budgets::default()
    };
    let task = engine.submit(&args.prompt, &workspace, budgets).await?;
    eprintln!("task {}", task.id);
    note_interrupted(&engine, &task.id);
    drive(&engine, &task.id, RunOptions::default(), args.json).await
}

pub async fn task(cx: &Context, cmd: TaskCommand) -> anyhow::Result<()> {
    match cmd {
        TaskCommand::List { json, status } => {
            let filter = status
                .map(|s| Status::parse(&s).ok_or_else(|| UsageError(format!("--status `{s}`: use queued, running, succeeded, failed, cancelled, interrupted or needs-review"))))
                .transpose()?;
            let engine = engine(cx, None).await?;
            let tasks: Vec<TaskSummary> = engine
                .tasks()?
                .into_iter()
                .filter(|t| filter.is_none_or(|f| t.status == f))
                .collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&tasks)?);
            } else if tasks.is_empty() {
                println!("no tasks");
            } else {
                println!("{:32}  {:12}  {:24}  PROMPT", "ID", "STATUS", "CREATED");
                for t in &tasks {
                    println!(
                        "{:32}  {:12}  {:24}  {}",
                        t.id,
                        t.status.as_str(),
                        t.created_at,
                        clip(&t.prompt, 60)
                    );
                }
            }
            Ok(())
        }
        TaskCommand::Show { id, json } => {
            let engine = engine(cx, None).await?;
            let view = engine.view(&id)?;
            let (t, records, undoable) = (&view.task, &view.records, &view.undoable);
            if json {
                println!("{}", serde_json::to_string_pretty(&view.json())?);
            } else {
                println!("task {}  {}", t.id, t.status);
                println!("prompt: {}", t.prompt);
                println!("workspace: {}", t.workspace);
                println!("created: {}  updated: {}", t.created_at, t.updated_at);
                let mut marked = 0;
                for r in records {
                    if let Some(line) = render(r) {
                        let paths = match undoable.get(&r.step) {
                            Some(p) if Kind::of(r) == Some(Kind::ToolResult) => p.clone(),
                            _ => Vec::new(),
                        };
                        if paths.is_empty() {
                            println!("{line}");
                        } else {
                            marked += paths.len();
                            println!("{line}\n      ↶ undoable: {}", paths.join(", "));
                        }
                    }
                }
                if view.pruned {
                    println!(
                        "(its before-images were pruned: its changes can no longer be undone)"
                    );
                } else if marked > 0 {
                    println!(
                        "(review with `camina task diff {0}`, undo with `camina task undo {0}`)",
                        t.id
                    );
                }
                let calls: Vec<(&Record, Box<ModelReplyEvent>)> = records
                    .iter()
                    .filter_map(|r| match Event::decode(r) {
                        Ok(Event::ModelReply(m)) => Some((r, m)),
                        _ => None,
                    })
                    .collect();
                if !calls.is_empty() {
                    println!("\nmodel calls (prompt tokens sent / evaluated, generated, time):");
                    for (r, m) in calls {
                        let reply = &m.reply;
                        println!(
                            "  {:24} {:11} {:>6} / {:>6} {:>5}  {:.1} s",
                            r.step,
                            m.role.as_str(),
                            reply.prompt_tokens,
                            reply
                                .prompt_eval_tokens
                                .map_or_else(|| "?".to_owned(), |n| n.to_string()),
                            reply.completion_tokens,
                            reply.timing.total_ms / 1e3
                        );
                    }
                }
                if let Some(a) = &t.answer {
                    println!("\nanswer:\n{a}");
                }
                if let Some(e) = &t.error {
                    println!("\n{}: {e}", t.status);
                }
            }
            Ok(())
        }
        TaskCommand::Resume {
            id,
            all,
            retry_interrupted,
            skip_interrupted,
            allow_changed_plugins,
            json,
        } => {
            let engine = engine(cx, None).await?;
            let opts = RunOptions {
                interrupted: if retry_interrupted {
                    Some(Decision::Retry)
                } else if skip_interrupted {
                    Some(Decision::Skip)
                } else {
                    None
                },
                allow_changed_plugins,
            };
            if all {
                // Undos a crash cut short are finished first.
                let left = engine.left_over()?;
                for (t, force) in &left.undos {
                    let (_, report) = engine.undo(&t.id, *force, false).await?;
                    eprintln!(
                        "task {}: finished the undo that was cut short ({} path(s) restored now)",
                        t.id,
                        report.restored.len()
                    );
                }
                let waiting = left.waiting;
                if waiting.is_empty() {
                    eprintln!("no interrupted tasks");
                    return Ok(());
                }
                let mut failed = false;
                for t in waiting {
                    eprintln!("task {}", t.id);
                    if drive(&engine, &t.id, opts, json).await.is_err() {
                        failed = true;
                    }
                }
                return if failed { Err(Reported.into()) } else { Ok(()) };
            }
            let id = id.unwrap_or_default();
            let t = engine.task(&id)?;
            eprintln!("task {}", t.id);
            // An undo a crash cut short: resuming the task finishes it.
            if let Some(force) = engine.unfinished_undo(&t.id)? {
                let (_, report) = engine.undo(&t.id, force, false).await?;
                eprintln!(
                    "finished the undo that was cut short: {} path(s) restored now, {} already",
                    report.restored.len(),
                    report.already.len()
                );
                return Ok(());
            }
            note_interrupted(&engine, &t.id);
            drive(&engine, &t.id, opts, json).await
        }
        TaskCommand::Diff { id, stat, json } => {
            let engine = engine(cx, None).await?;
            let (t, changes) = engine.diff(&id)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({"task": t.id, "changes": changes}))?
                );
                return Ok(());
            }
            if changes.is_empty() {
                println!("task {} changed nothing in {}", t.id, t.workspace);
                return Ok(());
            }
            for c in &changes {
                let what = match &c.from {
                    Some(from) => format!("moved    {from} → {}", c.path),
                    None => format!("{:8} {}", c.change, c.path),
                };
                let size = match (&c.before, &c.after) {
                    (_, camina_coordinator::undo::State::File { size, digest, .. })
                        if c.diff.is_none() && c.from.is_none() =>
                    {
                        format!("  ({size} bytes, {digest})")
                    }
                    _ if c.diff.is_some() => format!("  (+{} -{})", c.added, c.removed),
                    _ => String::new(),
                };
                println!("{what}{size}");
                if !stat && let Some(d) = &c.diff {
                    print!("{d}");
                }
            }
            Ok(())
        }
        TaskCommand::Undo {
            id,
            force,
            dry_run,
            json,
        } => {
            let engine = engine(cx, None).await?;
            let (t, report) = engine.undo(&id, force, dry_run).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({"task": t.id, "undo": report}))?
                );
                return Ok(());
            }
            let verb = if dry_run { "would restore" } else { "restored" };
            for (path, what) in &report.restored {
                println!("{verb} {path}: {what}");
            }
            for path in &report.lost {
                println!(
                    "cannot restore {path}: its content was not kept (too large or not a file)"
                );
            }
            if report.restored.is_empty() && report.lost.is_empty() {
                println!(
                    "nothing to undo: every path task {} changed is as it was before it",
                    t.id
                );
            } else if !report.already.is_empty() {
                println!("{} path(s) already as before", report.already.len());
            }
            Ok(())
        }
        TaskCommand::Cancel { id } => {
            match camina_journal::Journal::open(&cx.layout().journal()) {
                Err(camina_journal::Error::Locked { .. }) => {
                    // Another process runs it: leave a request it polls for.
                    let dir = camina_coordinator::cancel_dir(&cx.home);
                    std::fs::create_dir_all(&dir)?;
                    if id.len() < 6 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
                        return Err(
                            UsageError("give at least 6 hex digits of the task id".into()).into(),
                        );
                    }
                    std::fs::write(dir.join(&id), b"")?;
                    println!("cancel requested: the camina process running {id} stops it at once");
                    Ok(())
                }
                Err(e) => Err(e.into()),
                Ok((journal, _)) => {
                    drop(journal);
                    let engine = engine(cx, None).await?;
                    let t = engine.task(&id)?;
                    let t = engine.cancel(&t.id, "cancelled by the user").await?;
                    println!("task {} {}", t.id, t.status);
                    Ok(())
                }
            }
        }
    }
}
