//! `cargo xtask`: the project's own build tasks (the README's two commands
//! and what they share). Standard library only, so it builds in seconds.
//!
//! - `cargo xtask demo`: build everything, install the bundled skills with
//!   their policies, run a sample job, print the result
//! - `cargo xtask test`: the whole test suite (installs what it needs)
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
        _ => {
            eprintln!(
                "usage: cargo xtask <demo|test|setup|plugins>\n\
                 \n  demo     build, install the bundled skills, run a sample job\
                 \n  test     run the whole test suite (fmt, clippy, tests)\
                 \n  setup    install system packages and the wasm32-wasip2 target\
                 \n  plugins  build the bundled skills into target/plugins/"
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
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
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
    for (program, package) in [("cmake", "cmake"), ("clang", "clang")] {
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

fn demo() -> Result {
    setup()?;
    let root = root();
    let skills = plugins()?;
    run(cargo()
        .current_dir(&root)
        .args(["build", "--bin", "camina"]))?;
    let camina = root.join("target/debug/camina");
    let demo = root.join("target/demo");
    let home = demo.join("home");
    let ws = demo.join("workspace");
    let _ = std::fs::remove_dir_all(&ws);
    std::fs::create_dir_all(ws.join("src")).map_err(|e| e.to_string())?;
    std::fs::write(
        ws.join("src/main.rs"),
        "fn main() {\n    // TODO: parse the command line\n    println!(\"hi\");\n}\n",
    )
    .map_err(|e| e.to_string())?;
    std::fs::write(
        ws.join("src/lib.rs"),
        "// TODO: write the library\npub fn f() {}\n",
    )
    .map_err(|e| e.to_string())?;

    for (wasm, name) in &skills {
        run(Command::new(&camina)
            .arg("--home")
            .arg(&home)
            .args(["plugin", "install"])
            .arg(wasm)
            .arg("--policy")
            .arg(root.join(format!("policies/{name}.toml"))))?;
    }
    run(Command::new(&camina)
        .arg("--home")
        .arg(&home)
        .args(["plugin", "list"]))?;

    // Until the coordinator exists the sample job is driven step by step:
    // a Drummer finds the TODOs, a Belter writes them to todo.md.
    eprintln!("\nsample job: collect every TODO line under src/ into todo.md");
    let found = Command::new(&camina)
        .arg("--home")
        .arg(&home)
        .args(["tool", "call", "drummer-search", "grep", "--workspace"])
        .arg(&ws)
        .args(["--input", r#"{"pattern":"TODO","path":"src"}"#])
        .output()
        .map_err(|e| e.to_string())?;
    if !found.status.success() {
        return Err(format!(
            "grep failed: {}",
            String::from_utf8_lossy(&found.stderr)
        ));
    }
    let grep: serde_json::Value = serde_json::from_slice(&found.stdout)
        .map_err(|e| format!("grep output is not JSON: {e}"))?;
    let mut content = String::from("# TODO\n\n");
    for m in grep["matches"].as_array().into_iter().flatten() {
        content.push_str(&format!(
            "- {}:{}: {}\n",
            m["file"].as_str().unwrap_or_default(),
            m["line"],
            m["text"].as_str().unwrap_or_default().trim()
        ));
    }
    let input = serde_json::json!({"path": "todo.md", "content": content}).to_string();
    run(Command::new(&camina)
        .arg("--home")
        .arg(&home)
        .args(["tool", "call", "belter-fs", "write_file", "--workspace"])
        .arg(&ws)
        .args(["--input", &input]))?;
    let written = std::fs::read_to_string(ws.join("todo.md")).map_err(|e| e.to_string())?;
    println!("\n{}:\n{written}", ws.join("todo.md").display());
    Ok(())
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
    // The embedded-model tests need the default GGUF (cached downloads).
    let gguf = root.join("target/models/gemma-3-270m-q4_k_m.gguf");
    run(cargo()
        .current_dir(&root)
        .args([
            "run", "--quiet", "--bin", "camina", "--", "model", "fetch", "--output",
        ])
        .arg(&gguf))?;
    // The skills' own unit tests run natively.
    run(cargo()
        .current_dir(root.join("plugins"))
        .args(["test", "--workspace", "--target-dir"])
        .arg(root.join("target")))?;
    run(cargo()
        .current_dir(&root)
        .args(["test", "--workspace"])
        .args(extra)
        .env("CAMINA_TEST_GGUF", &gguf))
}
