//! The search tools `find_files` and `grep`, shared by `drummer-search` and
//! `belter-fs` (a Belter finds what it is about to change; a Drummer only
//! gathers). Read-only; results are capped so a huge tree cannot flood a
//! model's context. Symlinks are not followed.

use crate::{
    Effect, Tool, ToolError, ToolResult, Workspace, io_error, output, tool, truncate_utf8,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::fs;
use std::io::{BufRead, BufReader, Read};

const DEFAULT_RESULTS: usize = 200;
const MAX_RESULTS: usize = 5000;
/// Files larger than this are not searched by `grep`.
const MAX_GREP_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// A matching line longer than this is cut.
const MAX_LINE_CHARS: usize = 400;
/// Directories walked at most, so a pathological tree ends.
const MAX_DIRS: usize = 20_000;

/// The tool descriptions of `find_files` and `grep`.
pub fn search_tools() -> Vec<Tool> {
    vec![find_files_tool(), grep_tool()]
}

/// Runs `find_files` or `grep`; `None` for another tool name.
pub fn call_search(ws: &Workspace, name: &str, input: &str) -> Option<ToolResult> {
    match name {
        "find_files" => Some(crate::parse_input(input).and_then(|i| find_files(ws, i))),
        "grep" => Some(crate::parse_input(input).and_then(|i| grep(ws, i))),
        _ => None,
    }
}

fn find_files_tool() -> Tool {
    tool(
        "find_files",
        "Find files by name: the files whose workspace-relative path matches a glob such \
         as `src/**/*.rs` or `*.md` (a pattern without `/` matches file names at any \
         depth). It does not look inside files: grep does.",
        json!({
            "type": "object",
            "properties": {
                "path": {"type": "string", "description": "directory to search (default: the workspace)"},
                "pattern": {"type": "string", "minLength": 1},
                "include_hidden": {"type": "boolean", "description": "also look inside dot-directories (default false)"},
                "max_results": {"type": "integer", "minimum": 1, "maximum": MAX_RESULTS}
            },
            "required": ["pattern"],
            "additionalProperties": false
        }),
        Effect::ReadOnly,
    )
}

fn grep_tool() -> Tool {
    tool(
        "grep",
        "Search inside text files: the lines that match a regular expression (Rust regex \
         syntax), with their file and line number, capped at max_results. Use it to find \
         which files mention or define something.",
        json!({
            "type": "object",
            "properties": {
                "path": {"type": "string", "description": "file or directory to search (default: the workspace)"},
                "pattern": {"type": "string", "minLength": 1},
                "glob": {"type": "string", "description": "only search files matching this glob, e.g. `*.rs`"},
                "case_insensitive": {"type": "boolean", "description": "default: smart case (a pattern without upper-case letters matches any case)"},
                "include_hidden": {"type": "boolean"},
                "max_results": {"type": "integer", "minimum": 1, "maximum": MAX_RESULTS}
            },
            "required": ["pattern"],
            "additionalProperties": false
        }),
        Effect::ReadOnly,
    )
}

fn cap(max: Option<usize>) -> ToolResult<usize> {
    let max = max.unwrap_or(DEFAULT_RESULTS);
    if max == 0 || max > MAX_RESULTS {
        return Err(ToolError::InvalidInput(format!(
            "max_results: must be between 1 and {MAX_RESULTS}"
        )));
    }
    Ok(max)
}

fn glob_matcher(pattern: &str, field: &str) -> ToolResult<globset::GlobMatcher> {
    // A pattern without a slash matches the file name at any depth, as in
    // .gitignore and ripgrep's --glob.
    let full = if pattern.contains('/') {
        pattern.trim_start_matches("./").to_owned()
    } else {
        format!("**/{pattern}")
    };
    globset::GlobBuilder::new(&full)
        .literal_separator(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| ToolError::InvalidInput(format!("{field}: {e}")))
}

/// Walks files under `start` (a guest path), depth-first in name order,
/// calling `visit` with (guest path, workspace-relative path) until it
/// returns false. Symlinks are not followed.
fn walk(
    ws: &Workspace,
    start: &str,
    user: &str,
    include_hidden: bool,
    mut visit: impl FnMut(&str, &str) -> bool,
) -> ToolResult<()> {
    let meta = fs::symlink_metadata(start).map_err(|e| io_error("search", user, &e))?;
    if meta.is_file() {
        visit(start, &ws.display(start));
        return Ok(());
    }
    let mut stack = vec![start.to_owned()];
    let mut dirs = 0;
    while let Some(dir) = stack.pop() {
        dirs += 1;
        if dirs > MAX_DIRS {
            break;
        }
        let mut entries: Vec<_> = match fs::read_dir(&dir) {
            Ok(rd) => rd.filter_map(Result::ok).collect(),
            Err(e) if dir == start => return Err(io_error("search", user, &e)),
            Err(_) => continue,
        };
        entries.sort_by_key(|e| std::cmp::Reverse(e.file_name()));
        let mut files = Vec::new();
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !include_hidden && name.starts_with('.') {
                continue;
            }
            let guest = format!("{dir}/{name}");
            match entry.file_type() {
                Ok(ft) if ft.is_dir() => stack.push(guest),
                Ok(ft) if ft.is_file() => files.push(guest),
                _ => {}
            }
        }
        for guest in files.iter().rev() {
            if !visit(guest, &ws.display(guest)) {
                return Ok(());
            }
        }
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FindInput {
    pattern: String,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    include_hidden: bool,
    #[serde(default)]
    max_results: Option<usize>,
}

fn find_files(ws: &Workspace, input: FindInput) -> ToolResult {
    let max = cap(input.max_results)?;
    let matcher = glob_matcher(&input.pattern, "pattern")?;
    let user = input.path.unwrap_or_else(|| ".".into());
    let start = ws.resolve(&user)?;
    let mut matches = Vec::new();
    let mut truncated = false;
    walk(ws, &start, &user, input.include_hidden, |_, rel| {
        if matcher.is_match(rel) {
            if matches.len() >= max {
                truncated = true;
                return false;
            }
            matches.push(rel.to_owned());
        }
        true
    })?;
    output(&json!({"matches": matches, "truncated": truncated}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrepInput {
    pattern: String,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    glob: Option<String>,
    /// `None`: smart case (as ripgrep's `--smart-case`).
    #[serde(default)]
    case_insensitive: Option<bool>,
    #[serde(default)]
    include_hidden: bool,
    #[serde(default)]
    max_results: Option<usize>,
}

/// Smart case: a pattern with no upper-case letter ignores case.
fn ignores_case(pattern: &str, asked: Option<bool>) -> bool {
    asked.unwrap_or_else(|| !pattern.chars().any(char::is_uppercase))
}

#[derive(Serialize)]
struct Match {
    file: String,
    line: usize,
    text: String,
}

fn grep(ws: &Workspace, input: GrepInput) -> ToolResult {
    let max = cap(input.max_results)?;
    let re = regex::RegexBuilder::new(&input.pattern)
        .case_insensitive(ignores_case(&input.pattern, input.case_insensitive))
        .size_limit(1 << 20)
        .build()
        .map_err(|e| ToolError::InvalidInput(format!("pattern: {e}")))?;
    let filter = input
        .glob
        .as_deref()
        .map(|g| glob_matcher(g, "glob"))
        .transpose()?;
    let user = input.path.unwrap_or_else(|| ".".into());
    let start = ws.resolve(&user)?;
    let mut matches = Vec::new();
    let mut truncated = false;
    let mut files_searched = 0usize;
    walk(ws, &start, &user, input.include_hidden, |guest, rel| {
        if filter.as_ref().is_some_and(|f| !f.is_match(rel)) {
            return true;
        }
        let Ok(file) = fs::File::open(guest) else {
            return true;
        };
        if file.metadata().map(|m| m.len()).unwrap_or(0) > MAX_GREP_FILE_BYTES {
            return true;
        }
        let mut reader = BufReader::new(file);
        // Skip binary files: a NUL byte in the first block.
        if reader.fill_buf().map(|b| b.contains(&0)).unwrap_or(true) {
            return true;
        }
        files_searched += 1;
        let mut bytes = Vec::new();
        let mut line_no = 0;
        loop {
            bytes.clear();
            match reader.by_ref().take(1 << 20).read_until(b'\n', &mut bytes) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            line_no += 1;
            let line = String::from_utf8_lossy(&bytes);
            let line = line.trim_end_matches(['\n', '\r']);
            if re.is_match(line) {
                if matches.len() >= max {
                    truncated = true;
                    return false;
                }
                let mut text = line.to_owned();
                truncate_utf8(&mut text, MAX_LINE_CHARS);
                matches.push(Match {
                    file: rel.to_owned(),
                    line: line_no,
                    text,
                });
            }
        }
        true
    })?;
    output(&json!({
        "matches": matches,
        "truncated": truncated,
        "files_searched": files_searched
    }))
}

#[cfg(test)]
mod tests {
    use super::ignores_case;

    #[test]
    fn smart_case_ignores_case_for_lower_case_patterns_only() {
        assert!(ignores_case("todo", None));
        assert!(!ignores_case("TODO", None));
        assert!(!ignores_case("Todo", None));
        assert!(!ignores_case("todo", Some(false)));
        assert!(ignores_case("TODO", Some(true)));
    }
}
