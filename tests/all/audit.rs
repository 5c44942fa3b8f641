//! Policy audit, the capability decision log, and verified installs (URL +
//! digest pinning, signatures), driven through the CLI as a user would.

use crate::net_support::Server;
use crate::support::artifacts;
use serde_json::Value;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_camina"))
            .arg("--home")
            .arg(self.path())
            .args(args)
            .env("CAMINA_LOG", "error")
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }

    fn write(&self, name: &str, text: &str) -> String {
        let p = self.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }
}

fn policy(name: &str) -> String {
    Path::new(artifacts::ROOT)
        .join(format!("policies/{name}.toml"))
        .display()
        .to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn codes(report: &Value, plugin: &str) -> Vec<String> {
    report["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["plugin"] == plugin)
        .unwrap()["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["code"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn the_audit_reports_grants_findings_and_drift() {
    let h = Home::new();
    h.ok(&[
        "plugin",
        "install",
        artifacts::BELTER_FS,
        "--policy",
        &policy("belter-fs"),
    ]);
    h.ok(&[
        "plugin",
        "install",
        artifacts::DRUMMER_WEB,
        "--policy",
        &policy("drummer-web"),
    ]);
    let risky = h.write(
        "attacker.toml",
        "plugin = \"attacker\"\ncrew = \"drummer\"\n[[fs]]\nhost = \"/tmp\"\nguest = \"/tmp\"\naccess = \"read-write\"\n[net]\nallow = [\"*\"]\n[env]\nallow = [\"API_TOKEN\"]\n",
    );
    h.ok(&["plugin", "install", artifacts::ATTACKER, "--policy", &risky]);

    let report = h.json(&["policy", "audit", "--json"]);
    let belter = codes(&report, "belter-fs");
    assert_eq!(
        belter,
        ["not-approved"],
        "the shipped belter policy is clean"
    );
    let web = codes(&report, "drummer-web");
    assert!(web.contains(&"ungranted-net".to_owned()), "{web:?}");
    let attacker = codes(&report, "attacker");
    for c in ["write-outside-workspaces", "net-any", "env-secret"] {
        assert!(attacker.contains(&c.to_owned()), "{c} in {attacker:?}");
    }
    let b = report["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["plugin"] == "belter-fs")
        .unwrap();
    assert_eq!(b["grants"]["fs"][0]["access"], "read-write");
    assert_eq!(b["approval"], "not-approved");
    assert!(report["summary"]["high"].as_u64().unwrap() >= 3);

    // --deny: exit 1 when findings at that level or above exist.
    let o = h.run(&["policy", "audit", "--deny", "high"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("high   net-any"), "a readable table: {text}");
    h.ok(&["plugin", "remove", "attacker"]);
    assert!(
        h.run(&["policy", "audit", "--deny", "high"])
            .status
            .success()
    );
    assert_eq!(
        h.run(&["policy", "audit", "--deny", "info"]).status.code(),
        Some(1)
    );
    assert_eq!(
        h.run(&["policy", "audit", "--deny", "bad"]).status.code(),
        Some(2)
    );

    // Approval, then drift.
    h.ok(&["policy", "approve", "belter-fs"]);
    let report = h.json(&["policy", "audit", "--json"]);
    assert_eq!(codes(&report, "belter-fs"), Vec::<String>::new());
    let changed = h.write(
        "changed.toml",
        &format!(
            "{}\n# widened later\n",
            std::fs::read_to_string(policy("belter-fs")).unwrap()
        ),
    );
    h.ok(&[
        "plugin",
        "install",
        artifacts::BELTER_FS,
        "--policy",
        &changed,
    ]);
    let report = h.json(&["policy", "audit", "--json"]);
    assert_eq!(codes(&report, "belter-fs"), ["drift-policy"]);
    let list = h.ok(&["plugin", "list"]);
    assert!(list.contains("changed since approval"), "{list}");
    let list = h.json(&["plugin", "list", "--json"]);
    assert_eq!(list[0]["approval"], "changed-since-approval", "{list}");
    // A different component under the approved name.
    h.ok(&["policy", "approve", "belter-fs"]);
    let approval = h.path().join("approvals/belter-fs.json");
    let mut a: Value = serde_json::from_str(&std::fs::read_to_string(&approval).unwrap()).unwrap();
    a["digest"] = Value::String(format!("sha256:{}", "1".repeat(64)));
    std::fs::write(&approval, a.to_string()).unwrap();
    let report = h.json(&["policy", "audit", "--json"]);
    assert_eq!(codes(&report, "belter-fs"), ["drift-component"]);
}

#[test]
fn decisions_are_logged_for_allowed_and_denied_fs_and_net() {
    let h = Home::new();
    let ws = tempfile::tempdir().unwrap();
    std::fs::write(ws.path().join("ok.txt"), "fine").unwrap();
    let allowed = Server::start(200, &[], "hi");
    let unlisted = Server::silent();
    let p = h.write(
        "attacker.toml",
        &format!(
            "plugin = \"attacker\"\n[[fs]]\nhost = \"{{workspace}}\"\nguest = \"/workspace\"\naccess = \"read\"\n[net]\nallow = [\"http://127.0.0.1:{}\"]\n",
            allowed.port
        ),
    );
    h.ok(&["plugin", "install", artifacts::ATTACKER, "--policy", &p]);
    let ws_arg = ws.path().display().to_string();
    let call = |tool: &str, input: String| {
        h.run(&[
            "tool",
            "call",
            "attacker",
            tool,
            "--workspace",
            &ws_arg,
            "--input",
            &input,
        ])
    };
    assert!(
        call("read", r#"{"path":"/workspace/ok.txt"}"#.into())
            .status
            .success()
    );
    assert_eq!(
        call(
            "write",
            r#"{"path":"/workspace/new.txt","content":"x"}"#.into()
        )
        .status
        .code(),
        Some(1)
    );
    assert_eq!(
        call("read", r#"{"path":"/workspace/../x"}"#.into())
            .status
            .code(),
        Some(1)
    );
    assert!(
        call("http", format!(r#"{{"url":"{}"}}"#, allowed.url("/a")))
            .status
            .success()
    );
    assert_eq!(
        call("http", format!(r#"{{"url":"{}"}}"#, unlisted.url("/b")))
            .status
            .code(),
        Some(1)
    );

    let all = h.json(&["audit", "log", "--json"]);
    let entries = all.as_array().unwrap();
    let find = |cap: &str, allowed: bool, needle: &str| {
        entries.iter().any(|e| {
            e["capability"] == cap
                && e["allowed"] == allowed
                && e["target"].as_str().unwrap().contains(needle)
        })
    };
    assert!(find("fs", true, "/workspace/ok.txt"), "{all:#}");
    assert!(find("fs", false, "/workspace/new.txt"), "{all:#}");
    assert!(find("fs", false, "../x"), "{all:#}");
    assert!(find("net", true, &allowed.port.to_string()));
    assert!(find("net", false, &unlisted.port.to_string()));
    assert!(
        entries
            .iter()
            .all(|e| e["plugin"] == "attacker"
                && e["digest"].as_str().unwrap().starts_with("sha256:"))
    );
    // Filters.
    let denied = h.json(&["audit", "log", "--json", "--denied"]);
    assert!(
        denied
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["allowed"] == false)
    );
    assert_eq!(denied.as_array().unwrap().len(), 3);
    assert_eq!(
        h.json(&["audit", "log", "--json", "--plugin", "nobody"]),
        serde_json::json!([])
    );
    assert_eq!(
        h.json(&["audit", "log", "--json", "--since", "2000-01-01T00:00:00Z"])
            .as_array()
            .unwrap()
            .len(),
        entries.len()
    );
    assert_eq!(
        h.run(&["audit", "log", "--since", "yesterday-ish"])
            .status
            .code(),
        Some(2)
    );
    // Never contents: the file said "fine", the server said "hi".
    let text = serde_json::to_string(&all).unwrap();
    assert!(!text.contains("fine") && !text.contains("\"hi\""));
}

#[tokio::test]
async fn decisions_inside_a_task_name_the_task_and_step() {
    use crate::engine::{config, install_skills, models, project, todo_script};
    let fake = fake_ollama::FakeOllama::start(models(), todo_script);
    let home = tempfile::tempdir().unwrap();
    let ws = tempfile::tempdir().unwrap();
    project(ws.path());
    let registry = camina_registry::Registry::open(home.path(), crate::support::sandbox()).unwrap();
    install_skills(&registry).await;
    let (journal, _) = camina_journal::Journal::open(&home.path().join("journal")).unwrap();
    let bridge = camina_model::Bridge::new(config(&fake), home.path()).unwrap();
    let engine = camina_coordinator::Engine::new(
        std::sync::Arc::new(journal),
        std::sync::Arc::new(registry),
        std::sync::Arc::new(bridge),
        home.path(),
    );
    let t = engine
        .submit("Collect the TODOs", ws.path(), Default::default())
        .await
        .unwrap();
    engine.run(&t.id, Default::default()).await.unwrap();
    let entries = engine
        .journal()
        .decision_log()
        .query(&camina_journal::DecisionFilter {
            task: Some(t.id.clone()),
            ..Default::default()
        })
        .unwrap();
    let write = entries
        .iter()
        .find(|e| {
            // Writes are atomic: a scratch file renamed over the target.
            e.plugin == "belter-fs"
                && e.target.ends_with("/todo.md")
                && (e.action.contains("create") || e.action == "rename")
        })
        .unwrap_or_else(|| panic!("the write of todo.md was logged: {entries:#?}"));
    assert!(write.allowed);
    assert!(
        write
            .step
            .as_deref()
            .unwrap()
            .starts_with("step/1/turn/0/call/0"),
        "{write:?}"
    );
    assert!(
        entries
            .iter()
            .any(|e| e.plugin == "drummer-search" && e.target.contains("/workspace/src"))
    );
}

/// Serves `bytes` once per connection on loopback.
fn bytes_server(bytes: Vec<u8>) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/wasm\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                bytes.len()
            );
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&bytes);
        }
    });
    port
}

#[test]
fn install_from_a_url_with_a_pinned_digest() {
    let h = Home::new();
    let wasm = std::fs::read(artifacts::BELTER_FS).unwrap();
    let digest = camina_registry::digest(&wasm);
    let url = format!("http://127.0.0.1:{}/belter_fs.wasm", bytes_server(wasm));
    let bad = "0".repeat(64);
    let o = h.run(&[
        "plugin",
        "install",
        &url,
        "--policy",
        &policy("belter-fs"),
        "--sha256",
        &bad,
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("digest mismatch"), "{}", stderr(&o));
    assert_eq!(
        h.json(&["plugin", "list", "--json"]),
        serde_json::json!([]),
        "nothing stored"
    );
    let hex = digest.hex();
    let out = h.ok(&[
        "plugin",
        "install",
        &url,
        "--policy",
        &policy("belter-fs"),
        "--sha256",
        hex,
    ]);
    assert!(out.contains("installed belter-fs"), "{out}");
    let o = h.run(&["plugin", "install", "http://127.0.0.1:1/nothing.wasm"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("downloading http://127.0.0.1:1/nothing.wasm"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn signatures_good_bad_untrusted_and_tampered() {
    let h = Home::new();
    let key = h.path().join("keys/alice.key");
    let public = h.path().join("keys/alice.pub");
    h.ok(&["key", "generate", "alice"]);
    assert!(key.exists() && public.exists());
    let wasm_dir = tempfile::tempdir().unwrap();
    let wasm = wasm_dir.path().join("belter_fs.wasm");
    std::fs::copy(artifacts::BELTER_FS, &wasm).unwrap();
    let wasm_s = wasm.display().to_string();
    let key_s = key.display().to_string();
    h.ok(&[
        "plugin",
        "sign",
        &wasm_s,
        "--key",
        &key_s,
        "--policy",
        &policy("belter-fs"),
    ]);
    let sig = format!("{wasm_s}.sig");
    let install = |extra: &[&str]| {
        let mut args = vec!["plugin", "install", wasm_s.as_str(), "--policy"];
        let p = policy("belter-fs");
        let p: &'static str = Box::leak(p.into_boxed_str());
        args.push(p);
        args.extend_from_slice(extra);
        h.run(&args)
    };

    // Untrusted key.
    let o = install(&["--signature", &sig]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not trusted"), "{}", stderr(&o));
    // Trusted: installs, and the signer is recorded.
    h.ok(&["key", "trust", &public.display().to_string()]);
    let o = install(&["--signature", &sig]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("signed by: alice"));
    assert_eq!(h.json(&["plugin", "list", "--json"])[0]["signer"], "alice");
    // Tampered policy.
    let other = h.write("other.toml", "plugin = \"belter-fs\"\ncrew = \"belter\"\n[[fs]]\nhost = \"/\"\nguest = \"/r\"\naccess = \"read-write\"\n");
    let o = h.run(&[
        "plugin",
        "install",
        &wasm_s,
        "--policy",
        &other,
        "--signature",
        &sig,
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("another policy"), "{}", stderr(&o));
    // Tampered component.
    let mut bytes = std::fs::read(&wasm).unwrap();
    bytes.extend_from_slice(b"\0\0");
    let tampered = wasm_dir.path().join("tampered.wasm");
    std::fs::write(&tampered, &bytes).unwrap();
    let o = h.run(&[
        "plugin",
        "install",
        &tampered.display().to_string(),
        "--policy",
        &policy("belter-fs"),
        "--signature",
        &sig,
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("another component"), "{}", stderr(&o));
    // A forged signature (digest edited to match, signature not).
    let mut forged: Value = serde_json::from_str(&std::fs::read_to_string(&sig).unwrap()).unwrap();
    forged["component"] = Value::String(camina_registry::digest(&bytes).to_string());
    let forged_path = wasm_dir.path().join("forged.sig");
    std::fs::write(&forged_path, forged.to_string()).unwrap();
    let o = h.run(&[
        "plugin",
        "install",
        &tampered.display().to_string(),
        "--policy",
        &policy("belter-fs"),
        "--signature",
        &forged_path.display().to_string(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("does not verify"), "{}", stderr(&o));
    // Mandatory signatures.
    h.write("config.toml", "[plugins]\nrequire_signatures = true\n");
    let o = h.run(&[
        "plugin",
        "install",
        artifacts::DRUMMER_WEB,
        "--policy",
        &policy("drummer-web"),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("signatures are required"),
        "{}",
        stderr(&o)
    );
    let _: PathBuf = wasm;
}
