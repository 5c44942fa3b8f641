//! `camina plugin …`

use anyhow::Context as _;
use camina_registry::{PluginRecord, PolicySource};
use clap::Subcommand;
use std::path::{Path, PathBuf};

#[derive(Subcommand, Debug)]
pub enum PluginCommand {
    /// Validate, precompile and store a skill component with its policy.
    Install {
        /// The component (`.wasm`, built for wasm32-wasip2).
        file: PathBuf,
        /// Its capability policy. Without one the plugin gets nothing: no
        /// filesystem, no network, no environment.
        #[arg(long, value_name = "FILE.toml")]
        policy: Option<PathBuf>,
        /// Refuse the file unless its SHA-256 digest is this (64 hex digits).
        #[arg(long, value_name = "HEX")]
        sha256: Option<String>,
        /// Print the installed record as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List installed plugins.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one plugin: tools, input schemas, policy.
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Uninstall a plugin.
    Remove { name: String },
}

pub async fn run(cx: &crate::Context, cmd: PluginCommand) -> anyhow::Result<()> {
    match cmd {
        PluginCommand::Install {
            file,
            policy,
            sha256,
            json,
        } => install(cx, &file, policy.as_deref(), sha256.as_deref(), json).await,
        PluginCommand::List { json } => list(cx, json),
        PluginCommand::Show { name, json } => show(cx, &name, json),
        PluginCommand::Remove { name } => {
            let registry = cx.registry()?;
            let record = registry.remove(&name)?;
            println!(
                "removed {} {} ({})",
                record.name, record.version, record.digest
            );
            Ok(())
        }
    }
}

async fn install(
    cx: &crate::Context,
    file: &Path,
    policy: Option<&Path>,
    sha256: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let wasm = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let policy = policy.map(PolicySource::from_file).transpose()?;
    let registry = cx.registry()?;
    let report = registry
        .install(&wasm, policy.as_ref(), sha256, &file.display().to_string())
        .await?;
    let r = &report.record;
    if json {
        println!("{}", serde_json::to_string_pretty(r)?);
    } else {
        let verb = if report.replaced {
            "replaced"
        } else {
            "installed"
        };
        println!("{verb} {} {} ({})", r.name, r.version, r.digest);
        println!(
            "  crew: {}",
            r.crew
                .as_deref()
                .unwrap_or("none (callable with `camina tool call` only)")
        );
        let tools: Vec<&str> = r.tools.iter().map(|t| t.name.as_str()).collect();
        println!("  tools: {}", tools.join(", "));
        for line in report.policy.summary() {
            println!("  {line}");
        }
    }
    if policy.is_none() {
        eprintln!(
            "note: no --policy given: {} gets no filesystem, no network and no environment \
             (deny all). Reinstall with --policy FILE.toml to grant access.",
            r.name
        );
    }
    Ok(())
}

fn short(digest: &str) -> &str {
    let hex = digest.trim_start_matches("sha256:");
    &hex[..hex.len().min(12)]
}

fn list(cx: &crate::Context, json: bool) -> anyhow::Result<()> {
    let registry = cx.registry()?;
    let records = registry.list()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&records)?);
        return Ok(());
    }
    if records.is_empty() {
        println!("no plugins installed (camina plugin install FILE.wasm --policy FILE.toml)");
        return Ok(());
    }
    let width = records
        .iter()
        .map(|r| r.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    println!(
        "{:width$}  {:8}  {:8}  {:12}  TOOLS",
        "NAME", "VERSION", "CREW", "DIGEST"
    );
    for r in &records {
        let tools: Vec<&str> = r.tools.iter().map(|t| t.name.as_str()).collect();
        println!(
            "{:width$}  {:8}  {:8}  {:12}  {}",
            r.name,
            r.version,
            r.crew.as_deref().unwrap_or("-"),
            short(&r.digest),
            tools.join(", ")
        );
    }
    Ok(())
}

fn show(cx: &crate::Context, name: &str, json: bool) -> anyhow::Result<()> {
    let registry = cx.registry()?;
    let plugin = registry.get(name)?;
    let r: &PluginRecord = &plugin.record;
    if json {
        println!("{}", serde_json::to_string_pretty(r)?);
        return Ok(());
    }
    println!("{} {} — {}", r.name, r.version, r.description);
    println!("  digest: {}", r.digest);
    println!("  crew: {}", r.crew.as_deref().unwrap_or("none"));
    println!("  installed: {}", r.installed_at);
    println!(
        "  policy: {} ({})",
        r.policy.file.as_deref().unwrap_or("none: deny all"),
        r.policy.hash
    );
    for line in plugin.policy.summary() {
        println!("    {line}");
    }
    println!("  tools:");
    for t in &r.tools {
        println!("    {} [{}]: {}", t.name, t.effect, t.description);
        println!("      input: {}", t.input_schema);
    }
    Ok(())
}
