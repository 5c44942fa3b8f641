//! Tasks that collect lines: "every TODO line under src/ into todo.md",
//! "the lines containing 'error' in app.log into errors.txt".
//!
//! Such a task states its own test: the output must hold every line of
//! the sources that carries the marker, and nothing else. The host checks
//! that against the workspace itself (it never writes the lines: the crew
//! does), so a crew that copies the code around a marker, or stops after
//! the first file, is told what is wrong and, if it stays wrong, the task
//! ends `failed` instead of `succeeded`. Only the plain forms are
//! recognised — a marker in capitals (`TODO`, `FIXME`) or quoted, sources
//! the task names, one output file; anything else is not checked.

use serde::{Deserialize, Serialize};
use std::path::Path;

/// What to check: the marker, the sources (paths relative to the
/// workspace; directories searched recursively) and the output file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Collect {
    pub marker: String,
    pub sources: Vec<String>,
    pub output: String,
}

/// What the output gets wrong.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// Source lines with the marker the output does not hold, as
    /// `path:line: text`.
    pub missing: Vec<String>,
    /// Output lines that are not lines with the marker.
    pub extra: Vec<String>,
}

impl Verdict {
    pub fn ok(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty()
    }

    /// What is wrong, in words, without the missing lines' text (the crew
    /// finds them itself): "it leaves out 1 line with TODO (in
    /// src/main.rs); 1 line in it has no TODO: \"pub fn f() {}\"".
    pub fn describe(&self, c: &Collect) -> String {
        let mut parts = Vec::new();
        if !self.missing.is_empty() {
            let mut files: Vec<&str> = self
                .missing
                .iter()
                .filter_map(|m| m.split(':').next())
                .collect();
            files.dedup();
            let n = self.missing.len();
            parts.push(format!(
                "{} leaves out {n} line{} with {} (in {})",
                c.output,
                if n == 1 { "" } else { "s" },
                c.marker,
                files.join(", ")
            ));
        }
        if !self.extra.is_empty() {
            let n = self.extra.len();
            let shown: Vec<String> = self
                .extra
                .iter()
                .take(3)
                .map(|l| format!("\"{l}\""))
                .collect();
            parts.push(format!(
                "{n} line{} in {} {} no {}: {}",
                if n == 1 { "" } else { "s" },
                c.output,
                if n == 1 { "has" } else { "have" },
                c.marker,
                shown.join(", ")
            ));
        }
        parts.join("; ")
    }
}

/// The marker of a line-collecting task, if it has one in a form this
/// module recognises: "`MARK` line(s)" with `MARK` in capitals, or
/// "lines containing / with / mentioning / matching `MARK`" with `MARK` in
/// capitals or quoted.
pub fn marker(task: &str) -> Option<String> {
    let words: Vec<&str> = task.split_whitespace().collect();
    let line = |w: &str| {
        matches!(
            w.trim_end_matches(['.', ',', ':', ';'])
                .to_lowercase()
                .as_str(),
            "line" | "lines"
        )
    };
    let caps = |w: &str| {
        let w = w.trim_matches(|c: char| !c.is_alphanumeric() && c != '_');
        (w.len() >= 2
            && w.chars().any(|c| c.is_ascii_uppercase())
            && w.chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
        .then(|| w.to_owned())
    };
    let quoted = |w: &str| {
        let w = w.trim_end_matches(['.', ',', ':', ';', ')']);
        ['"', '\'', '`'].into_iter().find_map(|q| {
            w.strip_prefix(q)
                .and_then(|r| r.strip_suffix(q))
                .filter(|m| !m.is_empty() && !m.contains(q))
                .map(str::to_owned)
        })
    };
    for (i, w) in words.iter().enumerate() {
        if !line(w) {
            continue;
        }
        // "every TODO line"
        if i > 0
            && let Some(m) = caps(words[i - 1]).or_else(|| quoted(words[i - 1]))
        {
            return Some(m);
        }
        // "lines containing TODO", "lines that contain 'x'"
        let mut j = i + 1;
        if words.get(j).is_some_and(|w| *w == "that" || *w == "which") {
            j += 1;
        }
        let verb = words.get(j).map(|w| w.to_lowercase());
        if matches!(
            verb.as_deref(),
            Some(
                "containing"
                    | "contain"
                    | "contains"
                    | "with"
                    | "mentioning"
                    | "mention"
                    | "mentions"
                    | "matching"
                    | "match"
                    | "having"
                    | "have"
                    | "has"
            )
        ) && let Some(w) = words.get(j + 1)
            && let Some(m) = quoted(w).or_else(|| caps(w))
        {
            return Some(m);
        }
    }
    None
}

/// The check for `task`, if it collects lines from sources it names into
/// one output file (`sources`: the named paths that existed at the
/// start, directories with a trailing `/`; `outputs`: the named paths that
/// did not).
pub fn collect(task: &str, sources: &[String], outputs: &[String]) -> Option<Collect> {
    let marker = marker(task)?;
    // One file to make, or the one the lines go "into" ("… into todo.md
    // and note it in log.txt").
    let files: Vec<&String> = outputs
        .iter()
        .filter(|o| crate::scope::has_extension(o))
        .collect();
    let output = match files.as_slice() {
        [one] => *one,
        _ => files.into_iter().find(|o| {
            task.contains(&format!("into {o}")) || task.contains(&format!("into ./{o}"))
        })?,
    };
    if sources.is_empty() {
        return None;
    }
    Some(Collect {
        marker,
        sources: sources.to_vec(),
        output: output.clone(),
    })
}

/// The lines of the sources (as they are now) that carry the marker, as
/// `(path, line number, text)`; the output itself is not a source.
fn marked(c: &Collect, workspace: &Path) -> Vec<(String, usize, String)> {
    const MAX_FILES: usize = 2000;
    const MAX_BYTES: u64 = 1 << 20;
    let mut files = Vec::new();
    for s in &c.sources {
        let rel = s.trim_end_matches('/');
        let at = workspace.join(rel);
        if at.is_dir() {
            walk(&at, workspace, &mut files, MAX_FILES);
        } else {
            files.push(rel.to_owned());
        }
    }
    files.sort();
    files.dedup();
    let mut found = Vec::new();
    for f in files.iter().filter(|f| **f != c.output) {
        let at = workspace.join(f);
        let Ok(meta) = std::fs::symlink_metadata(&at) else {
            continue;
        };
        if !meta.is_file() || meta.len() > MAX_BYTES {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&at) else {
            continue; // not text
        };
        for (n, line) in text.lines().enumerate() {
            if line.contains(&c.marker) {
                found.push((f.clone(), n + 1, line.trim().to_owned()));
            }
        }
    }
    found
}

/// The regular files of the workspace (not dot-entries; at most 2,000),
/// relative to it.
pub fn files_under(workspace: &Path) -> Vec<String> {
    let mut files = Vec::new();
    walk(workspace, workspace, &mut files, 2000);
    files
}

/// The regular files under `dir` (no symlinks followed, dot-entries
/// skipped), as paths relative to `workspace`.
fn walk(dir: &Path, workspace: &Path, out: &mut Vec<String>, max: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        if out.len() >= max || e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let Ok(kind) = e.file_type() else { continue };
        let path = e.path();
        if kind.is_dir() {
            walk(&path, workspace, out, max);
        } else if kind.is_file()
            && let Ok(rel) = path.strip_prefix(workspace)
        {
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
}

/// Checks the output against the sources as they are in `workspace`.
/// An output line counts for a source line when it holds that line's
/// text, or is most of it (the marker kept, the comment sign dropped:
/// `TODO: x` for `// TODO: x`). Headings (`#`), blank lines, rules and
/// lines naming a source file (`src/main.rs:`) are allowed extras.
pub fn check(c: &Collect, workspace: &Path) -> Verdict {
    let sources = marked(c, workspace);
    let output = std::fs::read_to_string(workspace.join(&c.output)).unwrap_or_default();
    let lines: Vec<&str> = output.lines().map(str::trim).collect();
    // An output line without a `path:` / `path:N:` prefix naming a
    // source file, or a list marker.
    let bare = |out: &str| -> String {
        let mut out = out.trim();
        for (f, _, _) in &sources {
            if let Some(rest) = out
                .strip_prefix(f.as_str())
                .and_then(|r| r.strip_prefix(':'))
            {
                let rest = rest.trim_start_matches(|ch: char| ch.is_ascii_digit());
                out = rest.strip_prefix(':').unwrap_or(rest).trim();
                break;
            }
        }
        for marker in ["- [ ] ", "- ", "* ", "+ "] {
            if let Some(rest) = out.strip_prefix(marker) {
                out = rest.trim();
                break;
            }
        }
        out.to_owned()
    };
    let covers = |out: &str, src: &str| {
        let out = bare(out);
        out.contains(src)
            || (out.contains(&c.marker) && src.contains(&out) && out.len() * 2 >= src.len())
    };
    let missing = sources
        .iter()
        .filter(|(_, _, text)| !lines.iter().any(|l| covers(l, text)))
        .map(|(f, n, text)| format!("{f}:{n}: {text}"))
        .collect();
    let extra = lines
        .iter()
        .filter(|l| {
            !(l.is_empty()
                || l.starts_with('#')
                || l.chars().all(|ch| !ch.is_alphanumeric())
                || sources
                    .iter()
                    .any(|(f, _, _)| l.trim_end_matches(':') == f.as_str())
                || sources.iter().any(|(_, _, text)| covers(l, text)))
        })
        .map(|l| (*l).to_owned())
        .collect();
    Verdict { missing, extra }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn markers_in_the_plain_forms() {
        for (task, m) in [
            (
                "Collect every TODO line under src/ into todo.md",
                Some("TODO"),
            ),
            (
                "Gather the FIXME lines in lib/ into fixme.txt",
                Some("FIXME"),
            ),
            (
                "Gather every line containing TODO from the files in app/ into todos.md.",
                Some("TODO"),
            ),
            (
                "Put the lines that contain 'error' in app.log into errors.txt",
                Some("error"),
            ),
            (
                "Copy lines with `WARN:` from run.log to warn.txt",
                Some("WARN:"),
            ),
            ("Copy the first line of README.md into title.txt", None),
            ("Append a line to notes.md", None),
            ("List the lines with errors", None),
        ] {
            assert_eq!(marker(task).as_deref(), m, "{task}");
        }
    }

    /// A temporary workspace holding `files` (path, text); shared with
    /// the checks' tests.
    pub(crate) fn workspace(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (p, text) in files {
            let at = dir.path().join(p);
            std::fs::create_dir_all(at.parent().unwrap()).unwrap();
            std::fs::write(at, text).unwrap();
        }
        dir
    }

    fn sample() -> Collect {
        collect(
            "Collect every TODO line under src/ into todo.md",
            &["src/".into()],
            &["todo.md".into()],
        )
        .unwrap()
    }

    const SRC: [(&str, &str); 3] = [
        ("src/main.rs", "fn main() {\n    // TODO: parse args\n}\n"),
        ("src/lib.rs", "// TODO: write the library\npub fn f() {}\n"),
        ("tests/t.rs", "// TODO: not a source\n"),
    ];

    #[test]
    fn every_marked_line_and_nothing_else_passes() {
        for out in [
            "// TODO: parse args\n// TODO: write the library\n",
            "# TODOs\n\nsrc/lib.rs:\nTODO: write the library\nsrc/main.rs:2: TODO: parse args\n",
            "- TODO: write the library\n- TODO: parse args\n",
        ] {
            let mut files = SRC.to_vec();
            files.push(("todo.md", out));
            let ws = workspace(&files);
            assert!(check(&sample(), ws.path()).ok(), "{out}");
        }
    }

    #[test]
    fn a_left_out_line_and_copied_code_are_named() {
        let mut files = SRC.to_vec();
        files.push(("todo.md", "TODO: write the library\npub fn f() {}\n"));
        let ws = workspace(&files);
        let v = check(&sample(), ws.path());
        assert_eq!(v.missing, ["src/main.rs:2: // TODO: parse args"]);
        assert_eq!(v.extra, ["pub fn f() {}"]);
        assert_eq!(
            v.describe(&sample()),
            "todo.md leaves out 1 line with TODO (in src/main.rs); 1 line in todo.md has no \
             TODO: \"pub fn f() {}\""
        );
    }

    #[test]
    fn a_bare_marker_does_not_count_as_a_line() {
        let mut files = SRC.to_vec();
        files.push(("todo.md", "TODO\nTODO\n"));
        let ws = workspace(&files);
        let v = check(&sample(), ws.path());
        assert_eq!(v.missing.len(), 2);
        assert_eq!(v.extra, ["TODO", "TODO"]);
    }

    #[test]
    fn no_check_without_one_output_file_or_a_source() {
        let task = "Collect every TODO line under src/ into todo.md";
        assert!(collect(task, &[], &["todo.md".into()]).is_none());
        assert!(collect(task, &["src/".into()], &[]).is_none());
        assert!(collect(task, &["src/".into()], &["out".into()]).is_none());
        let two = "Collect every TODO line under src/ into todo.md and note it in log.txt";
        let c = collect(two, &["src/".into()], &["todo.md".into(), "log.txt".into()]).unwrap();
        assert_eq!(c.output, "todo.md");
        let neither = "Write every TODO line under src/ to a.md and b.md";
        assert!(collect(neither, &["src/".into()], &["a.md".into(), "b.md".into()]).is_none());
    }
}
