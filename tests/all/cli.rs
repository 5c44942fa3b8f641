//! The `camina` command line, driven as a user would: exit codes, stdout,
//! stderr.

use crate::support::artifacts;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Cli {
    home: tempfile::TempDir,
    ws: tempfile::TempDir,
}

impl Cli {
    fn new() -> Self {
        Self {
            home: tempfile::tempdir().unwrap(),
            ws: tempfile::tempdir().unwrap(),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_camina"))
            .arg("--home")
            .arg(self.home.path())
            .args(args)
            .current_dir(artifacts::ROOT)
            .env_remove("CAMINA_HOME")
            .env("CAMINA_LOG", "warn")
            .output()
            .unwrap()
    }

    fn ws(&self) -> String {
        self.ws.path().display().to_string()
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn policy(name: &str) -> String {
    Path::new(artifacts::ROOT)
        .join("policies")
        .join(format!("{name}.toml"))
        .display()
        .to_string()
}

#[test]
fn the_issue_walkthrough() {
    let c = Cli::new();
    let o = c.run(&[
        "plugin",
        "install",
        artifacts::BELTER_FS,
        "--policy",
        &policy("belter-fs"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("installed belter-fs 0.1.0 (sha256:"), "{out}");
    assert!(
        out.contains("{workspace} -> /workspace (read-write)"),
        "{out}"
    );

    let o = c.run(&["plugin", "list", "--json"]);
    assert!(o.status.success());
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(list[0]["name"], "belter-fs");
    assert_eq!(list[0]["crew"], "belter");
    assert!(list[0]["digest"].as_str().unwrap().starts_with("sha256:"));

    let ws = c.ws();
    let o = c.run(&[
        "tool",
        "call",
        "belter-fs",
        "write_file",
        "--workspace",
        &ws,
        "--input",
        r#"{"path":"notes.txt","content":"hello"}"#,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(c.ws.path().join("notes.txt")).unwrap(),
        "hello"
    );
    let o = c.run(&[
        "tool",
        "call",
        "belter-fs",
        "read_file",
        "--workspace",
        &ws,
        "--input",
        r#"{"path":"notes.txt"}"#,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["content"], "hello");

    let o = c.run(&["plugin", "remove", "belter-fs"]);
    assert!(o.status.success());
    let o = c.run(&["plugin", "list", "--json"]);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap(),
        serde_json::json!([])
    );
}

#[test]
fn tool_errors_exit_1_with_kind_and_message() {
    let c = Cli::new();
    assert!(
        c.run(&[
            "plugin",
            "install",
            artifacts::BELTER_FS,
            "--policy",
            &policy("belter-fs")
        ])
        .status
        .success()
    );
    let ws = c.ws();
    let o = c.run(&[
        "tool",
        "call",
        "belter-fs",
        "read_file",
        "--workspace",
        &ws,
        "--input",
        r#"{"path":"missing.txt"}"#,
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).is_empty());
    assert!(
        stderr(&o).lines().any(|l| l.starts_with("not-found: ")),
        "{}",
        stderr(&o)
    );
    let o = c.run(&[
        "tool",
        "call",
        "belter-fs",
        "read_file",
        "--workspace",
        &ws,
        "--input",
        r#"{"path":"../../etc/passwd"}"#,
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).lines().any(|l| l.starts_with("denied: ")),
        "{}",
        stderr(&o)
    );
    let o = c.run(&[
        "tool",
        "call",
        "belter-fs",
        "read_file",
        "--workspace",
        &ws,
        "--input",
        r#"{"path":1}"#,
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).lines().any(|l| l.starts_with("invalid-input: ")),
        "{}",
        stderr(&o)
    );
}

#[test]
fn usage_errors_exit_2() {
    let c = Cli::new();
    assert!(
        c.run(&[
            "plugin",
            "install",
            artifacts::BELTER_FS,
            "--policy",
            &policy("belter-fs")
        ])
        .status
        .success()
    );
    let ws = c.ws();
    let o = c.run(&[
        "tool",
        "call",
        "belter-fs",
        "read_file",
        "--workspace",
        &ws,
        "--input",
        "{nope",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--input is not valid JSON"),
        "{}",
        stderr(&o)
    );
    let o = c.run(&["tool", "call", "belter-fs"]);
    assert_eq!(o.status.code(), Some(2));
    let o = c.run(&["plugin", "frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
    let o = c.run(&[
        "tool",
        "call",
        "belter-fs",
        "list_dir",
        "--workspace",
        "/no/such/dir/camina",
    ]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn limits_exit_1_and_say_which() {
    let c = Cli::new();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("attacker.toml");
    std::fs::write(
        &p,
        "plugin = \"attacker\"\n[limits]\ntimeout_ms = 200\nmemory_mib = 16\n",
    )
    .unwrap();
    let o = c.run(&[
        "plugin",
        "install",
        artifacts::ATTACKER,
        "--policy",
        p.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = c.run(&["tool", "call", "attacker", "spin"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("limit exceeded: timeout"),
        "{}",
        stderr(&o)
    );
    let o = c.run(&[
        "tool",
        "call",
        "attacker",
        "alloc",
        "--input",
        r#"{"mib":64}"#,
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("limit exceeded: memory"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn install_without_policy_says_it_grants_nothing() {
    let c = Cli::new();
    let o = c.run(&["plugin", "install", artifacts::DRUMMER_SEARCH]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no filesystem, no network and no environment"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn install_errors_name_the_file() {
    let c = Cli::new();
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, "not wasm").unwrap();
    let o = c.run(&["plugin", "install", junk.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("junk.wasm") && stderr(&o).contains("not a WebAssembly file"),
        "{}",
        stderr(&o)
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "plugin = \"belter-fs\"\n[[fs]]\nhost = \"{workspace}\"\nguest = \"/workspace\"\naccess = \"write\"\n").unwrap();
    let o = c.run(&[
        "plugin",
        "install",
        artifacts::BELTER_FS,
        "--policy",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("bad.toml:5:10: `fs[0].access`") && err.contains("unknown variant `write`"),
        "{err}"
    );

    let o = c.run(&[
        "plugin",
        "install",
        artifacts::BELTER_FS,
        "--sha256",
        &"a".repeat(64),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("digest mismatch"), "{}", stderr(&o));
    // A malformed digest is a usage error.
    let o = c.run(&["plugin", "install", artifacts::BELTER_FS, "--sha256", "abc"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = c.run(&["plugin", "list", "--json"]);
    assert_eq!(stdout(&o).trim(), "[]");

    let o = c.run(&["tool", "call", "nobody", "x"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("no plugin named `nobody`"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn home_comes_from_camina_home_when_no_flag() {
    let home = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_camina"))
        .args(["plugin", "install", artifacts::DRUMMER_WEB, "--policy"])
        .arg(policy("drummer-web"))
        .env("CAMINA_HOME", home.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let record: PathBuf = home.path().join("plugins/drummer-web.json");
    assert!(record.exists());
}

/// `camina plugin list | head -0`: stdout closed before camina writes.
/// No panic and no backtrace, the status of a SIGPIPE death.
#[test]
fn closed_stdout_is_not_a_panic() {
    let home = tempfile::tempdir().unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let o = Command::new(env!("CARGO_BIN_EXE_camina"))
        .arg("--home")
        .arg(home.path())
        .args(["plugin", "list"])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(141), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
