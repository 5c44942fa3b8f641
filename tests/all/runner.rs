//! The engine's task runner (shared by `camina run`, `serve` and `mcp`).

use crate::scripts::*;
use camina_coordinator::RunOptions;
use camina_coordinator::events::Budgets;
use camina_journal::Status;
use fake_ollama::{FakeOllama, Reply};
use std::sync::Arc;

/// The engine's runner (the one `camina run`, `camina serve` and `camina
/// mcp` share): with one slot a second task waits `queued` while the first
/// runs; a task is taken once; shutdown refuses new work and leaves the
/// running task `interrupted` (resumable) and the waiting one `queued`,
/// both picked up by the next start.
#[tokio::test]
async fn the_runner_runs_one_at_a_time_takes_a_task_once_and_stops_on_shutdown() {
    use camina_coordinator::runner::{Refused, Runner};
    // Every reply takes 300 ms: the first task is still running while the
    // checks below look.
    let fake = FakeOllama::start(models(), |req| Reply::Delayed {
        ms: 300,
        reply: Box::new(todo_script(req)),
    });
    let Setup {
        home: _home,
        ws,
        engine,
        _ws_dir,
    } = setup(&fake).await;
    let engine = Arc::new(engine);
    let runner = Runner::new(engine.clone(), 1);
    let a = engine
        .submit(PROMPT, &ws, Budgets::default())
        .await
        .unwrap();
    let b = engine
        .submit(PROMPT, &ws, Budgets::default())
        .await
        .unwrap();
    let opts = RunOptions::default;
    runner.spawn(a.id.clone(), opts()).await.unwrap();
    runner.spawn(b.id.clone(), opts()).await.unwrap();
    assert_eq!(runner.spawn(a.id.clone(), opts()).await, Err(Refused::Busy));
    assert!(matches!(
        runner.run(&b.id, opts()).await,
        Err(Refused::Busy)
    ));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while engine.task(&a.id).unwrap().status != Status::Running {
        assert!(
            std::time::Instant::now() < deadline,
            "the first task never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        engine.running(),
        vec![a.id.clone()],
        "one slot: one task runs"
    );
    assert_eq!(engine.task(&b.id).unwrap().status, Status::Queued);

    runner.shutdown(std::time::Duration::from_secs(30)).await;
    assert!(runner.closing());
    assert_eq!(
        runner.spawn(b.id.clone(), opts()).await,
        Err(Refused::Closing)
    );
    assert!(engine.running().is_empty());
    assert_eq!(engine.task(&a.id).unwrap().status, Status::Interrupted);
    assert_eq!(engine.task(&b.id).unwrap().status, Status::Queued);
    let waiting: Vec<String> = engine
        .left_over()
        .unwrap()
        .waiting
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(waiting, [a.id, b.id], "oldest first, for the next start");
}
