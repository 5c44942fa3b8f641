//! `camina policy audit`: every installed plugin's effective grants and
//! findings (least privilege, risk, drift since approval).

use crate::{Error, PluginRecord, Registry, Result};
use camina_policy::Digest;
use camina_policy::audit::{ComponentFacts, Context, Finding, Level, audit};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::path::Path;

/// What `camina policy approve` recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub digest: Digest,
    pub policy_hash: Digest,
    pub approved_at: String,
}

/// One plugin in the audit report.
#[derive(Debug, Clone, Serialize)]
pub struct PluginAudit {
    pub plugin: String,
    pub version: String,
    pub digest: Digest,
    pub policy_hash: Digest,
    pub crew: Option<camina_policy::Crew>,
    pub signer: Option<String>,
    /// `approved`, `not-approved` or `changed-since-approval`.
    pub approval: &'static str,
    pub imports: Vec<String>,
    /// `{fs: [{host, guest, access}], net: [rule], env: [name], limits: {…}}`
    pub grants: Value,
    pub findings: Vec<Finding>,
}

/// The whole report (the stable JSON of `camina policy audit --json`).
#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    pub plugins: Vec<PluginAudit>,
    /// Findings per level.
    pub summary: Value,
}

impl AuditReport {
    /// The most severe level found, if any.
    pub fn worst(&self) -> Option<Level> {
        self.plugins
            .iter()
            .flat_map(|p| p.findings.iter().map(|f| f.level))
            .max()
    }
}

impl Registry {
    fn approval_path(&self, name: &str) -> std::path::PathBuf {
        self.home.join("approvals").join(format!("{name}.json"))
    }

    /// Records the plugin's current digest and policy hash as approved.
    pub fn approve(&self, name: &str) -> Result<Approval> {
        let record = self.get(name)?.record.clone();
        let approval = Approval {
            digest: record.digest,
            policy_hash: record.policy.hash,
            approved_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                .to_string(),
        };
        let path = self.approval_path(name);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::Io {
                path: dir.display().to_string(),
                source: e,
            })?;
        }
        crate::write_atomic(
            &path,
            &serde_json::to_vec_pretty(&approval).unwrap_or_default(),
        )?;
        Ok(approval)
    }

    /// The plugin's approval, if any.
    pub fn approval(&self, name: &str) -> Option<Approval> {
        let bytes = std::fs::read(self.approval_path(name)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// `approved`, `not-approved` or `changed-since-approval` (the
    /// component or the policy differ from what was approved).
    pub fn approval_state(&self, r: &PluginRecord) -> &'static str {
        approval_state_of(self.approval(&r.name).as_ref(), r)
    }

    /// Audits every installed plugin.
    pub fn audit(&self, workspace_root: &Path, home_dir: Option<&Path>) -> Result<AuditReport> {
        let cx = Context {
            home: home_dir,
            workspace_root,
        };
        let mut plugins = Vec::new();
        for record in self.list()? {
            plugins.push(self.audit_one(&record, &cx)?);
        }
        let count = |l: Level| {
            plugins
                .iter()
                .flat_map(|p: &PluginAudit| &p.findings)
                .filter(|f| f.level == l)
                .count()
        };
        let summary = json!({"high": count(Level::High), "medium": count(Level::Medium), "info": count(Level::Info)});
        Ok(AuditReport { plugins, summary })
    }

    fn audit_one(&self, r: &PluginRecord, cx: &Context<'_>) -> Result<PluginAudit> {
        let facts = ComponentFacts {
            imports: r.imports.clone(),
            all_tools_read_only: !r.tools.is_empty()
                && r.tools
                    .iter()
                    .all(|t| t.effect == camina_sandbox::Effect::ReadOnly),
            no_policy: r.policy.source.is_empty(),
        };
        // A stored policy that no longer holds (a fixed mount was deleted,
        // say) is this plugin's finding, not a failure of the whole audit.
        let policy = r.policy();
        let mut findings = match &policy {
            Ok(policy) => audit(policy, &facts, cx),
            Err(e) => vec![Finding {
                level: Level::High,
                code: "policy-invalid",
                message: format!("the stored policy no longer holds, so every call fails: {e}"),
            }],
        };
        let approved = self.approval(&r.name);
        let approval = approval_state_of(approved.as_ref(), r);
        match &approved {
            None => {
                findings.push(Finding {
                    level: Level::Info,
                    code: "not-approved",
                    message: format!("never approved (camina policy approve {})", r.name),
                });
            }
            Some(a) => {
                if a.digest != r.digest {
                    findings.push(Finding {
                        level: Level::High,
                        code: "drift-component",
                        message: format!(
                            "the component changed since it was approved ({}; was {})",
                            r.digest, a.digest
                        ),
                    });
                }
                if a.policy_hash != r.policy.hash {
                    findings.push(Finding {
                        level: Level::High,
                        code: "drift-policy",
                        message: format!(
                            "the policy changed since it was approved on {}",
                            a.approved_at
                        ),
                    });
                }
            }
        }
        findings.sort_by(|a, b| b.level.cmp(&a.level).then(a.code.cmp(b.code)));
        let grants = match &policy {
            Err(_) => Value::Null,
            Ok(policy) => json!({
            "fs": policy.mounts.iter().map(|m| json!({"host": m.host.to_string(), "guest": m.guest, "access": m.access.as_str()})).collect::<Vec<_>>(),
            "net": policy.net.rules.iter().map(|r| r.text.clone()).collect::<Vec<_>>(),
            "env": policy.env,
            "limits": {"memory_mib": policy.limits.memory_mib, "timeout_ms": policy.limits.timeout_ms, "max_output_kib": policy.limits.max_output_kib},
            }),
        };
        Ok(PluginAudit {
            plugin: r.name.clone(),
            version: r.version.clone(),
            digest: r.digest.clone(),
            policy_hash: r.policy.hash.clone(),
            crew: r.crew,
            signer: r.signer.clone(),
            approval,
            imports: r.imports.clone(),
            grants,
            findings,
        })
    }
}

/// The approval state of a record given its approval, if any.
fn approval_state_of(approval: Option<&Approval>, r: &PluginRecord) -> &'static str {
    match approval {
        None => "not-approved",
        Some(a) if a.digest == r.digest && a.policy_hash == r.policy.hash => "approved",
        Some(_) => "changed-since-approval",
    }
}
