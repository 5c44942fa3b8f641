//! Choosing tokens: the picker (greedy or seeded sampling, the grammar,
//! the repetition penalty of base models) and passing finished UTF-8 text
//! on as it streams.

use super::*;

/// Passes the valid UTF-8 prefix of `pending`, minus its last `hold` bytes,
/// to `on_piece`; returns how many bytes were passed.
pub(super) fn emit(pending: &[u8], hold: usize, on_piece: &dyn Fn(&str)) -> usize {
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
/// is set) and the grammar. The grammar is checked on the unconstrained
/// choice first and applied to the whole vocabulary only when that choice
/// is not allowed — llama.cpp's own optimisation, which matters with a
/// 150k-token vocabulary. A base model (completion prompts) also gets a
/// mild repetition penalty against degenerate loops; instruction-tuned
/// models do not need it, and it would stop them copying text verbatim.
pub(super) struct Picker<'m> {
    model: &'m LlamaModel,
    grammar: Option<LlamaSampler>,
    sampler: Option<LlamaSampler>,
    penalise: bool,
    recent: std::collections::VecDeque<LlamaToken>,
    /// Whether a token's text holds JSON punctuation (never penalised).
    structural: HashMap<LlamaToken, bool>,
}

const PENALTY: f32 = 1.15;
const PENALTY_WINDOW: usize = 64;

impl<'m> Picker<'m> {
    pub(super) fn new(
        model: &'m LlamaModel,
        grammar: Option<&str>,
        options: &crate::Options,
        penalise: bool,
    ) -> Result<Self> {
        let grammar = grammar
            .map(|g| {
                LlamaSampler::grammar(model, g, "root").map_err(|e| {
                    ModelError::embedded("the reply grammar was refused by llama.cpp", e)
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
            penalise,
            recent: std::collections::VecDeque::new(),
            structural: HashMap::new(),
        })
    }

    fn is_structural(&mut self, t: LlamaToken) -> bool {
        let model = self.model;
        *self.structural.entry(t).or_insert_with(|| {
            model
                .vocab()
                .token_to_piece(t, false, None)
                .iter()
                .any(|b| matches!(b, b'"' | b'{' | b'}' | b'[' | b']' | b',' | b':'))
        })
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

    pub(super) fn pick(&mut self, ctx: &LlamaContext<'_>, idx: i32) -> LlamaToken {
        let mut logits = ctx.get_logits_ith(idx).to_vec();
        if self.penalise {
            let recent: Vec<LlamaToken> = self.recent.iter().copied().collect();
            for t in recent {
                if !self.is_structural(t)
                    && let Some(l) = usize::try_from(t.0).ok().and_then(|i| logits.get_mut(i))
                {
                    *l = if *l > 0.0 { *l / PENALTY } else { *l * PENALTY };
                }
            }
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
        if self.penalise {
            self.recent.push_back(token);
            if self.recent.len() > PENALTY_WINDOW {
                self.recent.pop_front();
            }
        }
        token
    }
}

pub(super) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
