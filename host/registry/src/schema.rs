//! Tool input schemas: checked at install, compiled once per loaded plugin,
//! applied to every input before the sandbox starts.

use crate::record::PluginRecord;
use camina_sandbox::Manifest;
use std::collections::HashMap;
use std::sync::OnceLock;

/// Tool names models can call: 1-64 of `[A-Za-z0-9_-]`.
fn valid_tool_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

#[derive(Debug)]
struct Entry {
    schema: serde_json::Value,
    compiled: OnceLock<Result<jsonschema::Validator, String>>,
}

/// Compiled-on-first-use validators per tool.
#[derive(Debug, Default)]
pub(crate) struct Schemas(HashMap<String, Entry>);

fn compile(schema: &serde_json::Value) -> Result<jsonschema::Validator, String> {
    jsonschema::validator_for(schema).map_err(|e| e.to_string())
}

impl Schemas {
    /// Checks a fresh manifest: names, unique tools, schemas that compile
    /// and describe objects.
    pub(crate) fn check(manifest: &Manifest) -> Result<Self, String> {
        if !camina_policy::valid_plugin_name(&manifest.name) {
            return Err(format!(
                "name `{}` must be 1-64 lower-case letters, digits, `-` or `_`",
                manifest.name
            ));
        }
        if manifest.version.trim().is_empty() {
            return Err("version is empty".into());
        }
        let mut map = HashMap::new();
        for tool in &manifest.tools {
            if !valid_tool_name(&tool.name) {
                return Err(format!(
                    "tool name `{}` must be 1-64 of letters, digits, `_` or `-`",
                    tool.name
                ));
            }
            let schema: serde_json::Value = serde_json::from_str(&tool.input_schema)
                .map_err(|e| format!("tool `{}`: input-schema is not JSON: {e}", tool.name))?;
            if schema.get("type").and_then(|t| t.as_str()) != Some("object") {
                return Err(format!(
                    "tool `{}`: input-schema must describe an object (\"type\": \"object\")",
                    tool.name
                ));
            }
            let validator = compile(&schema).map_err(|e| {
                format!(
                    "tool `{}`: input-schema is not a valid JSON Schema: {e}",
                    tool.name
                )
            })?;
            let entry = Entry {
                schema,
                compiled: OnceLock::from(Ok(validator)),
            };
            if map.insert(tool.name.clone(), entry).is_some() {
                return Err(format!("tool `{}` is declared twice", tool.name));
            }
        }
        Ok(Self(map))
    }

    pub(crate) fn from_record(record: &PluginRecord) -> Self {
        Self(
            record
                .tools
                .iter()
                .map(|t| {
                    (
                        t.name.clone(),
                        Entry {
                            schema: t.input_schema.clone(),
                            compiled: OnceLock::new(),
                        },
                    )
                })
                .collect(),
        )
    }

    /// Validates `input` for `tool`; the error lists every violation with
    /// its JSON pointer.
    pub(crate) fn validate(&self, tool: &str, input: &str) -> Result<(), String> {
        let value: serde_json::Value =
            serde_json::from_str(input).map_err(|e| format!("input is not valid JSON: {e}"))?;
        let Some(entry) = self.0.get(tool) else {
            return Ok(());
        };
        let validator = entry
            .compiled
            .get_or_init(|| compile(&entry.schema))
            .as_ref()
            .map_err(|e| format!("the tool's input-schema is invalid: {e}"))?;
        // The common case first: `is_valid` stops at the first violation
        // and builds no error; only a refused input pays for the report.
        if validator.is_valid(&value) {
            return Ok(());
        }
        let problems: Vec<String> = validator
            .iter_errors(&value)
            .take(8)
            .map(|e| {
                let at = e.instance_path().to_string();
                if at.is_empty() {
                    format!("input: {e}")
                } else {
                    format!("input{at}: {e}")
                }
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use camina_sandbox::{Effect, ToolSpec};

    fn manifest(schema: &str) -> Manifest {
        Manifest {
            name: "t".into(),
            version: "1".into(),
            description: String::new(),
            tools: vec![ToolSpec {
                name: "go".into(),
                description: String::new(),
                input_schema: schema.into(),
                effect: Effect::ReadOnly,
            }],
        }
    }

    #[test]
    fn inputs_are_checked_against_the_schema() {
        let s = Schemas::check(&manifest(
            r#"{"type":"object","properties":{"n":{"type":"integer"}},"required":["n"],"additionalProperties":false}"#,
        ))
        .unwrap();
        assert!(s.validate("go", r#"{"n": 3}"#).is_ok());
        let e = s.validate("go", r#"{"n": "x"}"#).unwrap_err();
        assert!(e.starts_with("input/n:"), "{e}");
        let e = s.validate("go", r#"{}"#).unwrap_err();
        assert!(e.contains("\"n\" is a required property"), "{e}");
        let e = s.validate("go", "{not json").unwrap_err();
        assert!(e.contains("not valid JSON"), "{e}");
    }

    #[test]
    fn bad_manifests_are_refused() {
        assert!(Schemas::check(&manifest("not json")).is_err());
        assert!(Schemas::check(&manifest(r#"{"type":"string"}"#)).is_err());
        assert!(Schemas::check(&manifest(r#"{"type":"object","properties":5}"#)).is_err());
        let mut m = manifest(r#"{"type":"object"}"#);
        m.tools.push(m.tools[0].clone());
        assert!(Schemas::check(&m).unwrap_err().contains("twice"));
        let mut m = manifest(r#"{"type":"object"}"#);
        m.name = "Bad Name".into();
        assert!(Schemas::check(&m).is_err());
    }
}
