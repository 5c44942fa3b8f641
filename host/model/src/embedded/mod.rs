//! llama.cpp in-process (`llama-cpp-2`): everything runs with no server.
//!
//! One model is loaded per file per process and shared by every role.
//! Prompts go through the model's own chat template ([`crate::template`]);
//! a template that declares tools Hermes-style gets the request's tools and
//! the model calls them in its own markup (`<tool_call>{…}</tool_call>`). A
//! base model (no template, or not instruction-tuned) gets a completion
//! transcript instead ([`prompt`]). Whenever tools or a JSON format are
//! requested, decoding is grammar-constrained ([`crate::grammar`]): a reply
//! is a well-formed call whose arguments match that tool's schema, the
//! requested JSON, or plain text.
//!
//! **Prefix reuse.** A few contexts ("slots", `[embedded] cache_slots`)
//! keep their KV cache between calls. A request goes to the slot holding
//! the longest common token prefix with its prompt, and only the tokens
//! after that prefix are evaluated: a conversation's next turn costs its
//! new tokens, and calls sharing a role's system text and tools share their
//! evaluation. The KV state of a prompt's first turn (system text + tool
//! declarations) is also kept on disk (`<cache>/kv/`), so a new process
//! does not evaluate it again.
//!
//! Decoding is greedy by default (the same request gives the same reply);
//! calls are serialised: on a small machine two decodes at once only make
//! both slower.
//!
//! Not here: thinking (an embedded model has no separate reasoning channel;
//! the bridge refuses `think` for it) and GPU offload.

mod pick;
pub mod prompt;

use pick::{Picker, emit, find};

use crate::grammar::{Alt, Bounds, alternatives_to_gbnf, schema_to_gbnf};
use crate::template::ChatTemplate;
use crate::{
    ChatBackend, ChatReply, ChatRequest, Message, ModelError, Progress, Result, Role, Timing,
};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

/// Tunables of the embedded backend.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    pub threads: u32,
    /// Context size of each slot (capped at the model's training context).
    pub n_ctx: u32,
    /// Contexts that keep their KV cache between calls.
    pub cache_slots: u32,
    /// Where prompt prefixes' KV state is kept on disk (`None`: not kept).
    pub prompt_cache: Option<PathBuf>,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            threads: 2,
            n_ctx: 8192,
            cache_slots: 4,
            prompt_cache: None,
        }
    }
}

/// Default and largest number of generated tokens.
const DEFAULT_PREDICT_JSON: u32 = 512;
const DEFAULT_PREDICT_TEXT: u32 = 256;
/// Tokens evaluated per `decode` call.
const N_BATCH: u32 = 512;
/// Prefixes shorter than this are not worth a file.
const MIN_DISK_PREFIX: usize = 64;
/// Most prefix files kept per model (oldest removed first).
const MAX_DISK_PREFIXES: usize = 24;

/// The process-wide llama.cpp backend (initialised once).
pub fn llama_backend() -> Result<&'static LlamaBackend> {
    static BACKEND: OnceLock<std::result::Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            let enabled = std::env::var_os("CAMINA_LLAMA_LOG").is_some();
            llama_cpp_2::send_logs_to_tracing(
                llama_cpp_2::LogOptions::default().with_logs_enabled(enabled),
            );
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| ModelError::embedded("initialising llama.cpp", e.to_string()))
}

/// Models loaded in this process, by file: loaded once and kept for the
/// process's life (contexts borrow them, and a model is what a process
/// uses until it ends).
fn load_model(path: &Path) -> Result<&'static LlamaModel> {
    static MODELS: Mutex<Vec<(PathBuf, &'static LlamaModel)>> = Mutex::new(Vec::new());
    let mut models = MODELS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, m)) = models.iter().find(|(p, _)| p == path) {
        return Ok(m);
    }
    let params = LlamaModelParams::default().with_n_gpu_layers(0);
    let model = LlamaModel::load_from_file(llama_backend()?, path, &params).map_err(|e| {
        ModelError::embedded(
            format!(
                "{}: llama.cpp cannot load it (is the file complete?)",
                path.display()
            ),
            e,
        )
    })?;
    let model: &'static LlamaModel = Box::leak(Box::new(model));
    models.push((path.to_path_buf(), model));
    Ok(model)
}

/// How prompts are built for a model.
#[derive(Debug)]
pub enum PromptStyle {
    /// Through the model's chat template.
    Chat(Box<ChatTemplate>),
    /// A completion transcript (base models).
    Completion,
}

/// A context whose KV cache holds `tokens` (sequence 0).
struct Slot {
    ctx: LlamaContext<'static>,
    tokens: Vec<LlamaToken>,
    used: Instant,
}

struct Inner {
    model: &'static LlamaModel,
    path: PathBuf,
    name: String,
    style: PromptStyle,
    opts: EmbeddedOptions,
    n_ctx: u32,
    /// Distinguishes this model's prefix files from another's.
    key: String,
    slots: Mutex<Vec<Slot>>,
}

/// A loaded GGUF model.
#[derive(Clone)]
pub struct EmbeddedBackend(Arc<Inner>);

impl std::fmt::Debug for EmbeddedBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBackend")
            .field("path", &self.0.path)
            .field("name", &self.0.name)
            .field("style", &self.0.style)
            .finish_non_exhaustive()
    }
}

/// Whether the GGUF metadata says the model is instruction-tuned.
fn looks_instruction_tuned(model: &LlamaModel) -> bool {
    [
        "general.name",
        "general.finetune",
        "general.basename",
        "general.type",
    ]
    .iter()
    .filter_map(|k| model.meta_val_str(k).ok())
    .any(|v| {
        let v = v.to_ascii_lowercase();
        v.split(|c: char| !c.is_ascii_alphanumeric())
            .any(|w| matches!(w, "it" | "instruct" | "chat" | "sft" | "dpo"))
    })
}

/// A rendered prompt: the text, and the part of it a role's calls share
/// (its first turn: system text and tools), when known.
struct Rendered {
    text: String,
    prefix: Option<String>,
}

impl EmbeddedBackend {
    /// Loads `path`. A missing file, a file that is not GGUF or a model
    /// llama.cpp refuses is an error naming the file.
    pub fn load(path: &Path, opts: EmbeddedOptions) -> Result<Self> {
        if !path.is_file() {
            return Err(ModelError::ModelFileMissing {
                path: path.display().to_string(),
                hint: "run `camina model fetch`, or point [embedded] gguf at a GGUF file".into(),
            });
        }
        crate::check_gguf_magic(path)?;
        let model = load_model(path)?;
        let name = model.meta_val_str("general.name").unwrap_or_else(|_| {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        let vocab = model.vocab();
        let special = |t: LlamaToken| {
            String::from_utf8_lossy(&vocab.token_to_piece(t, true, None)).into_owned()
        };
        let style = match model.meta_val_str("tokenizer.chat_template") {
            Ok(source) if looks_instruction_tuned(model) => {
                match ChatTemplate::new(&source, &special(vocab.bos()), &special(vocab.eos())) {
                    Ok(t) => PromptStyle::Chat(Box::new(t)),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), "{e}; using a completion prompt");
                        PromptStyle::Completion
                    }
                }
            }
            _ => PromptStyle::Completion,
        };
        let n_ctx = opts.n_ctx.min(model.n_ctx_train()).max(512);
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let key = hex::encode(&Sha256::digest(format!("{name}\0{size}"))[..8]);
        tracing::info!(path = %path.display(), %name, ?style, n_ctx, "embedded model loaded");
        Ok(Self(Arc::new(Inner {
            model,
            path: path.to_path_buf(),
            name,
            style,
            opts,
            n_ctx,
            key,
            slots: Mutex::new(Vec::new()),
        })))
    }

    pub fn name(&self) -> &str {
        &self.0.name
    }

    pub fn style(&self) -> &PromptStyle {
        &self.0.style
    }

    /// The underlying model (benches compare against raw decode loops).
    pub fn model(&self) -> &LlamaModel {
        self.0.model
    }

    /// Whether llama.cpp accepts `gbnf` (with root rule `root`) for this
    /// model's vocabulary.
    pub fn check_grammar(&self, gbnf: &str) -> Result<()> {
        LlamaSampler::grammar(self.0.model, gbnf, "root")
            .map(drop)
            .map_err(|e| ModelError::embedded("grammar refused", e))
    }

    /// Whether tools go through the template's own (Hermes) markup.
    fn hermes(&self) -> bool {
        matches!(&self.0.style, PromptStyle::Chat(t) if t.hermes())
    }

    /// The prompt for `req`, `skip` oldest non-system messages left out
    /// (to fit the context).
    fn render_parts(&self, req: &ChatRequest, skip: usize) -> Result<Rendered> {
        let template = match &self.0.style {
            PromptStyle::Completion => {
                return Ok(Rendered {
                    text: prompt::completion_prompt(req, skip),
                    prefix: None,
                });
            }
            PromptStyle::Chat(t) => t,
        };
        let hermes = template.hermes();
        // The template declares tools itself, or the JSON protocol does in
        // the system text.
        let system = if hermes {
            req.messages
                .iter()
                .filter(|m| m.role == Role::System)
                .map(|m| m.content.as_str())
                .collect::<Vec<_>>()
                .join("\n\n")
        } else {
            prompt::system_text(req)
        };
        let mut messages = Vec::new();
        if !system.is_empty() {
            messages.push(Message::system(system));
        }
        for m in req
            .messages
            .iter()
            .filter(|m| m.role != Role::System)
            .skip(skip)
        {
            messages.push(if hermes {
                m.clone()
            } else {
                prompt::as_plain_turn(m)
            });
        }
        // Declared compactly: what the grammar enforces anyway (bounds,
        // closed objects) costs prompt tokens and tells the model nothing.
        let compact: Vec<crate::ToolSpec> = if hermes {
            req.tools
                .iter()
                .map(|t| crate::ToolSpec {
                    parameters: crate::grammar::declared(&t.parameters).into(),
                    ..t.clone()
                })
                .collect()
        } else {
            Vec::new()
        };
        let tools = &compact[..];
        let err = ModelError::embedded_msg;
        let text = template.render(&messages, tools, true).map_err(err)?;
        let prefix = match messages.first() {
            Some(m) if m.role == Role::System => template
                .render(&messages[..1], tools, false)
                .ok()
                .filter(|p| text.starts_with(p.as_str())),
            _ => None,
        };
        Ok(Rendered { text, prefix })
    }

    /// The grammar constraining the reply, if the request needs one.
    pub fn grammar(&self, req: &ChatRequest) -> Result<Option<String>> {
        let bounds = Bounds {
            max_string: 2048,
            max_items: 16,
            loose: matches!(self.0.style, PromptStyle::Chat(_)),
        };
        let err = |e: crate::grammar::GrammarError| ModelError::embedded("the reply grammar", e);
        if !self.hermes() {
            return prompt::grammar(req, bounds).map_err(err);
        }
        if req.tools.is_empty() {
            return req
                .format
                .as_ref()
                .map(|f| schema_to_gbnf(f, bounds))
                .transpose()
                .map_err(err);
        }
        let markup: Vec<(String, String)> = req
            .callable()
            .map(|t| crate::template::hermes_call_gbnf(&t.name))
            .collect();
        let mut alts: Vec<Alt<'_>> = req
            .callable()
            .zip(&markup)
            .map(|(t, (before, after))| Alt::Wrapped(before, &t.parameters, after))
            .collect();
        match (&req.format, req.tool_choice) {
            (Some(f), _) => alts.push(Alt::Schema(f)),
            (None, crate::ToolChoice::Auto) => alts.push(Alt::Text),
            (None, crate::ToolChoice::Required) => {}
        }
        alternatives_to_gbnf(&alts, bounds).map(Some).map_err(err)
    }

    /// Turns the reply text into content and tool calls.
    fn interpret(&self, req: &ChatRequest, text: &str) -> (String, Vec<crate::ToolCall>) {
        if self.hermes() {
            if req.tools.is_empty() {
                return (text.trim().to_owned(), Vec::new());
            }
            let names: Vec<&str> = req.tools.iter().map(|t| t.name.as_str()).collect();
            return crate::template::parse_hermes_calls(text, &names);
        }
        prompt::interpret(req, text)
    }

    fn tokenize(&self, text: &str) -> Vec<LlamaToken> {
        let vocab = self.0.model.vocab();
        let parse_special = matches!(self.0.style, PromptStyle::Chat(_));
        // A template that writes the BOS itself gets none added.
        let bos =
            String::from_utf8_lossy(&vocab.token_to_piece(vocab.bos(), true, None)).into_owned();
        let add_bos = !(parse_special && !bos.is_empty() && text.starts_with(&bos));
        vocab.tokenize(text.as_bytes(), add_bos, parse_special)
    }

    fn new_slot(&self) -> Result<Slot> {
        let threads = i32::try_from(self.0.opts.threads.max(1)).unwrap_or(2);
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(self.0.n_ctx))
            .with_n_batch(N_BATCH)
            .with_n_ubatch(N_BATCH)
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        let ctx = self
            .0
            .model
            .new_context(llama_backend()?, params)
            .map_err(|e| ModelError::embedded("creating a context", e))?;
        Ok(Slot {
            ctx,
            tokens: Vec::new(),
            used: Instant::now(),
        })
    }

    /// The slot to use for `tokens` (taken out of the pool): the one with
    /// the longest common prefix, else a new one, else the least recently
    /// used.
    fn take_slot(&self, tokens: &[LlamaToken]) -> Result<Slot> {
        let mut slots = self.0.slots.lock().unwrap_or_else(|p| p.into_inner());
        let best = slots
            .iter()
            .enumerate()
            .map(|(i, s)| (common_prefix(&s.tokens, tokens), i))
            .max();
        match best {
            // A slot sharing more than a turn's opening words.
            Some((lcp, i)) if lcp >= 16 => Ok(slots.swap_remove(i)),
            _ if slots.len() < self.0.opts.cache_slots.max(1) as usize => {
                drop(slots);
                self.new_slot()
            }
            _ => {
                let i = slots
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, s)| s.used)
                    .map_or(0, |(i, _)| i);
                Ok(slots.swap_remove(i))
            }
        }
    }

    fn put_slot(&self, mut slot: Slot) {
        slot.used = Instant::now();
        let mut slots = self.0.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.push(slot);
    }

    /// The file holding the KV state of `prefix`, under the prompt cache.
    fn prefix_file(&self, prefix: &[LlamaToken]) -> Option<PathBuf> {
        let dir = self.0.opts.prompt_cache.as_ref()?.join(&self.0.key);
        let mut h = Sha256::new();
        for t in prefix {
            h.update(t.0.to_le_bytes());
        }
        Some(dir.join(format!("{}.kv", hex::encode(&h.finalize()[..16]))))
    }

    /// Decodes `tokens[from..]` into the slot (logits for the last one).
    fn decode_into(slot: &mut Slot, tokens: &[LlamaToken], from: usize) -> Result<()> {
        let decode_err = |e: llama_cpp_2::DecodeError| ModelError::embedded("decode", e);
        let batch_err =
            |e: llama_cpp_2::llama_batch::BatchAddError| ModelError::embedded("batch", e);
        let mut batch = LlamaBatch::new(N_BATCH as usize, 1);
        let last = tokens.len().saturating_sub(1);
        let mut i = from;
        while i < tokens.len() {
            batch.clear();
            let end = (i + N_BATCH as usize).min(tokens.len());
            for (p, t) in tokens.iter().enumerate().take(end).skip(i) {
                batch
                    .add(*t, p as i32, &[0], p == last)
                    .map_err(batch_err)?;
            }
            slot.ctx.decode(&mut batch).map_err(decode_err)?;
            slot.tokens.extend_from_slice(&tokens[i..end]);
            i = end;
        }
        Ok(())
    }

    /// Makes the slot hold `tokens`, evaluating only what it does not
    /// hold already (the last token always, for its logits). A prompt whose
    /// first turn the slot does not hold starts from that turn's state on
    /// disk, or evaluates it and saves it there. Returns how many tokens
    /// were evaluated.
    fn prepare(
        &self,
        slot: &mut Slot,
        tokens: &[LlamaToken],
        prefix: Option<&str>,
    ) -> Result<usize> {
        let keep = common_prefix(&slot.tokens, tokens).min(tokens.len().saturating_sub(1));
        let disk = prefix.and_then(|p| {
            let ptoks = self.tokenize(p);
            let usable = ptoks.len() >= MIN_DISK_PREFIX
                && ptoks.len() < tokens.len()
                && tokens.starts_with(&ptoks)
                && keep < ptoks.len();
            usable
                .then(|| self.prefix_file(&ptoks).map(|f| (ptoks, f)))
                .flatten()
        });
        let mut reused = keep;
        match disk {
            Some((ptoks, file)) => {
                slot.ctx.clear_kv_cache();
                slot.tokens.clear();
                reused = 0;
                if file.is_file() {
                    match slot.ctx.state_seq_load_file(&file, 0, ptoks.len() + 1) {
                        Ok((loaded, _)) if loaded == ptoks => {
                            slot.tokens = loaded;
                            reused = ptoks.len();
                            let _ = filetime_touch(&file);
                        }
                        Ok(_) | Err(_) => {
                            tracing::warn!(file = %file.display(), "a prompt cache file did not match; ignored");
                            slot.ctx.clear_kv_cache();
                            slot.tokens.clear();
                            let _ = std::fs::remove_file(&file);
                        }
                    }
                }
                if slot.tokens.is_empty() {
                    Self::decode_into(slot, &ptoks, 0)?;
                    self.save_prefix(slot, &file);
                }
            }
            None if keep < slot.tokens.len() => {
                let cleared = slot
                    .ctx
                    .clear_kv_cache_seq(Some(0), Some(keep as u32), None)
                    .unwrap_or(false);
                if cleared {
                    slot.tokens.truncate(keep);
                } else {
                    slot.ctx.clear_kv_cache();
                    slot.tokens.clear();
                    reused = 0;
                }
            }
            None => {}
        }
        let from = slot.tokens.len();
        Self::decode_into(slot, tokens, from)?;
        Ok(tokens.len() - reused)
    }

    fn save_prefix(&self, slot: &Slot, file: &Path) {
        let Some(dir) = file.parent() else { return };
        if std::fs::create_dir_all(dir).is_err() {
            return;
        }
        // Written aside, then renamed: a reader never sees half a file.
        let tmp = file.with_extension(format!("tmp{}", std::process::id()));
        match slot.ctx.state_seq_save_file(&tmp, 0, &slot.tokens) {
            Ok(_) => {
                let _ = std::fs::rename(&tmp, file);
            }
            Err(e) => {
                tracing::warn!(file = %file.display(), "saving the prompt cache: {e}");
                let _ = std::fs::remove_file(&tmp);
            }
        }
        prune_prefix_files(dir);
    }

    /// Runs one request to completion on this thread.
    fn generate(&self, req: &ChatRequest, on_piece: &dyn Fn(&str)) -> Result<ChatReply> {
        let started = Instant::now();
        let inner = &*self.0;
        let model = inner.model;
        let vocab = model.vocab();
        let n_ctx = inner.n_ctx;
        let json = !req.tools.is_empty() || req.format.is_some();
        let max_new = req
            .options
            .num_predict
            .unwrap_or(if json {
                DEFAULT_PREDICT_JSON
            } else {
                DEFAULT_PREDICT_TEXT
            })
            .clamp(1, n_ctx / 2);
        let grammar = self.grammar(req)?;

        // Fit the prompt: drop the oldest non-system messages if needed.
        let non_system = req
            .messages
            .iter()
            .filter(|m| m.role != Role::System)
            .count();
        let mut skip = 0;
        let (tokens, prefix) = loop {
            let rendered = self.render_parts(req, skip)?;
            let tokens = self.tokenize(&rendered.text);
            tracing::trace!(target: "camina::prompt", tokens = tokens.len(), "prompt:\n{}", rendered.text);
            if tokens.len() as u32 + max_new <= n_ctx {
                break (tokens, rendered.prefix);
            }
            if skip + 1 >= non_system {
                return Err(ModelError::embedded_msg(format!(
                    "the prompt needs {} tokens but the embedded context holds {n_ctx} (with {max_new} \
                     reserved for the reply); raise [embedded] n_ctx",
                    tokens.len()
                )));
            }
            skip += 1;
        };
        if skip > 0 {
            tracing::warn!(
                dropped = skip,
                "embedded: oldest messages dropped to fit the context"
            );
        }

        // One decode at a time (see the module docs).
        static DECODE: Mutex<()> = Mutex::new(());
        let _serial = DECODE.lock().unwrap_or_else(|p| p.into_inner());
        let mut slot = self.take_slot(&tokens)?;
        let evaluated = match self.prepare(&mut slot, &tokens, prefix.as_deref()) {
            Ok(n) => n,
            Err(e) => {
                // The slot's cache is in an unknown state: not reused.
                return Err(e);
            }
        };
        let prompt_done = Instant::now();

        let completion = matches!(inner.style, PromptStyle::Completion);
        let mut picker = Picker::new(model, grammar.as_deref(), &req.options, completion)?;
        let mut out: Vec<u8> = Vec::new();
        let mut emitted = 0usize;
        // A JSON reply cannot contain a turn heading (its strings escape
        // newlines), so watching for one only ever stops free text.
        let hold = if completion {
            prompt::TURN.len() - 1
        } else {
            0
        };
        let mut generated = 0u32;
        let mut done_reason = "length";
        let mut batch = LlamaBatch::new(1, 1);
        let mut failure = None;
        while generated < max_new {
            let token = picker.pick(&slot.ctx, -1);
            if vocab.is_eog(token) {
                done_reason = "stop";
                break;
            }
            generated += 1;
            vocab.token_to_piece_into(token, &mut out, !completion, None);
            // Free text stops where the model starts another turn.
            if completion && let Some(pos) = find(&out, prompt::TURN.as_bytes()) {
                out.truncate(pos);
                done_reason = "stop";
                break;
            }
            emitted += emit(&out[emitted..], hold, on_piece);
            if slot.tokens.len() as u32 >= n_ctx {
                break;
            }
            batch.clear();
            let pos = slot.tokens.len() as i32;
            if let Err(e) = batch.add(token, pos, &[0], true) {
                failure = Some(ModelError::embedded("batch", e));
                break;
            }
            if let Err(e) = slot.ctx.decode(&mut batch) {
                failure = Some(ModelError::embedded("decode", e));
                break;
            }
            slot.tokens.push(token);
        }
        match failure {
            Some(e) => return Err(e),
            None => self.put_slot(slot),
        }
        if emitted < out.len() {
            emit(&out[emitted..], 0, on_piece);
        }
        let finished = Instant::now();
        let text = String::from_utf8_lossy(&out).into_owned();
        let (content, tool_calls) = self.interpret(req, &text);
        Ok(ChatReply {
            message: Message {
                role: Role::Assistant,
                content,
                thinking: None,
                tool_calls,
                tool_name: None,
            },
            backend: crate::Backend::Embedded,
            model: inner.name.clone(),
            model_digest: None,
            done_reason: Some(done_reason.into()),
            prompt_tokens: tokens.len() as u32,
            prompt_eval_tokens: Some(evaluated as u32),
            completion_tokens: generated,
            timing: Timing {
                total_ms: (finished - started).as_secs_f64() * 1e3,
                prompt_ms: (prompt_done - started).as_secs_f64() * 1e3,
                generation_ms: (finished - prompt_done).as_secs_f64() * 1e3,
            },
        })
    }
}

fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Marks a prefix file as recently used (pruning removes the oldest).
fn filetime_touch(file: &Path) -> std::io::Result<()> {
    std::fs::File::options()
        .append(true)
        .open(file)?
        .set_modified(std::time::SystemTime::now())
}

/// Keeps the newest [`MAX_DISK_PREFIXES`] prefix files of a model.
fn prune_prefix_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "kv"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if files.len() <= MAX_DISK_PREFIXES {
        return;
    }
    files.sort();
    for (_, f) in &files[..files.len() - MAX_DISK_PREFIXES] {
        let _ = std::fs::remove_file(f);
    }
}

#[async_trait::async_trait]
impl ChatBackend for EmbeddedBackend {
    fn kind(&self) -> crate::Backend {
        crate::Backend::Embedded
    }

    #[tracing::instrument(name = "model.embedded", skip_all, fields(model = %self.0.name))]
    async fn chat(
        &self,
        _model: &str,
        request: &ChatRequest,
        progress: Option<Progress<'_>>,
    ) -> Result<ChatReply> {
        if request.think {
            return Err(ModelError::ThinkingUnsupported {
                model: self.0.name.clone(),
                message: "embedded models have no separate thinking output".into(),
            });
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let this = self.clone();
        let req = request.clone();
        let job = tokio::task::spawn_blocking(move || {
            this.generate(&req, &|piece: &str| {
                let _ = tx.send(piece.to_owned());
            })
        });
        while let Some(piece) = rx.recv().await {
            if let Some(p) = progress {
                p(&piece, "");
            }
        }
        job.await
            .map_err(|e| ModelError::embedded("the decode thread", e))?
    }
}
