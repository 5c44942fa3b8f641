//! `camina policy …`, `camina audit …`, `camina key …`

use crate::{Context, Reported, UsageError};
use camina_policy::audit::Level;
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Every plugin's effective grants and findings: least privilege, risk,
    /// drift since approval.
    Audit {
        #[arg(long)]
        json: bool,
        /// Exit 1 when a finding at this level or above exists (info,
        /// medium, high): for CI.
        #[arg(long, value_name = "LEVEL")]
        deny: Option<String>,
    },
    /// Record a plugin's current component and policy as approved.
    Approve { plugin: String },
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Query the capability decision log.
    Log {
        #[arg(long)]
        plugin: Option<String>,
        /// A task id (or prefix).
        #[arg(long)]
        task: Option<String>,
        /// Only refused accesses.
        #[arg(long)]
        denied: bool,
        /// Since a time (RFC 3339) or for a duration back (`1h`, `2d`).
        #[arg(long, value_name = "T")]
        since: Option<String>,
        /// At most this many, newest first.
        #[arg(long, default_value_t = 200)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Make an ed25519 key pair in <home>/keys (NAME.key secret, NAME.pub).
    Generate { name: String },
    /// Trust a public key for verifying signed plugins.
    Trust {
        file: PathBuf,
        /// Name to record as the signer (default: the file's name).
        #[arg(long)]
        name: Option<String>,
    },
}

pub async fn policy(cx: &Context, cmd: PolicyCommand) -> anyhow::Result<()> {
    match cmd {
        PolicyCommand::Approve { plugin } => {
            let a = cx.registry()?.approve(&plugin)?;
            println!(
                "approved {plugin}: component {}, policy {}",
                a.digest, a.policy_hash
            );
            Ok(())
        }
        PolicyCommand::Audit { json, deny } => {
            let deny = deny
                .map(|d| {
                    Level::parse(&d).ok_or_else(|| {
                        UsageError(format!("--deny `{d}`: use info, medium or high"))
                    })
                })
                .transpose()?;
            let registry = cx.registry()?;
            let home_dir = directories::BaseDirs::new().map(|d| d.home_dir().to_path_buf());
            let report = registry.audit(&cx.workspace_root(), home_dir.as_deref())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for p in &report.plugins {
                    println!(
                        "{} {}  crew: {}  signer: {}  {}",
                        p.plugin,
                        p.version,
                        p.crew.map_or("-", |c| c.as_str()),
                        p.signer.as_deref().unwrap_or("-"),
                        p.approval
                    );
                    let g = &p.grants;
                    let list = |v: &serde_json::Value| {
                        v.as_array()
                            .map(|a| {
                                a.iter()
                                    .map(|x| {
                                        x.as_str()
                                            .map(str::to_owned)
                                            .unwrap_or_else(|| x.to_string())
                                    })
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            })
                            .filter(|s| !s.is_empty())
                            .unwrap_or_else(|| "none".into())
                    };
                    let fs: Vec<String> = g["fs"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|m| {
                            format!(
                                "{} -> {} ({})",
                                m["host"].as_str().unwrap_or(""),
                                m["guest"].as_str().unwrap_or(""),
                                m["access"].as_str().unwrap_or("")
                            )
                        })
                        .collect();
                    println!(
                        "  fs:  {}",
                        if fs.is_empty() {
                            "none".into()
                        } else {
                            fs.join(", ")
                        }
                    );
                    println!("  net: {}", list(&g["net"]));
                    println!("  env: {}", list(&g["env"]));
                    println!(
                        "  limits: {} MiB, {} ms, {} KiB",
                        g["limits"]["memory_mib"],
                        g["limits"]["timeout_ms"],
                        g["limits"]["max_output_kib"]
                    );
                    for f in &p.findings {
                        println!("  {:6} {:24} {}", f.level.as_str(), f.code, f.message);
                    }
                    println!();
                }
                println!(
                    "{} plugin(s): {} high, {} medium, {} info",
                    report.plugins.len(),
                    report.summary["high"],
                    report.summary["medium"],
                    report.summary["info"]
                );
            }
            if let (Some(limit), Some(worst)) = (deny, report.worst())
                && worst >= limit
            {
                eprintln!(
                    "audit: findings at level {} or above (--deny {})",
                    limit.as_str(),
                    limit.as_str()
                );
                return Err(Reported.into());
            }
            Ok(())
        }
    }
}

/// Parses `--since`: RFC 3339, or a duration back from now.
pub fn since(text: &str) -> Result<u64, UsageError> {
    camina_journal::decisions::parse_since(text).ok_or_else(|| {
        UsageError(format!(
            "--since `{text}`: give an RFC 3339 time or a duration like 1h"
        ))
    })
}

pub async fn audit(cx: &Context, cmd: AuditCommand) -> anyhow::Result<()> {
    let AuditCommand::Log {
        plugin,
        task,
        denied,
        since: since_text,
        limit,
        json,
    } = cmd;
    let since_unix_ms = since_text.as_deref().map(since).transpose()?;
    let (journal, _) = camina_journal::Journal::open(&cx.layout().journal())?;
    let entries = journal
        .decision_log()
        .query(&camina_journal::DecisionFilter {
            plugin,
            task,
            denied_only: denied,
            since_unix_ms,
            limit,
        })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(());
    }
    if entries.is_empty() {
        println!("no decisions recorded");
    }
    for e in &entries {
        println!(
            "{}  {:16} {:5} {:7} {:24} {}{}{}",
            e.at,
            e.plugin,
            e.capability,
            if e.allowed { "allowed" } else { "DENIED" },
            e.action,
            e.target,
            e.detail
                .as_deref()
                .map(|d| format!("  ({d})"))
                .unwrap_or_default(),
            e.task
                .as_deref()
                .map(|t| format!("  [task {}]", &t[..t.len().min(12)]))
                .unwrap_or_default()
        );
    }
    Ok(())
}

pub async fn key(cx: &Context, cmd: KeyCommand) -> anyhow::Result<()> {
    match cmd {
        KeyCommand::Generate { name } => {
            let (secret, public, key) =
                camina_registry::sign::generate(&cx.layout().keys(), &name)?;
            println!("secret key: {} (keep it private)", secret.display());
            println!("public key: {} = {key}", public.display());
            println!("to trust it here: camina key trust {}", public.display());
            Ok(())
        }
        KeyCommand::Trust { file, name } => {
            let name = name
                .or_else(|| file.file_stem().map(|s| s.to_string_lossy().into_owned()))
                .unwrap_or_else(|| "key".into());
            let dest = camina_registry::sign::trust(&file, &cx.layout().trusted_keys(), &name)?;
            println!(
                "trusted {} as `{name}` ({})",
                file.display(),
                dest.display()
            );
            Ok(())
        }
    }
}
