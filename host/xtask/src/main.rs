//! `cargo xtask`: the project's own build tasks (the README's two commands
//! and what they share). Standard library only, so it builds in seconds.
//!
//! - `cargo xtask demo`: build everything, install the bundled skills with
//!   their policies, get the embedded model, run the sample task, print the
//!   result
//! - `cargo xtask test`: the whole test suite (installs what it needs)
//! - `cargo xtask bench`: every benchmark with its same-run baseline; the
//!   table is printed and written to `target/bench-report.md`
//! - `cargo xtask eval`: the eval suite (`evals/`) on the default embedded
//!   model; extra arguments go to `camina eval`
//! - `cargo xtask setup`: system packages and the wasm32-wasip2 target
//! - `cargo xtask plugins`: build the bundled skills into target/plugins/

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

type Result<T = ()> = std::result::Result<T, String>;

const SKILLS: &[(&str, &str)] = &[
    ("belter_fs", "belter-fs"),
    ("drummer_search", "drummer-search"),
    ("drummer_web", "drummer-web"),
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("setup") => setup(),
        Some("plugins") => setup().and_then(|()| plugins()).map(|_| ()),
        Some("demo") => demo(),
        Some("test") => test(&args[1..]),
        Some("bench") => bench(&args[1..]),
        Some("eval") => eval(&args[1..]),
        Some("restate") => restate_server().map(|p| println!("{}", p.display())),
        Some("cluster") => cluster(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <demo|test|bench|setup|plugins>\n\
                 \n  demo     build, install the bundled skills, run the sample task\
                 \n  test     run the whole test suite (fmt, clippy, tests)\
                 \n  bench    run the benchmarks, write target/bench-report.md\
                 \n  eval     run the eval suite (evals/) on the default embedded model\
                 \n  setup    install system packages and the wasm32-wasip2 target\
                 \n  plugins  build the bundled skills into target/plugins/\
                 \n  restate  fetch the Restate server (npm, digest-checked) for the multi-node mode\
                 \n  cluster  3 Restate nodes, 2 workers, the API, 20 tasks, a worker and a node killed"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("host/xtask is two levels below the root")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    // Compilers and tests write their temporary files under target/, not
    // to a /tmp that may be a small tmpfs (llama.cpp's C++ objects need
    // hundreds of megabytes of assembler files on the way).
    let tmp = root().join("target/tmp");
    if std::fs::create_dir_all(&tmp).is_ok() {
        c.env("TMPDIR", tmp);
    }
    c
}

fn run(cmd: &mut Command) -> Result {
    eprintln!("+ {cmd:?}");
    let status = cmd
        .status()
        .map_err(|e| format!("cannot start {:?}: {e}", cmd.get_program()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{:?} failed ({status})", cmd.get_program()))
    }
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
}

/// Debian packages the build needs (cmake/clang/libclang for llama.cpp).
fn missing_packages() -> Vec<&'static str> {
    let mut missing = Vec::new();
    for (program, package) in [
        ("cmake", "cmake"),
        ("clang", "clang"),
        ("wrk", "wrk"),
        ("curl", "curl"),
    ] {
        if !have(program) {
            missing.push(package);
        }
    }
    let libclang = Command::new("sh")
        .args(["-c", "ldconfig -p | grep -q libclang"])
        .status()
        .is_ok_and(|s| s.success());
    if !libclang {
        missing.push("libclang-dev");
    }
    missing
}

fn setup() -> Result {
    let missing = missing_packages();
    if !missing.is_empty() {
        if !have("apt-get") {
            return Err(format!(
                "missing system packages {missing:?} and no apt-get: install them yourself"
            ));
        }
        let is_root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        let apt = || {
            let mut c = if is_root {
                Command::new("apt-get")
            } else {
                let mut c = Command::new("sudo");
                c.arg("apt-get");
                c
            };
            c.env("DEBIAN_FRONTEND", "noninteractive");
            c
        };
        run(apt().arg("update"))?;
        run(apt()
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing))?;
    }
    run(Command::new("rustup").args(["target", "add", "wasm32-wasip2"]))
}

/// The Restate server the multi-node mode and its tests run: npm's
/// `@restatedev/restate-server-linux-x64` 1.7.12 (BSL 1.1), fetched from
/// the npm registry once, digest-checked, kept in `~/.cache/camina/restate`
/// (or `$CAMINA_CACHE/restate`). Returns the binary.
fn restate_server() -> Result<PathBuf> {
    const VERSION: &str = "1.7.12";
    const SHA256: &str = "4d40ef3b28cd6d96503f2ae9f7d119b6902bead3fbeaadfd865530631959118f";
    if std::env::consts::ARCH != "x86_64" || std::env::consts::OS != "linux" {
        return Err(format!(
            "the Restate server is fetched for linux x86_64 only; on {} {} install \
             restate-server {VERSION} yourself and set CAMINA_TEST_RESTATE to it",
            std::env::consts::OS,
            std::env::consts::ARCH
        ));
    }
    let cache = std::env::var_os("CAMINA_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|c| PathBuf::from(c).join("camina")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/camina")))
        .ok_or("no cache directory: set CAMINA_CACHE")?;
    let dir = cache.join("restate").join(VERSION);
    let binary = dir.join("restate-server");
    if binary.is_file() {
        return Ok(binary);
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let tgz = dir.join("package.tgz");
    let url = format!(
        "https://registry.npmjs.org/@restatedev/restate-server-linux-x64/-/restate-server-linux-x64-{VERSION}.tgz"
    );
    eprintln!("xtask: fetching the Restate server {VERSION} (≈ 80 MB) from {url}");
    run(Command::new("curl")
        .args(["-fsSL", "--retry", "3", "-o"])
        .arg(&tgz)
        .arg(&url))?;
    let bytes = std::fs::read(&tgz).map_err(|e| format!("{}: {e}", tgz.display()))?;
    let digest = sha256_hex(&bytes);
    if digest != SHA256 {
        let _ = std::fs::remove_file(&tgz);
        return Err(format!(
            "{url}: sha256 {digest}, expected {SHA256}; the download was removed"
        ));
    }
    // Unpacked beside, then renamed: a cut-off unpack is never taken for
    // the binary.
    let unpack = dir.join("unpack");
    let _ = std::fs::remove_dir_all(&unpack);
    std::fs::create_dir_all(&unpack).map_err(|e| format!("{}: {e}", unpack.display()))?;
    run(Command::new("tar")
        .arg("-xzf")
        .arg(&tgz)
        .arg("-C")
        .arg(&unpack)
        .args(["--strip-components=2", "package/bin/restate-server"]))?;
    std::fs::rename(unpack.join("restate-server"), &binary)
        .map_err(|e| format!("{url}: no package/bin/restate-server in it ({e})"))?;
    let _ = std::fs::remove_dir_all(&unpack);
    let _ = std::fs::remove_file(&tgz);
    Ok(binary)
}

/// The multi-node mode end to end on loopback (the test
/// `cluster::three_nodes_two_workers_survive_a_worker_kill_and_a_node_kill`,
/// also part of `cargo xtask test`): prints its `cluster: …` line.
/// `CAMINA_CLUSTER_TASKS` sets the number of tasks (default 20).
fn cluster(extra: &[String]) -> Result {
    setup()?;
    let restate = restate_server()?;
    run(cargo()
        .current_dir(root())
        .args(["test", "--test", "all"])
        .arg("cluster::three_nodes_two_workers_survive_a_worker_kill_and_a_node_kill")
        .args(["--", "--exact", "--nocapture"])
        .args(extra)
        .env("CAMINA_TEST_RESTATE", &restate))
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A Python virtual environment under target/py with the official MCP SDK
/// (PyPI `mcp`, 1.x) for the MCP client test; returns its interpreter.
fn python_with_mcp() -> Result<PathBuf> {
    let venv = root().join("target/py");
    let python = venv.join("bin/python");
    let has_sdk = |p: &Path| {
        Command::new(p)
            .args(["-c", "import mcp"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if has_sdk(&python) {
        return Ok(python);
    }
    run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", "mcp>=1.0,<2"]))?;
    Ok(python)
}

/// Builds the bundled skills; returns their paths under target/plugins/.
fn plugins() -> Result<Vec<(PathBuf, &'static str)>> {
    let root = root();
    let target = root.join("target");
    run(cargo()
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
        .arg(root.join("plugins/Cargo.toml"))
        .arg("--target-dir")
        .arg(target.join("wasm")))?;
    let out = target.join("plugins");
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut built = Vec::new();
    for (file, name) in SKILLS {
        let from = target.join(format!("wasm/wasm32-wasip2/release/{file}.wasm"));
        let to = out.join(format!("{file}.wasm"));
        std::fs::copy(&from, &to).map_err(|e| format!("{}: {e}", from.display()))?;
        built.push((to, *name));
    }
    Ok(built)
}

/// The sample task of the README, on the embedded model.
const SAMPLE_TASK: &str = "Collect every TODO line under src/ into todo.md";

fn demo() -> Result {
    setup()?;
    let root = root();
    let skills = plugins()?;
    run(cargo()
        .current_dir(&root)
        .args(["build", "--bin", "camina"]))?;
    let (camina, home) = agent_home("demo/home", &skills)?;
    let ws = root.join("target/demo/workspace");
    let _ = std::fs::remove_dir_all(&ws);
    std::fs::create_dir_all(ws.join("src")).map_err(|e| e.to_string())?;
    let write = |path: PathBuf, text: &str| {
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
    };
    write(
        ws.join("src/main.rs"),
        "fn main() {\n    // TODO: parse the command line\n    println!(\"hi\");\n}\n",
    )?;
    write(
        ws.join("src/lib.rs"),
        "// TODO: write the library\npub fn f() {}\n",
    )?;
    let camina_cmd = || {
        let mut c = Command::new(&camina);
        c.arg("--home").arg(&home);
        c
    };
    fetch_model_with(camina_cmd())?;
    run(camina_cmd().args(["model", "check"]))?;

    eprintln!("\nsample task: {SAMPLE_TASK}");
    // The task's own outcome is the demo's result, success or not: a
    // failed task is reported (with its reason, above) rather than hidden.
    let mut task = camina_cmd();
    task.args(["run", SAMPLE_TASK, "--model", "embedded", "--workspace"])
        .arg(&ws);
    eprintln!("xtask: {task:?}");
    let outcome = task.status().map_err(|e| format!("{task:?}: {e}"))?;
    eprintln!("\nworkspace after the task:");
    let mut files: Vec<_> = walk(&ws);
    files.sort();
    for f in files {
        eprintln!("  {}", f.strip_prefix(&ws).unwrap_or(&f).display());
    }
    if let Ok(todo) = std::fs::read_to_string(ws.join("todo.md")) {
        eprintln!("\ntodo.md:\n{todo}");
    }
    eprintln!(
        "\nsample task {}",
        if outcome.success() {
            "succeeded"
        } else {
            "FAILED (the model did not get it done; the reason is above)"
        }
    );
    eprintln!(
        "\nThat ran on the embedded Qwen2.5-Coder 1.5B Instruct. Compare models on the eval suite \
         with `target/debug/camina eval evals --model embedded:qwen2.5-coder-0.5b` (or an \
         `ollama:` model), and inspect the run with: target/debug/camina --home {} task show <ID>",
        home.display()
    );
    // A failed sample task fails the demo (exit 1), so a script that runs
    // it notices.
    if outcome.success() {
        Ok(())
    } else {
        Err("the sample task failed".into())
    }
}

/// A home under target/ with the bundled skills installed and every role
/// on the default embedded model; returns `(camina, home)`.
fn agent_home(name: &str, skills: &[(PathBuf, &'static str)]) -> Result<(PathBuf, PathBuf)> {
    let root = root();
    let camina = root.join("target/debug/camina");
    let home = root.join("target").join(name);
    let _ = std::fs::remove_dir_all(&home);
    std::fs::create_dir_all(&home).map_err(|e| e.to_string())?;
    let config = home.join("config.toml");
    std::fs::write(
        &config,
        "# Every role on the default embedded model (see README: Models).\n[models]\n\
         coordinator = \"embedded\"\nreasoner = \"embedded\"\nbelter = \"embedded\"\n\
         drummer = \"embedded\"\n",
    )
    .map_err(|e| format!("{}: {e}", config.display()))?;
    for (wasm, name) in skills {
        run(Command::new(&camina)
            .arg("--home")
            .arg(&home)
            .args(["plugin", "install"])
            .arg(wasm)
            .arg("--policy")
            .arg(root.join(format!("policies/{name}.toml"))))?;
    }
    Ok((camina, home))
}

/// The eval suite on the default embedded model.
fn eval(extra: &[String]) -> Result {
    setup()?;
    let root = root();
    let skills = plugins()?;
    run(cargo()
        .current_dir(&root)
        .args(["build", "--bin", "camina"]))?;
    let (camina, home) = agent_home("eval-home", &skills)?;
    fetch_model_with(Command::new(&camina))?;
    run(Command::new(&camina)
        .arg("--home")
        .arg(&home)
        .arg("eval")
        .arg(root.join("evals"))
        .arg("--report")
        .arg(root.join("target/eval-report.json"))
        .args(extra))
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn test(extra: &[String]) -> Result {
    setup()?;
    let root = root();
    run(cargo()
        .current_dir(&root)
        .args(["fmt", "--all", "--", "--check"]))?;
    for ws in ["plugins", "tests/guests"] {
        run(cargo()
            .current_dir(root.join(ws))
            .args(["fmt", "--all", "--", "--check"]))?;
    }
    run(cargo().current_dir(&root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo()
        .current_dir(root.join("plugins"))
        .args(["clippy", "--target", "wasm32-wasip2", "--target-dir"])
        .arg(root.join("target/wasm"))
        .args(["--", "-D", "warnings"]))?;
    // Build every test binary, and the `camina` binary the tests drive,
    // once with the workspace's feature set: a `cargo run --bin camina`
    // alone resolves features differently and would build much of the
    // graph (llama.cpp included) a second time.
    run(cargo()
        .current_dir(&root)
        .args(["test", "--workspace", "--no-run"]))?;
    // The embedded-model tests need the default GGUF (cached downloads).
    let gguf = fetch_model_with(Command::new(root.join("target/debug/camina")))?;
    // The MCP test drives `camina mcp` with the official Python SDK.
    let python = python_with_mcp()?;
    // The multi-node tests run a real Restate server.
    let restate = restate_server()?;
    run(cargo()
        .current_dir(&root)
        .args(["test", "--workspace"])
        .args(extra)
        .env("CAMINA_TEST_GGUF", &gguf)
        .env("CAMINA_TEST_PYTHON", &python)
        .env("CAMINA_TEST_RESTATE", &restate))?;
    // A few eval cases on the real default model (the whole suite is
    // `cargo xtask eval`): the agent end to end, scored on end states.
    let skills = plugins()?;
    let (camina, home) = agent_home("test-eval-home", &skills)?;
    let mut eval = Command::new(&camina);
    eval.arg("--home")
        .arg(&home)
        .arg("eval")
        .arg(root.join("evals"));
    for case in [
        "append_line",
        "rename_file",
        "question_version",
        "impossible_missing_file",
    ] {
        eval.args(["--filter", case]);
    }
    run(eval
        .arg("--report")
        .arg(root.join("target/test-eval-report.json"))
        .args(["--min-pass", "0.75"]))?;
    // The skills' own unit tests run natively (their own target dir: the
    // plugins are another workspace, and sharing target/debug would make
    // each side rebuild crates the other built).
    run(cargo()
        .current_dir(root.join("plugins"))
        .args(["test", "--workspace", "--target-dir"])
        .arg(root.join("target/native-plugins")))
}

fn bench(extra: &[String]) -> Result {
    setup()?;
    let root = root();
    let gguf = fetch_model(&root)?;
    let out = root.join("target/bench");
    let _ = std::fs::remove_dir_all(&out);
    // The Extism baseline of P1b first (host.rs quotes its figures): its
    // own crate and target dir, since Extism pins another wasmtime.
    if let Err(e) = extism_baseline(&root) {
        eprintln!("xtask: the Extism baseline was not measured: {e}");
    }
    run(cargo()
        .current_dir(&root)
        .args(["bench", "-p", "camina-bench"])
        .args(extra)
        .env("CAMINA_BENCH_GGUF", &gguf))?;
    let mut report = String::from(
        "# Caminaå benchmark report\n\nEvery figure next to a baseline measured in the same run on the same \
         machine; ratios matter, absolute times are context. Targets are goals, not assertions; \
         misses are explained in project_plan.md.\n",
    );
    for name in ["host", "extism", "model"] {
        if let Ok(table) = std::fs::read_to_string(out.join(format!("{name}.md"))) {
            report.push_str(&format!("\n## {name}\n\n{table}"));
        }
    }
    // The agent on real work: the eval suite on the default embedded model
    // (after the benches, so the two do not share the cores).
    match eval_row(&root) {
        Ok(row) => report.push_str(&row),
        Err(e) => eprintln!("xtask: the eval row was not measured: {e}"),
    }
    let path = root.join("target/bench-report.md");
    std::fs::write(&path, &report).map_err(|e| format!("{}: {e}", path.display()))?;
    println!("{report}\nwritten to {}", path.display());
    Ok(())
}

/// Runs `evals/` and returns the report's eval table.
fn eval_row(root: &Path) -> Result<String> {
    let skills = plugins()?;
    run(cargo().current_dir(root).args(["build", "--bin", "camina"]))?;
    let (camina, home) = agent_home("bench-eval-home", &skills)?;
    let json = root.join("target/bench/eval.json");
    run(Command::new(&camina)
        .arg("--home")
        .arg(&home)
        .arg("eval")
        .arg(root.join("evals"))
        .arg("--report")
        .arg(&json))?;
    let text = std::fs::read_to_string(&json).map_err(|e| format!("{}: {e}", json.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    Ok(format!(
        "\n## eval\n\n| row | what | measured | goal |\n|---|---|---|---|\n\
         | E1 | `camina eval evals` on {} (2 threads) | {}/{} passed ({:.0}%), median {:.1} s a task, \
         {} reported succeeded but failed | ≥ 90% of evals/, median ≤ 60 s, 0 false successes |\n",
        v["model"].as_str().unwrap_or("?"),
        v["passed"],
        v["cases"],
        v["pass_rate"].as_f64().unwrap_or(0.0) * 100.0,
        v["median_seconds"].as_f64().unwrap_or(0.0),
        v["reported_succeeded_but_failed"],
    ))
}

/// Builds the Extism plugin (wasm32-wasip1) and runs host/bench-extism,
/// which writes target/bench/extism.{md,json}.
fn extism_baseline(root: &Path) -> Result {
    run(Command::new("rustup").args(["target", "add", "wasm32-wasip1"]))?;
    let target_dir = root.join("target/bench-extism");
    run(cargo()
        .current_dir(root)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip1",
            "--manifest-path",
        ])
        .arg(root.join("host/bench-extism/plugin/Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir))?;
    let plugin = target_dir.join("wasm32-wasip1/release/camina_extism_read_file.wasm");
    run(cargo()
        .current_dir(root)
        .args(["bench", "--manifest-path"])
        .arg(root.join("host/bench-extism/Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .env("CAMINA_EXTISM_PLUGIN", plugin))
}

/// The default embedded model (downloads are cached); returns its path.
fn fetch_model(root: &Path) -> Result<PathBuf> {
    let mut camina = cargo();
    camina
        .current_dir(root)
        .args(["run", "--quiet", "--bin", "camina", "--"]);
    fetch_model_with(camina)
}

/// [`fetch_model`] through a given `camina` command: `model fetch --json`
/// prints where the model is.
fn fetch_model_with(mut camina: Command) -> Result<PathBuf> {
    let cmd = camina.args(["model", "fetch", "--json"]);
    eprintln!("xtask: {cmd:?}");
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{cmd:?} failed ({})", out.status));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let path = text
        .lines()
        .rev()
        .find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            v["path"].as_str().map(PathBuf::from)
        })
        .ok_or_else(|| format!("`camina model fetch --json` printed no path: {text}"))?;
    Ok(path)
}
