//! The crews and their tools, from the installed plugins' policies.

use camina_model::ToolSpec;
use camina_registry::PluginRecord;
use serde_json::Value;
use std::collections::BTreeMap;

/// One tool as a crew's model sees it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CrewTool {
    /// The function name offered to the model: the tool name, or
    /// `<plugin>__<tool>` when two plugins of the crew share a tool name.
    pub function: String,
    pub plugin: String,
    pub tool: String,
    pub description: String,
    pub parameters: Value,
}

/// A crew: Belters or Drummers, with every tool of every plugin whose
/// policy names the crew.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Crew {
    pub name: String,
    pub tools: Vec<CrewTool>,
}

impl Crew {
    pub fn empty(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            tools: Vec::new(),
        }
    }

    /// What the crew is for, in words.
    pub fn purpose(&self) -> &'static str {
        match self.name.as_str() {
            "belter" => "file work: reading, writing and editing files in the workspace",
            "drummer" => "information gathering: searching the workspace and fetching web pages",
            _ => "work with its tools",
        }
    }

    /// `Belter`, `Drummer`.
    pub fn member(&self) -> String {
        let mut c = self.name.chars();
        c.next()
            .map(|f| f.to_uppercase().chain(c).collect())
            .unwrap_or_default()
    }

    pub fn specs(&self) -> Vec<ToolSpec> {
        self.tools
            .iter()
            .map(|t| ToolSpec {
                name: t.function.clone(),
                description: t.description.clone(),
                parameters: t.parameters.clone(),
            })
            .collect()
    }

    pub fn find(&self, function: &str) -> Option<&CrewTool> {
        self.tools.iter().find(|t| t.function == function)
    }

    /// Function names, for corrective messages.
    pub fn functions(&self) -> Vec<&str> {
        self.tools.iter().map(|t| t.function.as_str()).collect()
    }
}

/// The crews of the installed plugins, in name order (plugins in name
/// order within a crew, tools in manifest order).
pub fn crews(records: &[PluginRecord]) -> Vec<Crew> {
    let mut by_crew: BTreeMap<String, Vec<&PluginRecord>> = BTreeMap::new();
    for r in records {
        if let Some(c) = &r.crew {
            by_crew.entry(c.clone()).or_default().push(r);
        }
    }
    by_crew
        .into_iter()
        .map(|(name, mut plugins)| {
            plugins.sort_by(|a, b| a.name.cmp(&b.name));
            let mut count: BTreeMap<&str, usize> = BTreeMap::new();
            for p in &plugins {
                for t in &p.tools {
                    *count.entry(t.name.as_str()).or_default() += 1;
                }
            }
            let tools = plugins
                .iter()
                .flat_map(|p| {
                    let count = &count;
                    p.tools.iter().map(move |t| CrewTool {
                        function: if count[t.name.as_str()] > 1 {
                            format!("{}__{}", p.name, t.name)
                        } else {
                            t.name.clone()
                        },
                        plugin: p.name.clone(),
                        tool: t.name.clone(),
                        description: t.description.clone(),
                        parameters: t.input_schema.clone(),
                    })
                })
                .collect();
            Crew { name, tools }
        })
        .collect()
}
