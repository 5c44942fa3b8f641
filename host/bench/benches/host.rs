//! Host benches, each against a baseline measured in the same run:
//! - P1a fresh-instance trivial call (`describe`) through the sandbox vs the
//!   floor: the same component through synchronous, tuned raw wasmtime
//!   (`InstancePre`, pooling, 2 MiB kept resident, `pagemap_scan`), and
//!   through wasmtime's async API for context;
//! - P1b `belter-fs read_file` of 1 KiB through the full host path (schema
//!   check, policy, audited fs, decision log) vs the same read through the
//!   sync floor, the async raw path, native `std::fs::read` and Extism;
//! - P2 host start with 10 installed plugins (precompiled cache) vs compiling;
//! - P3 journal appends/s (group commit), 1 and 64 writers, vs sled without
//!   flush and with one fsync per record;
//! - P4 API req/s (wrk over loopback) vs an axum hello-world route;
//! - P3c durable task creates/s, 32 at once (what `POST /v1/tasks` writes);
//! - P5 a 20-step task on the replay backend: host time vs its floor (its
//!   flushes × the fsync latency measured now + its tool calls made
//!   directly);
//! - P7 1,000 concurrent tasks on the replay backend: peak RSS, failures.

use camina_bench::{Row, median, micros, ratio, report, sample, slots};
use camina_journal::{Durability, Journal, NewRecord, Update};
use camina_test_artifacts as artifacts;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::{Component, InstancePre, Linker, Val};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wasi::{FsPerms, ResourceTable, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

struct Raw {
    ctx: WasiCtx,
    table: ResourceTable,
}

impl WasiView for Raw {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

/// The tuned raw wasmtime engine of the baselines: pooling, pages kept
/// resident between instances (2 MiB of linear memory: a Rust guest's
/// shadow stack plus its first heap pages), `pagemap_scan` resets.
///
/// With `epochs`, epoch interruption too (the check the sandbox's CPU
/// limit needs: a load and compare at every function entry and loop
/// back-edge), for context beside the floor.
fn raw_engine(epochs: bool) -> Engine {
    let n = slots().unwrap_or(16);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(n)
        .total_core_instances(n * 8)
        .total_memories(n * 2)
        .total_tables(n * 4)
        .total_stacks(n)
        .max_memory_size(256 << 20)
        .linear_memory_keep_resident(2 << 20)
        .table_keep_resident(64 << 10)
        .pagemap_scan(wasmtime::Enabled::Auto);
    let mut config = Config::new();
    config
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        .epoch_interruption(epochs);
    Engine::new(&config).expect("engine")
}

fn raw_linker(engine: &Engine, sync: bool) -> Linker<Raw> {
    let mut linker = Linker::<Raw>::new(engine);
    if sync {
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).expect("wasi");
    } else {
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).expect("wasi");
    }
    // The skill world's one host import; never called by these tools.
    linker
        .instance("camina:skill/host@0.1.0")
        .expect("host instance")
        .func_new("log", |_, _, _, _| Ok(()))
        .expect("log");
    linker
}

fn raw_pre(engine: &Engine, wasm: &[u8], sync: bool) -> InstancePre<Raw> {
    let component = Component::new(engine, wasm).expect("compile");
    raw_linker(engine, sync)
        .instantiate_pre(&component)
        .expect("pre")
}

/// A fresh store and WASI context (blocking file I/O on the calling
/// thread, set before the preopen), as every baseline call makes.
fn raw_store(engine: &Engine, mount: Option<&Path>) -> Store<Raw> {
    let mut b = WasiCtxBuilder::new();
    b.allow_blocking_current_thread(true);
    if let Some(dir) = mount {
        b.preopened_dir(dir, "/workspace", FsPerms::ReadOnly)
            .expect("preopen");
    }
    let mut store = Store::new(
        engine,
        Raw {
            ctx: b.build(),
            table: ResourceTable::new(),
        },
    );
    // Only an engine with epoch interruption reads it; nothing advances
    // that engine's epoch, so the deadline is never reached.
    store.set_epoch_deadline(u64::MAX / 2);
    store
}

/// The floor: the same component through synchronous wasmtime (sync
/// linker, `InstancePre::instantiate`, `Func::call`), fresh store each call.
fn floor_call(pre: &InstancePre<Raw>, mount: Option<&Path>, func: &str, args: &[Val]) -> Val {
    let mut store = raw_store(pre.engine(), mount);
    let instance = pre.instantiate(&mut store).expect("instantiate");
    let f = instance.get_func(&mut store, func).expect("export");
    let mut results = [Val::Bool(false)];
    f.call(&mut store, args, &mut results).expect("call");
    let [result] = results;
    result
}

/// The same through wasmtime's async API (fibers), for context.
async fn raw_async_call(
    pre: &InstancePre<Raw>,
    mount: Option<&Path>,
    func: &str,
    args: &[Val],
) -> Val {
    let mut store = raw_store(pre.engine(), mount);
    let instance = pre
        .instantiate_async(&mut store)
        .await
        .expect("instantiate");
    let f = instance.get_func(&mut store, func).expect("export");
    let mut results = [Val::Bool(false)];
    f.call_async(&mut store, args, &mut results)
        .await
        .expect("call");
    let [result] = results;
    result
}

/// `n`, or 0 when CAMINA_BENCH_ONLY names another sampler: instruction
/// counts per call of one sampler come from two runs under callgrind
/// (`CAMINA_BENCH_N=0` and `=1000`) and their difference.
fn only(n: usize, sampler: &str) -> usize {
    match std::env::var("CAMINA_BENCH_ONLY") {
        Ok(o) if o != sampler => 0,
        _ => n,
    }
}

fn p1(rt: &tokio::runtime::Runtime, rows: &mut Vec<Row>) {
    let sandbox = Arc::new(camina_bench::sandbox());
    let wasm = std::fs::read(artifacts::BELTER_FS).expect("belter-fs built");
    let skill = sandbox.compile(&wasm).expect("compile");
    let engine = raw_engine(false);
    let floor = raw_pre(&engine, &wasm, true);
    let raw_async = raw_pre(&engine, &wasm, false);
    let epoch_engine = raw_engine(true);
    let floor_epochs = raw_pre(&epoch_engine, &wasm, true);
    // CAMINA_BENCH_N: fewer samples, e.g. under callgrind.
    let n = std::env::var("CAMINA_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4000);
    // P1a: describe, fresh instance each time.
    let _ = rt.block_on(skill.describe("belter-fs"));
    let ours = sample(only(n, "p1a-ours"), || {
        rt.block_on(skill.describe("belter-fs")).expect("describe");
    });
    let sync = sample(only(n, "p1a-floor"), || {
        floor_call(&floor, None, "describe", &[])
    });
    let fibers = sample(only(n, "p1a-async"), || {
        rt.block_on(raw_async_call(&raw_async, None, "describe", &[]))
    });
    let (o, r, a) = (
        micros(median(&ours)),
        micros(median(&sync)),
        micros(median(&fibers)),
    );
    rows.push(Row {
        id: "P1a".into(),
        what: "fresh-instance trivial call (`describe` of belter-fs), p50".into(),
        measured: format!("{o:.1} µs"),
        baseline: format!(
            "{r:.1} µs floor: sync tuned raw wasmtime (InstancePre, pooling, keep-resident); \
             {a:.1} µs the same through wasmtime's async API"
        ),
        ratio: format!("{} floor", ratio(o, r)),
        target: "≤ 1.2× floor".into(),
    });

    // P1b: read_file of 1 KiB through the whole host path.
    let home = tempfile::tempdir().expect("tmp");
    let ws = tempfile::tempdir().expect("tmp");
    std::fs::write(ws.path().join("one.txt"), vec![b'x'; 1024]).expect("write");
    let registry = camina_registry::Registry::open(home.path(), sandbox.clone()).expect("registry");
    let policy = camina_registry::PolicySource {
        text: std::fs::read_to_string(Path::new(artifacts::ROOT).join("policies/belter-fs.toml"))
            .expect("policy"),
        name: "belter-fs.toml".into(),
    };
    rt.block_on(registry.install(&wasm, Some(&policy), None, "belter"))
        .expect("install");
    let (journal, _) = Journal::open(&home.path().join("journal")).expect("journal");
    let input = r#"{"path":"one.txt"}"#;
    let digest = camina_registry::digest(&wasm);
    let host_read = || {
        let out = rt
            .block_on(registry.call("belter-fs", "read_file", input, Some(ws.path())))
            .expect("call");
        assert!(out.result.is_ok());
        let entries: Vec<camina_journal::DecisionEntry> = out
            .decisions
            .iter()
            .map(|d| camina_journal::DecisionEntry {
                capability: d.capability.as_str().into(),
                action: d.action.clone(),
                target: d.target.clone(),
                allowed: d.allowed,
                detail: d.detail.clone(),
                ..camina_journal::DecisionEntry::now("belter-fs", &digest)
            })
            .collect();
        journal.decision_log().record(entries).expect("log");
    };
    host_read();
    let ours = sample(only(n, "p1b-ours"), host_read);
    let args = [Val::String("read_file".into()), Val::String(input.into())];
    // The baselines must do the same work: one checked call first (a fast
    // error would flatter them).
    let checked = |v: Val| match v {
        Val::Result(Ok(Some(v))) if matches!(&*v, Val::String(s) if s.contains("1024")) => {}
        other => panic!("a raw baseline's read_file failed: {other:?}"),
    };
    checked(floor_call(&floor, Some(ws.path()), "call", &args));
    checked(rt.block_on(raw_async_call(&raw_async, Some(ws.path()), "call", &args)));
    let sync = sample(only(n, "p1b-floor"), || {
        floor_call(&floor, Some(ws.path()), "call", &args)
    });
    let fibers = sample(only(n, "p1b-async"), || {
        rt.block_on(raw_async_call(&raw_async, Some(ws.path()), "call", &args))
    });
    checked(floor_call(&floor_epochs, Some(ws.path()), "call", &args));
    let epochs = sample(only(n, "p1b-floor-epochs"), || {
        floor_call(&floor_epochs, Some(ws.path()), "call", &args)
    });
    let native = sample(only(n, "p1b-native"), || {
        std::hint::black_box(std::fs::read(ws.path().join("one.txt")).expect("read"));
    });
    let (o, r, a, nat, ep) = (
        micros(median(&ours)),
        micros(median(&sync)),
        micros(median(&fibers)),
        micros(median(&native)),
        micros(median(&epochs)),
    );
    // Extism's figure, when `cargo xtask bench` measured it just before
    // (host/bench-extism writes target/bench/extism.json).
    let extism = std::fs::read_to_string(camina_bench::root().join("target/bench/extism.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| {
            Some((
                v["fresh_p50_us"].as_f64()?,
                v["extism_version"].as_str().unwrap_or("?").to_owned(),
            ))
        });
    let (extism_base, extism_ratio) = match &extism {
        Some((us, version)) => (
            format!("{us:.1} µs Extism {version} fresh instance (same run)"),
            format!("; {:.1}× faster than Extism", us / o),
        ),
        None => (
            "Extism: not measured (cargo xtask bench builds host/bench-extism)".to_owned(),
            String::new(),
        ),
    };
    rows.push(Row {
        id: "P1b".into(),
        what: "belter-fs read_file 1 KiB, fresh sandbox, schema + policy + audited fs + decision log, p50".into(),
        measured: format!("{o:.1} µs"),
        baseline: format!(
            "{r:.1} µs floor: sync tuned raw wasmtime-wasi; {ep:.1} µs the floor with \
             epoch interruption (the CPU limit's check); {a:.1} µs raw async; \
             {nat:.1} µs native std::fs::read; {extism_base}"
        ),
        ratio: format!(
            "{} raw; {} raw with epochs; {} native{extism_ratio}",
            ratio(o, r),
            ratio(o, ep),
            ratio(o, nat)
        ),
        target: "≤ 1.2× raw (floor); ≥ 20× faster than Extism".into(),
    });
}

fn p2(rt: &tokio::runtime::Runtime, rows: &mut Vec<Row>) {
    let files = [
        artifacts::BELTER_FS,
        artifacts::DRUMMER_SEARCH,
        artifacts::DRUMMER_WEB,
        artifacts::ATTACKER,
    ];
    let wasm: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(f).expect("artifact"))
        .collect();
    let dir = tempfile::tempdir().expect("tmp");
    let sandbox = camina_sandbox::Sandbox::new().expect("sandbox");
    let mut cached = Vec::new();
    for i in 0..10 {
        let p = dir.path().join(format!("{i}.cwasm"));
        std::fs::write(
            &p,
            sandbox
                .precompile(&wasm[i % wasm.len()])
                .expect("precompile"),
        )
        .expect("write");
        cached.push(p);
    }
    drop(sandbox);
    let _ = rt;
    let warm = sample(5, || {
        let s = camina_sandbox::Sandbox::new().expect("sandbox");
        for p in &cached {
            std::hint::black_box(s.load_precompiled(p).expect("load"));
        }
    });
    let cold = sample(3, || {
        let s = camina_sandbox::Sandbox::new().expect("sandbox");
        for i in 0..10 {
            std::hint::black_box(s.compile(&wasm[i % wasm.len()]).expect("compile"));
        }
    });
    let (w, c) = (
        median(&warm).as_secs_f64() * 1e3,
        median(&cold).as_secs_f64() * 1e3,
    );
    rows.push(Row {
        id: "P2".into(),
        what: "host start with 10 plugins from the precompiled cache (engine + load + link)".into(),
        measured: format!("{w:.1} ms"),
        baseline: format!("{c:.0} ms compiling them"),
        ratio: format!("{:.0}× faster", c / w),
        target: "≥ 20× faster; ≤ 20 ms".into(),
    });
}

fn p3(rt: &tokio::runtime::Runtime, rows: &mut Vec<Row>) {
    let record = || NewRecord {
        step: "step/0/turn/0".into(),
        kind: "model_reply".into(),
        data: serde_json::json!({"role": "belter", "reply": {"content": "x".repeat(200)}}),
        elapsed_ms: 1,
    };
    for writers in [1usize, 64] {
        let dir = tempfile::tempdir().expect("tmp");
        let (journal, _) = Journal::open(&dir.path().join("j")).expect("journal");
        let journal = Arc::new(journal);
        let per = if writers == 1 { 2000 } else { 120 };
        let ids: Vec<String> = rt.block_on(async {
            let mut ids = Vec::new();
            for _ in 0..writers {
                ids.push(
                    journal
                        .create("p", "/w", serde_json::json!({}))
                        .await
                        .expect("create")
                        .id,
                );
            }
            ids
        });
        let started = Instant::now();
        rt.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for id in ids {
                let j = journal.clone();
                set.spawn(async move {
                    for _ in 0..per {
                        j.append(&id, record(), Update::default(), Durability::Flush)
                            .await
                            .expect("append");
                    }
                });
            }
            while set.join_next().await.is_some() {}
        });
        let ours = (writers * per) as f64 / started.elapsed().as_secs_f64();

        // Baselines: raw sled, no flush; and one fsync per record.
        let raw_dir = tempfile::tempdir().expect("tmp");
        let db = sled::open(raw_dir.path()).expect("sled");
        let value = serde_json::to_vec(&serde_json::json!({"x": "x".repeat(200)})).expect("json");
        let n = 20_000u64;
        let t = Instant::now();
        for i in 0..n {
            db.insert(i.to_be_bytes(), value.clone()).expect("insert");
        }
        let no_flush = n as f64 / t.elapsed().as_secs_f64();
        let m = 300u64;
        let t = Instant::now();
        for i in 0..m {
            db.insert((n + i).to_be_bytes(), value.clone())
                .expect("insert");
            db.flush().expect("flush");
        }
        let fsync_each = m as f64 / t.elapsed().as_secs_f64();
        rows.push(Row {
            id: format!("P3{}", if writers == 1 { "a" } else { "b" }),
            what: format!("durable journal appends/s (flushed, group commit), {writers} writer(s)"),
            measured: format!("{ours:.0}/s"),
            baseline: format!(
                "{no_flush:.0}/s sled insert without flush; {fsync_each:.0}/s one fsync per record"
            ),
            ratio: format!(
                "{} of no-flush; {} of fsync-each",
                ratio(ours, no_flush),
                ratio(ours, fsync_each)
            ),
            target: "≥ 50k records/s with group commit".into(),
        });
    }
}

/// P3c: durable task creates/s (what `POST /v1/tasks` writes), 32 at once.
fn p3c(rt: &tokio::runtime::Runtime, rows: &mut Vec<Row>) {
    let dir = tempfile::tempdir().expect("tmp");
    let (journal, _) = Journal::open(&dir.path().join("j")).expect("journal");
    let journal = Arc::new(journal);
    let (creators, per) = (32usize, 100usize);
    let flushes = journal.flushes();
    let started = Instant::now();
    rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..creators {
            let j = journal.clone();
            set.spawn(async move {
                for _ in 0..per {
                    j.create("bench", "/w", serde_json::json!({"prompt": "bench"}))
                        .await
                        .expect("create");
                }
            });
        }
        while set.join_next().await.is_some() {}
    });
    let rate = (creators * per) as f64 / started.elapsed().as_secs_f64();
    let flushes = journal.flushes() - flushes;
    rows.push(Row {
        id: "P3c".into(),
        what: format!("durable task creates/s, {creators} at once"),
        measured: format!("{rate:.0}/s"),
        baseline: format!("{flushes} flushes for {} creates", creators * per),
        ratio: "—".into(),
        target: "context for P4 POST".into(),
    });
}

fn main() {
    // The subscriber `camina` installs (warn and above, to stderr): with
    // none, tracing would hand every disabled span to the `log` fallback,
    // a cost no camina process pays.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let only = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
    let wants = |id: &str| {
        only.as_deref()
            .is_none_or(|o| id.starts_with(o) || o.starts_with(id))
    };
    let mut rows = Vec::new();
    if wants("P1") {
        p1(&rt, &mut rows);
    }
    if wants("P2") {
        p2(&rt, &mut rows);
    }
    if wants("P3") {
        p3(&rt, &mut rows);
        p3c(&rt, &mut rows);
    }
    if wants("P4") {
        camina_bench::api::p4(&mut rows);
    }
    if wants("P5") || wants("P7") {
        camina_bench::tasks::p5_p7(&rt, &mut rows, wants("P5"), wants("P7"));
    }
    let _ = Duration::ZERO;
    report("host", &rows);
}
