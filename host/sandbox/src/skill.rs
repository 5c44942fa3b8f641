//! A compiled, pre-linked skill and one call of it.

use crate::audit::Decisions;
use crate::bindings::{self, SkillPre};
use crate::engine::{EPOCH_TICK, Sandbox};
use crate::net::NetGate;
use crate::state::State;
use crate::stdio::Capture;
use crate::{
    CallError, Effect, Error, LimitKind, Manifest, Outcome, Result, ToolError, ToolErrorKind,
    ToolSpec,
};
use camina_policy::{Access, Grants, Limits, NetPolicy};
use std::sync::Arc;
use std::time::Instant;
use wasmtime::component::Component;
use wasmtime::component::types::ComponentItem;
use wasmtime::{Engine, Store, Trap};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

/// Interfaces a skill may import (prefixes, version-agnostic).
const ALLOWED_IMPORTS: &[&str] = &[
    "wasi:io/",
    "wasi:clocks/",
    "wasi:random/",
    "wasi:filesystem/",
    "wasi:cli/",
    "wasi:http/outgoing-handler",
    "wasi:http/types",
    "camina:skill/",
];

/// The imports of `component` that the sandbox never provides.
pub fn unsupported_imports(names: &[String]) -> Vec<String> {
    names
        .iter()
        .filter(|n| !ALLOWED_IMPORTS.iter().any(|p| n.starts_with(p)))
        .cloned()
        .collect()
}

/// A component ready to run: compiled, type-checked against the `skill`
/// world and pre-linked. Cheap to clone.
#[derive(Clone)]
pub struct Skill {
    pre: SkillPre<State>,
    engine: Engine,
    permits: Arc<tokio::sync::Semaphore>,
    imports: Arc<[String]>,
}

impl std::fmt::Debug for Skill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Skill")
            .field("imports", &self.imports)
            .finish_non_exhaustive()
    }
}

impl Skill {
    pub(crate) fn prepare(sandbox: &Sandbox, component: Component) -> Result<Self> {
        let ty = component.component_type();
        let imports: Vec<String> = ty
            .imports(&sandbox.engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        let bad = unsupported_imports(&imports);
        if !bad.is_empty() {
            return Err(Error::UnsupportedImports(bad));
        }
        let exports: Vec<(String, bool)> = ty
            .exports(&sandbox.engine)
            .map(|(name, item)| {
                (
                    name.to_owned(),
                    matches!(item.ty, ComponentItem::ComponentFunc(_)),
                )
            })
            .collect();
        for want in ["describe", "call"] {
            if !exports.iter().any(|(n, is_func)| n == want && *is_func) {
                let have: Vec<&str> = exports.iter().map(|(n, _)| n.as_str()).collect();
                return Err(Error::WrongWorld(
                    format!(
                        "it exports no function `{want}` (its exports: {})",
                        if have.is_empty() {
                            "none".to_owned()
                        } else {
                            have.join(", ")
                        }
                    )
                    .into(),
                ));
            }
        }
        let instance_pre = sandbox
            .linker
            .instantiate_pre(&component)
            .map_err(|e| Error::WrongWorld(e.into()))?;
        let pre = SkillPre::new(instance_pre).map_err(|e| Error::WrongWorld(e.into()))?;
        Ok(Self {
            pre,
            engine: sandbox.engine.clone(),
            permits: sandbox.permits.clone(),
            imports: imports.into(),
        })
    }

    /// The component's import names (`wasi:http/outgoing-handler@0.2.x`, …).
    pub fn imports(&self) -> &[String] {
        &self.imports
    }

    /// Runs `describe` with no grants at all and default limits.
    pub async fn describe(&self, plugin_hint: &str) -> std::result::Result<Manifest, CallError> {
        let grants = Grants {
            plugin: plugin_hint.to_owned(),
            mounts: Vec::new(),
            net: NetPolicy::default(),
            env: Vec::new(),
            limits: Limits::default(),
        };
        let (m, _) = self
            .run(&grants, None, |skill, store| {
                Box::pin(async move { skill.call_describe(store).await })
            })
            .await?;
        let manifest = Manifest {
            name: m.name,
            version: m.version,
            description: m.description,
            tools: m
                .tools
                .into_iter()
                .map(|t| ToolSpec {
                    name: t.name,
                    description: t.description,
                    input_schema: t.input_schema,
                    effect: match t.effect {
                        bindings::camina::skill::types::Effect::ReadOnly => Effect::ReadOnly,
                        bindings::camina::skill::types::Effect::Idempotent => Effect::Idempotent,
                        bindings::camina::skill::types::Effect::SideEffecting => {
                            Effect::SideEffecting
                        }
                    },
                })
                .collect(),
        };
        Ok(manifest)
    }

    /// Calls `tool` with `input` in a fresh sandbox under `grants`.
    pub async fn call(
        &self,
        grants: &Grants,
        tool: &str,
        input: &str,
    ) -> std::result::Result<Outcome, CallError> {
        self.call_preserving(grants, tool, input, None).await
    }

    /// [`Self::call`], handing the prior state of every path the call is
    /// about to change to `preserve` first (see [`crate::preserve`]).
    // Debug level: a span per call is detail, and an enabled one costs a
    // few microseconds on a path that takes tens.
    #[tracing::instrument(name = "sandbox.call", level = "debug", skip_all, fields(plugin = %grants.plugin, tool = %tool))]
    pub async fn call_preserving(
        &self,
        grants: &Grants,
        tool: &str,
        input: &str,
        preserve: Option<Arc<dyn crate::Preserve>>,
    ) -> std::result::Result<Outcome, CallError> {
        let started = Instant::now();
        let (tool, input) = (tool.to_owned(), input.to_owned());
        let (answer, (decisions, stdio)) = self
            .run(grants, preserve, move |skill, store| {
                Box::pin(async move { skill.call_call(store, &tool, &input).await })
            })
            .await?;
        let max = grants.limits.max_output_bytes();
        let result = match answer {
            Ok(json) if json.len() > max => {
                return Err(CallError::Limit {
                    kind: LimitKind::Output {
                        kib: grants.limits.max_output_kib,
                    },
                    decisions,
                });
            }
            Ok(json) => Ok(json),
            Err(e) => {
                let (kind, mut message) = match e {
                    bindings::camina::skill::types::ToolError::InvalidInput(m) => {
                        (ToolErrorKind::InvalidInput, m)
                    }
                    bindings::camina::skill::types::ToolError::Denied(m) => {
                        (ToolErrorKind::Denied, m)
                    }
                    bindings::camina::skill::types::ToolError::NotFound(m) => {
                        (ToolErrorKind::NotFound, m)
                    }
                    bindings::camina::skill::types::ToolError::Failed(m) => {
                        (ToolErrorKind::Failed, m)
                    }
                };
                if message.len() > max {
                    let mut end = max;
                    while !message.is_char_boundary(end) {
                        end -= 1;
                    }
                    message.truncate(end);
                }
                // A guest's `denied` is more useful with the host's reason.
                if kind == ToolErrorKind::Denied
                    && let Some(d) = decisions.iter().rev().find(|d| !d.allowed)
                    && let Some(reason) = &d.detail
                    && !message.contains(reason.as_str())
                {
                    message = format!("{message} [sandbox: {} {}: {reason}]", d.action, d.target);
                }
                Err(ToolError { kind, message })
            }
        };
        Ok(Outcome {
            result,
            decisions,
            stdio,
            elapsed: started.elapsed(),
        })
    }

    /// Instantiates in a fresh store under `grants` and runs `f` on the
    /// instance, enforcing every limit. Returns `f`'s value and the call's
    /// decisions and captured stdio.
    async fn run<R, F>(
        &self,
        grants: &Grants,
        preserve: Option<Arc<dyn crate::Preserve>>,
        f: F,
    ) -> std::result::Result<(R, (Vec<crate::Decision>, String)), CallError>
    where
        R: Send,
        F: for<'a> FnOnce(
                &'a bindings::Skill,
                &'a mut Store<State>,
            ) -> std::pin::Pin<
                Box<dyn Future<Output = wasmtime::Result<R>> + Send + 'a>,
            > + Send,
    {
        let _permit = self.permits.acquire().await.map_err(|e| CallError::Setup {
            what: "waiting for a call slot".into(),
            source: e.into(),
        })?;
        let plugin: Arc<str> = grants.plugin.as_str().into();
        let limits = grants.limits;
        let decisions = Decisions::default();
        let capture = Capture::new(limits.max_output_bytes());

        let mut wasi = WasiCtxBuilder::new();
        // Must precede `preopened_dir`: file I/O then runs on this thread
        // instead of hopping to tokio's blocking pool.
        wasi.allow_blocking_current_thread(true);
        wasi.stdout(capture.clone()).stderr(capture.clone());
        for (name, value) in grants.env_vars() {
            decisions.push(crate::Decision {
                capability: crate::Capability::Env,
                action: "pass".into(),
                target: name.clone(),
                allowed: true,
                detail: None,
            });
            wasi.env(name, value);
        }
        for m in &grants.mounts {
            let perms = match m.access {
                Access::Read => FsPerms::ReadOnly,
                Access::ReadWrite => FsPerms::ReadWrite,
            };
            wasi.preopened_dir(&m.host, &m.guest, perms)
                .map_err(|e| CallError::Setup {
                    what: format!("mount {} -> {}", m.host.display(), m.guest),
                    source: e.into(),
                })?;
        }
        let net = NetGate {
            plugin: plugin.clone(),
            policy: Arc::new(grants.net.clone()),
            decisions: decisions.clone(),
        };
        let mounts = match preserve {
            Some(_) => grants
                .mounts
                .iter()
                .map(|m| (m.guest.clone(), m.host.clone()))
                .collect(),
            None => Vec::new(),
        };
        let fs = crate::fs::FsAudit::new(plugin.clone(), decisions.clone(), preserve, mounts);
        let state = State::new(plugin, wasi.build(), net, limits.memory_bytes(), fs);
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        let ticks = limits.timeout_ms / EPOCH_TICK.as_millis() as u64 + 1;
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_trap();

        let pre = self.pre.clone();
        let work = async {
            let instance = pre.instantiate_async(&mut store).await?;
            f(&instance, &mut store).await
        };
        let outcome = tokio::time::timeout(limits.timeout(), work).await;
        let taken = || (decisions.take(), capture.text());
        let result = match outcome {
            Err(_) => Err(CallError::Limit {
                kind: LimitKind::Timeout {
                    ms: limits.timeout_ms,
                },
                decisions: decisions.take(),
            }),
            Ok(Ok(value)) => Ok((value, taken())),
            Ok(Err(err)) => Err(classify(
                err,
                store.data().limiter.hit,
                capture.overflowed(),
                &limits,
                decisions.take(),
                capture.text(),
            )),
        };
        // A broken limit is a decision too.
        result.map_err(|e| match e {
            CallError::Limit {
                kind,
                mut decisions,
            } => {
                tracing::warn!(plugin = %grants.plugin, capability = "limit", "{kind}");
                decisions.push(crate::Decision {
                    capability: crate::Capability::Limit,
                    action: "stop".into(),
                    target: kind.to_string(),
                    allowed: false,
                    detail: None,
                });
                CallError::Limit { kind, decisions }
            }
            other => other,
        })
    }
}

fn classify(
    err: wasmtime::Error,
    memory_hit: bool,
    output_hit: bool,
    limits: &Limits,
    decisions: Vec<crate::Decision>,
    stdio: String,
) -> CallError {
    let limit = |kind| CallError::Limit {
        kind,
        decisions: decisions.clone(),
    };
    match err.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => {
            return limit(LimitKind::Timeout {
                ms: limits.timeout_ms,
            });
        }
        Some(Trap::StackOverflow) => return limit(LimitKind::Stack),
        _ => {}
    }
    if memory_hit {
        return limit(LimitKind::Memory {
            mib: limits.memory_mib,
        });
    }
    if output_hit {
        return limit(LimitKind::Output {
            kib: limits.max_output_kib,
        });
    }
    let mut message = format!("{err:#}");
    // A Rust guest's panic message is on its stderr.
    let tail: String = stdio
        .lines()
        .rev()
        .take(5)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    if !tail.trim().is_empty() {
        message = format!("{message}\nguest output:\n{tail}");
    }
    CallError::Trap { message, decisions }
}
