//! What a task may change, read from its own words.
//!
//! A task that names paths ("In config.ini, change the port", "Copy the
//! first line of README.md into title.txt") asks for those paths to change
//! and no others. The host holds the crews to that: a call that would
//! change a path the task does not name is refused before it runs, however
//! sure the model is. Small models otherwise "tidy up" (overwrite a source
//! file they were only meant to read, leave notes behind).
//!
//! A path is in scope when the task names it (as written, or its file
//! name), matches a glob or extension the task names (`*.log`, `.tmp`), or
//! is a *new* path inside a directory the task names (`into archive/`,
//! `under docs`). Existing files inside a named directory are not: "find
//! the file under src/ that defines f" names src/ to search, not to edit.
//! A task that names no path at all is not restricted.
//!
//! The same words give the task's expected outputs: named paths that did
//! not exist when it started. A task that ends with one still missing was
//! not done, whatever the models say.

use globset::{Glob, GlobSet, GlobSetBuilder};
use std::path::Path;

/// The task's words, trimmed of quotes and sentence punctuation.
fn words(task: &str) -> Vec<String> {
    task.split(|c: char| {
        c.is_whitespace() || matches!(c, ',' | ';' | '(' | ')' | '[' | ']' | '{' | '}' | '"' | '`')
    })
    .map(|w| {
        w.trim_start_matches(['\'', '<'])
            .trim_end_matches(['.', ':', '!', '?', '\'', '>'])
            .trim_start_matches("./")
    })
    .filter(|w| !w.is_empty() && !w.contains("://"))
    .map(str::to_owned)
    .collect()
}

/// `name.ext` with a plausible extension (`notes.txt`, `.env`), not a
/// number (`0.4.2`) or an abbreviation (`e.g`).
pub fn has_extension(word: &str) -> bool {
    let name = word.rsplit('/').next().unwrap_or(word);
    let Some((stem, ext)) = name.rsplit_once('.') else {
        return false;
    };
    let ext_ok = ext.len() <= 10
        && ext.starts_with(|c: char| c.is_ascii_alphabetic())
        && ext
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let abbreviation = stem.len() == 1 && ext.len() == 1;
    ext_ok && !abbreviation
}

fn is_pattern(word: &str) -> bool {
    word.contains(['*', '?'])
}

/// An extension on its own (`.tmp`): every file with it.
fn is_extension(word: &str) -> bool {
    word.starts_with('.') && !word[1..].contains(['.', '/']) && has_extension(word)
}

fn path_like(word: &str) -> bool {
    !is_pattern(word) && (word.contains('/') || has_extension(word))
}

/// A path as the task and the calls compare it: no `./`, no trailing `/`.
pub fn normal(path: &str) -> &str {
    path.trim_start_matches("./").trim_end_matches('/')
}

/// The paths a task may change.
#[derive(Debug)]
pub struct Scope {
    words: Vec<String>,
    patterns: GlobSet,
    restricted: bool,
}

impl Scope {
    pub fn of_task(task: &str) -> Self {
        let words = words(task);
        let mut patterns = GlobSetBuilder::new();
        let mut restricted = false;
        for w in &words {
            let glob = if is_pattern(w) {
                Some(w.clone())
            } else if is_extension(w) {
                Some(format!("*{w}"))
            } else {
                None
            };
            if let Some(g) = glob.and_then(|g| Glob::new(&g).ok()) {
                patterns.add(g);
                restricted = true;
            }
            restricted |= path_like(w);
        }
        let words = words.iter().map(|w| normal(w).to_owned()).collect();
        Self {
            words,
            patterns: patterns.build().unwrap_or_else(|_| GlobSet::empty()),
            restricted,
        }
    }

    /// Whether the task lets a call change `path` (`exists`: whether it
    /// exists now).
    pub fn allows(&self, path: &str, exists: bool) -> bool {
        let path = normal(path);
        if !self.restricted {
            return true;
        }
        if path.is_empty() {
            return false;
        }
        let named = |p: &str| self.words.iter().any(|w| w == p);
        let file_name = path.rsplit('/').next().unwrap_or(path);
        if named(path) || named(file_name) || self.patterns.is_match(path) {
            return true;
        }
        // A new path inside a directory the task names.
        !exists
            && Path::new(path)
                .ancestors()
                .skip(1)
                .filter_map(|a| a.to_str())
                .filter(|a| !a.is_empty())
                .any(named)
    }

    /// The message a refused call gets back.
    pub fn refusal(&self, path: &str) -> String {
        format!(
            "out-of-scope: the task does not name {}, so it may not be changed; change only \
             the files the task names (and new files inside directories it names)",
            normal(path)
        )
    }
}

/// The paths the task names that do not exist in `workspace` yet: what it
/// is expected to create.
pub fn expected_outputs(task: &str, workspace: &Path) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for w in words(task) {
        let w = normal(&w).to_owned();
        if !path_like(&w) || is_extension(&w) || w.starts_with('/') || w.contains("..") {
            continue;
        }
        if !out.contains(&w) && !workspace.join(&w).exists() {
            out.push(w);
        }
    }
    out
}

/// The expected outputs still missing from `workspace` (a name with an
/// extension must be a file: a directory `whole.txt` is not the file).
pub fn missing(outputs: &[String], workspace: &Path) -> Vec<String> {
    outputs
        .iter()
        .filter(|p| {
            let at = workspace.join(p);
            if has_extension(p) {
                !at.is_file()
            } else {
                !at.exists()
            }
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_may_change_only_what_it_names() {
        let s = Scope::of_task("Copy the first line of README.md into title.txt.");
        assert!(s.allows("title.txt", false));
        assert!(s.allows("./README.md", true));
        assert!(!s.allows("src/lib.rs", true));
        assert!(!s.allows("notes.txt", false), "no junk files");

        let s = Scope::of_task(
            "Find which file under src/ defines parse_config and write its path into answer.txt.",
        );
        assert!(s.allows("answer.txt", false));
        assert!(
            !s.allows("src/config.rs", true),
            "named to search, not to edit"
        );
        assert!(s.allows("src/new.rs", false));

        let s = Scope::of_task("Move photo_list.csv into the archive directory.");
        assert!(s.allows("photo_list.csv", true));
        assert!(s.allows("archive/photo_list.csv", false));
        assert!(!s.allows("archive/old.csv", true));

        let s = Scope::of_task("Make a directory named build and put a file build/.keep in it.");
        assert!(s.allows("build", false));
        assert!(s.allows("build/.keep", false));

        let s = Scope::of_task("Delete every .tmp file in the workspace.");
        assert!(s.allows("a.tmp", true) && s.allows("cache/b.tmp", true));
        assert!(!s.allows("keep.txt", true));

        let s = Scope::of_task("Remove the *.log files under build/");
        assert!(s.allows("build/x.log", true));
        assert!(!s.allows("build/x.txt", true));

        let s = Scope::of_task("In settings.ini, set 'timeout' to 45.");
        assert!(s.allows("settings.ini", true));
        assert!(!s.allows("settings.ini.bak", false));

        // Nothing named: nothing to hold the crews to.
        let s = Scope::of_task("Tidy up the workspace, e.g. remove empty folders.");
        assert!(s.allows("anything/at/all", true));
        let s = Scope::of_task("Bump the version to 0.4.2 everywhere.");
        assert!(s.allows("Cargo.toml", true));
    }

    #[test]
    fn expected_outputs_are_the_named_paths_not_there_yet() {
        let dir = std::env::temp_dir().join(format!("camina-scope-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("recipes")).unwrap();
        std::fs::write(dir.join("recipes/soup.md"), "water").unwrap();
        std::fs::write(dir.join("a.tmp"), "x").unwrap();
        let out = expected_outputs(
            "Write the names of the files in recipes/ to recipes/index.txt (see recipes/soup.md), \
             delete every .tmp file, fetch https://example.com/x.csv, e.g. version 0.4.2.",
            &dir,
        );
        assert_eq!(out, ["recipes/index.txt"]);
        assert_eq!(missing(&out, &dir), ["recipes/index.txt"]);
        std::fs::write(dir.join("recipes/index.txt"), "soup.md\n").unwrap();
        assert!(missing(&out, &dir).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
