//! The security suite: one test per attack. Each asserts the denial *and*
//! that nothing happened outside (no file created or changed, no connection
//! received).

use crate::net_support::Server;
use crate::support::{Scene, artifacts, call, grants, ok, skill, tool_err};
use camina_sandbox::{CallError, Capability, LimitKind, ToolErrorKind};
use serde_json::json;

const RW: &str = r#"
plugin = "attacker"
[[fs]]
host = "{workspace}"
guest = "/workspace"
access = "read-write"
"#;

const RO: &str = r#"
plugin = "attacker"
[[fs]]
host = "{workspace}"
guest = "/workspace"
access = "read"
"#;

fn attacker() -> camina_sandbox::Skill {
    skill(artifacts::ATTACKER)
}

fn scene_with_secret() -> Scene {
    let s = Scene::new();
    std::fs::write(s.outside("secret.txt"), "TOP SECRET").unwrap();
    s
}

#[tokio::test]
async fn fs_escape_via_dotdot() {
    let s = scene_with_secret();
    let g = grants(RW, &s.ws());
    let a = attacker();
    let msg = tool_err(
        &a,
        &g,
        "read",
        json!({"path": "/workspace/../secret.txt"}),
        ToolErrorKind::Denied,
    )
    .await;
    assert!(!msg.contains("TOP SECRET"));
    std::fs::create_dir(s.ws().join("sub")).unwrap();
    tool_err(
        &a,
        &g,
        "read",
        json!({"path": "/workspace/sub/../../secret.txt"}),
        ToolErrorKind::Denied,
    )
    .await;
    tool_err(
        &a,
        &g,
        "write",
        json!({"path": "/workspace/../pwned.txt", "content": "x"}),
        ToolErrorKind::Denied,
    )
    .await;
    assert!(!s.outside("pwned.txt").exists());
    // The host recorded the refusal.
    let out = call(&a, &g, "read", json!({"path": "/workspace/../secret.txt"}))
        .await
        .unwrap();
    let d = out
        .decisions
        .iter()
        .find(|d| !d.allowed)
        .expect("a denial is recorded");
    assert_eq!(d.capability, Capability::Fs);
    assert!(d.target.contains("../secret.txt"), "{d:?}");
}

#[tokio::test]
async fn fs_escape_via_absolute_path() {
    let s = scene_with_secret();
    let g = grants(RW, &s.ws());
    let a = attacker();
    let secret = s.outside("secret.txt").display().to_string();
    let out = call(&a, &g, "read", json!({"path": secret})).await.unwrap();
    let err = out
        .result
        .expect_err("an absolute host path is unreachable");
    assert!(!err.message.contains("TOP SECRET"));
    let target = s.outside("pwned-abs.txt").display().to_string();
    let out = call(&a, &g, "write", json!({"path": target, "content": "x"}))
        .await
        .unwrap();
    assert!(out.result.is_err());
    assert!(!s.outside("pwned-abs.txt").exists());
}

/// The same attack past wasi-libc: the absolute paths reach the host's
/// `open-at` on the workspace descriptor, and the host refuses them.
#[tokio::test]
async fn fs_escape_via_absolute_path_at_the_host() {
    let s = scene_with_secret();
    let g = grants(RW, &s.ws());
    let a = attacker();
    let secret = s.outside("secret.txt").display().to_string();
    let pwned = s.outside("pwned-raw.txt").display().to_string();
    for path in [secret.as_str(), "/etc/passwd", "../secret.txt"] {
        let out = call(&a, &g, "raw_read", json!({"path": path}))
            .await
            .unwrap();
        let err = out.result.expect_err(path);
        assert!(
            !err.message.contains("TOP SECRET"),
            "{path}: {}",
            err.message
        );
        assert!(
            out.decisions
                .iter()
                .any(|d| !d.allowed && d.capability == Capability::Fs),
            "{path}: the host recorded no denial: {:?}",
            out.decisions
        );
    }
    let out = call(&a, &g, "raw_write", json!({"path": pwned, "content": "x"}))
        .await
        .unwrap();
    assert!(out.result.is_err());
    assert!(!s.outside("pwned-raw.txt").exists());
    // A path inside the mount still works the same way, so the refusals
    // above are about where the paths point.
    std::fs::write(s.ws().join("inside.txt"), "fine").unwrap();
    let out = call(&a, &g, "raw_read", json!({"path": "inside.txt"}))
        .await
        .unwrap();
    assert_eq!(out.result.unwrap(), "fine");
}

#[tokio::test]
async fn fs_escape_via_symlink_planted_on_host() {
    let s = scene_with_secret();
    std::os::unix::fs::symlink(s.outside("secret.txt"), s.ws().join("abs-link")).unwrap();
    std::os::unix::fs::symlink("../secret.txt", s.ws().join("rel-link")).unwrap();
    let g = grants(RW, &s.ws());
    let a = attacker();
    for link in ["abs-link", "rel-link"] {
        let msg = tool_err(
            &a,
            &g,
            "read",
            json!({"path": format!("/workspace/{link}")}),
            ToolErrorKind::Denied,
        )
        .await;
        assert!(!msg.contains("TOP SECRET"));
        tool_err(
            &a,
            &g,
            "write",
            json!({"path": format!("/workspace/{link}"), "content": "owned"}),
            ToolErrorKind::Denied,
        )
        .await;
    }
    assert_eq!(
        std::fs::read_to_string(s.outside("secret.txt")).unwrap(),
        "TOP SECRET"
    );
}

#[tokio::test]
async fn fs_escape_via_symlink_created_by_guest() {
    let s = scene_with_secret();
    let g = grants(RW, &s.ws());
    let a = attacker();
    let abs = s.outside("secret.txt").display().to_string();
    for (target, link) in [("../secret.txt", "evil-rel"), (abs.as_str(), "evil-abs")] {
        // Creating the link may be refused outright; if it exists, it must
        // not lead anywhere.
        let made = call(&a, &g, "symlink", json!({"target": target, "link": link}))
            .await
            .unwrap();
        let exists = s.ws().join(link).symlink_metadata().is_ok();
        assert_eq!(made.result.is_ok(), exists, "{link}: {:?}", made.result);
        let out = call(
            &a,
            &g,
            "read",
            json!({"path": format!("/workspace/{link}")}),
        )
        .await
        .unwrap();
        assert!(out.result.is_err(), "reading through {link} must fail");
        if exists {
            let out = call(
                &a,
                &g,
                "write",
                json!({"path": format!("/workspace/{link}"), "content": "owned"}),
            )
            .await
            .unwrap();
            assert!(out.result.is_err(), "writing through {link} must fail");
        }
    }
    assert_eq!(
        std::fs::read_to_string(s.outside("secret.txt")).unwrap(),
        "TOP SECRET"
    );
}

#[tokio::test]
async fn fs_escape_via_hardlink() {
    let s = scene_with_secret();
    let g = grants(RW, &s.ws());
    let a = attacker();
    tool_err(
        &a,
        &g,
        "hardlink",
        json!({"target": "../secret.txt", "link": "stolen"}),
        ToolErrorKind::Denied,
    )
    .await;
    assert!(!s.ws().join("stolen").exists());
    let abs = s.outside("secret.txt").display().to_string();
    let out = call(
        &a,
        &g,
        "hardlink",
        json!({"target": abs, "link": "stolen2"}),
    )
    .await
    .unwrap();
    assert!(out.result.is_err());
    assert!(!s.ws().join("stolen2").exists());
    // And the other direction: a link from outside to inside.
    std::fs::write(s.ws().join("inner.txt"), "inner").unwrap();
    let out = call(
        &a,
        &g,
        "hardlink",
        json!({"target": "inner.txt", "link": "../planted"}),
    )
    .await
    .unwrap();
    assert!(out.result.is_err());
    assert!(!s.outside("planted").exists());
}

#[tokio::test]
async fn fs_write_through_read_only_mount() {
    let s = Scene::new();
    std::fs::write(s.ws().join("existing.txt"), "original").unwrap();
    let g = grants(RO, &s.ws());
    let a = attacker();
    // Reading is allowed.
    let out = call(&a, &g, "read", json!({"path": "/workspace/existing.txt"}))
        .await
        .unwrap();
    assert_eq!(out.result.unwrap(), "original");
    // Creating, overwriting and linking are not.
    tool_err(
        &a,
        &g,
        "write",
        json!({"path": "/workspace/new.txt", "content": "x"}),
        ToolErrorKind::Denied,
    )
    .await;
    tool_err(
        &a,
        &g,
        "write",
        json!({"path": "/workspace/existing.txt", "content": "x"}),
        ToolErrorKind::Denied,
    )
    .await;
    tool_err(
        &a,
        &g,
        "symlink",
        json!({"target": "existing.txt", "link": "l"}),
        ToolErrorKind::Denied,
    )
    .await;
    tool_err(
        &a,
        &g,
        "hardlink",
        json!({"target": "existing.txt", "link": "h"}),
        ToolErrorKind::Denied,
    )
    .await;
    assert!(!s.ws().join("new.txt").exists());
    assert!(!s.ws().join("l").exists() && !s.ws().join("h").exists());
    assert_eq!(
        std::fs::read_to_string(s.ws().join("existing.txt")).unwrap(),
        "original"
    );
    // The shipped drummer-search policy is read-only too.
    let search = grants(&crate::support::shipped_policy("drummer-search"), &s.ws());
    assert!(search.mounts.iter().all(|m| !m.access.can_write()));
}

#[tokio::test]
async fn fs_without_a_mount_there_is_no_filesystem() {
    let s = scene_with_secret();
    std::fs::write(s.ws().join("f.txt"), "ws file").unwrap();
    let g = grants("plugin = \"attacker\"\n", &s.ws());
    let a = attacker();
    for path in ["/workspace/f.txt", "f.txt", "/secret.txt", "/"] {
        let out = call(&a, &g, "read", json!({"path": path})).await.unwrap();
        assert!(out.result.is_err(), "{path} must be unreachable");
    }
    let out = call(&a, &g, "write", json!({"path": "/x.txt", "content": "x"}))
        .await
        .unwrap();
    assert!(out.result.is_err());
}

fn net_policy(allow: &[String]) -> String {
    let quoted: Vec<String> = allow.iter().map(|a| format!("{a:?}")).collect();
    format!(
        "plugin = \"attacker\"\n[net]\nallow = [{}]\n",
        quoted.join(", ")
    )
}

#[tokio::test]
async fn http_allowed_host_is_reachable() {
    // The control for every network test: the same listener, listed, works.
    let server = Server::start(200, &[], "hello");
    let s = Scene::new();
    let g = grants(
        &net_policy(&[format!("http://127.0.0.1:{}", server.port)]),
        &s.ws(),
    );
    let out = call(&attacker(), &g, "http", json!({"url": server.url("/")}))
        .await
        .unwrap();
    assert_eq!(out.result.unwrap(), "200");
    assert_eq!(server.hits(), 1);
    assert!(
        out.decisions
            .iter()
            .any(|d| d.capability == Capability::Net && d.allowed)
    );
}

/// The decision log shows every request the policy let through, also one
/// that then went nowhere (nothing listening).
#[tokio::test]
async fn http_allowed_but_unreachable_is_still_logged() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let s = Scene::new();
    let g = grants(&net_policy(&[format!("http://127.0.0.1:{port}")]), &s.ws());
    let out = call(
        &attacker(),
        &g,
        "http",
        json!({"url": format!("http://127.0.0.1:{port}/")}),
    )
    .await
    .unwrap();
    assert!(out.result.is_err());
    let d = out
        .decisions
        .iter()
        .find(|d| d.capability == Capability::Net)
        .expect("the attempt is recorded");
    assert!(d.allowed, "{d:?}");
    assert!(
        d.detail.as_deref().unwrap_or("").starts_with("failed:"),
        "{d:?}"
    );
}

#[tokio::test]
async fn http_unlisted_host() {
    let server = Server::silent();
    let s = Scene::new();
    let g = grants(
        &net_policy(&[format!("http://allowed.example:{}", server.port)]),
        &s.ws(),
    );
    tool_err(
        &attacker(),
        &g,
        "http",
        json!({"url": server.url("/")}),
        ToolErrorKind::Denied,
    )
    .await;
    assert_eq!(server.hits(), 0);
}

#[tokio::test]
async fn http_unlisted_port() {
    let server = Server::silent();
    let other = Server::silent();
    let s = Scene::new();
    let g = grants(
        &net_policy(&[format!("http://127.0.0.1:{}", other.port)]),
        &s.ws(),
    );
    tool_err(
        &attacker(),
        &g,
        "http",
        json!({"url": server.url("/")}),
        ToolErrorKind::Denied,
    )
    .await;
    assert_eq!(server.hits(), 0);
}

#[tokio::test]
async fn http_unlisted_scheme() {
    let server = Server::silent();
    let s = Scene::new();
    let g = grants(
        &net_policy(&[format!("https://127.0.0.1:{}", server.port)]),
        &s.ws(),
    );
    let out = call(&attacker(), &g, "http", json!({"url": server.url("/")}))
        .await
        .unwrap();
    assert_eq!(out.result.unwrap_err().kind, ToolErrorKind::Denied);
    let weird = format!("gopher://127.0.0.1:{}/", server.port);
    let out = call(&attacker(), &g, "http", json!({"url": weird}))
        .await
        .unwrap();
    assert!(out.result.is_err());
    assert_eq!(server.hits(), 0);
}

#[tokio::test]
async fn http_ip_literal_tricks() {
    let server = Server::start(200, &[], "reached");
    let p = server.port;
    let s = Scene::new();
    let spellings = [
        format!("http://2130706433:{p}/"),
        format!("http://0x7f000001:{p}/"),
        format!("http://0177.0.0.1:{p}/"),
        format!("http://127.1:{p}/"),
        format!("http://[::ffff:127.0.0.1]:{p}/"),
        format!("http://[::ffff:7f00:1]:{p}/"),
    ];
    // Listing another address does not let any spelling of 127.0.0.1 in.
    let other = grants(
        &net_policy(&[
            format!("http://127.0.0.2:{p}"),
            format!("http://10.0.0.1:{p}"),
        ]),
        &s.ws(),
    );
    for url in &spellings {
        tool_err(
            &attacker(),
            &other,
            "http",
            json!({"url": url}),
            ToolErrorKind::Denied,
        )
        .await;
    }
    // A wildcard host does not admit a loopback literal either.
    let star = grants(&net_policy(&["*".into()]), &s.ws());
    for url in &spellings {
        tool_err(
            &attacker(),
            &star,
            "http",
            json!({"url": url}),
            ToolErrorKind::Denied,
        )
        .await;
    }
    assert_eq!(server.hits(), 0);
    // Listing 127.0.0.1 admits every spelling of it (they are one address).
    let listed = grants(&net_policy(&[format!("http://127.0.0.1:{p}")]), &s.ws());
    let out = call(&attacker(), &listed, "http", json!({"url": spellings[0]}))
        .await
        .unwrap();
    assert_eq!(out.result.unwrap(), "200");
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn http_name_resolving_to_loopback() {
    let server = Server::start(200, &[], "reached");
    let p = server.port;
    let s = Scene::new();
    let g = grants(&net_policy(&[format!("http://localhost:{p}")]), &s.ws());
    let msg = tool_err(
        &attacker(),
        &g,
        "http",
        json!({"url": format!("http://localhost:{p}/")}),
        ToolErrorKind::Denied,
    )
    .await;
    assert!(
        msg.contains("loopback"),
        "the reason names the address class: {msg}"
    );
    assert_eq!(server.hits(), 0);
    // Listing the IP literal explicitly is the way to allow it.
    let g = grants(
        &net_policy(&[
            format!("http://localhost:{p}"),
            format!("http://127.0.0.1:{p}"),
        ]),
        &s.ws(),
    );
    let out = call(
        &attacker(),
        &g,
        "http",
        json!({"url": format!("http://localhost:{p}/")}),
    )
    .await
    .unwrap();
    assert_eq!(out.result.unwrap(), "200");
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn http_redirect_to_unlisted_host() {
    let unlisted = Server::silent();
    let allowed = Server::start(302, &[("location", unlisted.url("/stolen"))], "");
    let s = Scene::new();
    let policy = format!(
        "plugin = \"drummer-web\"\n[net]\nallow = [\"http://127.0.0.1:{}\"]\n",
        allowed.port
    );
    let g = grants(&policy, &s.ws());
    let web = skill(artifacts::DRUMMER_WEB);
    let msg = tool_err(
        &web,
        &g,
        "http_get",
        json!({"url": allowed.url("/start")}),
        ToolErrorKind::Denied,
    )
    .await;
    assert!(msg.contains(&unlisted.port.to_string()), "{msg}");
    assert_eq!(allowed.hits(), 1);
    assert_eq!(unlisted.hits(), 0);
    // Without following, the 302 itself is the answer.
    let v = ok(
        &web,
        &g,
        "http_get",
        json!({"url": allowed.url("/start"), "follow_redirects": false}),
    )
    .await;
    assert_eq!(v["status"], 302);
    assert_eq!(unlisted.hits(), 0);
}

#[tokio::test]
async fn http_denied_without_any_net_grant() {
    let server = Server::silent();
    let s = Scene::new();
    // The shipped drummer-web policy allows no host.
    let g = grants(&crate::support::shipped_policy("drummer-web"), &s.ws());
    let web = skill(artifacts::DRUMMER_WEB);
    let msg = tool_err(
        &web,
        &g,
        "http_get",
        json!({"url": server.url("/")}),
        ToolErrorKind::Denied,
    )
    .await;
    assert!(msg.contains("no network"), "{msg}");
    assert_eq!(server.hits(), 0);
}

#[tokio::test]
async fn env_leak() {
    // Cargo sets CARGO_PKG_NAME (and PATH, HOME…) for this test process.
    assert!(std::env::var("CARGO_PKG_NAME").is_ok() && std::env::var("PATH").is_ok());
    let s = Scene::new();
    let a = attacker();
    let none = grants("plugin = \"attacker\"\n", &s.ws());
    let v = ok(&a, &none, "env_all", json!({})).await;
    assert_eq!(
        v,
        json!([]),
        "no host variable reaches the guest by default"
    );
    tool_err(
        &a,
        &none,
        "env",
        json!({"name": "PATH"}),
        ToolErrorKind::NotFound,
    )
    .await;
    let one = grants(
        "plugin = \"attacker\"\n[env]\nallow = [\"CARGO_PKG_NAME\"]\n",
        &s.ws(),
    );
    let v = ok(&a, &one, "env_all", json!({})).await;
    assert_eq!(v, json!(["CARGO_PKG_NAME"]));
    tool_err(
        &a,
        &one,
        "env",
        json!({"name": "HOME"}),
        ToolErrorKind::NotFound,
    )
    .await;
}

fn limited(extra: &str) -> String {
    format!("plugin = \"attacker\"\n[limits]\n{extra}\n")
}

#[tokio::test]
async fn infinite_loop_is_stopped() {
    let s = Scene::new();
    let g = grants(&limited("timeout_ms = 300"), &s.ws());
    let started = std::time::Instant::now();
    let err = call(&attacker(), &g, "spin", json!({})).await.unwrap_err();
    assert!(
        matches!(
            err,
            CallError::Limit {
                kind: LimitKind::Timeout { ms: 300 },
                ..
            }
        ),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[tokio::test]
async fn sleeping_guest_is_stopped() {
    let s = Scene::new();
    let g = grants(&limited("timeout_ms = 300"), &s.ws());
    let err = call(&attacker(), &g, "sleep", json!({})).await.unwrap_err();
    assert!(
        matches!(
            err,
            CallError::Limit {
                kind: LimitKind::Timeout { .. },
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn memory_bomb_is_stopped() {
    let s = Scene::new();
    let g = grants(&limited("memory_mib = 16"), &s.ws());
    let a = attacker();
    let err = call(&a, &g, "alloc", json!({"mib": 64})).await.unwrap_err();
    assert!(
        matches!(
            err,
            CallError::Limit {
                kind: LimitKind::Memory { mib: 16 },
                ..
            }
        ),
        "{err}"
    );
    // Within the limit the same tool works.
    let out = call(&a, &g, "alloc", json!({"mib": 4})).await.unwrap();
    assert_eq!(out.result.unwrap(), "allocated 4 MiB");
}

#[tokio::test]
async fn stack_overflow_is_stopped() {
    let s = Scene::new();
    let g = grants(&limited(""), &s.ws());
    let err = call(&attacker(), &g, "recurse", json!({"depth": 1u64 << 40}))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CallError::Limit {
                kind: LimitKind::Stack,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn output_flood_is_stopped() {
    let s = Scene::new();
    let g = grants(&limited("max_output_kib = 4"), &s.ws());
    let a = attacker();
    let err = call(&a, &g, "flood", json!({"bytes": 100_000}))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CallError::Limit {
                kind: LimitKind::Output { kib: 4 },
                ..
            }
        ),
        "{err}"
    );
    let err = call(&a, &g, "print", json!({"bytes": 1_000_000}))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CallError::Limit {
                kind: LimitKind::Output { kib: 4 },
                ..
            }
        ),
        "{err}"
    );
    let out = call(&a, &g, "flood", json!({"bytes": 100})).await.unwrap();
    assert_eq!(out.result.unwrap().len(), 100);
}

#[tokio::test]
async fn guest_panic_is_reported_and_the_next_call_is_fresh() {
    let s = Scene::new();
    let g = grants(&limited(""), &s.ws());
    let a = attacker();
    let err = call(&a, &g, "panic", json!({})).await.unwrap_err();
    match err {
        CallError::Trap { message, .. } => assert!(
            message.contains("attacker panicked on purpose"),
            "{message}"
        ),
        other => panic!("expected a trap, got {other}"),
    }
    let v = ok(&a, &g, "env_all", json!({})).await;
    assert_eq!(v, json!([]));
}
