//! The JSON tool protocol, for embedded models whose template does not
//! declare tools itself, and completion prompts for base models.
//!
//! A base model (like Gemma 3 270M) gets a transcript with `### Role`
//! headings that ends where the assistant's turn begins; a chat template
//! without tool markup gets the same tool description in its system turn.
//! Either way, when tools or a JSON format are requested the reply is
//! grammar-constrained: `{"tool": "<name>", "arguments": {…}}` to call a
//! tool, or else the requested format's JSON, or (no format) a plain-text
//! answer that cannot start with `{`.

use crate::grammar::{Alt, Bounds, GrammarError, alternatives_to_gbnf, schema_to_gbnf};
use crate::{ChatRequest, Message, Role, ToolCall};
use serde_json::{Value, json};

/// Heading that starts each turn of a completion prompt; generation of free
/// text stops when the model starts a new one.
pub const TURN: &str = "\n### ";

/// The system text plus what the embedded protocol needs the model to know.
pub fn system_text(req: &ChatRequest) -> String {
    let mut text: Vec<String> = req
        .messages
        .iter()
        .filter(|m| m.role == Role::System)
        .map(|m| m.content.clone())
        .collect();
    if !req.tools.is_empty() {
        let mut t = String::from(
            "You can use tools. To use one, reply with {\"tool\": \"<name>\", \"arguments\": {...}}. \
             The result comes back as a tool message. When you have what you need, reply with ",
        );
        if req.format.is_some() {
            t.push_str("the final answer as JSON.");
        } else {
            t.push_str("your answer as plain text.");
        }
        t.push_str("\nTools:");
        for tool in &req.tools {
            let args = tool.parameters.get("properties").map(|p| {
                p.as_object()
                    .map(|o| o.keys().cloned().collect::<Vec<_>>().join(", "))
                    .unwrap_or_default()
            });
            t.push_str(&format!(
                "\n- {}({}): {}",
                tool.name,
                args.unwrap_or_default(),
                tool.description
            ));
        }
        text.push(t);
    }
    if let Some(format) = &req.format {
        text.push(format!(
            "Reply with one JSON object matching this schema: {format}"
        ));
    }
    text.join("\n\n")
}

/// A message as transcript text (tool calls shown in the protocol's JSON).
fn body(m: &Message) -> String {
    if m.role == Role::Assistant && !m.tool_calls.is_empty() {
        let calls: Vec<String> = m
            .tool_calls
            .iter()
            .map(|c| json!({"tool": c.name, "arguments": c.arguments}).to_string())
            .collect();
        return calls.join("\n");
    }
    m.content.clone()
}

/// The completion prompt for a base model; `skip` drops that many of the
/// oldest non-system messages (to fit the context).
pub fn completion_prompt(req: &ChatRequest, skip: usize) -> String {
    let mut out = String::from(
        "Below is a conversation between a user and a capable assistant. The assistant follows \
         the instructions exactly and answers briefly.\n",
    );
    let system = system_text(req);
    if !system.is_empty() {
        out.push_str(&format!("{TURN}Instructions\n{system}\n"));
    }
    for m in req
        .messages
        .iter()
        .filter(|m| m.role != Role::System)
        .skip(skip)
    {
        let heading = match m.role {
            Role::User => "User".to_owned(),
            Role::Assistant => "Assistant".to_owned(),
            Role::Tool => format!("Tool result ({})", m.tool_name.as_deref().unwrap_or("tool")),
            Role::System => unreachable!("filtered"),
        };
        out.push_str(&format!("{TURN}{heading}\n{}\n", body(m)));
    }
    out.push_str(&format!("{TURN}Assistant\n"));
    out
}

/// A message for a chat template that does not declare tools itself: tool
/// calls as the JSON protocol writes them, results as user turns.
pub fn as_plain_turn(m: &Message) -> Message {
    match m.role {
        Role::Tool => Message::user(format!(
            "Tool result ({}):\n{}",
            m.tool_name.as_deref().unwrap_or("tool"),
            m.content
        )),
        Role::Assistant => Message::assistant(body(m)),
        _ => m.clone(),
    }
}

/// The grammar constraining the reply, if the request needs one.
pub fn grammar(req: &ChatRequest, bounds: Bounds) -> Result<Option<String>, GrammarError> {
    if req.tools.is_empty() {
        return req
            .format
            .as_ref()
            .map(|f| schema_to_gbnf(f, bounds))
            .transpose();
    }
    let names: Vec<Value> = req.callable().map(|t| json!({"const": t.name})).collect();
    let mut alts: Vec<Alt<'_>> = req
        .callable()
        .zip(&names)
        .map(|(t, n)| Alt::Shape(vec![("tool", n), ("arguments", &*t.parameters)]))
        .collect();
    match (&req.format, req.tool_choice) {
        (Some(format), _) => alts.push(Alt::Schema(format)),
        // The answer is plain text, as in the transcript's examples (a
        // base model that only ever saw JSON tool calls after `{` keeps
        // calling tools).
        (None, crate::ToolChoice::Auto) => alts.push(Alt::Text),
        (None, crate::ToolChoice::Required) => {}
    }
    alternatives_to_gbnf(&alts, bounds).map(Some)
}

/// Turns the constrained JSON text into content or a tool call.
pub fn interpret(req: &ChatRequest, text: &str) -> (String, Vec<ToolCall>) {
    if req.tools.is_empty() {
        return (text.trim().to_owned(), Vec::new());
    }
    if !text.trim_start().starts_with('{') {
        return (text.trim().to_owned(), Vec::new());
    }
    let Ok(value) = serde_json::from_str::<Value>(text.trim()) else {
        return (text.trim().to_owned(), Vec::new());
    };
    if let (Some(name), Some(args)) = (
        value.get("tool").and_then(Value::as_str),
        value.get("arguments"),
    ) {
        return (
            String::new(),
            vec![ToolCall {
                name: name.to_owned(),
                arguments: args.clone(),
            }],
        );
    }
    if req.format.is_none()
        && let Some(answer) = value.get("answer").and_then(Value::as_str)
    {
        return (answer.to_owned(), Vec::new());
    }
    (text.trim().to_owned(), Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ToolSpec;

    fn req_with_tools(format: Option<Value>) -> ChatRequest {
        ChatRequest {
            messages: vec![
                Message::system("Be useful."),
                Message::user("Read a.txt"),
                Message {
                    tool_calls: vec![ToolCall {
                        name: "read_file".into(),
                        arguments: json!({"path": "a.txt"}),
                    }],
                    ..Message::assistant("")
                },
                Message::tool("read_file", "{\"content\":\"hi\"}"),
            ],
            tools: vec![ToolSpec {
                name: "read_file".into(),
                description: "Read a file".into(),
                parameters: json!({"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}).into(),
            }],
            format,
            ..Default::default()
        }
    }

    #[test]
    fn completion_prompt_is_a_transcript_ending_at_the_assistant() {
        let p = completion_prompt(&req_with_tools(None), 0);
        assert!(p.contains("### Instructions\nBe useful."), "{p}");
        assert!(p.contains("- read_file(path): Read a file"), "{p}");
        assert!(
            p.contains(
                "### Assistant\n{\"arguments\":{\"path\":\"a.txt\"},\"tool\":\"read_file\"}"
            ) || p.contains("\"tool\":\"read_file\""),
            "{p}"
        );
        assert!(
            p.contains("### Tool result (read_file)\n{\"content\":\"hi\"}"),
            "{p}"
        );
        assert!(p.ends_with("### Assistant\n"), "{p}");
        let skipped = completion_prompt(&req_with_tools(None), 2);
        assert!(!skipped.contains("### User"), "{skipped}");
    }

    #[test]
    fn replies_become_tool_calls_or_answers() {
        let r = req_with_tools(None);
        let (c, calls) = interpret(&r, r#"{"tool":"read_file","arguments":{"path":"b"}}"#);
        assert!(c.is_empty());
        assert_eq!(calls[0].arguments, json!({"path": "b"}));
        let (c, calls) = interpret(&r, r#"{"answer":"done"}"#);
        assert_eq!((c.as_str(), calls.len()), ("done", 0));
        let (c, calls) = interpret(&r, "Found 2 lines:\na.rs:1: x\n");
        assert_eq!((c.as_str(), calls.len()), ("Found 2 lines:\na.rs:1: x", 0));
        let formatted = req_with_tools(Some(
            json!({"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}),
        ));
        let (c, _) = interpret(&formatted, r#"{"answer":"x"}"#);
        assert_eq!(c, r#"{"answer":"x"}"#);
    }

    #[test]
    fn grammars_cover_tools_answers_and_formats() {
        let g = grammar(&req_with_tools(None), Bounds::default())
            .unwrap()
            .unwrap();
        assert!(g.starts_with("root ::= alt0 | alt1"), "{g}");
        // Without a format the answer is free text, never opening with `{`
        // and never holding tool markup.
        assert!(
            g.contains(r#"alt1 ::= [^{<` \t\n\r\x00] ([^<\x00] | "<" [^t/|<\x00])* "<"?"#),
            "{g}"
        );
        // A required call leaves no text alternative.
        let must = ChatRequest {
            tool_choice: crate::ToolChoice::Required,
            ..req_with_tools(None)
        };
        let m = grammar(&must, Bounds::default()).unwrap().unwrap();
        assert!(m.starts_with("root ::= alt0\n"), "{m}");
        let f = grammar(
            &req_with_tools(Some(json!({"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}))),
            Bounds::default(),
        )
        .unwrap()
        .unwrap();
        assert!(f.starts_with("root ::= alt0 | alt1"), "{f}");
        let none = grammar(&ChatRequest::default(), Bounds::default()).unwrap();
        assert!(none.is_none());
        // A tool declared but unavailable for this reply is not callable.
        let mut two = must.clone();
        two.tools.push(ToolSpec {
            name: "finish".into(),
            description: "End".into(),
            parameters: json!({"type": "object", "properties": {"report": {"type": "string"}}})
                .into(),
        });
        let both = grammar(&two, Bounds::default()).unwrap().unwrap();
        assert!(
            both.starts_with("root ::= alt0 | alt1\n") && both.contains("finish"),
            "{both}"
        );
        two.unavailable = vec!["finish".into()];
        let one = grammar(&two, Bounds::default()).unwrap().unwrap();
        assert!(
            one.starts_with("root ::= alt0\n") && !one.contains("finish"),
            "{one}"
        );
    }
}
