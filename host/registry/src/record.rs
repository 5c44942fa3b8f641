//! The on-disk record of an installed plugin.

use camina_policy::{Crew, Digest, Policy};
use camina_sandbox::{Effect, Manifest};
use serde::{Deserialize, Serialize};

/// Version of the record format.
pub const RECORD_FORMAT: u32 = 1;

/// One tool as recorded at install time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolRecord {
    pub name: String,
    pub description: String,
    /// The tool's JSON Schema, parsed.
    pub input_schema: serde_json::Value,
    pub effect: Effect,
}

/// The policy an installed plugin runs under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRecord {
    /// `sha256:<hex>` of `source`.
    pub hash: Digest,
    /// The policy file as installed (empty: installed without a policy).
    pub source: String,
    /// Where it was installed from, if from a file.
    pub file: Option<String>,
}

/// `plugins/<name>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginRecord {
    pub format: u32,
    pub name: String,
    pub version: String,
    pub description: String,
    /// `sha256:<hex>` of the component.
    pub digest: Digest,
    /// Which crew is offered its tools (none: callable directly only).
    pub crew: Option<Crew>,
    pub tools: Vec<ToolRecord>,
    pub policy: PolicyRecord,
    /// The component's imports, for audits.
    pub imports: Vec<String>,
    /// RFC 3339, UTC.
    pub installed_at: String,
    /// The trusted key that verified its signature, if signed.
    #[serde(default)]
    pub signer: Option<String>,
}

impl PluginRecord {
    pub(crate) fn new(
        manifest: &Manifest,
        digest: &Digest,
        policy: &Policy,
        policy_file: Option<String>,
        imports: &[String],
    ) -> Self {
        Self {
            format: RECORD_FORMAT,
            name: manifest.name.clone(),
            version: manifest.version.clone(),
            description: manifest.description.clone(),
            digest: digest.clone(),
            crew: policy.crew,
            tools: manifest
                .tools
                .iter()
                .map(|t| ToolRecord {
                    name: t.name.clone(),
                    description: t.description.clone(),
                    input_schema: serde_json::from_str(&t.input_schema)
                        .unwrap_or(serde_json::Value::Null),
                    effect: t.effect,
                })
                .collect(),
            policy: PolicyRecord {
                hash: policy.hash.clone(),
                source: policy.source.clone(),
                file: policy_file,
            },
            imports: imports.to_vec(),
            installed_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                .to_string(),
            signer: None,
        }
    }

    /// Re-validates the stored policy text.
    pub fn policy(&self) -> Result<Policy, camina_policy::Error> {
        if self.policy.source.is_empty() {
            return Ok(Policy::deny_all(&self.name));
        }
        let name = format!("policy of installed plugin `{}`", self.name);
        Policy::parse(&self.policy.source, &name)
    }

    pub fn tool(&self, name: &str) -> Option<&ToolRecord> {
        self.tools.iter().find(|t| t.name == name)
    }
}
