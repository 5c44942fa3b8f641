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
    !is_pattern(word) && (word.contains('/') || (has_extension(word) && !host_name(word)))
}

/// A word that reads as a host name (`db.internal`, `example.com`), a value
/// a task sets, not a file it names: its last label is a common top-level
/// or special-use domain.
fn host_name(word: &str) -> bool {
    const DOMAINS: &[&str] = &[
        "com",
        "org",
        "net",
        "io",
        "dev",
        "edu",
        "gov",
        "internal",
        "local",
        "localhost",
        "lan",
        "home",
        "corp",
        "example",
        "invalid",
    ];
    !word.contains('/')
        && word
            .rsplit_once('.')
            .is_some_and(|(_, tld)| DOMAINS.contains(&tld.to_ascii_lowercase().as_str()))
}

/// A path as the task and the calls compare it: no `./`, no trailing `/`.
pub fn normal(path: &str) -> &str {
    path.trim_start_matches("./").trim_end_matches('/')
}

/// Plain words the task introduces as directories: "a directory named
/// build", "the archive folder", "into folder out". They may be made new;
/// other plain words ("the last line") are not paths.
fn directory_words(words: &[String]) -> Vec<String> {
    const NOUNS: &[&str] = &["directory", "directories", "folder", "folders", "dir"];
    const LINKS: &[&str] = &["named", "called"];
    const NOT_NAMES: &[&str] = &[
        "a",
        "an",
        "the",
        "new",
        "empty",
        "this",
        "that",
        "its",
        "same",
        "each",
        "every",
        "in",
        "into",
        "to",
        "of",
        "under",
        "inside",
        "and",
        "with",
        "workspace",
        "current",
        "parent",
    ];
    let name_like = |w: &str| {
        !NOT_NAMES.contains(&w.to_lowercase().as_str())
            && !NOUNS.contains(&w.to_lowercase().as_str())
            && w.chars()
                .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))
    };
    let mut out = Vec::new();
    for (i, w) in words.iter().enumerate() {
        if !NOUNS.contains(&w.to_lowercase().as_str()) {
            continue;
        }
        let mut after = words.get(i + 1).map(String::as_str);
        if after.is_some_and(|a| LINKS.contains(&a.to_lowercase().as_str())) {
            after = words.get(i + 2).map(String::as_str);
        }
        let before = i
            .checked_sub(1)
            .and_then(|j| words.get(j))
            .map(String::as_str);
        for cand in [after, before].into_iter().flatten() {
            let cand = normal(cand);
            if name_like(cand) && !out.iter().any(|o| o == cand) {
                out.push(cand.to_owned());
            }
        }
    }
    out
}

/// The paths a task may change.
#[derive(Debug)]
pub struct Scope {
    words: Vec<String>,
    /// Plain words introduced as directories (see [`directory_words`]).
    dirs: Vec<String>,
    /// The file names of the paths the task names that existed when the
    /// scope was made (a move or copy may take them into a named
    /// directory).
    existing: Vec<String>,
    /// The existing paths the task reads from: when it names a path to
    /// make ("… into title.txt"), the existing paths it names are its
    /// sources ("Copy the first line of README.md …"), not to be changed.
    sources: Vec<String>,
    /// Whether the task asks for a move or rename (a source may then move).
    moves: bool,
    /// The existing paths the task says to leave as they are when they
    /// exist ("create hello.txt unless it already exists", "do not
    /// overwrite notes.md"): no call may change them.
    kept: Vec<String>,
    patterns: GlobSet,
    restricted: bool,
}

impl Scope {
    /// The scope of `task` in `workspace` (as it is now).
    pub fn of_task(task: &str, workspace: &Path) -> Self {
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
        let dirs = directory_words(&words);
        // Written as paths (`lib/`, `notes.txt`), before `normal` drops a
        // directory's trailing slash.
        let named_paths: Vec<String> = words
            .iter()
            .filter(|w| path_like(w) && !w.contains("..") && !w.starts_with('/'))
            .map(|w| normal(w).to_owned())
            .filter(|w| !w.is_empty())
            .collect();
        let words: Vec<String> = words.iter().map(|w| normal(w).to_owned()).collect();
        let there: Vec<&String> = named_paths
            .iter()
            .filter(|w| workspace.join(w).exists())
            .collect();
        let existing = there
            .iter()
            .map(|w| w.rsplit('/').next().unwrap_or(w).to_owned())
            .collect();
        let makes_something = named_paths.len() > there.len();
        let sources = if makes_something {
            there.iter().map(|w| w.to_string()).collect()
        } else {
            Vec::new()
        };
        let moves = words.iter().any(|w| {
            let w = w.to_lowercase();
            w.starts_with("move") || w.starts_with("renam")
        });
        let kept = if says_keep(task) {
            there.iter().map(|w| w.to_string()).collect()
        } else {
            Vec::new()
        };
        Self {
            words,
            dirs,
            existing,
            sources,
            moves,
            kept,
            patterns: patterns.build().unwrap_or_else(|_| GlobSet::empty()),
            restricted,
        }
    }

    /// Whether the task lets a call change `path` (`exists`: whether it
    /// exists now).
    ///
    /// An existing path: named (as written or by its file name), or
    /// matching a pattern the task names. A new path: named as written, a
    /// directory the task introduces, or a path inside a named directory —
    /// but not a file the task names elsewhere: "greeting.txt" is made
    /// where the task says, not as `greetings/greeting.txt`; "photo.csv
    /// into archive/" may go to `archive/photo.csv` because photo.csv
    /// exists (it is moved or copied there).
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
        if self.patterns.is_match(path) {
            return true;
        }
        if exists {
            return named(path) || named(file_name);
        }
        // New: written as a path, or a directory the task introduces.
        if self.words.iter().any(|w| w == path && path_like(w))
            || self.dirs.iter().any(|d| d == path)
        {
            return true;
        }
        let ancestors = || {
            Path::new(path)
                .ancestors()
                .skip(1)
                .filter_map(|a| a.to_str())
                .filter(|a| !a.is_empty())
        };
        if !ancestors().any(|a| named(a) || self.dirs.iter().any(|d| d == a)) {
            return false;
        }
        // A directory the task introduces ("a folder called docs
        // containing index.md") is where the files it names go.
        if ancestors().any(|a| self.dirs.iter().any(|d| d == a)) {
            return true;
        }
        let names_file_elsewhere = self
            .words
            .iter()
            .any(|w| path_like(w) && w.rsplit('/').next() == Some(file_name));
        !names_file_elsewhere || self.existing.iter().any(|e| e == file_name)
    }

    /// Whether `path` is (or is inside) a source of the task, which a call
    /// may not change; `moving`: the call moves it away (allowed when the
    /// task asks for a move or rename).
    pub fn protects(&self, path: &str, moving: bool) -> bool {
        if moving && self.moves {
            return false;
        }
        let path = Path::new(normal(path));
        self.sources.iter().any(|s| path.starts_with(s))
    }

    /// Whether the task says to leave `path` as it is (it exists, and the
    /// task asks for it only when it does not).
    pub fn keeps(&self, path: &str) -> bool {
        let path = Path::new(normal(path));
        self.kept.iter().any(|k| path.starts_with(k))
    }

    /// Whether `path` matches a pattern the task names (`*.log`, `.tmp`).
    pub fn matches_pattern(&self, path: &str) -> bool {
        !self.patterns.is_empty() && self.patterns.is_match(normal(path))
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

/// Whether the task makes its change conditional on a path not existing,
/// or forbids replacing one: "unless it already exists", "if it exists,
/// leave it", "do not overwrite". ("Creating it if it does not exist" is
/// not such a condition: the change is wanted either way.)
fn says_keep(task: &str) -> bool {
    let t = task.to_lowercase().replace('’', "'");
    const PHRASES: &[&str] = &[
        "unless it exists",
        "unless it already exists",
        "unless one exists",
        "unless one already exists",
        "unless that file exists",
        "unless the file exists",
        "unless the file already exists",
        "if it exists, leave",
        "if it already exists, leave",
        "if it exists, keep",
        "if it already exists, keep",
        "if it exists, do nothing",
        "if it already exists, do nothing",
        "if it exists, skip",
        "if it already exists, skip",
        "leave it as it is",
        "leave it alone",
        "leave it unchanged",
        "do not overwrite",
        "don't overwrite",
        "never overwrite",
        "without overwriting",
        "do not replace",
        "don't replace",
        "only if it does not exist",
        "only if it doesn't exist",
        "only if it is missing",
        "only if missing",
    ];
    PHRASES.iter().any(|p| t.contains(p))
}

/// Whether the task names a path, a glob or an extension.
pub fn names_paths(task: &str) -> bool {
    words(task)
        .iter()
        .any(|w| path_like(w) || is_pattern(w) || is_extension(w))
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

/// The paths the task names that were there when it started (`listing`:
/// the workspace's files then, directories with a trailing `/`), in the
/// task's order: files (written as paths), then directories (written as
/// paths or by name: "the recipes directory").
pub fn named_existing(task: &str, listing: &[String]) -> (Vec<String>, Vec<String>) {
    let (mut files, mut dirs) = (Vec::new(), Vec::new());
    for w in words(task) {
        let w = normal(&w).to_owned();
        if w.is_empty() || is_pattern(&w) || is_extension(&w) {
            continue;
        }
        if listing.contains(&w) && path_like(&w) && !files.contains(&w) {
            files.push(w);
        } else if listing.iter().any(|f| *f == format!("{w}/")) && !dirs.contains(&w) {
            dirs.push(w);
        }
    }
    (files, dirs)
}

/// The expected outputs still missing from `workspace` (a name with an
/// extension must be a file: a directory `whole.txt` is not the file).
///
/// A bare file name ("a folder docs containing index.md") also counts as
/// made where one of `made` (the paths the task's calls changed) put it
/// inside a directory (`docs/index.md`), if it is there.
pub fn missing(outputs: &[String], workspace: &Path, made: &[String]) -> Vec<String> {
    let there = |p: &str| {
        let at = workspace.join(p);
        if has_extension(p) {
            at.is_file()
        } else {
            at.exists()
        }
    };
    outputs
        .iter()
        .filter(|p| {
            let inside = !p.contains('/')
                && made
                    .iter()
                    .any(|m| m.ends_with(&format!("/{p}")) && there(m));
            !there(p) && !inside
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Scope {
        /// The scope in an empty workspace.
        fn of_task_here(task: &str) -> Self {
            Self::of_task(task, Path::new("/nonexistent-camina-workspace"))
        }
    }

    #[test]
    fn a_task_may_change_only_what_it_names() {
        let s = Scope::of_task_here("Copy the first line of README.md into title.txt.");
        assert!(s.allows("title.txt", false));
        assert!(s.allows("./README.md", true));
        assert!(!s.allows("src/lib.rs", true));
        assert!(!s.allows("notes.txt", false), "no junk files");

        let s = Scope::of_task_here(
            "Find which file under src/ defines parse_config and write its path into answer.txt.",
        );
        assert!(s.allows("answer.txt", false));
        assert!(
            !s.allows("src/config.rs", true),
            "named to search, not to edit"
        );
        assert!(s.allows("src/new.rs", false));

        let s = Scope::of_task_here("Create a file greeting.txt containing hello.");
        assert!(s.allows("greeting.txt", false));
        assert!(
            !s.allows("greetings/greeting.txt", false),
            "a new file's name does not open every directory"
        );
        assert!(s.allows("docs/greeting.txt", true));
        // …but a directory the task introduces holds the files it names.
        let s = Scope::of_task_here("Create a folder called docs containing a file index.md");
        assert!(s.allows("docs", false) && s.allows("docs/index.md", false));
        assert!(s.allows("index.md", false) && !s.allows("other/index.md", false));

        let ws = std::env::temp_dir().join(format!("camina-scope-move-{}", std::process::id()));
        std::fs::create_dir_all(ws.join("archive")).unwrap();
        std::fs::write(ws.join("photo_list.csv"), "id\n").unwrap();
        let s = Scope::of_task("Move photo_list.csv into the archive directory.", &ws);
        assert!(s.allows("photo_list.csv", true));
        assert!(
            s.allows("archive/photo_list.csv", false),
            "an existing file moved into a named directory"
        );
        assert!(!s.allows("archive/old.csv", true));
        std::fs::remove_dir_all(&ws).unwrap();

        // A plain word is a new path only when the task makes it a directory.
        let s = Scope::of_task_here("Copy the last line of notes.txt into last.txt.");
        assert!(s.allows("last.txt", false));
        assert!(
            !s.allows("last", false),
            "\"the last line\" names no directory"
        );
        let s = Scope::of_task_here("Put a summary of a.txt into a new reports folder");
        assert!(s.allows("reports", false) && s.allows("reports/summary.md", false));
        // A file the task names is made where it says, not in another
        // named directory.
        let s = Scope::of_task_here("Gather every TODO line from the files in app/ into todos.md.");
        assert!(s.allows("todos.md", false));
        assert!(!s.allows("app/todos.md", false));
        assert!(
            s.allows("app/other.md", false),
            "new files inside a named directory"
        );

        let s =
            Scope::of_task_here("Make a directory named build and put a file build/.keep in it.");
        assert!(s.allows("build", false));
        assert!(s.allows("build/.keep", false));

        let s = Scope::of_task_here("Delete every .tmp file in the workspace.");
        assert!(s.allows("a.tmp", true) && s.allows("cache/b.tmp", true));
        assert!(!s.allows("keep.txt", true));

        let s = Scope::of_task_here("Remove the *.log files under build/");
        assert!(s.allows("build/x.log", true));
        assert!(!s.allows("build/x.txt", true));

        let s = Scope::of_task_here("In settings.ini, set 'timeout' to 45.");
        assert!(s.allows("settings.ini", true));
        assert!(!s.allows("settings.ini.bak", false));

        // Nothing named: nothing to hold the crews to.
        let s = Scope::of_task_here("Tidy up the workspace, e.g. remove empty folders.");
        assert!(s.allows("anything/at/all", true));
        let s = Scope::of_task_here("Bump the version to 0.4.2 everywhere.");
        assert!(s.allows("Cargo.toml", true));
    }

    #[test]
    fn what_a_task_reads_from_is_not_changed() {
        let ws = std::env::temp_dir().join(format!("camina-scope-src-{}", std::process::id()));
        std::fs::create_dir_all(ws.join("lib")).unwrap();
        for f in [
            "README.md",
            "part1.txt",
            "draft.txt",
            "lib/a.py",
            "notes.txt",
        ] {
            std::fs::write(ws.join(f), "x\n").unwrap();
        }
        let s = Scope::of_task("Copy the first line of README.md into title.txt.", &ws);
        assert!(s.protects("README.md", false) && s.protects("./README.md", true));
        assert!(!s.protects("title.txt", false));
        let s = Scope::of_task("Collect the FIXME lines under lib/ into fixme.txt", &ws);
        assert!(s.protects("lib/a.py", false));
        // Moving a source is what a rename asks for; a copy is not a move.
        let s = Scope::of_task("Rename draft.txt to final.txt", &ws);
        assert!(s.protects("draft.txt", false) && !s.protects("draft.txt", true));
        let s = Scope::of_task("Copy draft.txt to final.txt", &ws);
        assert!(s.protects("draft.txt", true));
        // A task that makes nothing new changes what it names.
        let s = Scope::of_task("Append a line to notes.txt", &ws);
        assert!(!s.protects("notes.txt", false));
        std::fs::remove_dir_all(&ws).unwrap();
    }

    #[test]
    fn a_file_the_task_says_to_keep_is_not_changed() {
        let ws = std::env::temp_dir().join(format!("camina-scope-keep-{}", std::process::id()));
        std::fs::create_dir_all(&ws).unwrap();
        std::fs::write(ws.join("hello.txt"), "Bonjour\n").unwrap();
        for task in [
            "Create hello.txt containing Hello, unless it already exists.",
            "Write Hi to hello.txt; if it exists, leave it as it is.",
            "Save the greeting to hello.txt, but do not overwrite hello.txt.",
            "Write hello.txt only if it does not exist.",
        ] {
            let s = Scope::of_task(task, &ws);
            assert!(s.keeps("hello.txt") && s.keeps("./hello.txt"), "{task}");
            assert!(!s.keeps("other.txt"), "{task}");
        }
        // Only a path that exists is kept (the task may then make it).
        let s = Scope::of_task("Create notes.txt unless it already exists.", &ws);
        assert!(!s.keeps("notes.txt"));
        // "creating it if it does not exist" wants the change either way.
        for task in [
            "Append Hi to hello.txt, creating it if it does not exist.",
            "Replace the contents of hello.txt with Hi.",
        ] {
            assert!(!Scope::of_task(task, &ws).keeps("hello.txt"), "{task}");
        }
        std::fs::remove_dir_all(&ws).unwrap();
    }

    #[test]
    fn directories_are_introduced_by_their_nouns() {
        let w = |t: &str| directory_words(&words(t));
        assert_eq!(
            w("Make a directory named build and put a file in it"),
            ["build"]
        );
        assert_eq!(w("Move a.csv into the archive directory"), ["archive"]);
        assert_eq!(
            w("Create the folder called out/ and the logs dir"),
            ["out", "logs"]
        );
        assert!(w("Copy the last line of notes.txt into last.txt").is_empty());
    }

    #[test]
    fn named_paths_that_exist_are_found_in_the_listing() {
        let listing: Vec<String> = ["README.md", "lib/", "lib/db.py", "src/", "notes.txt"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (files, dirs) = named_existing(
            "Copy the first line of README.md and the FIXME lines under lib/ into out.txt; \
             see ./notes.txt, README.md again, and the src directory.",
            &listing,
        );
        assert_eq!(files, ["README.md", "notes.txt"]);
        // A directory counts by its name too ("the src directory").
        assert_eq!(dirs, ["lib", "src"]);
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
        assert_eq!(missing(&out, &dir, &[]), ["recipes/index.txt"]);
        std::fs::write(dir.join("recipes/index.txt"), "soup.md\n").unwrap();
        assert!(missing(&out, &dir, &[]).is_empty());
        // Host names are values, not files to make.
        let out = expected_outputs(
            "In db.ini, set the host to db.internal or example.com",
            &dir,
        );
        assert_eq!(out, ["db.ini"]);
        // A bare name made inside the directory the task names counts.
        let out = expected_outputs("Create a folder docs containing a file index.md", &dir);
        assert_eq!(out, ["index.md"]);
        std::fs::create_dir_all(dir.join("docs")).unwrap();
        std::fs::write(dir.join("docs/index.md"), "# Docs").unwrap();
        assert!(missing(&out, &dir, &["docs".into(), "docs/index.md".into()]).is_empty());
        assert_eq!(missing(&out, &dir, &["docs".into()]), ["index.md"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
