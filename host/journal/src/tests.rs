//! The journal's own tests (the decision log's are in `decisions.rs`).
use super::*;
use serde_json::json;

fn rec(step: &str, kind: &str) -> NewRecord {
    NewRecord {
        step: step.into(),
        kind: kind.into(),
        data: json!({"x": 1}),
        elapsed_ms: 5,
    }
}

/// `n` durable appends to task `id`, all at once (steps `s0`…).
fn durable_appends(j: &Arc<Journal>, id: &str, n: usize) -> tokio::task::JoinSet<Record> {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let j = j.clone();
        let id = id.to_owned();
        set.spawn(async move {
            j.append(
                &id,
                rec(&format!("s{i}"), "x"),
                Update::default(),
                Durability::Flush,
            )
            .await
            .unwrap()
        });
    }
    set
}

#[tokio::test]
async fn records_and_summaries_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal");
    let id = {
        let (j, _) = Journal::open(&path).unwrap();
        let t = j
            .create("do it", "/ws", json!({"prompt": "do it"}))
            .await
            .unwrap();
        assert_eq!(t.status, Status::Queued);
        j.append(
            &t.id,
            rec("plan", "plan"),
            Update {
                status: Some(Status::Running),
                ..Default::default()
            },
            Durability::Flush,
        )
        .await
        .unwrap();
        t.id
    };
    let (j, interrupted) = Journal::open(&path).unwrap();
    assert_eq!(
        interrupted.len(),
        1,
        "a running task of a dead process is interrupted"
    );
    let t = j.task(&id).unwrap();
    assert_eq!((t.status, t.events), (Status::Interrupted, 2));
    let records = j.records(&id).unwrap();
    assert_eq!(
        records.iter().map(|r| r.kind.as_str()).collect::<Vec<_>>(),
        ["submitted", "plan"]
    );
    assert_eq!(records[1].seq, 1);
    assert_eq!(j.find(&id[..10]).unwrap().id, id);
    assert!(matches!(j.find("zzz"), Err(Error::UnknownTask(_))));
}

#[tokio::test]
async fn a_second_process_is_told_the_journal_is_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal");
    let (_held, _) = Journal::open(&path).unwrap();
    let err = Journal::open(&path).unwrap_err();
    assert!(matches!(err, Error::Locked { .. }), "{err}");
}

#[tokio::test]
async fn foreign_and_newer_databases_are_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other");
    {
        let db = sled::open(&path).unwrap();
        db.insert("someone", "else").unwrap();
        db.flush().unwrap();
    }
    assert!(matches!(Journal::open(&path), Err(Error::Foreign { .. })));
    let db = sled::open(&path).unwrap();
    assert_eq!(db.get("someone").unwrap().unwrap().as_ref(), b"else");
    drop(db);

    let newer = dir.path().join("newer");
    {
        let db = sled::open(&newer).unwrap();
        db.open_tree("meta")
            .unwrap()
            .insert("schema", "camina-journal/9")
            .unwrap();
        db.flush().unwrap();
    }
    assert!(matches!(Journal::open(&newer), Err(Error::Schema { .. })));
    let garbage = dir.path().join("garbage");
    std::fs::create_dir(&garbage).unwrap();
    std::fs::write(garbage.join("conf"), b"\x00\x01 not sled").unwrap();
    assert!(Journal::open(&garbage).is_err());
}

#[tokio::test]
async fn a_damaged_journal_is_refused_not_silently_shortened() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j");
    {
        let (j, _) = Journal::open(&path).unwrap();
        for i in 0..50 {
            j.create(&format!("task {i}"), "/ws", json!({"n": i}))
                .await
                .unwrap();
        }
        j.flush().await.unwrap();
    }
    let db = std::fs::read(path.join("db")).unwrap();
    for (name, damage) in [
        ("truncated", db[..db.len() / 2].to_vec()),
        ("zeroed", {
            let mut d = db.clone();
            let n = d.len();
            d[n / 4..n / 2].fill(0);
            d
        }),
        ("flipped", {
            let mut d = db.clone();
            for b in d.iter_mut().skip(64).step_by(97) {
                *b ^= 0x5a;
            }
            d
        }),
    ] {
        let copy = dir.path().join(name);
        std::fs::create_dir_all(&copy).unwrap();
        for f in std::fs::read_dir(&path).unwrap() {
            let f = f.unwrap();
            if f.path().is_file() {
                std::fs::copy(f.path(), copy.join(f.file_name())).unwrap();
            }
        }
        std::fs::copy(path.with_extension("tasks"), copy.with_extension("tasks")).unwrap();
        std::fs::write(copy.join("db"), &damage).unwrap();
        let err = match Journal::open(&copy) {
            Ok((j, _)) => panic!("{name}: opened with {} tasks", j.list().unwrap().len()),
            Err(e) => e,
        };
        assert!(
            matches!(err, Error::Damaged { recorded: 50, found, .. } if found < 50),
            "{name}: {err}"
        );
        assert!(err.to_string().contains(".tasks"), "{err}");
        // Deleting the count file is the way to go on with the rest.
        std::fs::remove_file(copy.with_extension("tasks")).unwrap();
        let (j, _) = Journal::open(&copy).unwrap();
        assert!(j.list().unwrap().len() < 50, "{name}");
    }
    // The healthy one reopens whole.
    assert_eq!(Journal::open(&path).unwrap().0.list().unwrap().len(), 50);
    // A journal removed on purpose starts afresh, count file or not.
    std::fs::remove_dir_all(&path).unwrap();
    assert_eq!(Journal::open(&path).unwrap().0.list().unwrap().len(), 0);
}

/// The count file is written in place after each flush (no truncation):
/// it must read as exactly the durable task count, across a change in the
/// number of digits, and a file holding the figure written another way
/// (padded, with a newline) is made exact on open before it is written in
/// place.
#[tokio::test]
async fn the_task_count_file_reads_exactly_the_durable_count() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j");
    let count = || std::fs::read_to_string(path.with_extension("tasks")).unwrap();
    {
        let (j, _) = Journal::open(&path).unwrap();
        for i in 1..=11u64 {
            j.create("p", "/ws", json!({})).await.unwrap();
            assert_eq!(count(), i.to_string());
        }
    }
    std::fs::write(path.with_extension("tasks"), "0011\n").unwrap();
    let (j, _) = Journal::open(&path).unwrap();
    assert_eq!(count(), "11");
    j.create("p", "/ws", json!({})).await.unwrap();
    assert_eq!(count(), "12");
}

#[tokio::test]
async fn concurrent_durable_appends_share_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(&dir.path().join("j")).unwrap();
    let j = Arc::new(j);
    let t = j.create("p", "/ws", json!({})).await.unwrap();
    let mut set = durable_appends(&j, &t.id, 32);
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    let records = j.records(&t.id).unwrap();
    assert_eq!(records.len(), 33);
    let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
    assert_eq!(
        seqs,
        (0..33).collect::<Vec<_>>(),
        "gapless, ordered sequence numbers"
    );
}

#[tokio::test]
async fn idempotency_keys_name_one_task() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(&dir.path().join("j")).unwrap();
    let key = |request| {
        Some(IdempotencyKey {
            key: "order-42",
            request,
        })
    };
    let Created::New(a) = j
        .create_keyed("p", "/ws", Value::Null, key("r1"))
        .await
        .unwrap()
    else {
        panic!("the first use of a key creates the task");
    };
    // The task, its first record and the key were written together.
    assert_eq!(j.key("order-42").unwrap(), Some(a.id.clone()));
    assert_eq!(j.records(&a.id).unwrap()[0].kind, "submitted");
    for (request, same) in [("r1", true), ("r2", false)] {
        match j
            .create_keyed("p", "/ws", Value::Null, key(request))
            .await
            .unwrap()
        {
            Created::Existing(KeyUse { id, same_request }) => {
                assert_eq!((id.as_str(), same_request), (a.id.as_str(), Some(same)));
            }
            Created::New(t) => panic!("a second task {}", t.id),
        }
    }
    assert_eq!(j.list().unwrap().len(), 1);
    // Keys written by older builds (a bare task id) still resolve.
    j.keys.insert("old", a.id.as_bytes()).unwrap();
    assert_eq!(j.key("old").unwrap(), Some(a.id.clone()));
    assert!(matches!(
        j.create_keyed(
            "p",
            "/ws",
            Value::Null,
            Some(IdempotencyKey {
                key: "old",
                request: "x"
            })
        )
        .await
        .unwrap(),
        Created::Existing(KeyUse {
            same_request: None,
            ..
        })
    ));
}

/// The leader of a group commit flushes on its own thread on a
/// multi-thread runtime; callers that arrive meanwhile are served by the
/// next flush, and every append returns and is on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_multi_thread_runtime_concurrent_durable_appends_all_return_and_persist() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j");
    let id = {
        let (j, _) = Journal::open(&path).unwrap();
        let j = Arc::new(j);
        let t = j.create("p", "/ws", json!({})).await.unwrap();
        let before = j.flushes();
        let mut set = durable_appends(&j, &t.id, 64);
        let all = tokio::time::timeout(std::time::Duration::from_secs(60), async {
            while let Some(r) = set.join_next().await {
                r.unwrap();
            }
        })
        .await;
        assert!(all.is_ok(), "a durable append never returned");
        // Never more flushes than appends (no caller flushes twice); how
        // many are shared depends on the disk's speed.
        let flushes = j.flushes() - before;
        assert!(
            (1..=64).contains(&flushes),
            "64 concurrent durable appends made {flushes} flushes"
        );
        t.id
    };
    let (j, _) = Journal::open(&path).unwrap();
    let seqs: Vec<u64> = j.records(&id).unwrap().iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (0..65).collect::<Vec<_>>());
}

/// A record appended from any serializable value reads back as the same
/// record appended from its JSON value, and live watchers get it.
#[tokio::test]
async fn a_record_appended_from_a_value_reads_back_like_one_from_json() {
    #[derive(serde::Serialize)]
    struct Event<'a> {
        role: &'a str,
        tokens: Vec<u32>,
        note: Option<&'a str>,
    }
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(&dir.path().join("j")).unwrap();
    let t = j.create("p", "/ws", json!({})).await.unwrap();
    let mut feed = j.subscribe();
    let event = Event {
        role: "worker \"quoted\" ✓",
        tokens: vec![1, 2, 3],
        note: None,
    };
    let seq = j
        .append_value(
            &t.id,
            RecordRef {
                step: "step/0",
                kind: "model_reply",
                data: &event,
                elapsed_ms: 7,
            },
            Update {
                status: Some(Status::Running),
                ..Default::default()
            },
            Durability::Flush,
        )
        .await
        .unwrap();
    let plain = j
        .append(
            &t.id,
            NewRecord {
                step: "step/0".into(),
                kind: "model_reply".into(),
                data: serde_json::to_value(&event).unwrap(),
                elapsed_ms: 7,
            },
            Update::default(),
            Durability::Buffered,
        )
        .await
        .unwrap();
    assert_eq!((seq, plain.seq), (1, 2));
    let records = j.records(&t.id).unwrap();
    let (a, b) = (&records[1], &records[2]);
    assert_eq!(
        (&a.step, &a.kind, &a.data, a.elapsed_ms),
        (&b.step, &b.kind, &b.data, b.elapsed_ms)
    );
    assert_eq!(a.data["role"], "worker \"quoted\" ✓");
    assert_eq!(j.task(&t.id).unwrap().status, Status::Running);
    let (fed_id, fed) = feed.recv().await.unwrap();
    assert_eq!((fed_id.as_str(), fed.seq), (t.id.as_str(), 1));
    assert_eq!(fed.data, a.data);
}
