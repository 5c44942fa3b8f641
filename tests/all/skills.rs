//! The bundled skills under their shipped policies: every tool's happy path
//! and error paths.

use crate::net_support::Server;
use crate::support::{Scene, artifacts, grants, ok, shipped_policy, skill, tool_err};
use camina_sandbox::{Effect, ToolErrorKind};
use serde_json::json;
use std::fs;

fn belter(s: &Scene) -> (camina_sandbox::Skill, camina_policy::Grants) {
    (
        skill(artifacts::BELTER_FS),
        grants(&shipped_policy("belter-fs"), &s.ws()),
    )
}

#[tokio::test]
async fn belter_fs_describes_its_tools_and_effects() {
    let m = skill(artifacts::BELTER_FS)
        .describe("belter-fs")
        .await
        .unwrap();
    assert_eq!(m.name, "belter-fs");
    let effect = |n: &str| m.tools.iter().find(|t| t.name == n).unwrap().effect;
    assert_eq!(effect("read_file"), Effect::ReadOnly);
    assert_eq!(effect("write_file"), Effect::Idempotent);
    assert_eq!(effect("append_file"), Effect::SideEffecting);
    let names: Vec<&str> = m.tools.iter().map(|t| t.name.as_str()).collect();
    for t in [
        "read_file",
        "write_file",
        "append_file",
        "edit_file",
        "list_dir",
        "make_dir",
        "move_path",
        "delete_path",
        "file_info",
    ] {
        assert!(names.contains(&t), "{t} missing from {names:?}");
    }
}

#[tokio::test]
async fn belter_fs_write_read_append() {
    let s = Scene::new();
    let (b, g) = belter(&s);
    let v = ok(
        &b,
        &g,
        "write_file",
        json!({"path": "dir/notes.txt", "content": "hello"}),
    )
    .await;
    assert_eq!(v["bytes_written"], 5);
    assert_eq!(
        fs::read_to_string(s.ws().join("dir/notes.txt")).unwrap(),
        "hello"
    );
    let v = ok(
        &b,
        &g,
        "append_file",
        json!({"path": "dir/notes.txt", "content": " world"}),
    )
    .await;
    assert_eq!(v["size"], 11);
    let v = ok(&b, &g, "read_file", json!({"path": "dir/notes.txt"})).await;
    assert_eq!(v["content"], "hello world");
    assert_eq!(v["truncated"], false);
    // Absolute guest paths under /workspace are accepted.
    let v = ok(
        &b,
        &g,
        "read_file",
        json!({"path": "/workspace/dir/notes.txt"}),
    )
    .await;
    assert_eq!(v["content"], "hello world");
    // Paging.
    let v = ok(
        &b,
        &g,
        "read_file",
        json!({"path": "dir/notes.txt", "offset": 6, "max_bytes": 3}),
    )
    .await;
    assert_eq!(v["content"], "wor");
    assert_eq!(v["truncated"], true);
    // An existing file is not replaced without `overwrite`: the error says
    // how, and the file keeps its content.
    let e = tool_err(
        &b,
        &g,
        "write_file",
        json!({"path": "dir/notes.txt", "content": "replaced"}),
        ToolErrorKind::InvalidInput,
    )
    .await;
    assert!(
        e.contains(
            "dir/notes.txt exists; pass \"overwrite\": true to replace it, or use edit_file"
        ),
        "{e}"
    );
    assert_eq!(
        fs::read_to_string(s.ws().join("dir/notes.txt")).unwrap(),
        "hello world"
    );
    // The same content again converges (a resumed call); overwrite replaces.
    let v = ok(
        &b,
        &g,
        "write_file",
        json!({"path": "dir/notes.txt", "content": "hello world"}),
    )
    .await;
    assert_eq!(v["unchanged"], true);
    // So does the same text with a final newline the file does not have
    // (a model cannot see one): the file is left exactly as it was.
    let v = ok(
        &b,
        &g,
        "write_file",
        json!({"path": "dir/notes.txt", "content": "hello world\n"}),
    )
    .await;
    assert_eq!(v["unchanged"], true);
    assert_eq!(
        fs::read_to_string(s.ws().join("dir/notes.txt")).unwrap(),
        "hello world"
    );
    ok(
        &b,
        &g,
        "write_file",
        json!({"path": "dir/notes.txt", "content": "replaced", "overwrite": true}),
    )
    .await;
    assert_eq!(
        fs::read_to_string(s.ws().join("dir/notes.txt")).unwrap(),
        "replaced"
    );
    // Writes are atomic (scratch file, then rename): a write killed midway
    // leaves its scratch file, never a truncated target, and the resumed
    // write reuses it; nothing else is left in the directory.
    fs::write(s.ws().join("dir/.notes.txt.camina-write"), "half").unwrap();
    ok(
        &b,
        &g,
        "write_file",
        json!({"path": "dir/notes.txt", "content": "whole", "overwrite": true}),
    )
    .await;
    let mut names: Vec<String> = fs::read_dir(s.ws().join("dir"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["notes.txt"]);
    assert_eq!(
        fs::read_to_string(s.ws().join("dir/notes.txt")).unwrap(),
        "whole"
    );
    // Without create_dirs a missing parent is an error.
    tool_err(
        &b,
        &g,
        "write_file",
        json!({"path": "nope/x.txt", "content": "x", "create_dirs": false}),
        ToolErrorKind::NotFound,
    )
    .await;
}

#[tokio::test]
async fn belter_fs_read_errors() {
    let s = Scene::new();
    let (b, g) = belter(&s);
    fs::create_dir(s.ws().join("d")).unwrap();
    tool_err(
        &b,
        &g,
        "read_file",
        json!({"path": "missing.txt"}),
        ToolErrorKind::NotFound,
    )
    .await;
    tool_err(
        &b,
        &g,
        "read_file",
        json!({"path": "d"}),
        ToolErrorKind::InvalidInput,
    )
    .await;
    tool_err(
        &b,
        &g,
        "read_file",
        json!({"path": "../outside"}),
        ToolErrorKind::Denied,
    )
    .await;
    tool_err(
        &b,
        &g,
        "read_file",
        json!({"path": "/etc/passwd"}),
        ToolErrorKind::Denied,
    )
    .await;
    tool_err(
        &b,
        &g,
        "read_file",
        json!({"path": "x", "max_bytes": 0}),
        ToolErrorKind::InvalidInput,
    )
    .await;
    tool_err(&b, &g, "no_such_tool", json!({}), ToolErrorKind::NotFound).await;
    // Non-UTF-8 content is returned lossily and flagged.
    fs::write(s.ws().join("bin"), [0xff, 0xfe, b'a']).unwrap();
    let v = ok(&b, &g, "read_file", json!({"path": "bin"})).await;
    assert_eq!(v["lossy"], true);
}

#[tokio::test]
async fn belter_fs_edit_file() {
    let s = Scene::new();
    let (b, g) = belter(&s);
    fs::write(s.ws().join("a.txt"), "one two two three").unwrap();
    let v = ok(
        &b,
        &g,
        "edit_file",
        json!({"path": "a.txt", "old_text": "one", "new_text": "1"}),
    )
    .await;
    assert_eq!(v["replacements"], 1);
    let msg = tool_err(
        &b,
        &g,
        "edit_file",
        json!({"path": "a.txt", "old_text": "two", "new_text": "2"}),
        ToolErrorKind::InvalidInput,
    )
    .await;
    assert!(msg.contains("2 times"), "{msg}");
    let msg = tool_err(
        &b,
        &g,
        "edit_file",
        json!({"path": "a.txt", "old_text": "zzz", "new_text": "2"}),
        ToolErrorKind::InvalidInput,
    )
    .await;
    assert!(msg.contains("not found"), "{msg}");
    ok(
        &b,
        &g,
        "edit_file",
        json!({"path": "a.txt", "old_text": "two", "new_text": "2", "replace_all": true}),
    )
    .await;
    assert_eq!(
        fs::read_to_string(s.ws().join("a.txt")).unwrap(),
        "1 2 2 three"
    );
    tool_err(
        &b,
        &g,
        "edit_file",
        json!({"path": "missing", "old_text": "a", "new_text": "b"}),
        ToolErrorKind::NotFound,
    )
    .await;
}

#[tokio::test]
async fn belter_fs_list_make_move_delete_info() {
    let s = Scene::new();
    let (b, g) = belter(&s);
    let v = ok(&b, &g, "make_dir", json!({"path": "a/b"})).await;
    assert_eq!(v["created"], true);
    let v = ok(&b, &g, "make_dir", json!({"path": "a/b"})).await;
    assert_eq!(v["created"], false, "make_dir is idempotent");
    fs::write(s.ws().join("a/b/f.txt"), "12345").unwrap();
    fs::write(s.ws().join("top.txt"), "t").unwrap();

    let v = ok(&b, &g, "list_dir", json!({})).await;
    let names: Vec<&str> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "top.txt"]);
    let v = ok(&b, &g, "list_dir", json!({"recursive": true})).await;
    let file = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "a/b/f.txt")
        .unwrap();
    assert_eq!(
        (file["type"].as_str(), file["size"].as_u64()),
        (Some("file"), Some(5))
    );
    let v = ok(
        &b,
        &g,
        "list_dir",
        json!({"recursive": true, "max_entries": 2}),
    )
    .await;
    assert_eq!(v["truncated"], true);
    tool_err(
        &b,
        &g,
        "list_dir",
        json!({"path": "nope"}),
        ToolErrorKind::NotFound,
    )
    .await;

    let v = ok(&b, &g, "file_info", json!({"path": "a/b/f.txt"})).await;
    assert_eq!(
        (v["type"].as_str(), v["size"].as_u64()),
        (Some("file"), Some(5))
    );

    ok(
        &b,
        &g,
        "move_path",
        json!({"from": "top.txt", "to": "a/top.txt"}),
    )
    .await;
    assert!(s.ws().join("a/top.txt").exists() && !s.ws().join("top.txt").exists());
    fs::write(s.ws().join("other.txt"), "o").unwrap();
    tool_err(
        &b,
        &g,
        "move_path",
        json!({"from": "other.txt", "to": "a/top.txt"}),
        ToolErrorKind::InvalidInput,
    )
    .await;
    ok(
        &b,
        &g,
        "move_path",
        json!({"from": "other.txt", "to": "a/top.txt", "overwrite": true}),
    )
    .await;
    assert_eq!(fs::read_to_string(s.ws().join("a/top.txt")).unwrap(), "o");
    tool_err(
        &b,
        &g,
        "move_path",
        json!({"from": "a/top.txt", "to": "../escaped.txt"}),
        ToolErrorKind::Denied,
    )
    .await;
    assert!(!s.outside("escaped.txt").exists());

    tool_err(
        &b,
        &g,
        "delete_path",
        json!({"path": "a"}),
        ToolErrorKind::InvalidInput,
    )
    .await;
    ok(
        &b,
        &g,
        "delete_path",
        json!({"path": "a", "recursive": true}),
    )
    .await;
    assert!(!s.ws().join("a").exists());
    tool_err(
        &b,
        &g,
        "delete_path",
        json!({"path": "a"}),
        ToolErrorKind::NotFound,
    )
    .await;
    std::fs::write(s.ws().join("keep.txt"), "still here").unwrap();
    for spelling in [".", "/workspace/", "x/..", "./"] {
        tool_err(
            &b,
            &g,
            "delete_path",
            json!({"path": spelling, "recursive": true}),
            ToolErrorKind::InvalidInput,
        )
        .await;
    }
    assert!(s.ws().join("keep.txt").exists(), "the workspace was wiped");
}

fn search(s: &Scene) -> (camina_sandbox::Skill, camina_policy::Grants) {
    (
        skill(artifacts::DRUMMER_SEARCH),
        grants(&shipped_policy("drummer-search"), &s.ws()),
    )
}

fn project(s: &Scene) {
    fs::create_dir_all(s.ws().join("src/net")).unwrap();
    fs::create_dir_all(s.ws().join(".git")).unwrap();
    fs::write(
        s.ws().join("src/main.rs"),
        "fn main() {}\n// TODO: parse args\n",
    )
    .unwrap();
    fs::write(
        s.ws().join("src/net/http.rs"),
        "// todo lowercase\nfn get() {}\n// TODO: retries\n",
    )
    .unwrap();
    fs::write(s.ws().join("README.md"), "# TODO list\n").unwrap();
    fs::write(s.ws().join(".git/config"), "TODO hidden\n").unwrap();
    fs::write(s.ws().join("blob.bin"), b"TODO\0binary").unwrap();
}

#[tokio::test]
async fn drummer_search_find_files() {
    let s = Scene::new();
    project(&s);
    let (d, g) = search(&s);
    let v = ok(&d, &g, "find_files", json!({"pattern": "*.rs"})).await;
    assert_eq!(v["matches"], json!(["src/main.rs", "src/net/http.rs"]));
    let v = ok(&d, &g, "find_files", json!({"pattern": "src/*.rs"})).await;
    assert_eq!(v["matches"], json!(["src/main.rs"]));
    let v = ok(&d, &g, "find_files", json!({"pattern": "config"})).await;
    assert_eq!(
        v["matches"],
        json!([]),
        "hidden directories are skipped by default"
    );
    let v = ok(
        &d,
        &g,
        "find_files",
        json!({"pattern": "config", "include_hidden": true}),
    )
    .await;
    assert_eq!(v["matches"], json!([".git/config"]));
    let v = ok(
        &d,
        &g,
        "find_files",
        json!({"pattern": "*", "max_results": 2}),
    )
    .await;
    assert_eq!(v["truncated"], true);
    tool_err(
        &d,
        &g,
        "find_files",
        json!({"pattern": "a[", "path": "."}),
        ToolErrorKind::InvalidInput,
    )
    .await;
    tool_err(
        &d,
        &g,
        "find_files",
        json!({"pattern": "*", "path": "../"}),
        ToolErrorKind::Denied,
    )
    .await;
}

#[tokio::test]
async fn drummer_search_grep() {
    let s = Scene::new();
    project(&s);
    let (d, g) = search(&s);
    let v = ok(&d, &g, "grep", json!({"pattern": "TODO"})).await;
    let hits: Vec<String> = v["matches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            format!(
                "{}:{}:{}",
                m["file"].as_str().unwrap(),
                m["line"],
                m["text"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        hits,
        [
            "README.md:1:# TODO list",
            "src/main.rs:2:// TODO: parse args",
            "src/net/http.rs:3:// TODO: retries"
        ]
    );
    // The matches once, not again as pre-formatted lines.
    assert!(v.get("lines").is_none(), "{v}");
    let v = ok(
        &d,
        &g,
        "grep",
        json!({"pattern": "todo", "case_insensitive": true, "glob": "*.rs"}),
    )
    .await;
    assert_eq!(v["matches"].as_array().unwrap().len(), 3);
    // Smart case: a lower-case pattern matches any case unless told not to.
    let v = ok(&d, &g, "grep", json!({"pattern": "todo", "glob": "*.rs"})).await;
    assert_eq!(v["matches"].as_array().unwrap().len(), 3);
    let v = ok(
        &d,
        &g,
        "grep",
        json!({"pattern": "todo", "case_insensitive": false, "glob": "*.rs"}),
    )
    .await;
    assert_eq!(v["matches"].as_array().unwrap().len(), 1);
    let v = ok(&d, &g, "grep", json!({"pattern": "TODO", "max_results": 1})).await;
    assert_eq!(
        (v["matches"].as_array().unwrap().len(), &v["truncated"]),
        (1, &json!(true))
    );
    let v = ok(
        &d,
        &g,
        "grep",
        json!({"pattern": "fn \\w+", "path": "src/net/http.rs"}),
    )
    .await;
    assert_eq!(v["matches"][0]["line"], 2);
    tool_err(
        &d,
        &g,
        "grep",
        json!({"pattern": "("}),
        ToolErrorKind::InvalidInput,
    )
    .await;
    tool_err(
        &d,
        &g,
        "grep",
        json!({"pattern": "x", "path": "nope"}),
        ToolErrorKind::NotFound,
    )
    .await;
    let v = ok(&d, &g, "read_file", json!({"path": "README.md"})).await;
    assert_eq!(v["content"], "# TODO list\n");
}

#[tokio::test]
async fn drummer_web_http_get() {
    let server = Server::start(200, &[], "<h1>hi</h1>");
    let s = Scene::new();
    let policy = format!(
        "plugin = \"drummer-web\"\n[net]\nallow = [\"http://127.0.0.1:{}\"]\n",
        server.port
    );
    let g = grants(&policy, &s.ws());
    let w = skill(artifacts::DRUMMER_WEB);
    let v = ok(&w, &g, "http_get", json!({"url": server.url("/page")})).await;
    assert_eq!(v["status"], 200);
    assert_eq!(v["body"], "<h1>hi</h1>");
    assert_eq!(v["content_type"], "text/plain");
    let v = ok(
        &w,
        &g,
        "http_get",
        json!({"url": server.url("/page"), "max_bytes": 4}),
    )
    .await;
    assert_eq!(
        (v["body"].as_str(), &v["truncated"]),
        (Some("<h1>"), &json!(true))
    );
    tool_err(
        &w,
        &g,
        "http_get",
        json!({"url": "ftp://x/"}),
        ToolErrorKind::InvalidInput,
    )
    .await;
    tool_err(
        &w,
        &g,
        "http_get",
        json!({"url": "not a url"}),
        ToolErrorKind::InvalidInput,
    )
    .await;

    // Redirects within the allowed host are followed.
    let target = Server::start(200, &[], "landed");
    let hop = Server::start(301, &[("location", target.url("/end"))], "");
    let policy = format!(
        "plugin = \"drummer-web\"\n[net]\nallow = [\"http://127.0.0.1:{}\", \"http://127.0.0.1:{}\"]\n",
        hop.port, target.port
    );
    let g = grants(&policy, &s.ws());
    let v = ok(&w, &g, "http_get", json!({"url": hop.url("/start")})).await;
    assert_eq!(
        (v["status"].as_u64(), v["body"].as_str()),
        (Some(200), Some("landed"))
    );
    assert_eq!(v["redirects"], json!([target.url("/end")]));
}
