//! The plugin store: install checks, atomic replace, remove, cache rebuild,
//! and calls through it (input-schema validation).

use crate::support::{artifacts, sandbox, shipped_policy};
use camina_registry::{Error, PolicySource, Registry, digest};
use camina_sandbox::ToolErrorKind;
use camina_sandbox::error_chain;

fn registry() -> (tempfile::TempDir, Registry) {
    let home = tempfile::tempdir().unwrap();
    let r = Registry::open(home.path(), sandbox()).unwrap();
    (home, r)
}

fn policy(name: &str) -> PolicySource {
    PolicySource {
        text: shipped_policy(name),
        name: format!("policies/{name}.toml"),
    }
}

fn read(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[tokio::test]
async fn install_list_call_remove() {
    let (_home, r) = registry();
    let wasm = read(artifacts::BELTER_FS);
    let report = r
        .install(&wasm, Some(&policy("belter-fs")), None, "belter_fs.wasm")
        .await
        .unwrap();
    assert_eq!(report.record.name, "belter-fs");
    assert_eq!(report.record.digest, digest(&wasm));
    assert_eq!(report.record.crew, Some(camina_policy::Crew::Belter));
    assert!(!report.replaced);
    let list = r.list().unwrap();
    assert_eq!(list.len(), 1);

    let ws = tempfile::tempdir().unwrap();
    let out = r
        .call(
            "belter-fs",
            "write_file",
            r#"{"path":"n.txt","content":"hi"}"#,
            Some(ws.path()),
        )
        .await
        .unwrap();
    assert!(out.result.is_ok());
    assert_eq!(
        std::fs::read_to_string(ws.path().join("n.txt")).unwrap(),
        "hi"
    );

    r.remove("belter-fs").unwrap();
    assert!(r.list().unwrap().is_empty());
    assert!(matches!(
        r.remove("belter-fs"),
        Err(Error::UnknownPlugin(_))
    ));
    assert!(matches!(r.get("belter-fs"), Err(Error::UnknownPlugin(_))));
}

#[tokio::test]
async fn inputs_are_validated_against_the_schema_before_the_call() {
    let (_home, r) = registry();
    r.install(
        &read(artifacts::BELTER_FS),
        Some(&policy("belter-fs")),
        None,
        "b",
    )
    .await
    .unwrap();
    let ws = tempfile::tempdir().unwrap();
    let out = r
        .call("belter-fs", "write_file", r#"{"path": 5}"#, Some(ws.path()))
        .await
        .unwrap();
    let e = out.result.unwrap_err();
    assert_eq!(e.kind, ToolErrorKind::InvalidInput);
    assert!(
        e.message.contains("input/path")
            && e.message.contains("\"content\" is a required property"),
        "{}",
        e.message
    );
    assert!(out.decisions.is_empty(), "the sandbox never ran");
    let out = r
        .call("belter-fs", "nope", "{}", Some(ws.path()))
        .await
        .unwrap();
    let e = out.result.unwrap_err();
    assert_eq!(e.kind, ToolErrorKind::NotFound);
    assert!(
        e.message.contains("read_file"),
        "lists the real tools: {}",
        e.message
    );
}

#[tokio::test]
async fn reinstall_replaces_atomically() {
    let (home, r) = registry();
    let wasm = read(artifacts::BELTER_FS);
    r.install(&wasm, None, None, "b").await.unwrap();
    assert_eq!(r.get("belter-fs").unwrap().record.crew, None);
    let report = r
        .install(&wasm, Some(&policy("belter-fs")), None, "b")
        .await
        .unwrap();
    assert!(report.replaced);
    let list = r.list().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].crew, Some(camina_policy::Crew::Belter));
    // A fresh process sees the new policy too.
    let again = Registry::open(home.path(), sandbox()).unwrap();
    assert_eq!(
        again
            .get("belter-fs")
            .unwrap()
            .policy
            .crew
            .map(|c| c.as_str()),
        Some("belter")
    );
}

#[tokio::test]
async fn install_without_policy_grants_nothing() {
    let (_home, r) = registry();
    let report = r
        .install(&read(artifacts::BELTER_FS), None, None, "b")
        .await
        .unwrap();
    assert!(report.policy.grants_nothing());
    let ws = tempfile::tempdir().unwrap();
    std::fs::write(ws.path().join("f.txt"), "x").unwrap();
    let out = r
        .call(
            "belter-fs",
            "read_file",
            r#"{"path":"f.txt"}"#,
            Some(ws.path()),
        )
        .await
        .unwrap();
    assert_eq!(out.result.unwrap_err().kind, ToolErrorKind::Denied);
}

#[tokio::test]
async fn install_refuses_a_digest_mismatch_and_stores_nothing() {
    let (home, r) = registry();
    let wasm = read(artifacts::BELTER_FS);
    let wrong = "0".repeat(64);
    let err = r.install(&wasm, None, Some(&wrong), "b").await.unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    assert!(r.list().unwrap().is_empty());
    assert_eq!(
        std::fs::read_dir(home.path().join("blobs"))
            .unwrap()
            .count(),
        0
    );
    assert!(matches!(
        r.install(&wasm, None, Some("abc"), "b").await,
        Err(Error::BadDigest(_))
    ));
    let right = digest(&wasm).to_string();
    r.install(&wasm, None, Some(&right), "b").await.unwrap();
}

#[tokio::test]
async fn install_refuses_a_core_module() {
    let (_home, r) = registry();
    let module = wat::parse_str("(module (func (export \"describe\")))").unwrap();
    let err = r
        .install(&module, None, None, "core.wasm")
        .await
        .unwrap_err();
    let msg = error_chain(&err);
    assert!(
        msg.starts_with("core.wasm:") && msg.contains("core WebAssembly module, not a component"),
        "{msg}"
    );
}

#[tokio::test]
async fn install_refuses_the_wrong_world() {
    let (_home, r) = registry();
    let component = wat::parse_str("(component)").unwrap();
    let msg = r
        .install(&component, None, None, "empty.wasm")
        .await
        .unwrap_err();
    let msg = error_chain(&msg);
    assert!(
        msg.contains("does not implement the camina:skill@0.1.0 `skill` world")
            && msg.contains("describe"),
        "{msg}"
    );
    // Exports of the right names but the wrong types.
    let wrong_types = wat::parse_str(
        r#"(component
            (core module $m (func (export "f")))
            (core instance $i (instantiate $m))
            (func $f (canon lift (core func $i "f")))
            (export "describe" (func $f))
            (export "call" (func $f)))"#,
    )
    .unwrap();
    let msg = r
        .install(&wrong_types, None, None, "typed.wasm")
        .await
        .unwrap_err();
    let msg = error_chain(&msg);
    assert!(msg.contains("skill` world"), "{msg}");
}

#[tokio::test]
async fn install_refuses_garbage_and_truncated_components() {
    let (_home, r) = registry();
    let msg = r
        .install(b"hello world", None, None, "junk.wasm")
        .await
        .unwrap_err();
    let msg = error_chain(&msg);
    assert!(msg.contains("not a WebAssembly file"), "{msg}");
    let wasm = read(artifacts::BELTER_FS);
    let msg = r
        .install(&wasm[..wasm.len() / 2], None, None, "cut.wasm")
        .await
        .unwrap_err();
    let msg = error_chain(&msg);
    assert!(msg.contains("invalid or cannot be compiled"), "{msg}");
    assert!(r.list().unwrap().is_empty());
}

#[tokio::test]
async fn install_refuses_a_component_that_imports_sockets() {
    let (_home, r) = registry();
    let msg = r
        .install(&read(artifacts::SOCKET_USER), None, None, "s.wasm")
        .await
        .unwrap_err();
    let msg = error_chain(&msg);
    assert!(msg.contains("wasi:sockets"), "{msg}");
    assert!(r.list().unwrap().is_empty());
}

#[tokio::test]
async fn install_refuses_a_policy_for_another_plugin() {
    let (_home, r) = registry();
    let err = r
        .install(
            &read(artifacts::BELTER_FS),
            Some(&policy("drummer-search")),
            None,
            "b",
        )
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("policies/drummer-search.toml") && msg.contains("\"belter-fs\""),
        "{msg}"
    );
    assert!(r.list().unwrap().is_empty());
}

#[tokio::test]
async fn install_refuses_an_invalid_policy_naming_file_line_and_key() {
    let (_home, r) = registry();
    let bad = PolicySource {
        text: "plugin = \"belter-fs\"\n[limits]\nmemory_mb = 5\n".into(),
        name: "bad.toml".into(),
    };
    let msg = r
        .install(&read(artifacts::BELTER_FS), Some(&bad), None, "b")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        msg.starts_with("bad.toml:3:1: `limits.memory_mb`: unknown field `memory_mb`"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_lost_compiled_cache_is_rebuilt_and_a_corrupt_one_is_not_trusted() {
    let (home, r) = registry();
    r.install(
        &read(artifacts::BELTER_FS),
        Some(&policy("belter-fs")),
        None,
        "b",
    )
    .await
    .unwrap();
    let cache = home.path().join("cache");
    let entry = std::fs::read_dir(&cache)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::write(&entry, b"garbage").unwrap();
    let fresh = Registry::open(home.path(), sandbox()).unwrap();
    let ws = tempfile::tempdir().unwrap();
    let out = fresh
        .call("belter-fs", "list_dir", "{}", Some(ws.path()))
        .await
        .unwrap();
    assert!(out.result.is_ok());
    std::fs::remove_file(&entry).unwrap();
    let fresh = Registry::open(home.path(), sandbox()).unwrap();
    assert!(
        fresh
            .call("belter-fs", "list_dir", "{}", Some(ws.path()))
            .await
            .unwrap()
            .result
            .is_ok()
    );
    assert!(entry.exists(), "the cache was written again");
}

#[tokio::test]
async fn a_corrupt_record_is_reported_not_deleted() {
    let (home, r) = registry();
    let path = home.path().join("plugins/broken.json");
    std::fs::write(&path, "{ not json").unwrap();
    let msg = r.list().unwrap_err().to_string();
    assert!(
        msg.contains("broken.json") && msg.contains("corrupt"),
        "{msg}"
    );
    assert!(path.exists());
}

#[tokio::test]
async fn shipped_plugins_install_with_their_policies() {
    let (_home, r) = registry();
    for (file, name) in [
        (artifacts::BELTER_FS, "belter-fs"),
        (artifacts::DRUMMER_SEARCH, "drummer-search"),
        (artifacts::DRUMMER_WEB, "drummer-web"),
    ] {
        let report = r
            .install(&read(file), Some(&policy(name)), None, file)
            .await
            .unwrap();
        assert_eq!(report.record.name, name);
    }
    use camina_policy::Crew;
    let crews: Vec<(String, Option<Crew>)> = r
        .list()
        .unwrap()
        .into_iter()
        .map(|p| (p.name, p.crew))
        .collect();
    assert_eq!(
        crews,
        [
            ("belter-fs".into(), Some(Crew::Belter)),
            ("drummer-search".into(), Some(Crew::Drummer)),
            ("drummer-web".into(), Some(Crew::Drummer))
        ]
    );
}

/// `camina plugin remove` (or a reinstall with a narrower policy) from the
/// CLI while `camina serve` runs: the server must not keep the old grants.
#[tokio::test]
async fn revoked_plugin_is_not_served_from_memory_by_another_process() {
    let home = tempfile::tempdir().unwrap();
    let cli = Registry::open(home.path(), sandbox()).unwrap();
    let server = Registry::open(home.path(), sandbox()).unwrap();
    let wasm = read(artifacts::BELTER_FS);
    cli.install(&wasm, Some(&policy("belter-fs")), None, "b")
        .await
        .unwrap();
    let ws = tempfile::tempdir().unwrap();
    let write = r#"{"path":"n.txt","content":"hi"}"#;
    let out = server
        .call("belter-fs", "write_file", write, Some(ws.path()))
        .await
        .unwrap();
    assert!(out.result.is_ok(), "{:?}", out.result);

    // Reinstalled with a read-only mount: the server sees the new policy.
    let read_only = PolicySource {
        text: shipped_policy("belter-fs").replace("read-write", "read"),
        name: "ro.toml".into(),
    };
    cli.install(&wasm, Some(&read_only), None, "b")
        .await
        .unwrap();
    // (A new file: writing the same content to the old one is a no-op.)
    let out = server
        .call(
            "belter-fs",
            "write_file",
            r#"{"path":"m.txt","content":"hi"}"#,
            Some(ws.path()),
        )
        .await
        .unwrap();
    assert!(out.result.is_err(), "the old read-write grant lived on");

    // Removed: the server no longer has it.
    cli.remove("belter-fs").unwrap();
    assert!(matches!(
        server
            .call(
                "belter-fs",
                "read_file",
                r#"{"path":"n.txt"}"#,
                Some(ws.path())
            )
            .await,
        Err(Error::UnknownPlugin(_))
    ));
}

#[tokio::test]
async fn plugin_name_traversal_never_reaches_outside_the_store() {
    let (home, r) = registry();
    // A JSON file beside the store that a `../` name would point at.
    std::fs::write(home.path().join("victim.json"), "{}").unwrap();
    for name in ["../victim", "..", "a/b", "Belter-FS", ""] {
        assert!(
            matches!(r.remove(name), Err(Error::UnknownPlugin(_))),
            "{name}"
        );
        assert!(
            matches!(r.get(name), Err(Error::UnknownPlugin(_))),
            "{name}"
        );
    }
    assert!(home.path().join("victim.json").exists());
}

/// The workspace is checked when the sandbox opens it (not canonicalised
/// ahead of every call): a missing one, or a file in its place, still
/// refuses the call with an error naming the path, and nothing runs.
#[tokio::test]
async fn a_missing_or_non_directory_workspace_refuses_the_call_naming_it() {
    let (_home, r) = registry();
    let wasm = read(artifacts::BELTER_FS);
    r.install(&wasm, Some(&policy("belter-fs")), None, "belter_fs.wasm")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("gone");
    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    for ws in [&missing, &file] {
        let err = r
            .call(
                "belter-fs",
                "write_file",
                r#"{"path":"n.txt","content":"hi"}"#,
                Some(ws),
            )
            .await
            .expect_err("a call without its workspace must fail");
        let text = error_chain(&err);
        assert!(matches!(err, Error::Call(_)), "{text}");
        assert!(text.contains(&ws.display().to_string()), "{text}");
    }
    assert!(!missing.exists());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "not a directory");
}
