//! The Extism baseline of row P1b: a `read_file` of a 1 KiB file by a plugin
//! equivalent to `belter-fs read_file` (plugin/), run by Extism
//! - fresh: a new `Plugin` from one `CompiledPlugin` for every call (the
//!   fresh-instance model Caminaå uses), and
//! - reused: one `Plugin` called again and again (context).
//!
//! The plugin is built beforehand (`cargo xtask bench` does it; see
//! README.md) and found through `CAMINA_EXTISM_PLUGIN`. The rows are printed
//! and written to `target/bench/extism.md` beside the host bench's
//! `host.md`, and the medians to `target/bench/extism.json` for the P1b row
//! of the host bench to quote.

use extism::{CompiledPlugin, Manifest, Plugin, PluginBuilder, Wasm};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Samples per figure, as the host bench's P1 rows.
const N: usize = 2000;
/// Calls before each measurement (page faults, lazy init, caches).
const WARMUP: usize = 50;

/// Runs `f` `n` times; returns the sorted durations.
fn sample<F: FnMut()>(n: usize, mut f: F) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f();
        out.push(t.elapsed());
    }
    out.sort();
    out
}

/// The `q`-quantile (0..1) of sorted durations, in µs.
fn quantile_us(sorted: &[Duration], q: f64) -> f64 {
    let i = ((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1));
    sorted.get(i).copied().unwrap_or_default().as_secs_f64() * 1e6
}

/// The repository root, as camina-bench's `root()`.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

struct Row {
    id: &'static str,
    what: String,
    measured: String,
    baseline: String,
    ratio: String,
    target: String,
}

/// Prints the rows as camina-bench's `report` does, and writes them to
/// `target/bench/<name>.md`, where `cargo xtask bench` collects them.
fn report(name: &str, rows: &[Row], json: &serde_json::Value) {
    let mut text = String::from(
        "| id | what | measured | baseline (same run) | ratio | target |\n|---|---|---|---|---|---|\n",
    );
    for r in rows {
        text.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            r.id, r.what, r.measured, r.baseline, r.ratio, r.target
        ));
    }
    println!("\n{text}");
    let dir = root().join("target/bench");
    if std::fs::create_dir_all(&dir).is_ok() {
        let _ = std::fs::write(dir.join(format!("{name}.md")), text);
        let _ = std::fs::write(
            dir.join(format!("{name}.json")),
            serde_json::to_string_pretty(json).unwrap_or_default(),
        );
    }
}

fn main() {
    // `cargo bench` passes `--bench`, ignored: there is no filter.
    let plugin_path = std::env::var_os("CAMINA_EXTISM_PLUGIN")
        .map(PathBuf::from)
        .expect(
            "CAMINA_EXTISM_PLUGIN must name the plugin .wasm (cargo build --release \
             --target wasm32-wasip1 --manifest-path host/bench-extism/plugin/Cargo.toml)",
        );
    let wasm =
        std::fs::read(&plugin_path).unwrap_or_else(|e| panic!("{}: {e}", plugin_path.display()));
    // extism_version() is NUL-terminated for the C API.
    let version = extism::extism_version().trim_end_matches('\0').to_string();

    let ws = tempfile::tempdir().expect("tmp");
    std::fs::write(ws.path().join("one.txt"), vec![b'x'; 1024]).expect("write");
    let input = r#"{"path":"one.txt"}"#;

    // The workspace mounted read-only at /workspace, as Caminaå mounts it
    // for skills ("ro:" makes Extism wrap the preopen read-only).
    let manifest = Manifest::new([Wasm::data(wasm)])
        .with_allowed_path(format!("ro:{}", ws.path().display()), "/workspace");
    // Compiled once, in memory (no on-disk wasmtime cache).
    let compiled: CompiledPlugin = PluginBuilder::new(manifest)
        .with_wasi(true)
        .with_cache_disabled()
        .compile()
        .expect("compile plugin");

    // Check the plugin does the work before timing it.
    {
        let mut plugin = Plugin::new_from_compiled(&compiled).expect("plugin");
        let out: serde_json::Value = plugin
            .call::<&str, &[u8]>("read_file", input)
            .map(|b| serde_json::from_slice(b).expect("json output"))
            .expect("read_file");
        assert_eq!(out["size"].as_u64(), Some(1024), "{out}");
        assert_eq!(out["content"].as_str().map(str::len), Some(1024), "{out}");
    }

    let fresh_call = || {
        let mut plugin = Plugin::new_from_compiled(&compiled).expect("plugin");
        let out = plugin
            .call::<&str, &[u8]>("read_file", input)
            .expect("read_file");
        assert!(out.len() > 1024);
    };
    let mut reused = Plugin::new_from_compiled(&compiled).expect("plugin");
    let mut reused_call = || {
        let out = reused
            .call::<&str, &[u8]>("read_file", input)
            .expect("read_file");
        assert!(out.len() > 1024);
    };
    let native_call = || {
        std::hint::black_box(std::fs::read(ws.path().join("one.txt")).expect("read"));
    };

    sample(WARMUP, &fresh_call);
    let fresh = sample(N, &fresh_call);
    sample(WARMUP, &mut reused_call);
    let reuse = sample(N, &mut reused_call);
    let native = sample(N, &native_call);

    let (f50, f90) = (quantile_us(&fresh, 0.5), quantile_us(&fresh, 0.9));
    let (r50, r90) = (quantile_us(&reuse, 0.5), quantile_us(&reuse, 0.9));
    let n50 = quantile_us(&native, 0.5);
    let rows = [
        Row {
            id: "P1b-extism",
            what: format!(
                "Extism {version} fresh-instance read_file 1 KiB (new Plugin from a CompiledPlugin + call, WASI preopen), p50"
            ),
            measured: format!("{f50:.1} µs (p90 {f90:.1} µs)"),
            baseline: format!("{n50:.1} µs native std::fs::read"),
            ratio: format!("{:.0}× native", f50 / n50),
            target: "baseline of P1b: Caminaå ≥ 20× faster".into(),
        },
        Row {
            id: "P1b-extism-reused",
            what: format!(
                "Extism {version} reused-Plugin read_file 1 KiB (one Plugin, many calls), p50"
            ),
            measured: format!("{r50:.1} µs (p90 {r90:.1} µs)"),
            baseline: format!("{n50:.1} µs native std::fs::read"),
            ratio: format!("{:.0}× native", r50 / n50),
            target: "context for P1b".into(),
        },
    ];
    let json = serde_json::json!({
        "extism_version": version,
        "samples": N,
        "fresh_p50_us": f50,
        "fresh_p90_us": f90,
        "reused_p50_us": r50,
        "reused_p90_us": r90,
        "native_p50_us": n50,
    });
    report("extism", &rows, &json);
}
