//! Shared helpers of the benches: timing, medians, and the report rows each
//! bench writes to `target/bench/<bench>.md` (collected into
//! `target/bench-report.md` by `cargo xtask bench`).
//!
//! Every figure is reported next to a baseline measured in the same run on
//! the same machine, as a ratio; absolute numbers are context only.

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Runs `f` `n` times; returns the sorted durations.
pub fn sample<T, F: FnMut() -> T>(n: usize, mut f: F) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        std::hint::black_box(f());
        out.push(t.elapsed());
    }
    out.sort();
    out
}

pub fn median(sorted: &[Duration]) -> Duration {
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}

pub fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// One row of the report.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: String,
    pub what: String,
    pub measured: String,
    pub baseline: String,
    pub ratio: String,
    pub target: String,
}

/// Prints the rows as a table and writes them to `target/bench/<name>.md`.
pub fn report(name: &str, rows: &[Row]) {
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
    }
}

/// The sandbox of a bench: default options, or fewer pool slots with
/// `CAMINA_BENCH_SLOTS` (e.g. 1 under valgrind, whose address space cannot
/// hold the default pools' reservations).
pub fn sandbox() -> camina_sandbox::Sandbox {
    camina_sandbox::Sandbox::with_options(camina_sandbox::SandboxOptions {
        max_concurrent_calls: slots().unwrap_or(128),
        ..Default::default()
    })
    .expect("sandbox")
}

/// `CAMINA_BENCH_SLOTS`, when set.
pub fn slots() -> Option<u32> {
    std::env::var("CAMINA_BENCH_SLOTS").ok()?.parse().ok()
}

/// `a / b` as a ratio, `1.23×`.
pub fn ratio(a: f64, b: f64) -> String {
    format!("{:.2}×", a / b)
}

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The default GGUF for model benches.
pub fn gguf() -> Option<PathBuf> {
    let p = std::env::var_os("CAMINA_BENCH_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/models/gemma-3-270m-q4_k_m.gguf"));
    p.is_file().then_some(p)
}

pub mod api;
pub mod tasks;
