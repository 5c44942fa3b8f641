//! Evidence copying for small models.
//!
//! A 270M model asked to write down lines it was shown starts copying them
//! but drifts to its frequent tokens (`main` for `lib`, `12` for `1`) and
//! skips the lines it likes less. This is the pointer idea of
//! copy/pointer-generator decoders, kept to a bias: while the reply is
//! inside a JSON string and the text of its current line is a prefix of a
//! string the request showed as evidence, the token that continues that
//! string gets a bonus. Where several evidence strings continue the line,
//! the earliest one the reply has not yet written wins, so lists come out
//! whole and in order.
//!
//! What counts as evidence: the JSON string values in the last user
//! message and the tool results after it, and the words between them (a
//! file name in an instruction) — not the earlier turns, which hold the
//! worked examples. Strings are compared in their escaped (JSON)
//! form, as the reply writes them, and split at `\n` into lines. The model
//! chooses a line's first token itself (except the next item of a list it
//! is copying), a line that has left every evidence string gets no bonus,
//! and a line that already is a whole evidence string is not pushed on to
//! a longer one where the model would end the string (the picker checks
//! that; a list item still gets its line break).
//! What earlier turns of the same exchange wrote (a tool call's arguments)
//! counts as written, so a second call is not pushed to repeat the first.

use crate::{ChatRequest, Role};

/// Logit bonus for the token that continues the evidence.
pub const BONUS: f32 = 5.0;
/// Evidence strings shorter than this (in bytes) are not worth copying.
const MIN_SPAN: usize = 3;

/// One evidence line.
#[derive(Debug, Clone, PartialEq)]
struct Span {
    text: String,
    /// The list it belongs to: the items of one JSON array, or the lines
    /// of one string. Written one after the other, they are one line each.
    list: Option<usize>,
}

/// The copy state of one reply.
#[derive(Debug, Default)]
pub struct Copier {
    /// Evidence lines, escaped, in the order they were shown.
    spans: Vec<Span>,
    /// The reply so far.
    out: String,
    in_string: bool,
    escape: bool,
    /// Where the current line of the current string starts in `out`.
    line_start: usize,
    /// The previous line of the current string, if it ended with `\n`.
    prev_line: Option<(usize, usize)>,
}

impl Copier {
    /// The evidence of `req`: JSON strings and words of its last user
    /// message and the tool results after it. `None` when there is none.
    pub fn for_request(req: &ChatRequest) -> Option<Self> {
        let last_user = req.messages.iter().rposition(|m| m.role == Role::User)?;
        let mut spans: Vec<Span> = Vec::new();
        let mut lists = 0;
        // The replies since, as the prompt shows them: already written.
        let mut out = String::new();
        for m in &req.messages[last_user..] {
            match m.role {
                Role::User | Role::Tool => {
                    for s in string_lines(&m.content, &mut lists) {
                        if s.text.len() >= MIN_SPAN && !spans.iter().any(|o| o.text == s.text) {
                            spans.push(s);
                        }
                    }
                }
                Role::Assistant => {
                    out.push_str(&m.content);
                    for c in &m.tool_calls {
                        out.push_str(&c.arguments.to_string());
                    }
                    out.push('\n');
                }
                Role::System => {}
            }
        }
        let line_start = out.len();
        (!spans.is_empty()).then(|| Self {
            spans,
            out,
            line_start,
            ..Self::default()
        })
    }

    /// Whether the current line already is a whole evidence string.
    pub fn line_is_whole(&self) -> bool {
        self.in_string && {
            let line = &self.out[self.line_start..];
            self.spans.iter().any(|s| s.text == line)
        }
    }

    /// Feeds the text of the token just chosen.
    pub fn push(&mut self, piece: &str) {
        for c in piece.chars() {
            self.out.push(c);
            if !self.in_string {
                if c == '"' {
                    self.in_string = true;
                    self.line_start = self.out.len();
                    self.prev_line = None;
                }
            } else if self.escape {
                self.escape = false;
                if c == 'n' {
                    self.prev_line = Some((self.line_start, self.out.len() - 2));
                    self.line_start = self.out.len();
                }
            } else if c == '\\' {
                self.escape = true;
            } else if c == '"' {
                self.in_string = false;
            }
        }
    }

    /// What continues the evidence the current line is copying, if
    /// anything:
    /// - of the unwritten evidence lines that the current (non-empty) line
    ///   is a proper prefix of, the rest of the first shown;
    /// - when the line is a whole item of a list whose next item is not
    ///   written yet, a line break, and on the next line that item.
    pub fn continuation(&self) -> Option<&str> {
        if !self.in_string || self.escape {
            return None;
        }
        let line = &self.out[self.line_start..];
        let written = &self.out[..self.line_start];
        if line.is_empty() {
            let (a, b) = self.prev_line?;
            return self.next_item(&self.out[a..b], written);
        }
        if let Some(s) = self.spans.iter().find(|s| {
            s.text.len() > line.len() && s.text.starts_with(line) && !written.contains(&s.text)
        }) {
            return Some(&s.text[line.len()..]);
        }
        self.next_item(line, written).map(|_| "\\n")
    }

    /// The next unwritten item of the list `item` is a whole item of.
    fn next_item(&self, item: &str, written: &str) -> Option<&str> {
        let (at, whole) = self
            .spans
            .iter()
            .enumerate()
            .find(|(_, s)| s.text == item && s.list.is_some())?;
        self.spans[at + 1..]
            .iter()
            .find(|s| s.list == whole.list && !written.contains(&s.text))
            .map(|s| s.text.as_str())
    }
}

/// The contents of the JSON string literals in `text`, escaped as written,
/// each split at `\n` escapes into lines, and the words outside them (a
/// file name in an instruction); `lists` numbers the lists.
fn string_lines(text: &str, lists: &mut usize) -> Vec<Span> {
    let mut spans = Vec::new();
    // Open arrays and objects: `Some(list)` for an array.
    let mut open: Vec<Option<usize>> = Vec::new();
    let mut word = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c.is_whitespace() || matches!(c, '[' | ']' | '{' | '}' | '"' | ',') {
            spans.extend(word_span(&word));
            word.clear();
        }
        match c {
            '[' => {
                *lists += 1;
                open.push(Some(*lists));
                continue;
            }
            '{' => {
                open.push(None);
                continue;
            }
            ']' | '}' => {
                open.pop();
                continue;
            }
            '"' => {}
            c => {
                if !c.is_whitespace() && c != ',' {
                    word.push(c);
                }
                continue;
            }
        }
        let mut lines = vec![String::new()];
        let mut closed = false;
        while let Some(c) = chars.next() {
            match c {
                '"' => {
                    closed = true;
                    break;
                }
                '\\' => match chars.next() {
                    Some('n') => lines.push(String::new()),
                    Some(e) => {
                        let cur = lines.last_mut().expect("never empty");
                        cur.push('\\');
                        cur.push(e);
                    }
                    None => break,
                },
                c => lines.last_mut().expect("never empty").push(c),
            }
        }
        if !closed {
            break;
        }
        lines.retain(|l| !l.trim().is_empty());
        let list = if lines.len() > 1 {
            *lists += 1;
            Some(*lists)
        } else {
            open.last().copied().flatten()
        };
        spans.extend(lines.into_iter().map(|text| Span { text, list }));
    }
    spans.extend(word_span(&word));
    spans
}

/// A word of prose as evidence, without the punctuation around it.
fn word_span(word: &str) -> Option<Span> {
    let w = word
        .trim_start_matches(['(', '`', '\'', ':'])
        .trim_end_matches(['.', ',', ';', ':', ')', '!', '?', '`', '\'']);
    (!w.contains('\\')).then(|| Span {
        text: w.to_owned(),
        list: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Message;

    fn copier(user: &str, tool: &str) -> Copier {
        let req = ChatRequest {
            messages: vec![
                Message::user(r#"example: {"lines":["a/x.rs:9:// old example"]}"#),
                Message::assistant("ok"),
                Message::user(user),
                Message::tool("grep", tool),
            ],
            ..Default::default()
        };
        Copier::for_request(&req).expect("evidence")
    }

    #[test]
    fn evidence_is_the_strings_of_the_last_turn_split_into_lines() {
        let c = copier(
            r#"Results: {"path":"src/","text":"one\ntwo \"quoted\""} to todo.md."#,
            r#"{"lines":["src/lib.rs:1:// TODO: a"],"n":2}"#,
        );
        let texts: Vec<&str> = c.spans.iter().map(|s| s.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "Results",
                "path",
                "src/",
                "text",
                "one",
                r#"two \"quoted\""#,
                "todo.md",
                "lines",
                "src/lib.rs:1:// TODO: a"
            ]
        );
        assert!(!texts.iter().any(|s| s.contains("old example")));
        // The lines of one string are a list, as are an array's items.
        assert_eq!(c.spans[4].list, c.spans[5].list);
        assert!(c.spans[4].list.is_some());
        assert_eq!(c.spans[2].list, None);
    }

    #[test]
    fn a_started_line_continues_the_earliest_unwritten_evidence_line() {
        let mut c = copier(
            "Write them down.",
            r#"{"lines":["src/lib.rs:1:// TODO: a","src/main.rs:2:    // TODO: b"]}"#,
        );
        c.push(r#"{"content":""#);
        // The model chooses the first token itself.
        assert_eq!(c.continuation(), None);
        c.push("src/");
        assert_eq!(c.continuation(), Some("lib.rs:1:// TODO: a"));
        c.push("lib.rs:1:// TODO: a");
        // A whole item of a list goes on to the next item.
        assert_eq!(c.continuation(), Some("\\n"));
        c.push("\\n");
        // And the next line starts it.
        assert_eq!(c.continuation(), Some("src/main.rs:2:    // TODO: b"));
        c.push("src/");
        // The written line is used up: the next one is offered.
        assert_eq!(c.continuation(), Some("main.rs:2:    // TODO: b"));
        c.push("main.rs:2:    // TODO: b");
        // The list is written: ending it is the model's choice.
        assert_eq!(c.continuation(), None);
        c.push("\\nsrc/main.rs:3");
        // Off the evidence: no bonus.
        assert_eq!(c.continuation(), None);
        c.push("\"}");
        assert_eq!(c.continuation(), None);
    }

    #[test]
    fn a_whole_string_is_known_and_escapes_are_followed() {
        let mut c = copier(
            "Read the file.",
            r#"{"file":"src/lib.rs","lines":["src/lib.rs:1:say \"hi\""]}"#,
        );
        c.push(r#"{"path":"src/lib.rs"#);
        // A path that is a whole string: the picker lets the model end it.
        assert!(c.line_is_whole());
        assert_eq!(c.continuation(), Some(":1:say \\\"hi\\\""));
        c.push(r#":1:say \""#);
        assert!(!c.line_is_whole());
        assert_eq!(c.continuation(), Some(r#"hi\""#));
        c.push(r#"hi\""#);
        assert!(c.line_is_whole());
        c.push("\"");
        assert_eq!(c.continuation(), None);
        assert!(!c.line_is_whole());
    }

    #[test]
    fn earlier_calls_of_the_exchange_count_as_written() {
        let req = ChatRequest {
            messages: vec![
                Message::user("Read the files."),
                Message {
                    tool_calls: vec![crate::ToolCall {
                        name: "read_file".into(),
                        arguments: serde_json::json!({"path": "src/a.rs"}),
                    }],
                    ..Message::assistant("")
                },
                Message::tool("find_files", r#"{"matches":["src/a.rs","src/b.rs"]}"#),
            ],
            ..Default::default()
        };
        let mut c = Copier::for_request(&req).unwrap();
        c.push(r#"{"path":"src/"#);
        assert_eq!(c.continuation(), Some("b.rs"));
    }

    #[test]
    fn no_evidence_no_copier() {
        let req = ChatRequest {
            messages: vec![Message::system("Be brief."), Message::user("do it")],
            ..Default::default()
        };
        assert!(Copier::for_request(&req).is_none());
        let req = ChatRequest {
            messages: vec![Message::system("Only a system message.")],
            ..Default::default()
        };
        assert!(Copier::for_request(&req).is_none());
    }
}
