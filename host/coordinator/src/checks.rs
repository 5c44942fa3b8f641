//! What the task's own words say its result must be, checked against the
//! workspace.
//!
//! Some everyday tasks state a test of their result: "concatenate a.txt
//! and b.txt into c.txt" (c.txt is a.txt then b.txt), "copy the last line
//! of notes.txt into last.txt", "which file defines X? write its path to
//! found.txt" (found.txt holds one path, of a file that defines X), "in
//! db.ini set the host to db.internal" (that line changed, every other line
//! kept), "every TODO line under src/ into todo.md" (see [`crate::lines`]).
//! The host recognises these forms, checks the files when the crew says it
//! is done, and sends the step back once with what is wrong; a task still
//! wrong at the end is not done, whatever the models say. The host never
//! writes the result itself.
//!
//! Recognition is deliberately narrow: a task with words that change the
//! form ("in upper case", "separated by", "in reverse order") is not
//! checked, and neither is anything that does not parse cleanly. A check
//! is derived once, when the task starts, and recorded, so a resumed task
//! checks against the same expectations (and the same original file).

use crate::lines::Collect;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One recognised postcondition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Check {
    /// The marked lines of the sources, and nothing else.
    Lines(Collect),
    /// `output` is the `parts` one after the other.
    Concat { parts: Vec<String>, output: String },
    /// `output` is one line of `source`: its first or its last.
    LineOf {
        first: bool,
        source: String,
        output: String,
    },
    /// `output` holds one workspace path: a file that defines (or holds)
    /// `name`.
    PathOf { name: String, output: String },
    /// In `file`, `key` has `value`; every other line of `original` kept.
    SetValue {
        file: String,
        key: String,
        value: String,
        original: String,
    },
}

/// Words that change what the result must look like: a task with one of
/// them is not checked.
const MODIFIERS: [&str; 16] = [
    "upper", "lower", "case", "reverse", "sorted", "sort", "separat", "between", "blank", "prefix",
    "suffix", "without", "except", "number", "quote", "format",
];

fn has_modifier(task: &str) -> bool {
    let t = task.to_lowercase();
    MODIFIERS.iter().any(|m| t.contains(m))
}

/// The task's words, trimmed of punctuation around them (paths keep their
/// inner dots and slashes).
fn words(task: &str) -> Vec<String> {
    task.split_whitespace()
        .map(|w| {
            w.trim_matches(|c: char| matches!(c, ',' | ';' | ':' | '"' | '`' | '\'' | '(' | ')'))
                .trim_end_matches(['.', '?', '!'])
                .to_owned()
        })
        .filter(|w| !w.is_empty())
        .collect()
}

impl Check {
    /// The check `task` states, if it has one this module recognises.
    /// `files` and `dirs`: the paths it names that existed at the start
    /// (in its order); `outputs`: those that did not.
    pub fn from_task(
        task: &str,
        files: &[String],
        dirs: &[String],
        outputs: &[String],
        workspace: &Path,
    ) -> Option<Check> {
        let sources: Vec<String> = files
            .iter()
            .cloned()
            .chain(dirs.iter().map(|d| format!("{d}/")))
            .collect();
        if let Some(c) = crate::lines::collect(task, &sources, outputs) {
            return Some(Check::Lines(c));
        }
        if has_modifier(task) {
            return None;
        }
        let w = words(task);
        let lower: Vec<String> = w.iter().map(|x| x.to_lowercase()).collect();
        let has = |x: &str| lower.iter().any(|l| l == x);
        let one_output = match outputs {
            [o] if crate::scope::has_extension(o) => Some(o.clone()),
            _ => None,
        };
        // Concatenation: two or more named files into one new file.
        if let Some(output) = &one_output
            && ["concatenate", "concat", "join", "combine", "merge"]
                .iter()
                .any(|v| has(v))
            && files.len() >= 2
            && dirs.is_empty()
        {
            let mut parts = files.to_vec();
            // "header.txt first" / "intro.md last".
            for (k, word) in lower.iter().enumerate() {
                let Some(prev) = k.checked_sub(1).and_then(|p| w.get(p)) else {
                    continue;
                };
                let prev = crate::scope::normal(prev);
                let stem = |p: &str| {
                    p.rsplit_once('.')
                        .map_or(p.to_owned(), |(s, _)| s.to_owned())
                };
                if let Some(at) = parts.iter().position(|p| p == prev || stem(p) == prev) {
                    let p = parts.remove(at);
                    match word.as_str() {
                        "first" => parts.insert(0, p),
                        "last" => parts.push(p),
                        _ => parts.insert(at, p),
                    }
                }
            }
            return Some(Check::Concat {
                parts,
                output: output.clone(),
            });
        }
        // The first or last line of a named file into a new one.
        if let Some(output) = &one_output
            && let [source] = files
        {
            for k in 0..lower.len().saturating_sub(3) {
                let first = match lower[k].as_str() {
                    "first" | "top" => true,
                    "last" | "final" | "bottom" => false,
                    _ => continue,
                };
                if lower[k + 1] == "line"
                    && matches!(lower[k + 2].as_str(), "of" | "in" | "from")
                    && crate::scope::normal(&w[k + 3]) == source
                {
                    return Some(Check::LineOf {
                        first,
                        source: source.clone(),
                        output: output.clone(),
                    });
                }
            }
        }
        // "Which file defines X? Write its path to found.txt."
        if let Some(output) = &one_output
            && (task.to_lowercase().contains("which file")
                || task.to_lowercase().contains("the file that"))
            && has("path")
        {
            let at = lower.iter().position(|l| {
                matches!(
                    l.as_str(),
                    "defines" | "define" | "declares" | "contains" | "has" | "mentions"
                )
            })?;
            let kinds = [
                "function",
                "class",
                "struct",
                "method",
                "type",
                "constant",
                "variable",
                "enum",
                "trait",
                "interface",
                "the",
            ];
            let name = w[at + 1..]
                .iter()
                .zip(&lower[at + 1..])
                .find(|(_, l)| !kinds.contains(&l.as_str()))
                .map(|(x, _)| x.trim_end_matches("()").to_owned())?;
            if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || c == '_') {
                return None;
            }
            return Some(Check::PathOf {
                name,
                output: output.clone(),
            });
        }
        // "In db.ini, set the host to db.internal."
        if outputs.is_empty()
            && let [file] = files
        {
            let verb = lower
                .iter()
                .position(|l| matches!(l.as_str(), "set" | "change" | "update"))?;
            let to = lower.iter().rposition(|l| l == "to")?;
            let skip = ["the", "value", "of", "in", "setting", "key", "option"];
            let key = w[verb + 1..to]
                .iter()
                .zip(&lower[verb + 1..to])
                .filter(|(x, l)| !skip.contains(&l.as_str()) && crate::scope::normal(x) != file)
                .map(|(x, _)| x.clone())
                .collect::<Vec<_>>();
            let [key] = key.as_slice() else {
                return None;
            };
            // The value is the rest of the sentence, or up to "in FILE".
            let mut value: Vec<&String> = w[to + 1..].iter().collect();
            if let Some(i) = lower[to + 1..].iter().position(|l| l == "in")
                && w.get(to + 2 + i)
                    .is_some_and(|x| crate::scope::normal(x) == file)
            {
                value.truncate(i);
            }
            let [value] = value.as_slice() else {
                return None;
            };
            let original = std::fs::read_to_string(workspace.join(file)).ok()?;
            if original.len() > 64 * 1024 || !original.lines().any(|l| line_key(l) == Some(key)) {
                return None;
            }
            return Some(Check::SetValue {
                file: file.clone(),
                key: key.clone(),
                value: value.to_string(),
                original,
            });
        }
        None
    }

    /// The file the check reads the result from.
    pub fn output(&self) -> &str {
        match self {
            Check::Lines(c) => &c.output,
            Check::Concat { output, .. }
            | Check::LineOf { output, .. }
            | Check::PathOf { output, .. } => output,
            Check::SetValue { file, .. } => file,
        }
    }

    /// What is wrong with the result now (empty: nothing).
    pub fn verify(&self, workspace: &Path) -> Vec<String> {
        let read = |p: &str| std::fs::read_to_string(workspace.join(p));
        let Ok(now) = read(self.output()) else {
            return vec![format!("{} does not exist or is not text", self.output())];
        };
        match self {
            Check::Lines(c) => {
                let v = crate::lines::check(c, workspace);
                if v.ok() {
                    Vec::new()
                } else {
                    vec![v.describe(c)]
                }
            }
            Check::Concat { parts, output } => {
                let mut want = String::new();
                for p in parts {
                    let Ok(text) = read(p) else {
                        return Vec::new(); // a part went away: nothing to hold it to
                    };
                    if !want.is_empty() && !want.ends_with('\n') {
                        want.push('\n');
                    }
                    want.push_str(&text);
                }
                if same_text(&now, &want) {
                    return Vec::new();
                }
                let squeeze = |s: &str| {
                    s.lines()
                        .filter(|l| !l.trim().is_empty())
                        .collect::<Vec<_>>()
                        .join("\n")
                };
                let why = if squeeze(&now) == squeeze(&want) {
                    "it has blank lines that the files do not have".to_owned()
                } else {
                    format!(
                        "it is not the text of {} one after the other, unchanged",
                        parts.join(" and then ")
                    )
                };
                vec![format!("{output}: {why}")]
            }
            Check::LineOf {
                first,
                source,
                output,
            } => {
                let Ok(text) = read(source) else {
                    return Vec::new();
                };
                let line = if *first {
                    text.lines().next()
                } else {
                    text.lines().last()
                };
                let Some(line) = line.filter(|l| !l.trim().is_empty()) else {
                    return Vec::new();
                };
                if same_text(&now, line) {
                    Vec::new()
                } else {
                    vec![format!(
                        "{output} must hold exactly the {} line of {source}, as it is there, \
                         and nothing else",
                        if *first { "first" } else { "last" }
                    )]
                }
            }
            Check::PathOf { name, output } => {
                let answer = now.trim();
                let path = answer.trim_start_matches("./");
                if answer.lines().count() != 1 || !workspace.join(path).is_file() {
                    return vec![format!(
                        "{output} must hold only the file's path, relative to the workspace \
                         (one line, like dir/file.ext), and nothing else"
                    )];
                }
                let holds =
                    read(path).is_ok_and(|t| defines(&t, name) || t.contains(name.as_str()));
                let defining = crate::lines::files_under(workspace)
                    .into_iter()
                    .any(|f| read(&f).is_ok_and(|t| defines(&t, name)));
                let ok = if defining {
                    read(path).is_ok_and(|t| defines(&t, name))
                } else {
                    holds
                };
                if ok {
                    Vec::new()
                } else {
                    vec![format!("{path} does not define {name}")]
                }
            }
            Check::SetValue {
                file,
                key,
                value,
                original,
            } => {
                let mut problems = Vec::new();
                let set = now.lines().any(|l| {
                    line_key(l) == Some(key.as_str())
                        && line_value(l).is_some_and(|v| v == value.as_str())
                });
                if !set {
                    problems.push(format!("{file} has no line setting {key} to {value}"));
                }
                let lost: Vec<&str> = original
                    .lines()
                    .filter(|l| line_key(l) != Some(key.as_str()))
                    .filter(|l| !now.lines().any(|n| n == *l))
                    .collect();
                if !lost.is_empty() {
                    let shown: Vec<String> =
                        lost.iter().take(3).map(|l| format!("\"{l}\"")).collect();
                    problems.push(format!(
                        "lines of {file} that the task does not change are gone or changed: {}",
                        shown.join(", ")
                    ));
                }
                let added = now
                    .lines()
                    .filter(|l| line_key(l) == Some(key.as_str()))
                    .count();
                let had = original
                    .lines()
                    .filter(|l| line_key(l) == Some(key.as_str()))
                    .count();
                if added > had {
                    problems.push(format!(
                        "{file} now sets {key} more than once: change the existing line \
                         instead of adding one"
                    ));
                }
                problems
            }
        }
    }

    /// The call that puts the result right, as a template.
    pub fn remedy(&self) -> String {
        match self {
            Check::Lines(c) => {
                let source = c.sources[0].trim_end_matches('/');
                format!(
                    "search the sources (grep {{\"path\": \"{source}\", \"pattern\": \"{}\"}}), \
                     then write_file with the path {}, the lines found as its content and \
                     \"overwrite\": true",
                    c.marker, c.output
                )
            }
            Check::SetValue { file, .. } => format!(
                "read {file}, then edit_file with the path {file}, the line as it is now as \
                 old_text and the line with the new value as new_text"
            ),
            other => format!(
                "write_file with the path {}, the right text as its content and \"overwrite\": \
                 true",
                other.output()
            ),
        }
    }
}

/// Equal up to one final newline.
fn same_text(a: &str, b: &str) -> bool {
    a.strip_suffix('\n').unwrap_or(a) == b.strip_suffix('\n').unwrap_or(b)
}

/// Whether `text` has a definition of `name` in a common language's form
/// (`def name`, `fn name`, `class Name`, `function name` …).
fn defines(text: &str, name: &str) -> bool {
    const KEYWORDS: [&str; 14] = [
        "def",
        "fn",
        "func",
        "function",
        "class",
        "struct",
        "enum",
        "trait",
        "interface",
        "type",
        "const",
        "let",
        "var",
        "sub",
    ];
    text.lines().any(|l| {
        let t: Vec<&str> = l
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .filter(|x| !x.is_empty())
            .collect();
        t.windows(2)
            .any(|p| KEYWORDS.contains(&p[0]) && p[1] == name)
    })
}

/// The key of a `key = value` / `key: value` line (quotes dropped), if
/// it is one.
fn line_key(line: &str) -> Option<&str> {
    let (k, _) = line.split_once(['=', ':'])?;
    let k = k.trim().trim_matches(['"', '\'']);
    (!k.is_empty() && !k.starts_with(['#', ';', '['])).then_some(k)
}

/// The value of a `key = value` line, quotes and a trailing comma dropped.
fn line_value(line: &str) -> Option<&str> {
    let (_, v) = line.split_once(['=', ':'])?;
    Some(
        v.trim()
            .trim_end_matches(',')
            .trim()
            .trim_matches(['"', '\'']),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::lines::tests::workspace as ws;

    fn check_of(task: &str, dir: &Path) -> Option<Check> {
        let listing = crate::toolbox::workspace_listing(dir, 60);
        let (files, dirs) = crate::scope::named_existing(task, &listing);
        let outputs = crate::scope::expected_outputs(task, dir);
        Check::from_task(task, &files, &dirs, &outputs, dir)
    }

    fn put(dir: &Path, path: &str, text: &str) {
        std::fs::write(dir.join(path), text).unwrap();
    }

    #[test]
    fn concatenation_in_the_order_asked() {
        let d = ws(&[("header.txt", "TITLE\n"), ("body.txt", "Some body text.\n")]);
        let c = check_of(
            "Join body.txt and header.txt into page.txt, header.txt first.",
            d.path(),
        )
        .unwrap();
        assert_eq!(
            c,
            Check::Concat {
                parts: vec!["header.txt".into(), "body.txt".into()],
                output: "page.txt".into()
            }
        );
        put(d.path(), "page.txt", "TITLE\n\nSome body text.\n");
        assert_eq!(
            c.verify(d.path()),
            ["page.txt: it has blank lines that the files do not have"]
        );
        put(d.path(), "page.txt", "TITLE\nSome body text.\n");
        assert!(c.verify(d.path()).is_empty());
        put(d.path(), "page.txt", "TITLE\nSome body text.");
        assert!(c.verify(d.path()).is_empty());
    }

    #[test]
    fn first_and_last_lines() {
        let d = ws(&[("notes.txt", "first note\nsecond note\nfinal note\n")]);
        let c = check_of("Copy the last line of notes.txt into last.txt.", d.path()).unwrap();
        put(d.path(), "last.txt", "final note (copied)\n");
        assert_eq!(c.verify(d.path()).len(), 1);
        put(d.path(), "last.txt", "final note\n");
        assert!(c.verify(d.path()).is_empty());
        let c = check_of("Put the first line of notes.txt into top.txt", d.path()).unwrap();
        put(d.path(), "top.txt", "first note");
        assert!(c.verify(d.path()).is_empty());
    }

    #[test]
    fn a_path_answer_is_one_path_of_the_defining_file() {
        let d = ws(&[
            (
                "billing/models.py",
                "class Customer:\n    pass\n\nclass Invoice:\n    total = 0\n",
            ),
            ("billing/views.py", "from billing.models import Invoice\n"),
        ]);
        let c = check_of(
            "Which file defines the class Invoice? Write its path to found.txt.",
            d.path(),
        )
        .unwrap();
        assert_eq!(
            c,
            Check::PathOf {
                name: "Invoice".into(),
                output: "found.txt".into()
            }
        );
        put(
            d.path(),
            "found.txt",
            "The class Invoice is defined in billing/models.py\n",
        );
        assert_eq!(c.verify(d.path()).len(), 1);
        put(d.path(), "found.txt", "billing/views.py\n");
        assert_eq!(
            c.verify(d.path()),
            ["billing/views.py does not define Invoice"]
        );
        put(d.path(), "found.txt", "billing/models.py\n");
        assert!(c.verify(d.path()).is_empty());
    }

    #[test]
    fn a_set_value_keeps_every_other_line() {
        let d = ws(&[("db.ini", "[database]\nhost = localhost\nport = 5432\n")]);
        let c = check_of("In db.ini, set the host to db.internal.", d.path()).unwrap();
        let Check::SetValue { key, value, .. } = &c else {
            panic!("{c:?}")
        };
        assert_eq!((key.as_str(), value.as_str()), ("host", "db.internal"));
        put(d.path(), "db.ini", "[database]\nhost = db.internal\n");
        assert_eq!(c.verify(d.path()).len(), 1, "port line lost");
        put(
            d.path(),
            "db.ini",
            "[database]\nhost = localhost\nhost = db.internal\nport = 5432\n",
        );
        assert_eq!(c.verify(d.path()).len(), 1, "set twice");
        put(
            d.path(),
            "db.ini",
            "[database]\nhost = db.internal\nport = 5432\n",
        );
        assert!(c.verify(d.path()).is_empty());
        let d = ws(&[("settings.ini", "[n]\ntimeout = 30\n")]);
        let c = check_of("In settings.ini, change the timeout value to 45.", d.path()).unwrap();
        put(d.path(), "settings.ini", "[n]\ntimeout = 45\n");
        assert!(c.verify(d.path()).is_empty());
    }

    #[test]
    fn forms_that_change_the_result_are_not_checked() {
        let d = ws(&[("a.txt", "x\n"), ("b.txt", "y\n"), ("n.txt", "one\ntwo\n")]);
        for task in [
            "Join a.txt and b.txt into c.txt with a blank line between them",
            "Concatenate a.txt and b.txt into c.txt in reverse order",
            "Copy the last line of n.txt into l.txt in upper case",
            "Write a summary of a.txt to s.txt",
            "Create c.txt containing hello",
        ] {
            assert_eq!(check_of(task, d.path()), None, "{task}");
        }
    }

    /// The right answers of the eval suite (`evals/`) pass the checks
    /// their prompts give: a check never objects to a correct result.
    #[test]
    fn the_eval_suites_right_answers_pass_their_checks() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../evals");
        let mut checked = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            let case: toml::Value = toml::from_str(&std::fs::read_to_string(&path).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let prompt = case["prompt"].as_str().unwrap();
            let files: Vec<(String, String)> = case
                .get("files")
                .and_then(toml::Value::as_table)
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect();
            let refs: Vec<(&str, &str)> = files
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let d = ws(&refs);
            let Some(check) = check_of(prompt, d.path()) else {
                continue;
            };
            let expect = &case["expect"]["files"][check.output()];
            let lines = expect.get("lines").or(expect.get("contains"));
            let right = match (expect.get("content"), lines) {
                (Some(c), _) => c.as_str().unwrap().to_owned(),
                (None, Some(lines)) => lines
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|l| format!("{}\n", l.as_str().unwrap()))
                    .collect(),
                _ => panic!("{}: no right answer to try", path.display()),
            };
            assert!(!check.verify(d.path()).is_empty() || matches!(check, Check::SetValue { .. }));
            put(d.path(), check.output(), &right);
            assert_eq!(
                check.verify(d.path()),
                Vec::<String>::new(),
                "{}",
                path.display()
            );
            checked.push(path.file_stem().unwrap().to_string_lossy().into_owned());
        }
        checked.sort();
        eprintln!("checked: {}", checked.join(", "));
        assert!(checked.len() >= 8, "{checked:?}");
    }
}
