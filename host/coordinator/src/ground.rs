//! Whether text a crew is about to write comes from anywhere.
//!
//! A task that takes its content from the workspace ("collect the TODO
//! lines under src/ into todo.md", "copy the first line of README.md into
//! title.txt") is done only when what gets written is what those files
//! hold. Small models write plausible text instead ("- [ ] Implement
//! feature A") and report success. Before a call that writes text runs,
//! the host checks each line of it against what the task's calls
//! returned (every successful result, in any step). A line is
//! *grounded* when at least half of its words occur there; a write whose
//! lines are mostly not grounded is refused with the lines named, so the
//! model reads or searches first. The task's own words count only where
//! they are text it gives (quoted, or after a colon: `add the line
//! 'copied'`, `containing: done`), and the coordinator's instruction for
//! the step when it says more than the task: "collect the TODO lines"
//! written as `TODO` was grounded in nothing but the instruction.
//!
//! Deliberately lenient (a word, not a line, must have been seen; half of
//! a line is enough; a few made-up lines among real ones pass): a refusal
//! fails legitimate work, so only text that is mostly invented is stopped.

use std::collections::HashSet;

/// The words of `text`, lower-cased: runs of letters and digits, one
/// letter long words left out (`a`, list markers), numbers kept whatever
/// their length.
fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    raw_words(text).map(str::to_lowercase)
}

/// [`words`] before lower-casing.
fn raw_words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() > 1 || w.chars().all(|c| c.is_ascii_digit()))
        .filter(|w| !w.is_empty())
}

/// The text a task gives to be written: its quoted spans (`"…"`, `'…'`,
/// `` `…` ``; an apostrophe inside a word is not a quote) and what follows
/// its first colon.
pub fn given(task: &str) -> String {
    let mut out = Vec::new();
    let chars: Vec<char> = task.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let q = chars[i];
        let opens = matches!(q, '"' | '`' | '\u{201c}')
            || (q == '\'' && (i == 0 || !chars[i - 1].is_alphanumeric()));
        if opens {
            let close = if q == '\u{201c}' { '\u{201d}' } else { q };
            if let Some(len) = chars[i + 1..].iter().position(|&c| c == close) {
                out.push(chars[i + 1..i + 1 + len].iter().collect::<String>());
                i += len + 2;
                continue;
            }
        }
        i += 1;
    }
    if let Some((_, after)) = task.split_once(": ") {
        out.push(after.to_owned());
    }
    out.join("\n")
}

/// Everything a task has seen, as a set of words.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    words: HashSet<String>,
    /// Hashes of the texts added so far: a task adds its earlier steps'
    /// results again at every step, and a text already added adds no word.
    texts: HashSet<u64>,
    /// The keys `texts` are hashed with (fixed for the set's life).
    keys: std::hash::RandomState,
}

impl Seen {
    /// Adds the words of `text`. A text added before is skipped whole
    /// (one hash of it); in a new one, a word already known costs a
    /// lookup, not an allocation (ASCII words are lower-cased in one
    /// reused buffer).
    pub fn add(&mut self, text: &str) {
        use std::hash::BuildHasher;
        let digest = self.keys.hash_one(text);
        if !self.texts.insert(digest) {
            return;
        }
        let mut buf = String::new();
        for w in raw_words(text) {
            if !w.is_ascii() {
                self.words.insert(w.to_lowercase());
                continue;
            }
            buf.clear();
            buf.push_str(w);
            buf.make_ascii_lowercase();
            if !self.words.contains(buf.as_str()) {
                self.words.insert(buf.clone());
            }
        }
    }

    fn has(&self, word: &str) -> bool {
        self.words.contains(word)
    }

    /// The lines of `text` that are not grounded, when they are at least
    /// half of its lines that have words; else nothing.
    pub fn invented(&self, text: &str) -> Vec<String> {
        let mut lines = 0usize;
        let mut invented = Vec::new();
        for line in text.lines() {
            let ws: Vec<String> = words(line).collect();
            if ws.is_empty() {
                continue;
            }
            lines += 1;
            let known = ws.iter().filter(|w| self.has(w)).count();
            if known * 2 < ws.len() {
                invented.push(line.trim().to_owned());
            }
        }
        if lines > 0 && invented.len() * 2 >= lines {
            invented
        } else {
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adding_text_knows_the_same_words_as_lower_casing_each() {
        let text = "Read README.md, then ΣΟΦΟΣ wrote 42 Lines: Ärger a b 7 x_y ÖL.\nTODO: fix";
        let mut s = Seen::default();
        s.add(text);
        s.add(text);
        let expected: HashSet<String> = words(text).collect();
        assert_eq!(s.words, expected);
        // A text added again is skipped; new text still adds its words.
        assert_eq!(s.texts.len(), 1);
        s.add("Later: wombat");
        assert!(s.has("wombat") && s.has("later"));
        assert!(s.has("σοφος") || s.has("σοφοσ"), "{:?}", s.words);
        assert!(s.has("readme") && s.has("42") && s.has("7") && !s.has("a"));
    }

    fn seen(texts: &[&str]) -> Seen {
        let mut s = Seen::default();
        for t in texts {
            s.add(t);
        }
        s
    }

    #[test]
    fn text_made_up_instead_of_read_is_caught() {
        let s = seen(&[
            "Collect every TODO line under src/ into todo.md",
            r#"{"path":"src","entries":[{"name":"lib.rs","path":"src/lib.rs"}]}"#,
        ]);
        let text = "TODO lines:\n\n- [ ] Implement feature A\n- [ ] Fix bug B\n- [ ] Add test C\n";
        assert_eq!(
            s.invented(text),
            [
                "- [ ] Implement feature A",
                "- [ ] Fix bug B",
                "- [ ] Add test C"
            ]
        );
    }

    #[test]
    fn text_from_results_and_the_task_passes() {
        let s = seen(&[
            "Collect every TODO line under src/ into todo.md",
            r#"{"matches":[{"file":"src/main.rs","line":2,"text":"    // TODO: parse the command line"}]}"#,
            "content:\n// TODO: write the library\npub fn f() {}\n",
        ]);
        assert!(
            s.invented("# TODO lines\nsrc/main.rs:2: // TODO: parse the command line\n// TODO: write the library\n")
                .is_empty()
        );
        // Numbers and words the task gave.
        let s = seen(&[
            "Write the number of rows of data.csv into count.txt",
            "\"lines\":4",
        ]);
        assert!(s.invented("4\n").is_empty());
        assert!(s.invented("rows: 4").is_empty());
        // Empty text and lines without words are nothing to judge.
        assert!(s.invented("").is_empty());
        assert!(s.invented("---\n\n").is_empty());
    }

    #[test]
    fn text_the_task_gives_is_quoted_or_after_a_colon() {
        assert_eq!(
            given("Copy a.txt into b.txt and add the line 'copied' to log.txt"),
            "copied"
        );
        assert_eq!(given("Write that file's path to where.txt"), "");
        assert_eq!(
            given(r#"Replace "colour" with `color`: everywhere"#),
            "colour\ncolor\neverywhere"
        );
        assert_eq!(given("Collect every TODO line under src/ into todo.md"), "");
    }

    #[test]
    fn the_task_s_own_words_are_not_content_read() {
        // Only a listing was seen: the word the task searches for is not
        // a line found.
        let s = seen(&[r#"{"path":"src","entries":[{"name":"lib.rs"}]}"#]);
        assert_eq!(s.invented("TODO"), ["TODO"]);
    }

    #[test]
    fn a_few_made_up_lines_among_real_ones_pass() {
        let s = seen(&["alpha beta gamma delta"]);
        assert!(
            s.invented("alpha beta\ngamma delta\nsomething else entirely\n")
                .is_empty()
        );
        assert_eq!(
            s.invented("alpha beta\nsomething else entirely\n"),
            ["something else entirely"]
        );
    }
}
