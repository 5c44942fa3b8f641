//! `camina model …`

use crate::Context;
use anyhow::Context as _;
use camina_model::{ChatRequest, Message, ModelRole};
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum ModelCommand {
    /// Per role: the chosen backend and model, whether it is reachable and
    /// present, and its capabilities.
    Check {
        #[arg(long)]
        json: bool,
    },
    /// Download an embedded model of the catalogue (`camina model list`;
    /// default: the configured [embedded] model, else qwen2.5-coder-1.5b),
    /// verified by size and sha256, into the cache (~/.cache/camina/models,
    /// or $CAMINA_CACHE). Prints the model file's path.
    Fetch {
        /// A catalogue name.
        name: Option<String>,
        /// Put the model file here instead of the cache.
        #[arg(long, value_name = "FILE")]
        output: Option<std::path::PathBuf>,
        /// Print {"model", "path", "size", "sha256", "downloaded"} as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The catalogue of fetchable embedded models.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Send one prompt to the model of a role and print the reply.
    Ask {
        /// coordinator | reasoner | belter | drummer
        #[arg(long, default_value = "coordinator")]
        role: String,
        /// A JSON schema the reply must follow.
        #[arg(long, value_name = "JSON")]
        format: Option<String>,
        /// Ask for the model's reasoning too.
        #[arg(long)]
        think: bool,
        /// Print the whole reply (backend, tokens, timing) as JSON.
        #[arg(long)]
        json: bool,
        /// Send a whole request instead of a prompt: a JSON file holding a
        /// chat request as `camina task show ID --json` records it (the
        /// `data.request` of a `model_request` event). `-` reads stdin.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["prompt", "format", "think"])]
        request: Option<std::path::PathBuf>,
        #[arg(required_unless_present = "request")]
        prompt: Option<String>,
    },
}

pub fn parse_role(s: &str) -> anyhow::Result<ModelRole> {
    ModelRole::ALL
        .into_iter()
        .find(|r| r.as_str() == s)
        .ok_or_else(|| {
            crate::UsageError(format!(
                "--role `{s}`: use coordinator, reasoner, belter or drummer"
            ))
            .into()
        })
}

pub async fn run(cx: &Context, cmd: ModelCommand) -> anyhow::Result<()> {
    match cmd {
        ModelCommand::Check { json } => check(cx, json).await,
        ModelCommand::Fetch { name, output, json } => fetch(cx, name, output, json).await,
        ModelCommand::List { json } => list(cx, json),
        ModelCommand::Ask {
            role,
            format,
            think,
            json,
            request,
            prompt,
        } => {
            let role = parse_role(&role)?;
            let request = match request {
                Some(file) => read_request(&file)?,
                None => {
                    let format = format
                        .map(|f| serde_json::from_str(&f))
                        .transpose()
                        .map_err(|e| crate::UsageError(format!("--format is not JSON: {e}")))?;
                    ChatRequest {
                        messages: vec![Message::user(prompt.unwrap_or_default())],
                        format,
                        think,
                        ..Default::default()
                    }
                }
            };
            let bridge = cx.bridge()?;
            let stream_to_terminal = !json;
            let progress = |content: &str, thinking: &str| {
                if stream_to_terminal {
                    use std::io::Write;
                    if !thinking.is_empty() {
                        eprint!("{thinking}");
                    }
                    print!("{content}");
                    let _ = std::io::stdout().flush();
                }
            };
            let reply = bridge.chat(role, &request, Some(&progress)).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&reply)?);
            } else {
                println!();
                eprintln!(
                    "[{} {} · {} prompt + {} generated tokens · {:.0} ms{}]",
                    reply.backend,
                    reply.model,
                    reply.prompt_tokens,
                    reply.completion_tokens,
                    reply.timing.total_ms,
                    if reply.truncated() {
                        " · cut off at the token limit"
                    } else {
                        ""
                    }
                );
            }
            Ok(())
        }
    }
}

async fn fetch(
    cx: &Context,
    name: Option<String>,
    output: Option<std::path::PathBuf>,
    json: bool,
) -> anyhow::Result<()> {
    use camina_model::catalogue;
    let model = match &name {
        Some(n) => catalogue::find(n).ok_or_else(|| {
            crate::UsageError(format!(
                "`{n}` is not in the model catalogue; choose one of: {}",
                catalogue::names()
            ))
        })?,
        None => cx.config.model_config().catalogue_model(),
    };
    let opts = camina_model::fetch::FetchOptions {
        progress: !json || std::io::IsTerminal::is_terminal(&std::io::stderr()),
        ..Default::default()
    };
    let dest =
        output.unwrap_or_else(|| camina_model::fetch::cached_model_path(model, &opts.cache_dir));
    let fetched = camina_model::fetch::fetch_model(model, &dest, &opts).await?;
    let downloaded = match fetched {
        camina_model::fetch::Fetched::AlreadyPresent => 0,
        camina_model::fetch::Fetched::Assembled { downloaded } => downloaded,
    };
    if json {
        println!(
            "{}",
            serde_json::json!({
                "model": model.name,
                "path": dest,
                "size": model.size,
                "sha256": model.sha256,
                "downloaded": downloaded,
            })
        );
    } else {
        match fetched {
            camina_model::fetch::Fetched::AlreadyPresent => eprintln!(
                "{}: present and verified ({} bytes, sha256 {})",
                model.name, model.size, model.sha256
            ),
            camina_model::fetch::Fetched::Assembled { downloaded } => eprintln!(
                "{}: assembled and verified ({downloaded} of {} parts downloaded, the rest from \
                 the cache)",
                model.name, model.parts
            ),
        }
        println!("{}", dest.display());
    }
    Ok(())
}

fn list(cx: &Context, json: bool) -> anyhow::Result<()> {
    use camina_model::catalogue::{CATALOGUE, DEFAULT_MODEL};
    let configured = cx.config.model_config().catalogue_model().name;
    let cache = camina_model::fetch::cache_dir();
    let rows: Vec<serde_json::Value> = CATALOGUE
        .iter()
        .map(|m| {
            let path = camina_model::fetch::cached_model_path(m, &cache);
            serde_json::json!({
                "name": m.name,
                "summary": m.summary,
                "size": m.size,
                "sha256": m.sha256,
                "format": m.format.as_str(),
                "licence": m.licence,
                "upstream": m.upstream,
                "packages": format!("{}1..{} {}", m.package_prefix, m.parts, m.version),
                "default": m.name == DEFAULT_MODEL,
                "configured": m.name == configured,
                "fetched": path.is_file(),
                "path": path,
            })
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    for (m, r) in CATALOGUE.iter().zip(&rows) {
        let mark = if m.name == configured { "*" } else { " " };
        println!(
            "{mark} {:22} {:>5} MB  {:13} {:11} {}{}",
            m.name,
            m.size / 1_000_000,
            m.format.as_str(),
            m.licence,
            m.summary,
            if r["fetched"] == true {
                "  (fetched)"
            } else {
                ""
            }
        );
    }
    println!("\n* = configured ([embedded] model); fetch one with `camina model fetch NAME`");
    Ok(())
}

/// A recorded chat request from a file (`-`: stdin).
fn read_request(file: &std::path::Path) -> anyhow::Result<ChatRequest> {
    let text = if file == std::path::Path::new("-") {
        std::io::read_to_string(std::io::stdin())
            .map_err(|e| anyhow::anyhow!("reading the request from stdin: {e}"))?
    } else {
        std::fs::read_to_string(file)
            .map_err(|e| crate::UsageError(format!("--request {}: {e}", file.display())))?
    };
    serde_json::from_str(&text).map_err(|e| {
        crate::UsageError(format!(
            "--request {}: not a chat request ({e}); expected {{\"messages\": [...], ...}}",
            file.display()
        ))
        .into()
    })
}

async fn check(cx: &Context, json: bool) -> anyhow::Result<()> {
    let bridge = cx.bridge()?;
    let reports = bridge.check().await;
    if json {
        let out = serde_json::json!({
            "ollama_url": bridge.ollama().url(),
            "roles": reports,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&out).context("serialising the report")?
        );
    } else {
        println!("ollama: {}", bridge.ollama().url());
        for r in &reports {
            match &r.error {
                None => println!(
                    "{:12} {:8} {}{}  [{}]{}",
                    r.role.as_str(),
                    r.backend.map_or("-", |b| b.as_str()),
                    r.catalogue
                        .as_deref()
                        .map(|c| format!("{c} "))
                        .unwrap_or_default(),
                    r.model.as_deref().unwrap_or("-"),
                    r.capabilities.join(", "),
                    if r.reachable { "" } else { "  (unreachable)" }
                ),
                Some(e) => println!("{:12} none     {e}", r.role.as_str()),
            }
        }
    }
    if reports.iter().any(|r| r.error.is_some()) {
        return Err(crate::Reported.into());
    }
    Ok(())
}
