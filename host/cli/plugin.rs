//! `camina plugin …`

use anyhow::Context as _;
use camina_registry::{PluginRecord, PolicySource};
use clap::Subcommand;
use std::path::{Path, PathBuf};

#[derive(Subcommand, Debug)]
pub enum PluginCommand {
    /// Validate, precompile and store a skill component with its policy.
    Install {
        /// The component: a `.wasm` file (built for wasm32-wasip2), or an
        /// http(s) URL to download it from.
        file: String,
        /// Its capability policy. Without one the plugin gets nothing: no
        /// filesystem, no network, no environment.
        #[arg(long, value_name = "FILE.toml")]
        policy: Option<PathBuf>,
        /// Refuse the file unless its SHA-256 digest is this (64 hex digits).
        #[arg(long, value_name = "HEX", value_parser = parse_sha256)]
        sha256: Option<String>,
        /// A detached signature (`camina plugin sign`) to verify against the
        /// trusted keys in <home>/trusted_keys.
        #[arg(long, value_name = "FILE.sig")]
        signature: Option<PathBuf>,
        /// Print the installed record as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Sign a component and its policy with a key from `camina key generate`.
    Sign {
        file: PathBuf,
        /// The secret key file (<home>/keys/NAME.key).
        #[arg(long, value_name = "FILE.key")]
        key: PathBuf,
        /// The policy it will be installed with (the signature covers both).
        #[arg(long, value_name = "FILE.toml")]
        policy: Option<PathBuf>,
        /// Where to write the signature (default FILE.wasm.sig).
        #[arg(long, value_name = "FILE.sig")]
        output: Option<PathBuf>,
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
            signature,
            json,
        } => {
            install(
                cx,
                &file,
                policy.as_deref(),
                sha256.as_deref(),
                signature.as_deref(),
                json,
            )
            .await
        }
        PluginCommand::Sign {
            file,
            key,
            policy,
            output,
        } => sign(&file, &key, policy.as_deref(), output),
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

/// Downloads a component (at most 256 MiB).
async fn download(url: &str) -> anyhow::Result<Vec<u8>> {
    const MAX: usize = 256 * 1024 * 1024;
    let client = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(30))
        .timeout(std::time::Duration::from_secs(600))
        .build()?;
    let mut resp = client
        .get(url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| format!("downloading {url}"))?;
    let mut bytes = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .with_context(|| format!("downloading {url}"))?
    {
        bytes.extend_from_slice(&chunk);
        if bytes.len() > MAX {
            anyhow::bail!("{url}: larger than {MAX} bytes; refusing");
        }
    }
    Ok(bytes)
}

async fn install(
    cx: &crate::Context,
    file: &str,
    policy: Option<&Path>,
    sha256: Option<&str>,
    signature: Option<&Path>,
    json: bool,
) -> anyhow::Result<()> {
    let wasm = if file.starts_with("http://") || file.starts_with("https://") {
        download(file).await?
    } else {
        std::fs::read(file).with_context(|| format!("cannot read {file}"))?
    };
    let policy = policy.map(PolicySource::from_file).transpose()?;
    let signature = signature.map(camina_registry::sign::load).transpose()?;
    let registry = cx.registry()?;
    let report = registry
        .install_signed(&wasm, policy.as_ref(), sha256, file, signature.as_ref())
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
        if let Some(signer) = &r.signer {
            println!("  signed by: {signer} (trusted)");
        }
        println!(
            "  crew: {}",
            r.crew
                .map_or("none (callable with `camina tool call` only)", |c| c
                    .as_str())
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

fn sign(
    file: &Path,
    key: &Path,
    policy: Option<&Path>,
    output: Option<PathBuf>,
) -> anyhow::Result<()> {
    let wasm = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let policy_text = match policy {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            camina_policy::Policy::parse(&text, &p.display().to_string())?;
            text
        }
        None => String::new(),
    };
    let signer = key
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let sig = camina_registry::sign::sign(
        key,
        &signer,
        &camina_registry::digest(&wasm).to_string(),
        &camina_policy::hash_text(&policy_text).to_string(),
    )?;
    let out = output.unwrap_or_else(|| PathBuf::from(format!("{}.sig", file.display())));
    std::fs::write(&out, serde_json::to_string_pretty(&sig)?)
        .with_context(|| format!("cannot write {}", out.display()))?;
    println!(
        "signed {} (component {}, policy {}) -> {}",
        file.display(),
        sig.component,
        sig.policy,
        out.display()
    );
    Ok(())
}

/// `--sha256`: 64 hex digits, optionally `sha256:`-prefixed (a usage
/// error, exit 2, otherwise).
fn parse_sha256(text: &str) -> Result<String, String> {
    camina_registry::Digest::parse(text)
        .map(|d| d.hex().to_owned())
        .map_err(|_| format!("`{text}` is not 64 hex digits"))
}

fn list(cx: &crate::Context, json: bool) -> anyhow::Result<()> {
    let registry = cx.registry()?;
    let records = registry.list()?;
    if json {
        // Each record as stored, plus its approval state.
        let mut out = Vec::new();
        for r in &records {
            let mut v = serde_json::to_value(r)?;
            v["approval"] = registry.approval_state(r).into();
            out.push(v);
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
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
        "{:width$}  {:8}  {:8}  {:12}  {:10}  {:22}  TOOLS",
        "NAME", "VERSION", "CREW", "DIGEST", "SIGNER", "APPROVAL"
    );
    for r in &records {
        let tools: Vec<&str> = r.tools.iter().map(|t| t.name.as_str()).collect();
        let approval = registry.approval_state(r).replace('-', " ");
        println!(
            "{:width$}  {:8}  {:8}  {:12}  {:10}  {:22}  {}",
            r.name,
            r.version,
            r.crew.map_or("-", |c| c.as_str()),
            r.digest.short(),
            r.signer.as_deref().unwrap_or("-"),
            approval,
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
    println!("  crew: {}", r.crew.map_or("none", |c| c.as_str()));
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
