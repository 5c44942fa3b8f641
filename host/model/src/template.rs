//! A model's own chat template, rendered with minijinja.
//!
//! GGUF files carry the Jinja template their model was tuned with
//! (`tokenizer.chat_template`). Rendering that template, rather than a
//! look-alike, gives the model exactly the turn markup and tool
//! declarations it was trained on: Qwen2.5's declares tools Hermes-style
//! (`<tools>` in the system turn, calls as `<tool_call>` blocks, results in
//! `<tool_response>` turns). The conversation is handed to it the way
//! Hugging Face's `apply_chat_template` does (OpenAI-style messages,
//! `tools` as function declarations), with the helpers templates expect:
//! `tojson` as Python's `json.dumps` writes (`", "`, `": "`, no HTML
//! escaping), `raise_exception`, `strftime_now`, Python string methods.
//!
//! Not here: tokenisation and decoding (the embedded backend).

use crate::{Message, Role, ToolSpec};
use serde_json::{Value, json};

/// A parsed chat template.
pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    source: String,
    bos: String,
    eos: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("hermes", &self.hermes())
            .finish_non_exhaustive()
    }
}

/// `value` as Python's `json.dumps(value, ensure_ascii=False)` writes it.
pub fn py_json(value: &Value) -> String {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PyFormatter);
    // Serialising a `Value` into memory cannot fail.
    let _ = serde::Serialize::serialize(value, &mut ser);
    String::from_utf8(out).unwrap_or_default()
}

/// serde_json's compact output with Python's default separators.
struct PyFormatter;

impl serde_json::ser::Formatter for PyFormatter {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
}

fn tojson(
    value: minijinja::Value,
    kwargs: minijinja::value::Kwargs,
) -> Result<minijinja::Value, minijinja::Error> {
    // `indent`, `separators`, `sort_keys` are accepted; the compact Python
    // form is what tool declarations use.
    let _: Option<minijinja::Value> = kwargs.get("indent")?;
    let json = serde_json::to_value(&value).map_err(|e| {
        minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string())
    })?;
    Ok(minijinja::Value::from_safe_string(py_json(&json)))
}

fn raise_exception(message: String) -> Result<minijinja::Value, minijinja::Error> {
    Err(minijinja::Error::new(
        minijinja::ErrorKind::InvalidOperation,
        format!("the chat template refused the conversation: {message}"),
    ))
}

/// `strftime_now(format)`: the date, for templates that print it. Only the
/// common `%Y`, `%m`, `%d`, `%B`, `%b` are filled in (UTC).
fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let name = MONTHS[(m - 1) as usize];
    format
        .replace("%Y", &y.to_string())
        .replace("%m", &format!("{m:02}"))
        .replace("%d", &format!("{d:02}"))
        .replace("%B", name)
        .replace("%b", &name[..3])
}

/// Days since 1970-01-01 → (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

impl ChatTemplate {
    /// Parses `source`; `bos`/`eos` are the model's special token texts.
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<Self, String> {
        let mut env = minijinja::Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.set_trim_blocks(false);
        env.set_lstrip_blocks(false);
        env.add_template_owned("chat", source.to_owned())
            .map_err(|e| format!("the chat template does not parse: {e}"))?;
        Ok(Self {
            env,
            source: source.to_owned(),
            bos: bos.to_owned(),
            eos: eos.to_owned(),
        })
    }

    /// Whether the template declares tools and renders calls Hermes-style.
    pub fn hermes(&self) -> bool {
        self.source.contains("<tool_call>") && self.source.contains("tools")
    }

    /// Renders the conversation; with `add_generation_prompt` it ends where
    /// the assistant's reply begins.
    pub fn render(
        &self,
        messages: &[Message],
        tools: &[ToolSpec],
        add_generation_prompt: bool,
    ) -> Result<String, String> {
        let messages: Vec<Value> = messages.iter().map(message_value).collect();
        let tools: Vec<Value> = tools.iter().map(tool_value).collect();
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| format!("chat template: {e}"))?;
        let mut ctx = json!({
            "messages": messages,
            "add_generation_prompt": add_generation_prompt,
            "bos_token": self.bos,
            "eos_token": self.eos,
        });
        if !tools.is_empty() {
            ctx["tools"] = Value::Array(tools);
        }
        tmpl.render(minijinja::Value::from_serialize(&ctx))
            .map_err(|e| format!("rendering the chat template: {e:#}"))
    }
}

/// A message as chat templates see it (OpenAI-style).
fn message_value(m: &Message) -> Value {
    let role = match m.role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    };
    let mut v = json!({"role": role, "content": m.content});
    if !m.tool_calls.is_empty() {
        v["tool_calls"] = m
            .tool_calls
            .iter()
            .map(|c| json!({"type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
            .collect();
        if m.content.is_empty() {
            v["content"] = Value::Null;
        }
    }
    if let Some(name) = &m.tool_name {
        v["name"] = json!(name);
    }
    v
}

/// A tool as a function declaration.
fn tool_value(t: &ToolSpec) -> Value {
    json!({
        "type": "function",
        "function": {"name": t.name, "description": t.description, "parameters": t.parameters}
    })
}

/// The GBNF around a call's arguments object: the Hermes markup of the
/// Qwen2.5 template (`<tool_call>\n{"name": "N", "arguments": …}\n</tool_call>`),
/// also accepted as a bare or fenced JSON object with any white space, the
/// forms small instruction-tuned models write calls in when not steered.
pub fn hermes_call_gbnf(name: &str) -> (String, String) {
    use crate::grammar::{json_str, lit};
    (
        format!(
            "(\"<tool_call>\" ws | \"```json\" ws | \"```\" ws)? \"{{\" ws {} ws {} ws \",\" ws {} ws",
            lit("\"name\":"),
            lit(&json_str(name)),
            lit("\"arguments\":"),
        ),
        "ws \"}\" ws (\"</tool_call>\" | \"```\")?".to_owned(),
    )
}

/// Reads `<tool_call>{…}</tool_call>` blocks out of a reply: the calls, and
/// the text around them.
pub fn parse_hermes_calls(text: &str, tools: &[&str]) -> (String, Vec<crate::ToolCall>) {
    // A bare or fenced JSON call (see `hermes_call_gbnf`).
    let mut bare = text.trim();
    for open in ["<tool_call>", "```json", "```"] {
        bare = bare.strip_prefix(open).unwrap_or(bare).trim_start();
    }
    for close in ["</tool_call>", "```"] {
        bare = bare.strip_suffix(close).unwrap_or(bare).trim_end();
    }
    if bare.starts_with('{')
        && let Ok(v) = serde_json::from_str::<Value>(bare)
        && let Some(name) = v.get("name").and_then(Value::as_str)
    {
        return (
            String::new(),
            vec![crate::ToolCall {
                name: name.to_owned(),
                arguments: v.get("arguments").cloned().unwrap_or_else(|| json!({})),
            }],
        );
    }
    let mut calls = Vec::new();
    let mut rest = String::new();
    let mut tail = text;
    while let Some(start) = tail.find("<tool_call>") {
        rest.push_str(&tail[..start]);
        let after = &tail[start + "<tool_call>".len()..];
        let (body, next) = match after.find("</tool_call>") {
            Some(end) => (&after[..end], &after[end + "</tool_call>".len()..]),
            None => (after, ""),
        };
        match serde_json::from_str::<Value>(body.trim()) {
            Ok(v) if v.get("name").and_then(Value::as_str).is_some() => {
                calls.push(crate::ToolCall {
                    name: v["name"].as_str().unwrap_or_default().to_owned(),
                    arguments: v.get("arguments").cloned().unwrap_or_else(|| json!({})),
                });
            }
            _ => {
                rest.push_str("<tool_call>");
                rest.push_str(body);
            }
        }
        tail = next;
    }
    rest.push_str(tail);
    if calls.is_empty() {
        return prose_call(&rest, tools);
    }
    (rest.trim().to_owned(), calls)
}

/// A call written into prose ("I will list the directory: ```json
/// {"name": …, "arguments": …} ```", or after a made-up `<command>` tag),
/// as Qwen models do when they describe a call instead of making it: the
/// first JSON object naming a declared tool is the call, the prose before
/// it the content. Only the first: what follows it was written against a
/// result the model imagined.
fn prose_call(text: &str, tools: &[&str]) -> (String, Vec<crate::ToolCall>) {
    for (at, _) in text.match_indices('{') {
        let mut values = serde_json::Deserializer::from_str(&text[at..]).into_iter::<Value>();
        let Some(Ok(v)) = values.next() else { continue };
        let Some(name) = v.get("name").and_then(Value::as_str) else {
            continue;
        };
        if !tools.contains(&name) || !v.get("arguments").is_none_or(Value::is_object) {
            continue;
        }
        let before = text[..at]
            .trim_end()
            .trim_end_matches("```json")
            .trim_end_matches("```");
        return (
            before.trim().to_owned(),
            vec![crate::ToolCall {
                name: name.to_owned(),
                arguments: v.get("arguments").cloned().unwrap_or_else(|| json!({})),
            }],
        );
    }
    (text.trim().to_owned(), Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ToolCall;

    /// The tool part of Qwen2.5's template, as its GGUFs ship it.
    const QWEN: &str = r#"{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"#;

    #[test]
    fn qwen_template_renders_tools_calls_and_results_hermes_style() {
        let t = ChatTemplate::new(QWEN, "", "<|im_end|>").unwrap();
        assert!(t.hermes());
        let tools = [ToolSpec {
            name: "read_file".into(),
            description: "Read a file".into(),
            parameters: json!({"type": "object", "properties": {"path": {"type": "string"}}})
                .into(),
        }];
        let messages = [
            Message::system("Be useful."),
            Message::user("Read a.txt"),
            Message {
                tool_calls: vec![ToolCall {
                    name: "read_file".into(),
                    arguments: json!({"path": "a.txt"}),
                }],
                ..Message::assistant("")
            },
            Message::tool("read_file", "{\"content\": \"hi\"}"),
        ];
        let p = t.render(&messages, &tools, true).unwrap();
        assert!(
            p.starts_with("<|im_start|>system\nBe useful.\n\n# Tools"),
            "{p}"
        );
        assert!(
            p.contains(
                "<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"read_file\", \"description\": \"Read a file\", \"parameters\": {\"type\": \"object\", \"properties\": {\"path\": {\"type\": \"string\"}}}}}\n</tools>"
            ),
            "{p}"
        );
        assert!(
            p.contains("<|im_start|>assistant\n<tool_call>\n{\"name\": \"read_file\", \"arguments\": {\"path\": \"a.txt\"}}\n</tool_call><|im_end|>"),
            "{p}"
        );
        assert!(
            p.contains("<|im_start|>user\n<tool_response>\n{\"content\": \"hi\"}\n</tool_response><|im_end|>"),
            "{p}"
        );
        assert!(p.ends_with("<|im_start|>assistant\n"), "{p}");
        // Without tools: plain ChatML.
        let p = t.render(&messages[..2], &[], true).unwrap();
        assert_eq!(
            p,
            "<|im_start|>system\nBe useful.<|im_end|>\n<|im_start|>user\nRead a.txt<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_json_and_template_helpers() {
        assert_eq!(
            py_json(&json!({"a": [1, "x<y"], "b": {"c": null}})),
            r#"{"a": [1, "x<y"], "b": {"c": null}}"#
        );
        let t =
            ChatTemplate::new("{{ raise_exception('no system role') }}", "<s>", "</s>").unwrap();
        let e = t.render(&[], &[], true).unwrap_err();
        assert!(e.contains("no system role"), "{e}");
        let t = ChatTemplate::new(
            "{{ bos_token }}{{ messages[0].content.strip() }}",
            "<s>",
            "",
        )
        .unwrap();
        assert_eq!(
            t.render(&[Message::user("  hi ")], &[], true).unwrap(),
            "<s>hi"
        );
        assert!(ChatTemplate::new("{% if %}", "", "").is_err());
        assert_eq!(civil_from_days(20_424), (2025, 12, 2));
    }

    fn parse_hermes_calls_t(text: &str) -> (String, Vec<ToolCall>) {
        parse_hermes_calls(text, &["grep", "list_dir"])
    }

    #[test]
    fn hermes_calls_are_read_out_of_replies() {
        let (text, calls) = parse_hermes_calls_t(
            "<tool_call>\n{\"name\": \"grep\", \"arguments\": {\"pattern\": \"x\"}}\n</tool_call>",
        );
        assert_eq!(text, "");
        assert_eq!(calls[0].name, "grep");
        assert_eq!(calls[0].arguments, json!({"pattern": "x"}));
        let (_, calls) = parse_hermes_calls_t(
            "```json\n{\n  \"name\": \"grep\",\n  \"arguments\": {\"pattern\": \"y\"}\n}\n```",
        );
        assert_eq!(calls[0].arguments, json!({"pattern": "y"}));
        let (_, calls) =
            parse_hermes_calls_t("{\"name\": \"grep\", \"arguments\": {}}\n</tool_call>");
        assert_eq!(calls[0].name, "grep");
        let (text, calls) = parse_hermes_calls_t("Done: the file holds 3 lines.");
        assert_eq!(
            (text.as_str(), calls.len()),
            ("Done: the file holds 3 lines.", 0)
        );
        let (text, calls) = parse_hermes_calls_t("<tool_call>\nnot json\n</tool_call>");
        assert_eq!(calls.len(), 0);
        assert!(text.contains("not json"));
        // A call explained in prose is still the call.
        let (text, calls) = parse_hermes_calls_t(
            "I will list the directory first.\n\n```json\n{\"name\": \"list_dir\", \"arguments\": {\"path\": \"src\"}}\n```\n\nThen I read it.",
        );
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].arguments, json!({"path": "src"}));
        assert_eq!(text, "I will list the directory first.");
        // After a made-up tag, and only the first of several.
        let (text, calls) = parse_hermes_calls_t(
            "To list it:\n<command>\n{\"name\": \"list_dir\", \"arguments\": {\"path\": \"a\"}}\n<response>\n{\"entries\": []}\n<command>{\"name\": \"grep\", \"arguments\": {}}",
        );
        assert_eq!((text.as_str(), calls.len()), ("To list it:\n<command>", 1));
        assert_eq!(calls[0].name, "list_dir");
        // A JSON object naming no declared tool is text.
        let (_, calls) = parse_hermes_calls_t("Found {\"name\": \"Ada\", \"arguments\": {}}");
        assert!(calls.is_empty());
        // Other code blocks stay text.
        let (text, calls) = parse_hermes_calls_t("The file says:\n```\nx = 1\n```");
        assert_eq!(
            (text.as_str(), calls.len()),
            ("The file says:\n```\nx = 1\n```", 0)
        );
    }
}
