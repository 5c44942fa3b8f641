//! Model bridge benches:
//! - P6: embedded generation (and prompt) tokens/s through the backend,
//!   against llama.cpp's raw decode loop (llama-cpp-2, same GGUF, same
//!   prompt tokens, greedy) in the same run;
//! - bridge overhead per call against the fake Ollama server (median µs),
//!   against a bare HTTP POST of the same body to the same server.

use camina_bench::{Row, gguf, median, micros, report, sample};
use camina_model::embedded::{EmbeddedBackend, EmbeddedOptions};
use camina_model::{ChatBackend, ChatRequest, Message, Options};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::sampling::LlamaSampler;
use std::num::NonZeroU32;
use std::time::Instant;

const GEN_TOKENS: u32 = 64;

/// llama.cpp's own loop: decode the prompt, then greedy one token at a time.
fn raw_loop(
    backend: &EmbeddedBackend,
    tokens: &[llama_cpp_2::token::LlamaToken],
    threads: i32,
) -> (f64, f64) {
    let model = backend.model();
    let be = camina_model::embedded::llama_backend().expect("llama.cpp initialised");
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(2048))
        .with_n_batch(2048)
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    let mut ctx = model.new_context(be, params).expect("context");
    let mut batch = LlamaBatch::new(2048, 1);
    let last = tokens.len() as i32 - 1;
    for (i, t) in (0_i32..).zip(tokens.iter().copied()) {
        batch.add(t, i, &[0], i == last).expect("batch");
    }
    let t0 = Instant::now();
    ctx.decode(&mut batch).expect("decode");
    let prompt_s = t0.elapsed().as_secs_f64();
    let mut sampler = LlamaSampler::greedy();
    let t1 = Instant::now();
    let first = batch.n_tokens();
    for pos in first..first + GEN_TOKENS as i32 {
        let token = sampler.sample(&ctx, batch.n_tokens() - 1);
        batch.clear();
        batch.add(token, pos, &[0], true).expect("batch");
        ctx.decode(&mut batch).expect("decode");
    }
    let gen_s = t1.elapsed().as_secs_f64();
    (
        tokens.len() as f64 / prompt_s,
        f64::from(GEN_TOKENS) / gen_s,
    )
}

fn main() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut rows = Vec::new();

    // --- P6: embedded tokens/s vs the raw loop --------------------------
    match gguf() {
        None => eprintln!(
            "P6 skipped: no GGUF (run `cargo xtask test` or `camina model fetch --output target/models/gemma-3-270m-q4_k_m.gguf`)"
        ),
        Some(path) => {
            let threads = 2;
            let backend = EmbeddedBackend::load(
                &path,
                EmbeddedOptions {
                    threads: threads as u32,
                    n_ctx: 2048,
                    ..Default::default()
                },
            )
            .expect("load");
            let req = ChatRequest {
                messages: vec![Message::user(
                    "Write a long, detailed story about a ship that sails from Ceres to Tycho station, \
                     with every crew member named and every port described.",
                )],
                options: Options {
                    num_predict: Some(GEN_TOKENS),
                    ..Default::default()
                },
                ..Default::default()
            };
            // Warm up once, then take the best of 3 for both.
            let _ = rt.block_on(backend.chat("m", &req, None));
            let mut ours: Vec<(f64, f64)> = Vec::new();
            let mut prompt_tokens = 0;
            for _ in 0..3 {
                let r = rt.block_on(backend.chat("m", &req, None)).expect("chat");
                prompt_tokens = r.prompt_tokens;
                ours.push((
                    f64::from(r.prompt_tokens) / (r.timing.prompt_ms / 1e3),
                    f64::from(r.completion_tokens) / (r.timing.generation_ms / 1e3),
                ));
            }
            let prompt_text = camina_model::embedded::prompt::completion_prompt(&req, 0);
            let tokens = backend
                .model()
                .vocab()
                .tokenize(prompt_text.as_bytes(), true, false);
            let mut raw: Vec<(f64, f64)> = (0..3)
                .map(|_| raw_loop(&backend, &tokens, threads))
                .collect();
            let best = |v: &mut Vec<(f64, f64)>, i: usize| {
                v.iter()
                    .map(|p| if i == 0 { p.0 } else { p.1 })
                    .fold(0.0, f64::max)
            };
            let (our_gen, raw_gen) = (best(&mut ours, 1), best(&mut raw, 1));
            let (our_prompt, raw_prompt) = (best(&mut ours, 0), best(&mut raw, 0));
            rows.push(Row {
                id: "P6".into(),
                what: format!("embedded generation tok/s (Gemma 3 270M Q4_K_M, {threads} threads)"),
                measured: format!("{our_gen:.1} tok/s"),
                baseline: format!("{raw_gen:.1} tok/s (llama-cpp-2 raw greedy loop)"),
                ratio: format!("{:.2}×", our_gen / raw_gen),
                target: "≥ 0.9×".into(),
            });
            rows.push(Row {
                id: "P6b".into(),
                what: format!("embedded prompt tok/s ({prompt_tokens} tokens)"),
                measured: format!("{our_prompt:.0} tok/s"),
                baseline: format!("{raw_prompt:.0} tok/s (raw)"),
                ratio: format!("{:.2}×", our_prompt / raw_prompt),
                target: "context".into(),
            });
        }
    }

    // --- bridge overhead against the fake server -------------------------
    let fake = fake_ollama::FakeOllama::start(
        vec![fake_ollama::FakeModel::new(
            "mistral:7b",
            &["completion", "tools"],
        )],
        |_| fake_ollama::Reply::text("ok"),
    );
    let ollama =
        camina_model::ollama::OllamaBackend::new(fake.url(), std::time::Duration::from_secs(10))
            .expect("backend");
    let req = ChatRequest {
        messages: vec![Message::user("hi")],
        ..Default::default()
    };
    let body =
        camina_model::ollama::OllamaBackend::wire_request("mistral:7b", &req, false).expect("body");
    let client = reqwest::Client::new();
    let url = format!("{}/api/chat", fake.url());
    let n = 300;
    let bridge = sample(n, || {
        rt.block_on(ollama.chat("mistral:7b", &req, None))
            .expect("chat");
    });
    let bare = sample(n, || {
        rt.block_on(async {
            let r = client.post(&url).json(&body).send().await.expect("post");
            let _: serde_json::Value = r.json().await.expect("json");
        });
    });
    let (b, r) = (micros(median(&bridge)), micros(median(&bare)));
    rows.push(Row {
        id: "M1".into(),
        what: "bridge call to the fake Ollama (non-streamed), median".into(),
        measured: format!("{b:.0} µs"),
        baseline: format!("{r:.0} µs (bare reqwest POST + JSON parse)"),
        ratio: format!("{:.2}× (overhead {:.0} µs)", b / r, b - r),
        target: "context".into(),
    });
    report("model", &rows);
}
