//! The crews and their tools, from the installed plugins' policies.

use camina_model::ToolSpec;
pub use camina_policy::Crew as CrewKind;
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
    pub parameters: std::sync::Arc<Value>,
}

impl CrewTool {
    /// Whether the tool writes text into the file at `path`: its input
    /// has a `path` and another string (content, old and new text). Such
    /// a call on an existing file is only made once the file was read.
    pub fn writes_content(&self) -> bool {
        let Some(props) = self.parameters.get("properties").and_then(Value::as_object) else {
            return false;
        };
        props.contains_key("path")
            && props.iter().any(|(name, schema)| {
                name != "path" && schema.get("type").and_then(Value::as_str) == Some("string")
            })
    }
}

/// A crew: Belters or Drummers, with every tool of every plugin whose
/// policy names the crew.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Crew {
    /// Stored (in a task's `setup`) and shown as `belter` / `drummer`.
    pub name: CrewKind,
    pub tools: Vec<CrewTool>,
}

impl Crew {
    pub fn empty(name: CrewKind) -> Self {
        Self {
            name,
            tools: Vec::new(),
        }
    }

    /// What the crew is for, in words.
    pub fn purpose(&self) -> &'static str {
        match self.name {
            CrewKind::Belter => {
                "makes the changes: creates, writes, edits, moves, renames and deletes files \
                 and directories, reading and searching them as it goes"
            }
            CrewKind::Drummer => {
                "finds things out: reads and searches the files, fetches web pages; changes \
                 nothing"
            }
        }
    }

    /// `Belter`, `Drummer`.
    pub fn member(&self) -> String {
        let mut c = self.name.as_str().chars();
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

    /// Whether this crew changes files (the belters).
    pub fn changes_files(&self) -> bool {
        self.name == CrewKind::Belter
    }

    /// Function names, for corrective messages.
    pub fn functions(&self) -> Vec<&str> {
        self.tools.iter().map(|t| t.function.as_str()).collect()
    }

    /// The name of the host's tool that ends a step: `finish`, unless a
    /// plugin of the crew has a tool of that name.
    pub fn finish_name(&self) -> &'static str {
        if self.find("finish").is_some() {
            "finish_step"
        } else {
            "finish"
        }
    }
}

/// Up to `max` workspace paths (files, and directories with a trailing
/// `/`), breadth first, dot-entries left out: what the coordinator is shown
/// of the workspace so it plans with the real names. Only names: contents
/// are read by the crews, in their sandboxes.
pub fn workspace_listing(root: &std::path::Path, max: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut queue = std::collections::VecDeque::from([root.to_path_buf()]);
    while let Some(dir) = queue.pop_front() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut entries: Vec<_> = entries.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            if e.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let path = e.path();
            let Ok(rel) = path.strip_prefix(root) else {
                continue;
            };
            let rel = rel.to_string_lossy().replace('\\', "/");
            // Symlinks are listed, not followed.
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            if out.len() >= max {
                out.push("…".to_owned());
                return out;
            }
            if is_dir {
                out.push(format!("{rel}/"));
                queue.push_back(path);
            } else {
                out.push(rel);
            }
        }
    }
    out
}

/// The crews of the installed plugins, in name order (plugins in name
/// order within a crew, tools in manifest order).
pub fn crews(records: &[PluginRecord]) -> Vec<Crew> {
    // Keyed by name: crews in name order.
    let mut by_crew: BTreeMap<&str, (CrewKind, Vec<&PluginRecord>)> = BTreeMap::new();
    for r in records {
        if let Some(c) = r.crew {
            by_crew
                .entry(c.as_str())
                .or_insert((c, Vec::new()))
                .1
                .push(r);
        }
    }
    by_crew
        .into_iter()
        .map(|(_, (name, mut plugins))| {
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
                        parameters: std::sync::Arc::new(t.input_schema.clone()),
                    })
                })
                .collect();
            Crew { name, tools }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tool(parameters: Value) -> CrewTool {
        CrewTool {
            function: "f".into(),
            plugin: "p".into(),
            tool: "f".into(),
            description: String::new(),
            parameters: parameters.into(),
        }
    }

    #[test]
    fn tools_that_write_text_into_a_path_are_told_apart() {
        let write = tool(
            json!({"properties": {"path": {"type": "string"}, "content": {"type": "string"}}}),
        );
        let edit = tool(
            json!({"properties": {"path": {"type": "string"}, "old_text": {"type": "string"}, "new_text": {"type": "string"}}}),
        );
        let delete = tool(
            json!({"properties": {"path": {"type": "string"}, "recursive": {"type": "boolean"}}}),
        );
        let mv =
            tool(json!({"properties": {"from": {"type": "string"}, "to": {"type": "string"}}}));
        assert!(write.writes_content() && edit.writes_content());
        assert!(!delete.writes_content() && !mv.writes_content());
        assert!(!tool(json!({"type": "object"})).writes_content());
    }
}
