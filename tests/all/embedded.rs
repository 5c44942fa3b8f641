//! The embedded backend (llama.cpp in process) against the real default
//! GGUF, which `cargo xtask test` fetches (`CAMINA_TEST_GGUF`).

use crate::models::*;

use camina_model::{ChatBackend, ChatRequest, Message, ModelError};
use serde_json::{Value, json};
use std::path::PathBuf;

/// The default GGUF, fetched by the test command (`cargo xtask test`).
pub fn gguf() -> PathBuf {
    let path = std::env::var_os("CAMINA_TEST_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let default = camina_model::catalogue::find(camina_model::catalogue::DEFAULT_MODEL)
                .expect("the default model is in the catalogue");
            camina_model::fetch::cached_model_path(default, &camina_model::fetch::cache_dir())
        });
    assert!(
        path.is_file(),
        "{} is missing: run the tests with `cargo xtask test`, which fetches it, or \
         `camina model fetch` first",
        path.display(),
    );
    path
}

#[cfg(feature = "embedded")]
mod backend {
    use super::*;
    use camina_model::embedded::{EmbeddedBackend, EmbeddedOptions};
    use std::sync::OnceLock;

    fn model() -> EmbeddedBackend {
        static MODEL: OnceLock<EmbeddedBackend> = OnceLock::new();
        MODEL
            .get_or_init(|| {
                EmbeddedBackend::load(
                    &gguf(),
                    EmbeddedOptions {
                        threads: 2,
                        n_ctx: 2048,
                        ..Default::default()
                    },
                )
                .unwrap()
            })
            .clone()
    }

    #[test]
    fn loading_a_missing_or_corrupt_file_is_a_clear_error() {
        let err = EmbeddedBackend::load(
            std::path::Path::new("/no/such/model.gguf"),
            EmbeddedOptions::default(),
        )
        .unwrap_err();
        assert!(
            matches!(&err, ModelError::ModelFileMissing { path, hint } if path.contains("/no/such") && hint.contains("camina model fetch")),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.gguf");
        std::fs::write(&junk, b"this is not a model").unwrap();
        let err = EmbeddedBackend::load(&junk, EmbeddedOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("junk.gguf") && err.contains("not a GGUF"),
            "{err}"
        );
        // Right magic, truncated body.
        let head = std::fs::read(gguf()).unwrap()[..4096].to_vec();
        let cut = dir.path().join("cut.gguf");
        std::fs::write(&cut, head).unwrap();
        let err = EmbeddedBackend::load(&cut, EmbeddedOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cut.gguf") && err.contains("cannot load"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn structured_output_is_schema_valid_json() {
        let schema = json!({
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 40},
                "population_millions": {"type": "number", "minimum": 0},
                "languages": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 3},
                "capital": {"type": "boolean"}
            },
            "required": ["city", "population_millions", "languages", "capital"]
        });
        let req = ChatRequest {
            messages: vec![Message::user("Describe Paris.")],
            format: Some(schema.clone()),
            ..Default::default()
        };
        let reply = model().chat("default", &req, None).await.unwrap();
        let value: Value = serde_json::from_str(&reply.message.content)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", reply.message.content));
        let validator = jsonschema::validator_for(&schema).unwrap();
        assert!(
            validator.is_valid(&value),
            "{value} does not match the schema"
        );
        assert_eq!(reply.backend, camina_model::Backend::Embedded);
        assert!(reply.prompt_tokens > 0 && reply.completion_tokens > 0);
        // Greedy: the same request gives the same reply.
        let again = model().chat("default", &req, None).await.unwrap();
        assert_eq!(again.message.content, reply.message.content);
    }

    #[tokio::test]
    async fn tool_calls_are_grammar_constrained() {
        let mut req = ask("Read the file notes.txt and tell me what it says.");
        req.tools = vec![read_file_tool()];
        let reply = model().chat("default", &req, None).await.unwrap();
        match reply.message.tool_calls.as_slice() {
            [call] => {
                assert_eq!(call.name, "read_file");
                assert_eq!(call.arguments["path"], "notes.txt", "{:?}", call.arguments);
            }
            other => panic!(
                "one read_file call, got {other:?} ({:?})",
                reply.message.content
            ),
        }
    }

    /// A conversation's next turn evaluates only its new tokens, and the
    /// reused cache gives the reply a fresh evaluation gives (greedy). A new
    /// backend with the same prompt cache directory starts from the first
    /// turn's KV state on disk.
    #[tokio::test]
    async fn kv_cache_is_reused_between_turns_and_processes() {
        let cache = tempfile::tempdir().unwrap();
        let load = || {
            EmbeddedBackend::load(
                &gguf(),
                EmbeddedOptions {
                    threads: 2,
                    n_ctx: 2048,
                    cache_slots: 2,
                    prompt_cache: Some(cache.path().to_path_buf()),
                },
            )
            .unwrap()
        };
        let a = load();
        let mut req = ChatRequest {
            messages: vec![
                Message::system(
                    "You are a careful assistant. Answer in one short sentence. ".repeat(8),
                ),
                Message::user("What colour is the sky on a clear day?"),
            ],
            options: camina_model::Options {
                num_predict: Some(12),
                ..Default::default()
            },
            ..Default::default()
        };
        let first = a.chat("m", &req, None).await.unwrap();
        assert_eq!(first.prompt_eval_tokens, Some(first.prompt_tokens));
        let again = a.chat("m", &req, None).await.unwrap();
        assert_eq!(
            again.prompt_eval_tokens,
            Some(1),
            "the whole prompt was cached"
        );
        assert_eq!(again.message.content, first.message.content);
        // The next turn: only the new tokens (the reply as the template
        // renders it may re-tokenise a few).
        req.messages
            .push(Message::assistant(first.message.content.clone()));
        req.messages.push(Message::user("And at night?"));
        let next = a.chat("m", &req, None).await.unwrap();
        let added = next.prompt_tokens - first.prompt_tokens;
        assert!(
            next.prompt_eval_tokens.unwrap() <= added + 4,
            "{next:?} evaluated more than the {added} new tokens"
        );
        // Another backend (as in a new process): the system turn from disk.
        let files = std::fs::read_dir(cache.path()).unwrap().count();
        assert_eq!(files, 1, "one model directory of prefix files");
        let b = load();
        req.messages.truncate(2);
        let fresh = b.chat("m", &req, None).await.unwrap();
        assert!(
            fresh.prompt_eval_tokens.unwrap() < fresh.prompt_tokens / 2,
            "{fresh:?}"
        );
        assert_eq!(fresh.message.content, first.message.content);
    }

    #[tokio::test]
    async fn every_shipped_tool_schema_is_a_grammar_llama_cpp_accepts() {
        let m = model();
        let mut checked = 0;
        let mut specs = Vec::new();
        for file in [
            crate::support::artifacts::BELTER_FS,
            crate::support::artifacts::DRUMMER_SEARCH,
            crate::support::artifacts::DRUMMER_WEB,
        ] {
            let manifest = crate::support::skill(file).describe("x").await.unwrap();
            for tool in manifest.tools {
                let schema: Value = serde_json::from_str(&tool.input_schema).unwrap();
                let g = camina_model::grammar::schema_to_gbnf(&schema, Default::default()).unwrap();
                assert!(m.check_grammar(&g).is_ok(), "{}: {g}", tool.name);
                checked += 1;
                specs.push(camina_model::ToolSpec {
                    name: tool.name.clone(),
                    description: tool.description.clone(),
                    parameters: schema.into(),
                });
            }
        }
        assert!(checked >= 13);
        // And the reply grammar of a request offering them all (calls in
        // the template's markup, or text).
        let req = ChatRequest {
            tools: specs,
            ..ask("x")
        };
        let g = m.grammar(&req).unwrap().unwrap();
        assert!(g.contains("<tool_call>"), "{g}");
        assert!(m.check_grammar(&g).is_ok(), "{g}");
    }

    #[tokio::test]
    async fn thinking_is_refused_not_ignored() {
        let mut req = ask("hi");
        req.think = true;
        assert!(matches!(
            model().chat("default", &req, None).await,
            Err(ModelError::ThinkingUnsupported { .. })
        ));
    }
}
