//! Reviewing and undoing what a task did: before-images captured by the
//! sandbox's filesystem layer, `task diff`, `task undo` (refusal over later
//! edits, `--force`, `--dry-run`, idempotence, symlinks planted since).

use crate::engine::{Setup, finish, models, one_step_script, setup};
use crate::support::{Scene, artifacts, grants, skill};
use camina_coordinator::events::Budgets;
use camina_coordinator::undo::{self, Keeper, Store, UndoError};
use camina_coordinator::{EngineError, RunOptions};
use camina_journal::Status;
use camina_sandbox::Preserve;
use fake_ollama::{FakeOllama, Reply};
use serde_json::json;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

/// Every entry under `root`: path → kind, content (files), link target
/// (symlinks) and permission bits.
fn tree(root: &Path) -> BTreeMap<String, (String, Vec<u8>, u32)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let mode = meta.permissions().mode() & 0o7777;
            let entry = if meta.file_type().is_symlink() {
                let t = std::fs::read_link(&p).unwrap();
                ("link".to_owned(), t.display().to_string().into_bytes(), 0)
            } else if meta.is_dir() {
                stack.push(p.clone());
                ("dir".to_owned(), Vec::new(), mode)
            } else {
                ("file".to_owned(), std::fs::read(&p).unwrap(), mode)
            };
            out.insert(rel, entry);
        }
    }
    out
}

/// Names no path, so the host's scope guards (which confine a task to the
/// paths it names) leave every scripted change to run: this is about undo.
const PROMPT: &str = "Tidy up this workspace the way we discussed";

/// A belter that creates, overwrites, edits, appends, moves, deletes (a
/// text and a binary file), makes a directory and removes an empty one.
fn every_kind_of_change(_: &serde_json::Value, made: usize) -> Reply {
    let call = |name: &str, args: serde_json::Value| Reply::tool_call(name, args);
    match made {
        0 => call(
            "write_file",
            json!({"path": "new.txt", "content": "brand new\n"}),
        ),
        1 => call("read_file", json!({"path": "notes.txt"})),
        2 => call(
            "write_file",
            json!({"path": "notes.txt", "content": "rewritten\n", "overwrite": true}),
        ),
        3 => call("read_file", json!({"path": "src/lib.rs"})),
        4 => call(
            "edit_file",
            json!({"path": "src/lib.rs", "old_text": "TODO: write docs", "new_text": "DONE: docs"}),
        ),
        5 => call("read_file", json!({"path": "log.txt"})),
        6 => call(
            "append_file",
            json!({"path": "log.txt", "content": "more\n"}),
        ),
        7 => call(
            "move_path",
            json!({"from": "old.txt", "to": "moved/old.txt"}),
        ),
        8 => call("delete_path", json!({"path": "trash.txt"})),
        9 => call("delete_path", json!({"path": "data.bin"})),
        10 => call("make_dir", json!({"path": "newdir/sub"})),
        11 => call("delete_path", json!({"path": "empty"})),
        12 => call(
            "move_path",
            json!({"from": "olddir", "to": "archive/olddir"}),
        ),
        _ => finish("Made every change."),
    }
}

fn seed(ws: &Path) {
    std::fs::write(ws.join("notes.txt"), "old notes\n").unwrap();
    std::fs::write(ws.join("log.txt"), "start\n").unwrap();
    std::fs::write(ws.join("old.txt"), "move me\n").unwrap();
    std::fs::write(ws.join("trash.txt"), "bye\n").unwrap();
    std::fs::write(ws.join("data.bin"), [0u8, 159, 146, 150, 255, 0, 7]).unwrap();
    std::fs::set_permissions(ws.join("data.bin"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::create_dir(ws.join("empty")).unwrap();
    std::fs::create_dir_all(ws.join("olddir/deep")).unwrap();
    std::fs::write(ws.join("olddir/deep/a.txt"), "in a moved directory\n").unwrap();
}

async fn changed_task(fake: &FakeOllama) -> (Setup, String) {
    let s = setup(fake).await;
    seed(&s.ws);
    let budgets = Budgets {
        max_turns: 30,
        ..Budgets::default()
    };
    let t = s.engine.submit(PROMPT, &s.ws, budgets).await.unwrap();
    let done = s.engine.run(&t.id, RunOptions::default()).await.unwrap();
    let trace: Vec<String> = s
        .engine
        .journal()
        .records(&t.id)
        .unwrap()
        .iter()
        .filter(|r| r.kind.starts_with("tool"))
        .map(|r| format!("{} {}", r.kind, r.data))
        .collect();
    assert_eq!(
        done.status,
        Status::Succeeded,
        "{:?}\n{}",
        done.error,
        trace.join("\n")
    );
    let refused = s
        .engine
        .journal()
        .records(&t.id)
        .unwrap()
        .into_iter()
        .filter(|r| r.kind == "tool_refused" || r.data["error"].is_array())
        .count();
    assert_eq!(
        refused,
        0,
        "every scripted change ran:\n{}",
        trace.join("\n")
    );
    (s, t.id)
}

#[tokio::test]
async fn undo_restores_the_exact_tree_a_task_changed() {
    let fake = FakeOllama::start(
        models(),
        one_step_script("belter", true, every_kind_of_change),
    );
    let s = setup(&fake).await;
    seed(&s.ws);
    let before = tree(&s.ws);
    drop(s);
    let (s, id) = changed_task(&fake).await;
    // (a fresh setup with the same seed: the same tree as `before`)

    // The diff names every path, with what happened to it.
    let (_, changes) = s.engine.diff(&id).unwrap();
    let kind = |p: &str| {
        changes
            .iter()
            .find(|c| c.path == p)
            .map(|c| c.change.as_str())
            .unwrap_or("-")
    };
    assert_eq!(kind("new.txt"), "created");
    assert_eq!(kind("notes.txt"), "changed");
    assert_eq!(kind("src/lib.rs"), "changed");
    assert_eq!(kind("log.txt"), "changed");
    assert_eq!(kind("moved/old.txt"), "moved");
    assert_eq!(kind("trash.txt"), "deleted");
    assert_eq!(kind("data.bin"), "deleted");
    assert_eq!(kind("newdir/sub"), "created");
    assert_eq!(kind("empty"), "deleted");
    assert_eq!(kind("archive/olddir/deep/a.txt"), "moved");
    let notes = changes.iter().find(|c| c.path == "notes.txt").unwrap();
    let d = notes.diff.as_deref().unwrap();
    assert!(d.contains("-old notes") && d.contains("+rewritten"), "{d}");
    let moved = changes.iter().find(|c| c.path == "moved/old.txt").unwrap();
    assert_eq!(moved.from.as_deref(), Some("old.txt"));

    // A dry run changes nothing.
    let after = tree(&s.ws);
    let (_, plan) = s.engine.undo(&id, false, true).await.unwrap();
    assert!(plan.dry_run && !plan.restored.is_empty());
    assert_eq!(tree(&s.ws), after);

    // Undo gives back the tree as it was: paths, content, binary bytes,
    // modes, the empty directory; and says so in the journal.
    let (_, report) = s.engine.undo(&id, false, false).await.unwrap();
    assert!(report.conflicts.is_empty(), "{report:?}");
    let mut seeded = tree(&s.ws);
    // `src/` comes from the shared project, the same in both.
    seeded.retain(|k, _| !k.starts_with("src"));
    let mut expected = before.clone();
    expected.retain(|k, _| !k.starts_with("src"));
    assert_eq!(seeded, expected);
    assert_eq!(
        std::fs::read_to_string(s.ws.join("src/lib.rs")).unwrap(),
        "// TODO: write docs\npub fn f() {}\n"
    );
    let records = s.engine.journal().records(&id).unwrap();
    assert!(records.iter().any(|r| r.kind == "undone"));

    // Again: nothing left to do.
    let (_, again) = s.engine.undo(&id, false, false).await.unwrap();
    assert!(again.restored.is_empty(), "{again:?}");
}

#[tokio::test]
async fn undo_refuses_over_a_later_edit_and_force_restores_anyway() {
    let fake = FakeOllama::start(
        models(),
        one_step_script("belter", true, every_kind_of_change),
    );
    let (s, id) = changed_task(&fake).await;
    // Someone edits two of the task's files afterwards, and puts a file
    // of their own in a directory the task made.
    std::fs::write(s.ws.join("new.txt"), "my own edit\n").unwrap();
    std::fs::write(s.ws.join("log.txt"), "start\nmore\nmine\n").unwrap();
    std::fs::write(s.ws.join("newdir/sub/mine.txt"), "mine\n").unwrap();
    let edited = tree(&s.ws);
    let err = s.engine.undo(&id, false, false).await.unwrap_err();
    let EngineError::Undo {
        source: UndoError::ChangedSince(paths),
        ..
    } = &err
    else {
        panic!("{err}")
    };
    let mut paths = paths.clone();
    paths.sort();
    assert_eq!(paths, ["log.txt", "new.txt", "newdir", "newdir/sub"]);
    assert!(err.to_string().contains("--force"), "{err}");
    assert_eq!(tree(&s.ws), edited, "a refused undo touches nothing");

    let (_, report) = s.engine.undo(&id, true, false).await.unwrap();
    assert_eq!(report.conflicts.len(), 4);
    assert!(!s.ws.join("newdir").exists());
    assert!(!s.ws.join("new.txt").exists());
    assert_eq!(
        std::fs::read_to_string(s.ws.join("log.txt")).unwrap(),
        "start\n"
    );
}

#[tokio::test]
async fn undo_never_writes_outside_the_workspace_through_planted_symlinks() {
    let fake = FakeOllama::start(
        models(),
        one_step_script("belter", true, |_, made| match made {
            0 => Reply::tool_call("read_file", json!({"path": "notes.txt"})),
            1 => Reply::tool_call(
                "write_file",
                json!({"path": "notes.txt", "content": "rewritten\n", "overwrite": true}),
            ),
            2 => Reply::tool_call("write_file", json!({"path": "out/x.txt", "content": "x\n"})),
            _ => finish("Done."),
        }),
    );
    let s = setup(&fake).await;
    std::fs::write(s.ws.join("notes.txt"), "old notes\n").unwrap();
    let t = s
        .engine
        .submit(PROMPT, &s.ws, Budgets::default())
        .await
        .unwrap();
    let done = s.engine.run(&t.id, RunOptions::default()).await.unwrap();
    assert_eq!(done.status, Status::Succeeded, "{:?}", done.error);

    // Afterwards, notes.txt becomes a symlink to a file outside, and out/
    // a symlink to a directory outside holding an x.txt of its own.
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret.txt");
    std::fs::write(&secret, "outside\n").unwrap();
    std::fs::create_dir(outside.path().join("out")).unwrap();
    std::fs::write(outside.path().join("out/x.txt"), "keep me\n").unwrap();
    std::fs::remove_file(s.ws.join("notes.txt")).unwrap();
    std::os::unix::fs::symlink(&secret, s.ws.join("notes.txt")).unwrap();
    std::fs::remove_dir_all(s.ws.join("out")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("out"), s.ws.join("out")).unwrap();

    // Without --force: refused, naming them.
    let err = s.engine.undo(&t.id, false, false).await.unwrap_err();
    assert!(err.to_string().contains("notes.txt"), "{err}");
    // With --force, whatever it does, nothing outside changes.
    let _ = s.engine.undo(&t.id, true, false).await;
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "outside\n");
    assert_eq!(
        std::fs::read_to_string(outside.path().join("out/x.txt")).unwrap(),
        "keep me\n"
    );
    // The workspace's own notes.txt is a regular file with its old text.
    let meta = std::fs::symlink_metadata(s.ws.join("notes.txt")).unwrap();
    assert!(meta.is_file());
    assert_eq!(
        std::fs::read_to_string(s.ws.join("notes.txt")).unwrap(),
        "old notes\n"
    );
}

#[tokio::test]
async fn a_file_written_by_another_skill_is_captured_and_undone() {
    // Not belter-fs: the attacker test skill writes with std::fs, and
    // makes a symlink, through the same audited filesystem.
    let scene = Scene::new();
    let ws = scene.ws();
    std::fs::write(ws.join("a.txt"), "original\n").unwrap();
    let home = tempfile::tempdir().unwrap();
    let store = Store::new(home.path());
    let g = attacker_grants(&ws);
    let attacker = skill(artifacts::ATTACKER);
    for (step, tool, input) in [
        (
            "s/0",
            "write",
            json!({"path": "/workspace/a.txt", "content": "clobbered"}),
        ),
        (
            "s/1",
            "write",
            json!({"path": "/workspace/b.txt", "content": "new"}),
        ),
        ("s/2", "symlink", json!({"target": "a.txt", "link": "c"})),
    ] {
        let keeper = Arc::new(Keeper::new(store.clone(), "t1", step, &ws));
        let out = attacker
            .call_preserving(
                &g,
                tool,
                &input.to_string(),
                Some(keeper.clone() as Arc<dyn Preserve>),
            )
            .await
            .unwrap();
        assert!(out.result.is_ok(), "{:?}", out.result);
        keeper.after().unwrap();
    }
    let changes = undo::diff(&store, "t1", &ws).unwrap();
    let paths: Vec<(&str, &str)> = changes
        .iter()
        .map(|c| (c.path.as_str(), c.change.as_str()))
        .collect();
    assert_eq!(
        paths,
        [("a.txt", "changed"), ("b.txt", "created"), ("c", "created")]
    );
    undo::undo(&store, "t1", &ws, false, false).unwrap();
    assert_eq!(
        std::fs::read_to_string(ws.join("a.txt")).unwrap(),
        "original\n"
    );
    assert!(!ws.join("b.txt").exists());
    assert!(std::fs::symlink_metadata(ws.join("c")).is_err());
}

/// The attacker test skill with `ws` mounted read-write.
fn attacker_grants(ws: &Path) -> camina_policy::Grants {
    grants(
        "plugin = \"attacker\"\n[[fs]]\nhost = \"{workspace}\"\nguest = \"/workspace\"\naccess = \"read-write\"\n",
        ws,
    )
}

/// Runs the attacker skill's `write` as task `task`, keeping images.
async fn write_as(store: &Store, task: &str, ws: &Path, path: &str, content: &str) {
    let g = attacker_grants(ws);
    let keeper = Arc::new(Keeper::new(store.clone(), task, "s/0", ws));
    let input = json!({"path": format!("/workspace/{path}"), "content": content});
    let out = skill(artifacts::ATTACKER)
        .call_preserving(
            &g,
            "write",
            &input.to_string(),
            Some(keeper.clone() as Arc<dyn Preserve>),
        )
        .await
        .unwrap();
    assert!(out.result.is_ok(), "{:?}", out.result);
    keeper.after().unwrap();
}

#[tokio::test]
async fn pruned_images_say_so_and_their_content_is_freed() {
    let scene = Scene::new();
    let ws = scene.ws();
    std::fs::write(ws.join("a.txt"), "one\n").unwrap();
    std::fs::write(ws.join("b.txt"), "two\n").unwrap();
    let home = tempfile::tempdir().unwrap();
    let store = Store::new(home.path());
    write_as(&store, "old", &ws, "a.txt", &"x".repeat(3000)).await;
    std::thread::sleep(std::time::Duration::from_millis(20));
    write_as(&store, "new", &ws, "b.txt", "y").await;
    let blobs = || {
        std::fs::read_dir(home.path().join("undo/blobs"))
            .unwrap()
            .count()
    };
    assert_eq!(blobs(), 4, "before and after of each file");

    // Nothing is older than a day, and everything fits a MiB.
    let day = std::time::Duration::from_secs(86400);
    assert!(store.prune(Some(day), Some(1 << 20)).unwrap().is_empty());
    // A cap that only the newer task's contents fit prunes the older one.
    assert_eq!(store.prune(None, Some(100)).unwrap(), ["old"]);
    assert_eq!(blobs(), 2);
    let err = undo::undo(&store, "old", &ws, true, false).unwrap_err();
    assert!(matches!(err, UndoError::Pruned(_)), "{err}");
    assert!(err.to_string().contains("max_undo_mib"), "{err}");
    assert!(undo::diff(&store, "old", &ws).is_err());
    // The newer one still undoes.
    undo::undo(&store, "new", &ws, false, false).unwrap();
    assert_eq!(std::fs::read_to_string(ws.join("b.txt")).unwrap(), "two\n");
    // An age limit of zero prunes the rest.
    assert_eq!(
        store.prune(Some(std::time::Duration::ZERO), None).unwrap(),
        ["new"]
    );
    assert_eq!(blobs(), 0);
}

#[tokio::test]
async fn a_change_whose_image_cannot_be_kept_is_refused() {
    // The image store is unwritable: the guest's write fails and the file
    // is untouched (no change happens that could not be undone).
    let scene = Scene::new();
    let ws = scene.ws();
    std::fs::write(ws.join("a.txt"), "original\n").unwrap();
    let home = tempfile::tempdir().unwrap();
    std::fs::write(home.path().join("undo"), "not a directory").unwrap();
    let keeper = Arc::new(Keeper::new(Store::new(home.path()), "t1", "s/0", &ws));
    let g = attacker_grants(&ws);
    let out = skill(artifacts::ATTACKER)
        .call_preserving(
            &g,
            "write",
            &json!({"path": "/workspace/a.txt", "content": "clobbered"}).to_string(),
            Some(keeper as Arc<dyn Preserve>),
        )
        .await
        .unwrap();
    assert!(out.result.is_err());
    assert_eq!(
        std::fs::read_to_string(ws.join("a.txt")).unwrap(),
        "original\n"
    );
    assert!(
        out.decisions
            .iter()
            .any(|d| !d.allowed && d.action == "preserve"),
        "{:?}",
        out.decisions
    );
}

#[test]
fn the_cli_shows_the_diff_and_undoes() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let fake = FakeOllama::start(
        models(),
        one_step_script("belter", true, every_kind_of_change),
    );
    let (s, id) = rt.block_on(changed_task(&fake));
    let (home, ws) = (s.home.path().to_path_buf(), s.ws.clone());
    drop(s.engine); // the CLI opens the journal itself
    let camina = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_camina"))
            .arg("--home")
            .arg(&home)
            .args(args)
            .output()
            .unwrap()
    };
    let o = camina(&["task", "diff", &id[..8], "--stat"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("moved    old.txt → moved/old.txt"), "{out}");
    assert!(out.contains("created  new.txt"), "{out}");
    assert!(!out.contains("+++"), "--stat shows no diff: {out}");
    let o = camina(&["task", "show", &id, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let marked: Vec<&serde_json::Value> = v["steps"][0]["tool_calls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["undoable"] == json!(["new.txt"]))
        .collect();
    assert_eq!(
        marked.len(),
        1,
        "the write of new.txt is marked undoable: {v}"
    );
    let o = camina(&["task", "show", &id]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("↶ undoable: new.txt"));
    let o = camina(&["task", "diff", &id, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["changes"].as_array().unwrap().len() >= 9, "{v}");

    std::fs::write(ws.join("new.txt"), "mine\n").unwrap();
    let o = camina(&["task", "undo", &id]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("new.txt") && err.contains("--force"), "{err}");
    let o = camina(&["task", "undo", &id, "--force"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!ws.join("new.txt").exists());
    assert_eq!(
        std::fs::read_to_string(ws.join("notes.txt")).unwrap(),
        "old notes\n"
    );
    drop(s.home);
}

#[test]
fn an_undo_killed_half_way_is_finished_by_task_resume() {
    const N: usize = 300;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let fake = FakeOllama::start(
        models(),
        one_step_script("belter", true, |_, _| finish("x")),
    );
    let s = rt.block_on(setup(&fake));
    for i in 0..N {
        std::fs::write(s.ws.join(format!("f{i:03}.txt")), format!("original {i}\n")).unwrap();
    }
    let before = tree(&s.ws);
    // A task whose calls rewrote every file (through the sandbox, images
    // kept under its id).
    let t = rt
        .block_on(s.engine.submit(PROMPT, &s.ws, Budgets::default()))
        .unwrap();
    let store = s.engine.undo_store();
    rt.block_on(async {
        for i in 0..N {
            write_as(&store, &t.id, &s.ws, &format!("f{i:03}.txt"), "changed").await;
        }
    });
    let (home, ws) = (s.home.path().to_path_buf(), s.ws.clone());
    drop(s.engine);
    let undo = || {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_camina"));
        c.arg("--home")
            .arg(&home)
            .args(["task", "undo", &t.id])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        c
    };
    // Killed (SIGKILL) once the first file is back.
    let mut child = undo().spawn().unwrap();
    let first = ws.join("f000.txt");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::fs::read_to_string(&first).unwrap_or_default() != "original 0\n" {
        assert!(std::time::Instant::now() < deadline, "undo never started");
        std::thread::yield_now();
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let restored = (0..N)
        .filter(|i| {
            std::fs::read_to_string(ws.join(format!("f{i:03}.txt"))).unwrap_or_default()
                == format!("original {i}\n")
        })
        .count();
    assert!(
        restored < N,
        "the undo finished before it was killed; nothing tested"
    );
    // `task resume` finishes it: no file is left half-written, nothing
    // else (no temporary copy) is left behind, and the journal says so.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_camina"))
        .arg("--home")
        .arg(&home)
        .args(["task", "resume", &t.id])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(tree(&ws), before);
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_camina"))
        .arg("--home")
        .arg(&home)
        .args(["task", "show", &t.id, "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let kinds: Vec<&str> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .filter(|k| k.starts_with("undo"))
        .collect();
    assert_eq!(kinds, ["undo_started", "undo_started", "undone"]);
    // Running undo again has nothing left to do.
    let o = undo().output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(tree(&ws), before);
    drop(s.home);
}

/// A workspace named through a symlink: the sandbox mounts the path as
/// given (it does not canonicalise it per call), and the images are still
/// kept under the workspace, so undo restores the file.
#[cfg(unix)]
#[tokio::test]
async fn a_workspace_named_through_a_symlink_is_still_undone() {
    let scene = Scene::new();
    let ws = scene.ws();
    std::fs::write(ws.join("a.txt"), "original\n").unwrap();
    let links = tempfile::tempdir().unwrap();
    let link = links.path().join("ws-link");
    std::os::unix::fs::symlink(&ws, &link).unwrap();
    let home = tempfile::tempdir().unwrap();
    let store = Store::new(home.path());
    write_as(&store, "t1", &link, "a.txt", "clobbered").await;
    assert_eq!(
        std::fs::read_to_string(ws.join("a.txt")).unwrap(),
        "clobbered"
    );
    let changes = undo::diff(&store, "t1", &ws).unwrap();
    assert_eq!(changes.len(), 1, "{changes:?}");
    undo::undo(&store, "t1", &ws, false, false).unwrap();
    assert_eq!(
        std::fs::read_to_string(ws.join("a.txt")).unwrap(),
        "original\n"
    );
}
