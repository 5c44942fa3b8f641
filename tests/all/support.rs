//! Shared helpers: one sandbox engine per test binary, components compiled
//! once, policies from text, workspaces in temp dirs.

use camina_policy::{Grants, Policy};
use camina_sandbox::{CallError, Outcome, Sandbox, Skill, ToolErrorKind};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

pub use camina_test_artifacts as artifacts;

pub fn sandbox() -> Arc<Sandbox> {
    static SANDBOX: OnceLock<Arc<Sandbox>> = OnceLock::new();
    SANDBOX
        .get_or_init(|| Arc::new(Sandbox::new().expect("sandbox starts")))
        .clone()
}

/// The compiled component at `path` (compiled once per test binary).
pub fn skill(path: &str) -> Skill {
    static CACHE: OnceLock<Mutex<HashMap<String, Skill>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(s) = cache.lock().unwrap().get(path) {
        return s.clone();
    }
    let wasm = std::fs::read(path).expect("artifact exists");
    let s = sandbox().compile(&wasm).expect("artifact compiles");
    cache.lock().unwrap().insert(path.to_owned(), s.clone());
    s
}

/// A shipped policy file's text.
pub fn shipped_policy(name: &str) -> String {
    let path = Path::new(artifacts::ROOT)
        .join("policies")
        .join(format!("{name}.toml"));
    std::fs::read_to_string(path).expect("shipped policy exists")
}

/// Grants from policy text, resolved for `workspace`.
pub fn grants(policy: &str, workspace: &Path) -> Grants {
    Policy::parse(policy, "test.toml")
        .expect("test policy is valid")
        .resolve(Some(workspace))
        .expect("test policy resolves")
}

/// A temp dir holding `ws/` (the workspace) and room outside it.
pub struct Scene {
    pub dir: tempfile::TempDir,
}

impl Scene {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("ws")).unwrap();
        Self { dir }
    }
    pub fn ws(&self) -> PathBuf {
        self.dir.path().join("ws")
    }
    pub fn outside(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

pub async fn call(
    skill: &Skill,
    grants: &Grants,
    tool: &str,
    input: Value,
) -> Result<Outcome, CallError> {
    skill.call(grants, tool, &input.to_string()).await
}

/// Calls and expects the tool to answer with JSON.
pub async fn ok(skill: &Skill, grants: &Grants, tool: &str, input: Value) -> Value {
    let outcome = call(skill, grants, tool, input.clone())
        .await
        .unwrap_or_else(|e| panic!("{tool} {input}: {e}"));
    let json = outcome
        .result
        .unwrap_or_else(|e| panic!("{tool} {input}: tool error {e}"));
    serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("{tool}: output is not JSON ({e}): {json}"))
}

/// Calls and expects a `tool-error` of `kind`; returns its message.
pub async fn tool_err(
    skill: &Skill,
    grants: &Grants,
    tool: &str,
    input: Value,
    kind: ToolErrorKind,
) -> String {
    let outcome = call(skill, grants, tool, input.clone())
        .await
        .unwrap_or_else(|e| panic!("{tool} {input}: {e}"));
    match outcome.result {
        Err(e) if e.kind == kind => e.message,
        other => panic!("{tool} {input}: expected {kind:?}, got {other:?}"),
    }
}
