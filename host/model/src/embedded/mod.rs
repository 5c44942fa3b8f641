//! llama.cpp in-process (`llama-cpp-2`): everything runs with no server.
//!
//! One model is loaded per file per process and shared by every role; each
//! call gets its own context. Decoding is greedy by default (so the same
//! request gives the same reply) and, whenever tools or a JSON format are
//! requested, grammar-constrained (see [`crate::grammar`]), so the reply
//! always parses. Calls are serialised: on a small machine two decodes at
//! once only make both slower.
//!
//! Not here: thinking (an embedded model has no separate reasoning channel;
//! the bridge refuses `think` for it) and GPU offload.

pub mod copy;
pub mod prompt;

use crate::grammar::Bounds;
use crate::{
    ChatBackend, ChatReply, ChatRequest, Message, ModelError, Progress, Result, Role, Timing,
};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

/// Tunables of the embedded backend.
#[derive(Debug, Clone, Copy)]
pub struct EmbeddedOptions {
    pub threads: u32,
    /// Context size per call (capped at the model's training context).
    pub n_ctx: u32,
    /// Bias JSON strings towards copying the request's evidence
    /// (see [`copy`]).
    pub copy_evidence: bool,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            threads: 2,
            n_ctx: 4096,
            copy_evidence: true,
        }
    }
}

/// Default and largest number of generated tokens.
const DEFAULT_PREDICT_JSON: u32 = 512;
const DEFAULT_PREDICT_TEXT: u32 = 256;

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
        .map_err(|e| ModelError::Embedded(format!("initialising llama.cpp: {e}")))
}

/// llama.cpp's context creation is not safe to run concurrently on one
/// model (it adjusts the model's parameters); decoding is serialised too.
static DECODE: Mutex<()> = Mutex::new(());

/// How prompts are built for a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromptStyle {
    /// Through the model's chat template.
    Chat(String),
    /// A completion transcript (base models).
    Completion,
}

struct Inner {
    model: LlamaModel,
    path: PathBuf,
    name: String,
    style: PromptStyle,
    opts: EmbeddedOptions,
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
        let backend = llama_backend()?;
        let params = LlamaModelParams::default().with_n_gpu_layers(0);
        let model = LlamaModel::load_from_file(backend, path, &params).map_err(|e| {
            ModelError::Embedded(format!(
                "{}: llama.cpp cannot load it ({e}); is the file complete?",
                path.display()
            ))
        })?;
        let name = model.meta_val_str("general.name").unwrap_or_else(|_| {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        let style = match model.chat_template(None) {
            Ok(t) if looks_instruction_tuned(&model) => {
                PromptStyle::Chat(t.to_string().unwrap_or_else(|_| "chatml".into()))
            }
            _ => PromptStyle::Completion,
        };
        tracing::info!(path = %path.display(), %name, ?style, "embedded model loaded");
        Ok(Self(Arc::new(Inner {
            model,
            path: path.to_path_buf(),
            name,
            style,
            opts,
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
        &self.0.model
    }

    /// Whether llama.cpp accepts `gbnf` (with root rule `root`) for this
    /// model's vocabulary.
    pub fn check_grammar(&self, gbnf: &str) -> Result<()> {
        LlamaSampler::grammar(&self.0.model, gbnf, "root")
            .map(drop)
            .map_err(|e| ModelError::Embedded(format!("grammar refused: {e}")))
    }

    fn render(&self, req: &ChatRequest, skip: usize) -> Result<String> {
        match &self.0.style {
            PromptStyle::Completion => Ok(prompt::completion_prompt(req, skip)),
            PromptStyle::Chat(name) => {
                let tmpl = LlamaChatTemplate::new(name)
                    .map_err(|e| ModelError::Embedded(e.to_string()))?;
                let turns = prompt::chat_turns(req, skip)
                    .into_iter()
                    .map(|(r, c)| LlamaChatMessage::new(r, c))
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| ModelError::Embedded(format!("chat message: {e}")))?;
                match self.0.model.apply_chat_template(&tmpl, &turns, true) {
                    Ok(p) => Ok(p),
                    // llama.cpp only knows built-in templates; fall back.
                    Err(_) => Ok(prompt::completion_prompt(req, skip)),
                }
            }
        }
    }

    /// Runs one request to completion on this thread.
    fn generate(&self, req: &ChatRequest, on_piece: &dyn Fn(&str)) -> Result<ChatReply> {
        let started = Instant::now();
        let inner = &*self.0;
        let model = &inner.model;
        let vocab = model.vocab();
        let n_ctx = inner.opts.n_ctx.min(model.n_ctx_train()).max(256);
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
        let bounds = Bounds {
            max_string: 1024,
            max_items: 8,
        };
        let grammar =
            prompt::grammar(req, bounds).map_err(|e| ModelError::Embedded(e.to_string()))?;
        let parse_special = matches!(inner.style, PromptStyle::Chat(_));

        // Fit the prompt: drop the oldest non-system messages if needed.
        let non_system = req
            .messages
            .iter()
            .filter(|m| m.role != Role::System)
            .count();
        let mut skip = 0;
        let tokens = loop {
            let text = self.render(req, skip)?;
            let tokens = vocab.tokenize(text.as_bytes(), true, parse_special);
            if tokens.len() as u32 + max_new <= n_ctx {
                break tokens;
            }
            if skip + 1 >= non_system {
                return Err(ModelError::Embedded(format!(
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

        let _serial = DECODE.lock().unwrap_or_else(|p| p.into_inner());
        let threads = i32::try_from(inner.opts.threads.max(1)).unwrap_or(2);
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx))
            .with_n_batch(n_ctx)
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        let mut ctx = model
            .new_context(llama_backend()?, params)
            .map_err(|e| ModelError::Embedded(format!("creating a context: {e}")))?;

        let decode_err = |e: llama_cpp_2::DecodeError| ModelError::Embedded(format!("decode: {e}"));
        let batch_err = |e: llama_cpp_2::llama_batch::BatchAddError| {
            ModelError::Embedded(format!("batch: {e}"))
        };
        let mut batch = LlamaBatch::new(n_ctx as usize, 1);
        let last = tokens.len() as i32 - 1;
        for (i, t) in (0_i32..).zip(tokens.iter().copied()) {
            batch.add(t, i, &[0], i == last).map_err(batch_err)?;
        }
        ctx.decode(&mut batch).map_err(decode_err)?;
        let prompt_done = Instant::now();

        let mut picker = Picker::new(model, grammar.as_deref(), &req.options)?;
        if inner.opts.copy_evidence && grammar.is_some() {
            picker.copier = copy::Copier::for_request(req);
        }
        let mut out: Vec<u8> = Vec::new();
        let mut emitted = 0usize;
        // A JSON reply cannot contain a turn heading (its strings escape
        // newlines), so watching for one only ever stops free text.
        let watch_turns = matches!(inner.style, PromptStyle::Completion);
        let hold = if watch_turns {
            prompt::TURN.len() - 1
        } else {
            0
        };
        let mut n_cur = batch.n_tokens();
        let mut generated = 0u32;
        let mut done_reason = "length";
        while generated < max_new {
            let token = picker.pick(&ctx, batch.n_tokens() - 1);
            if vocab.is_eog(token) {
                done_reason = "stop";
                break;
            }
            generated += 1;
            vocab.token_to_piece_into(token, &mut out, false, None);
            // Free text stops where the model starts another turn.
            if watch_turns && let Some(pos) = find(&out, prompt::TURN.as_bytes()) {
                out.truncate(pos);
                done_reason = "stop";
                break;
            }
            // Hand out what is valid UTF-8 and cannot be the start of a turn
            // heading.
            emitted += emit(&out[emitted..], hold, on_piece);
            if n_cur >= n_ctx as i32 {
                break;
            }
            batch.clear();
            batch.add(token, n_cur, &[0], true).map_err(batch_err)?;
            n_cur += 1;
            ctx.decode(&mut batch).map_err(decode_err)?;
        }
        if emitted < out.len() {
            emit(&out[emitted..], 0, on_piece);
        }
        let finished = Instant::now();
        let text = String::from_utf8_lossy(&out).into_owned();
        let (content, tool_calls) = prompt::interpret(req, &text);
        Ok(ChatReply {
            message: Message {
                role: Role::Assistant,
                content,
                thinking: None,
                tool_calls,
                tool_name: None,
            },
            backend: "embedded".into(),
            model: inner.name.clone(),
            model_digest: None,
            done_reason: Some(done_reason.into()),
            prompt_tokens: tokens.len() as u32,
            completion_tokens: generated,
            timing: Timing {
                total_ms: (finished - started).as_secs_f64() * 1e3,
                prompt_ms: (prompt_done - started).as_secs_f64() * 1e3,
                generation_ms: (finished - prompt_done).as_secs_f64() * 1e3,
            },
        })
    }
}

/// Passes the valid UTF-8 prefix of `pending`, minus its last `hold` bytes,
/// to `on_piece`; returns how many bytes were passed.
fn emit(pending: &[u8], hold: usize, on_piece: &dyn Fn(&str)) -> usize {
    let valid = match std::str::from_utf8(pending) {
        Ok(s) => s,
        Err(e) => std::str::from_utf8(&pending[..e.valid_up_to()]).unwrap_or_default(),
    };
    let mut end = valid.len().saturating_sub(hold);
    while !valid.is_char_boundary(end) {
        end -= 1;
    }
    if end > 0 {
        on_piece(&valid[..end]);
    }
    end
}

/// Chooses each next token: greedy (or seeded sampling when a temperature
/// is set), a mild repetition penalty against degenerate loops, and the
/// grammar. The grammar is checked on the unconstrained choice first and
/// applied to the whole vocabulary only when that choice is not allowed —
/// llama.cpp's own optimisation, which matters with a 262k-token vocabulary.
struct Picker<'m> {
    model: &'m LlamaModel,
    grammar: Option<LlamaSampler>,
    sampler: Option<LlamaSampler>,
    recent: std::collections::VecDeque<LlamaToken>,
    pieces: std::collections::HashMap<LlamaToken, PieceTraits>,
    /// Whether the reply is JSON (its first character is `{`); free text
    /// keeps the penalty's whole window.
    json_reply: Option<bool>,
    copier: Option<copy::Copier>,
}

/// What the picker knows of a token's text.
#[derive(Debug, Clone)]
struct PieceTraits {
    /// The text (lossy UTF-8: a byte token is U+FFFD).
    text: String,
    /// Contains JSON punctuation.
    structural: bool,
    /// Contains `"` (a JSON string starts or ends).
    quote: bool,
    /// Its first non-blank byte.
    first: Option<u8>,
}

const PENALTY: f32 = 1.15;
const PENALTY_WINDOW: usize = 64;

impl<'m> Picker<'m> {
    fn new(model: &'m LlamaModel, grammar: Option<&str>, options: &crate::Options) -> Result<Self> {
        let grammar = grammar
            .map(|g| {
                LlamaSampler::grammar(model, g, "root").map_err(|e| {
                    ModelError::Embedded(format!("the reply grammar was refused by llama.cpp: {e}"))
                })
            })
            .transpose()?;
        let sampler = match options.temperature {
            Some(t) if t > 0.0 => Some(LlamaSampler::chain_simple([
                LlamaSampler::temp(t),
                LlamaSampler::dist(options.seed.unwrap_or(42) as u32),
            ])),
            _ => None,
        };
        Ok(Self {
            model,
            grammar,
            sampler,
            recent: std::collections::VecDeque::new(),
            pieces: std::collections::HashMap::new(),
            json_reply: None,
            copier: None,
        })
    }

    /// What the picker needs to know of a token's text (cached: the
    /// vocabulary has 262k tokens, a reply uses a few hundred).
    fn traits(&mut self, t: LlamaToken) -> &PieceTraits {
        let model = self.model;
        self.pieces.entry(t).or_insert_with(|| {
            let piece = model.vocab().token_to_piece(t, false, None);
            PieceTraits {
                text: String::from_utf8_lossy(&piece).into_owned(),
                structural: piece
                    .iter()
                    .any(|b| matches!(b, b'"' | b'{' | b'}' | b'[' | b']' | b',' | b':')),
                quote: piece.contains(&b'"'),
                first: piece.iter().copied().find(|b| !b.is_ascii_whitespace()),
            }
        })
    }

    fn text(&mut self, t: LlamaToken) -> &str {
        &self.traits(t).text
    }

    /// Adds the copy bonus to the token that continues the evidence line
    /// being copied: the longest of the continuation's own first token and
    /// the model's top choices that are a prefix of it. A line that already
    /// is a whole evidence string is not pushed on to a longer one when the
    /// model would end the string there.
    fn copy_bonus(&mut self, logits: &mut [f32]) {
        let Some(copier) = &self.copier else {
            return;
        };
        let Some(cont) = copier.continuation().map(str::to_owned) else {
            return;
        };
        // A whole evidence string the model would end is left to end;
        // a line break to the next item of a list it is copying is not (a
        // 270M model stops lists after their first item).
        let whole = copier.line_is_whole() && cont != "\\n";
        // The model's top choices, in one pass.
        const K: usize = 16;
        let mut top: Vec<(f32, usize)> = Vec::with_capacity(K + 1);
        for (i, &l) in logits.iter().enumerate() {
            if top.len() < K || l > top[K - 1].0 {
                let at = top.partition_point(|&(t, _)| t >= l);
                top.insert(at, (l, i));
                top.truncate(K);
            }
        }
        if whole
            && let Some(&(_, best)) = top.first()
            && self.text(LlamaToken(best as i32)).starts_with('"')
        {
            return;
        }
        // The first token of the continuation, from its first 64 bytes.
        let mut head = cont.len().min(64);
        while !cont.is_char_boundary(head) {
            head -= 1;
        }
        let mut boost: Vec<LlamaToken> = self
            .model
            .vocab()
            .tokenize(&cont.as_bytes()[..head], false, false)
            .into_iter()
            .take(1)
            .collect();
        boost.extend(top.iter().map(|&(_, i)| LlamaToken(i as i32)));
        let mut best: Option<(usize, LlamaToken)> = None;
        for t in boost {
            let piece = self.text(t);
            if !piece.is_empty()
                && !piece.contains('\u{fffd}')
                && cont.starts_with(piece)
                && best.is_none_or(|(len, _)| piece.len() > len)
            {
                best = Some((piece.len(), t));
            }
        }
        // Only the longest: a shorter prefix (a bare space before a word)
        // leaves the rest to a token the model never writes there.
        if let Some((_, t)) = best
            && let Some(l) = usize::try_from(t.0).ok().and_then(|i| logits.get_mut(i))
        {
            *l += copy::BONUS;
        }
    }

    fn choose(&mut self, arr: &mut LlamaTokenDataArray) -> Option<LlamaToken> {
        if let Some(s) = &mut self.sampler {
            arr.apply_sampler(s);
            return arr.selected_token();
        }
        arr.data
            .iter()
            .filter(|d| d.logit().is_finite())
            .max_by(|a, b| a.logit().total_cmp(&b.logit()))
            .map(LlamaTokenData::id)
    }

    fn pick(&mut self, ctx: &llama_cpp_2::context::LlamaContext<'_>, idx: i32) -> LlamaToken {
        let mut logits = ctx.get_logits_ith(idx).to_vec();
        let recent: Vec<LlamaToken> = self.recent.iter().copied().collect();
        for t in recent {
            // JSON punctuation is never penalised: the grammar needs it.
            if !self.traits(t).structural
                && let Some(l) = usize::try_from(t.0).ok().and_then(|i| logits.get_mut(i))
            {
                *l = if *l > 0.0 { *l / PENALTY } else { *l * PENALTY };
            }
        }
        if self.json_reply == Some(true) {
            self.copy_bonus(&mut logits);
        }
        let all = |logits: &[f32]| {
            LlamaTokenDataArray::new(
                logits
                    .iter()
                    .enumerate()
                    .map(|(i, &l)| LlamaTokenData::new(LlamaToken(i as i32), l, 0.0))
                    .collect(),
                false,
            )
        };
        let mut full = all(&logits);
        let first = self.choose(&mut full).unwrap_or(LlamaToken(0));
        let token = match &mut self.grammar {
            None => first,
            Some(g) => {
                let logit = usize::try_from(first.0)
                    .ok()
                    .and_then(|i| logits.get(i))
                    .copied()
                    .unwrap_or(0.0);
                let mut one =
                    LlamaTokenDataArray::new(vec![LlamaTokenData::new(first, logit, 0.0)], false);
                g.apply(&mut one);
                let allowed = one.data.first().is_some_and(|d| d.logit().is_finite());
                let token = if allowed {
                    first
                } else {
                    let mut constrained = all(&logits);
                    g.apply(&mut constrained);
                    self.choose(&mut constrained).unwrap_or(first)
                };
                if let Some(g) = &mut self.grammar {
                    g.accept(token);
                }
                token
            }
        };
        // In a constrained (JSON) reply the penalty covers the current
        // string only: it stops a value looping (`src/src/src…`) without
        // stopping the next value from reusing a word (a pattern `TODO`,
        // then a file `todo.md`).
        let (first, quote) = {
            let t = self.traits(token);
            (t.first, t.quote)
        };
        if self.json_reply.is_none() {
            self.json_reply = first.map(|b| b == b'{');
        }
        if self.grammar.is_some() && self.json_reply == Some(true) && quote {
            self.recent.clear();
        }
        if let (Some(c), Some(p)) = (&mut self.copier, self.pieces.get(&token)) {
            c.push(&p.text);
        }
        self.recent.push_back(token);
        if self.recent.len() > PENALTY_WINDOW {
            self.recent.pop_front();
        }
        token
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[async_trait::async_trait]
impl ChatBackend for EmbeddedBackend {
    fn kind(&self) -> &'static str {
        "embedded"
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
            .map_err(|e| ModelError::Embedded(format!("the decode thread failed: {e}")))?
    }
}
