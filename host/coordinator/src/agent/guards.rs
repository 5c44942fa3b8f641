//! What the host checks about a crew's calls before and after they run:
//! refusals (scope, unread rewrites, sources, invented text), the reads made
//! for a crew before its first turn, and what the task's calls have read,
//! changed and still not made.

use super::*;

impl Agent<'_> {
    /// What a successful call changed, in a few words (`write_file a.txt`,
    /// `move_path a.txt → b.txt`); None for a read-only tool.
    pub(super) fn change_of(&self, crew: &Crew, call: &ToolCall) -> Option<String> {
        let ct = crew.find(&call.name)?;
        let plugin = self.registry.get(&ct.plugin).ok()?;
        let effect = plugin.record.tool(&ct.tool).map(|t| t.effect);
        if effect == Some(Effect::ReadOnly) {
            return None;
        }
        let a = &call.arguments;
        let s = |k: &str| a.get(k).and_then(serde_json::Value::as_str);
        Some(match (s("path"), s("from"), s("to")) {
            (Some(p), _, _) => format!("{} {p}", call.name),
            (None, Some(f), Some(t)) => format!("{} {f} → {t}", call.name),
            _ => format!("{} {}", call.name, a),
        })
    }

    /// Whether `call` is refused before it runs: it would change a path
    /// the task does not name, or rewrite an existing file nobody in this
    /// task has read (its change would be written blind: small models
    /// "edit" text they never saw). Decided once and recorded, so a resumed
    /// task replays the same refusals whatever the workspace holds by then.
    pub(super) async fn refused(
        &mut self,
        step: &str,
        crew: &Crew,
        call: &ToolCall,
        scope: &crate::scope::Scope,
        sources: &[String],
    ) -> Flow<Option<ToolRefused>> {
        let this = &*self;
        let live = async move { Ok(this.refusal(crew, call, scope, sources)) };
        self.d
            .maybe(step, Kind::ToolRefused, Durability::Buffered, live)
            .await
    }

    /// The refusal of `call` decided now (see [`Self::refused`]).
    fn refusal(
        &self,
        crew: &Crew,
        call: &ToolCall,
        scope: &crate::scope::Scope,
        sources: &[String],
    ) -> Option<ToolRefused> {
        let ct = crew.find(&call.name)?;
        let effect = self
            .registry
            .get(&ct.plugin)
            .ok()
            .and_then(|p| p.record.tool(&ct.tool).map(|t| t.effect));
        if effect == Some(Effect::ReadOnly) {
            return None;
        }
        let workspace = std::path::Path::new(&self.submitted.workspace);
        let mut refusal = None;
        if self.changes_files == Some(false) {
            let path = ["path", "from", "to"]
                .iter()
                .find_map(|k| call.arguments.get(*k).and_then(serde_json::Value::as_str))
                .unwrap_or_default();
            refusal = Some(ToolRefused {
                tool: call.name.clone(),
                path: path.to_owned(),
                question: true,
                ..ToolRefused::default()
            });
        }
        for key in ["path", "from", "to"] {
            if refusal.is_some() {
                break;
            }
            let Some(path) = call.arguments.get(key).and_then(serde_json::Value::as_str) else {
                continue;
            };
            let at = workspace.join(crate::scope::normal(path));
            let base = ToolRefused {
                tool: call.name.clone(),
                path: path.to_owned(),
                ..ToolRefused::default()
            };
            let why = if scope.keeps(path) {
                Some(ToolRefused { kept: true, ..base })
            } else if key != "to" && scope.protects(path, key == "from") {
                Some(ToolRefused {
                    source: true,
                    ..base
                })
            } else if !scope.allows(path, at.exists()) {
                Some(base)
            } else if key == "path" && ct.writes_content() && at.is_file() && !self.knows(path) {
                Some(ToolRefused {
                    not_read: true,
                    ..base
                })
            } else {
                None
            };
            if why.is_some() {
                refusal = why;
                break;
            }
        }
        // Text for a task that takes its content from other paths it names
        // must come from somewhere (see `crate::ground`).
        let target = call
            .arguments
            .get("path")
            .and_then(serde_json::Value::as_str)
            .map(crate::scope::normal);
        if refusal.is_none()
            && ct.writes_content()
            && let Some(target) = target
            && sources.iter().any(|s| s.trim_end_matches('/') != target)
        {
            let text: Vec<&str> = call
                .arguments
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, _)| !matches!(k.as_str(), "path" | "from" | "to" | "old_text"))
                .filter_map(|(_, v)| v.as_str())
                .collect();
            let invented = self.seen.invented(&text.join("\n"));
            if !invented.is_empty() {
                refusal = Some(ToolRefused {
                    tool: call.name.clone(),
                    path: target.to_owned(),
                    invented,
                    ..ToolRefused::default()
                });
            }
        }
        refusal
    }

    /// Files that match a pattern the task names ("every .tmp file") and
    /// that no call changed, while calls of the task did change others that
    /// match it: the job was done for some and not all. Only files under
    /// the directories the task names, if it names any; from the listing
    /// of the task's start.
    pub(super) fn left_out(
        &self,
        scope: &crate::scope::Scope,
        task: &str,
        files: &[String],
    ) -> Vec<String> {
        let changed = |f: &str| self.touched.iter().any(|t| t == f);
        if !self.touched.iter().any(|t| scope.matches_pattern(t)) {
            return Vec::new();
        }
        let (_, dirs) = crate::scope::named_existing(task, files);
        files
            .iter()
            .filter(|f| !f.ends_with('/') && *f != "…")
            .filter(|f| scope.matches_pattern(f) && !changed(f))
            .filter(|f| {
                dirs.is_empty()
                    || dirs
                        .iter()
                        .any(|d| std::path::Path::new(f.as_str()).starts_with(d))
            })
            .cloned()
            .collect()
    }

    /// The reads (and listings) made for a crew before its first turn: the
    /// files and directories the task names that existed when it started
    /// (from the task's recorded setup, so a resume makes the same calls),
    /// through the crew's own read-only `read_file` / `list_dir` tools.
    pub(super) fn prefetch_calls(
        &self,
        crew: &Crew,
        task: &str,
        files: &[String],
    ) -> Vec<ToolCall> {
        const MAX_FILES: usize = 4;
        const MAX_DIRS: usize = 2;
        let read_only = |name: &str| {
            crew.tools.iter().find(|t| {
                t.tool == name
                    && self.registry.get(&t.plugin).ok().is_some_and(|p| {
                        p.record.tool(&t.tool).map(|x| x.effect) == Some(Effect::ReadOnly)
                    })
            })
        };
        let (named_files, named_dirs) = crate::scope::named_existing(task, files);
        let mut calls = Vec::new();
        if let Some(read) = read_only("read_file") {
            calls.extend(named_files.iter().take(MAX_FILES).map(|f| ToolCall {
                name: read.function.clone(),
                arguments: serde_json::json!({"path": f}),
            }));
        }
        if let Some(list) = read_only("list_dir") {
            calls.extend(named_dirs.iter().take(MAX_DIRS).map(|d| ToolCall {
                name: list.function.clone(),
                arguments: serde_json::json!({"path": d, "recursive": true}),
            }));
        }
        // A task that collects the lines carrying a marker from its
        // sources (the check derived from its words says which): the
        // search it describes, made for the crew that writes the result
        // like the reads above (measured: the 1.5B model otherwise greps,
        // then reads one file and copies its code).
        if let Some(crate::checks::Check::Lines(c)) = &self.check
            && crew.changes_files()
            && let Some(grep) = read_only("grep")
        {
            calls.extend(c.sources.iter().take(MAX_DIRS).map(|s| ToolCall {
                name: grep.function.clone(),
                arguments: serde_json::json!({
                    "path": s.trim_end_matches('/'),
                    "pattern": regex_escape(&c.marker),
                    "case_insensitive": false,
                }),
            }));
        }
        calls
    }

    /// Whether a call of this task has read or written `path`.
    pub(super) fn knows(&self, path: &str) -> bool {
        let path = crate::scope::normal(path);
        self.read.iter().chain(&self.touched).any(|p| p == path)
    }

    /// Notes the path a successful read-only call looked at.
    pub(super) fn saw(&mut self, call: &ToolCall) {
        if let Some(p) = call
            .arguments
            .get("path")
            .and_then(serde_json::Value::as_str)
        {
            self.read.push(crate::scope::normal(p).to_owned());
        }
    }

    /// Notes the paths a successful change made (a move's both ends).
    pub(super) fn touch(&mut self, call: &ToolCall) {
        for key in ["path", "from", "to"] {
            if let Some(p) = call.arguments.get(key).and_then(serde_json::Value::as_str) {
                self.touched.push(crate::scope::normal(p).to_owned());
            }
        }
    }

    /// The expected outputs no successful call has made yet.
    pub(super) fn not_made(&self) -> Vec<String> {
        self.outputs
            .iter()
            .filter(|o| {
                !self.touched.iter().any(|t| {
                    t == *o
                        || std::path::Path::new(t).starts_with(o.as_str())
                        || (!o.contains('/') && t.ends_with(&format!("/{o}")))
                })
            })
            .cloned()
            .collect()
    }
}

/// `text` as a regular expression that matches it literally.
pub(super) fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
