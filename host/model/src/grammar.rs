//! JSON Schema → GBNF, compact: no free whitespace, bounded strings,
//! numbers and lists, properties in schema order. The embedded backend
//! constrains decoding with it, so its replies always parse and match the
//! requested schema (within the bounds below).
//!
//! Supported: `type` (string, integer, number, boolean, null, object, array,
//! or a list of them), `enum`, `const`, `properties` + `required` (optional
//! properties may be omitted), `items`, `minItems`/`maxItems`,
//! `minLength`/`maxLength`, `minimum >= 0` (no sign), `anyOf`/`oneOf`,
//! local `$ref`s (`#/$defs/…`, `#/definitions/…`), and `{}` (any JSON value).
//! Anything else is an error rather than a grammar that silently allows
//! more than the schema.

use serde_json::Value;
use std::collections::HashMap;
use std::fmt::Write as _;

/// Bounds that keep generations short and grammars small.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Longest string when the schema gives no `maxLength`.
    pub max_string: usize,
    /// Most array items when the schema gives no `maxItems`.
    pub max_items: usize,
    /// White space allowed around JSON punctuation (bounded), so a model
    /// writes JSON the way it learnt to: compact, `json.dumps`-spaced or
    /// pretty-printed. Compact only otherwise (the fewest tokens).
    pub loose: bool,
}

impl Default for Bounds {
    fn default() -> Self {
        Self {
            max_string: 512,
            max_items: 8,
            loose: false,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("cannot turn the JSON schema into a grammar at {at}: {reason}")]
pub struct GrammarError {
    pub at: String,
    pub reason: String,
}

/// Builds a grammar whose `root` matches exactly one JSON value of `schema`.
pub fn schema_to_gbnf(schema: &Value, bounds: Bounds) -> Result<String, GrammarError> {
    let mut b = Builder::new(schema, bounds);
    let root = b.value(schema, "#")?;
    b.finish(&root)
}

/// One alternative of a multi-way grammar.
#[derive(Debug, Clone)]
pub enum Alt<'a> {
    /// A JSON object with exactly these keys, in order, whose values follow
    /// the schemas (use `{"const": …}` for fixed values).
    Shape(Vec<(&'a str, &'a Value)>),
    /// Any value of this schema.
    Schema(&'a Value),
    /// A value of the schema between two GBNF expressions (e.g. a chat
    /// template's tool-call markup around the arguments object; see
    /// [`lit`] and the `ws` rule).
    Wrapped(&'a str, &'a Value, &'a str),
    /// Free text that does not start with `{`, `<`, a code fence or white
    /// space (so it cannot be a call or JSON written outside the grammar);
    /// it ends where generation stops.
    Text,
}

/// A grammar whose root is one of several alternatives (e.g. "call one of
/// these tools, or answer").
pub fn alternatives_to_gbnf(alts: &[Alt<'_>], bounds: Bounds) -> Result<String, GrammarError> {
    let empty = Value::Null;
    let mut b = Builder::new(&empty, bounds);
    let mut names = Vec::new();
    for (i, alt) in alts.iter().enumerate() {
        match alt {
            Alt::Shape(fields) => {
                let mut parts = vec![b.open('{')];
                for (j, (key, schema)) in fields.iter().enumerate() {
                    if j > 0 {
                        parts.push(b.comma());
                    }
                    parts.push(b.key(key));
                    b.root_schema = schema;
                    parts.push(b.value(schema, &format!("alt{i}.{key}"))?);
                }
                parts.push(b.close('}'));
                names.push(b.rule(&format!("alt{i}"), parts.join(" ")));
            }
            Alt::Schema(schema) => {
                b.root_schema = schema;
                b.ref_scope = i;
                let v = b.value(schema, &format!("alt{i}"))?;
                names.push(b.rule(&format!("alt{i}"), v));
            }
            Alt::Wrapped(before, schema, after) => {
                b.root_schema = schema;
                b.ref_scope = i;
                let v = b.value(schema, &format!("alt{i}"))?;
                names.push(b.rule(&format!("alt{i}"), format!("{before} {v} {after}")));
            }
            // Plain text. It cannot start like a call, and cannot hold a
            // `<t…`, `</…`, `<|…` or `<<` anywhere: a model that writes
            // `<tool_response>` into its reply is imagining a tool's answer
            // (measured: the 1.5B Qwen does, then claims the work done).
            Alt::Text => {
                names.push(b.rule(
                    &format!("alt{i}"),
                    r#"[^{<` \t\n\r\x00] ([^<\x00] | "<" [^t/|<\x00])* "<"?"#.into(),
                ));
            }
        }
    }
    let root = names.join(" | ");
    b.finish(&root)
}

/// A schema as a model needs to read it: without the keywords decoding
/// enforces anyway (`additionalProperties`, length and number bounds,
/// `minItems`/`maxItems`), which cost prompt tokens and say nothing the
/// model acts on.
pub fn declared(schema: &Value) -> Value {
    const ENFORCED: [&str; 8] = [
        "additionalProperties",
        "minLength",
        "maxLength",
        "minimum",
        "maximum",
        "minItems",
        "maxItems",
        "$schema",
    ];
    match schema {
        Value::Object(o) => Value::Object(
            o.iter()
                .filter(|(k, _)| !ENFORCED.contains(&k.as_str()))
                .map(|(k, v)| {
                    let v = match k.as_str() {
                        // Property names are data, not keywords.
                        "properties" | "$defs" | "definitions" => match v {
                            Value::Object(p) => Value::Object(
                                p.iter().map(|(n, s)| (n.clone(), declared(s))).collect(),
                            ),
                            other => other.clone(),
                        },
                        _ => declared(v),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(declared).collect()),
        other => other.clone(),
    }
}

/// `s` as a JSON string literal.
pub fn json_str(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

/// A GBNF string literal matching exactly `text`.
pub fn lit(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

struct Builder<'s> {
    root_schema: &'s Value,
    /// Distinguishes `$ref`s of different alternatives' schemas.
    ref_scope: usize,
    bounds: Bounds,
    rules: Vec<(String, String)>,
    by_body: HashMap<String, String>,
    refs: HashMap<String, String>,
    depth: usize,
}

const PRIMITIVES: &str = r#"char ::= [^"\\\x00-\x1F] | "\\" ["\\/bfnrt]
int ::= "-"? ("0" | [1-9] [0-9]{0,15})
uint ::= "0" | [1-9] [0-9]{0,15}
frac ::= "." [0-9]{1,8}
any ::= anyobj | anyarr | anystr | int frac? | "true" | "false" | "null"
anystr ::= "\"" char{0,512} "\""
ws ::= [ \t\n]{0,24}
"#;

fn any_containers(b: &Builder<'_>) -> String {
    let c = b.comma();
    let k = if b.bounds.loose { "\":\" ws" } else { "\":\"" };
    format!(
        "anyobj ::= {} (anystr {k} any ({c} anystr {k} any){{0,15}})? {}\n\
         anyarr ::= {} (any ({c} any){{0,15}})? {}\n",
        b.open('{'),
        b.close('}'),
        b.open('['),
        b.close(']'),
    )
}

impl<'s> Builder<'s> {
    fn new(root_schema: &'s Value, bounds: Bounds) -> Self {
        Self {
            root_schema,
            ref_scope: 0,
            bounds,
            rules: Vec::new(),
            by_body: HashMap::new(),
            refs: HashMap::new(),
            depth: 0,
        }
    }

    fn finish(self, root: &str) -> Result<String, GrammarError> {
        let mut out = format!("root ::= {root}\n");
        for (name, body) in &self.rules {
            let _ = writeln!(out, "{name} ::= {body}");
        }
        out.push_str(PRIMITIVES);
        out.push_str(&any_containers(&self));
        Ok(out)
    }

    /// The separator between items (GBNF).
    fn comma(&self) -> String {
        if self.bounds.loose {
            "\",\" ws".into()
        } else {
            "\",\"".into()
        }
    }

    /// A property name and its colon (GBNF).
    fn key(&self, key: &str) -> String {
        let k = lit(&format!("{}:", json_str(key)));
        if self.bounds.loose {
            format!("{k} ws")
        } else {
            k
        }
    }

    fn open(&self, c: char) -> String {
        if self.bounds.loose {
            format!("{} ws", lit(&c.to_string()))
        } else {
            lit(&c.to_string())
        }
    }

    fn close(&self, c: char) -> String {
        if self.bounds.loose {
            format!("ws {}", lit(&c.to_string()))
        } else {
            lit(&c.to_string())
        }
    }

    /// Adds a rule (deduplicated by body) and returns its name.
    fn rule(&mut self, hint: &str, body: String) -> String {
        if let Some(name) = self.by_body.get(&body) {
            return name.clone();
        }
        let base: String = hint
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect::<String>()
            .trim_matches('-')
            .to_owned();
        let base = if base.is_empty() {
            "r".to_owned()
        } else {
            base
        };
        let mut name = base.clone();
        let mut n = 1;
        while self.rules.iter().any(|(r, _)| *r == name)
            || [
                "root", "char", "int", "uint", "frac", "any", "anystr", "anyobj", "anyarr",
            ]
            .contains(&name.as_str())
        {
            n += 1;
            name = format!("{base}{n}");
        }
        self.by_body.insert(body.clone(), name.clone());
        self.rules.push((name.clone(), body));
        name
    }

    fn err(at: &str, reason: impl Into<String>) -> GrammarError {
        GrammarError {
            at: at.to_owned(),
            reason: reason.into(),
        }
    }

    /// An expression matching one value of `schema`.
    fn value(&mut self, schema: &Value, at: &str) -> Result<String, GrammarError> {
        self.depth += 1;
        if self.depth > 32 {
            return Err(Self::err(at, "nested too deeply"));
        }
        let r = self.value_inner(schema, at);
        self.depth -= 1;
        r
    }

    fn value_inner(&mut self, schema: &Value, at: &str) -> Result<String, GrammarError> {
        let obj = match schema {
            Value::Bool(true) => return Ok("any".into()),
            Value::Object(o) => o,
            _ => return Err(Self::err(at, "a schema must be an object")),
        };
        if let Some(r) = obj.get("$ref").and_then(Value::as_str) {
            return self.reference(r, at);
        }
        if let Some(c) = obj.get("const") {
            return Ok(lit(&c.to_string()));
        }
        if let Some(e) = obj.get("enum") {
            let values = e
                .as_array()
                .ok_or_else(|| Self::err(at, "enum must be a list"))?;
            if values.is_empty() {
                return Err(Self::err(at, "enum is empty"));
            }
            let alts: Vec<String> = values.iter().map(|v| lit(&v.to_string())).collect();
            return Ok(format!("({})", alts.join(" | ")));
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(list) = obj.get(key) {
                let list = list
                    .as_array()
                    .ok_or_else(|| Self::err(at, format!("{key} must be a list")))?;
                let mut alts = Vec::new();
                for (i, s) in list.iter().enumerate() {
                    alts.push(self.value(s, &format!("{at}/{key}/{i}"))?);
                }
                return Ok(format!("({})", alts.join(" | ")));
            }
        }
        match obj.get("type") {
            Some(Value::String(t)) => self.typed(t, obj, at),
            Some(Value::Array(ts)) => {
                let mut alts = Vec::new();
                for t in ts {
                    let t = t
                        .as_str()
                        .ok_or_else(|| Self::err(at, "type list must hold strings"))?;
                    alts.push(self.typed(t, obj, at)?);
                }
                Ok(format!("({})", alts.join(" | ")))
            }
            Some(_) => Err(Self::err(at, "type must be a string or a list")),
            None if obj.contains_key("properties") => self.typed("object", obj, at),
            None if obj.contains_key("items") => self.typed("array", obj, at),
            None => Ok("any".into()),
        }
    }

    fn reference(&mut self, r: &str, at: &str) -> Result<String, GrammarError> {
        let key = format!("{}{r}", self.ref_scope);
        if let Some(name) = self.refs.get(&key) {
            return Ok(name.clone());
        }
        let path = r
            .strip_prefix("#/")
            .ok_or_else(|| Self::err(at, format!("only local $refs are supported, not `{r}`")))?;
        let mut target = self.root_schema;
        for part in path.split('/') {
            target = target
                .get(part)
                .ok_or_else(|| Self::err(at, format!("$ref `{r}` points nowhere")))?;
        }
        // Reserve the name first so recursive references terminate.
        let name = format!("ref-{}", self.refs.len() + 1);
        self.refs.insert(key, name.clone());
        self.rules.push((name.clone(), String::new()));
        let body = self.value(&target.clone(), r)?;
        if let Some(slot) = self.rules.iter_mut().find(|(n, _)| *n == name) {
            slot.1 = body;
        }
        Ok(name)
    }

    fn typed(
        &mut self,
        t: &str,
        obj: &serde_json::Map<String, Value>,
        at: &str,
    ) -> Result<String, GrammarError> {
        let usize_of = |k: &str| obj.get(k).and_then(Value::as_u64).map(|n| n as usize);
        match t {
            "string" => {
                let max = usize_of("maxLength")
                    .unwrap_or(self.bounds.max_string)
                    .min(4096);
                let min = usize_of("minLength").unwrap_or(0).min(max);
                Ok(self.rule(
                    &format!("str-{min}-{max}"),
                    format!("\"\\\"\" char{{{min},{max}}} \"\\\"\""),
                ))
            }
            "integer" => {
                let non_negative = obj
                    .get("minimum")
                    .and_then(Value::as_f64)
                    .is_some_and(|m| m >= 0.0);
                Ok(if non_negative {
                    "uint".into()
                } else {
                    "int".into()
                })
            }
            "number" => {
                let non_negative = obj
                    .get("minimum")
                    .and_then(Value::as_f64)
                    .is_some_and(|m| m >= 0.0);
                Ok(if non_negative {
                    "(uint frac?)".into()
                } else {
                    "(int frac?)".into()
                })
            }
            "boolean" => Ok("(\"true\" | \"false\")".into()),
            "null" => Ok("\"null\"".into()),
            "array" => {
                let item = match obj.get("items") {
                    Some(s) => self.value(s, &format!("{at}/items"))?,
                    None => "any".into(),
                };
                let max = usize_of("maxItems")
                    .unwrap_or(self.bounds.max_items)
                    .clamp(0, 64);
                let min = usize_of("minItems").unwrap_or(0).min(max);
                let c = self.comma();
                let (o, z) = (self.open('['), self.close(']'));
                let body = match (min, max) {
                    (_, 0) => format!("{o} {z}"),
                    (0, 1) => format!("{o} {item}? {z}"),
                    (0, max) => format!("{o} ({item} ({c} {item}){{0,{}}})? {z}", max - 1),
                    (min, max) => format!("{o} {item} ({c} {item}){{{},{}}} {z}", min - 1, max - 1),
                };
                Ok(self.rule(&format!("{at}-arr"), body))
            }
            "object" => self.object(obj, at),
            other => Err(Self::err(at, format!("unsupported type `{other}`"))),
        }
    }

    fn object(
        &mut self,
        obj: &serde_json::Map<String, Value>,
        at: &str,
    ) -> Result<String, GrammarError> {
        let empty = serde_json::Map::new();
        let props = match obj.get("properties") {
            Some(Value::Object(p)) => p,
            Some(_) => return Err(Self::err(at, "properties must be an object")),
            None => &empty,
        };
        let required: Vec<&str> = obj
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        for r in &required {
            if !props.contains_key(*r) {
                return Err(Self::err(
                    at,
                    format!("required property `{r}` has no schema"),
                ));
            }
        }
        // Properties come in the schema's order (its author's: "where" before
        // "what"), required ones always, optional ones when the model wants.
        let mut pairs = Vec::new();
        for (key, schema) in props {
            let v = self.value(schema, &format!("{at}/properties/{key}"))?;
            let pair = format!("{} {v}", self.key(key));
            pairs.push((pair, required.contains(&key.as_str())));
        }
        // After a first property, each later one is `, pair` (optional ones
        // in `( )?`). The first is any property up to the first required one.
        let c = self.comma();
        let tail = |from: usize| -> String {
            pairs[from..]
                .iter()
                .map(|(p, req)| {
                    if *req {
                        format!("{c} {p}")
                    } else {
                        format!("({c} {p})?")
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        };
        let last_first = pairs
            .iter()
            .position(|(_, req)| *req)
            .unwrap_or(pairs.len().saturating_sub(1));
        let (o, z) = (self.open('{'), self.close('}'));
        let body = if pairs.is_empty() {
            format!("{o} {z}")
        } else {
            let firsts: Vec<String> = (0..=last_first)
                .map(|i| {
                    format!("{} {}", pairs[i].0, tail(i + 1))
                        .trim_end()
                        .to_owned()
                })
                .collect();
            let any_required = pairs.iter().any(|(_, r)| *r);
            let inner = format!("({})", firsts.join(" | "));
            if any_required {
                format!("{o} {inner} {z}")
            } else {
                format!("{o} {inner}? {z}")
            }
        };
        Ok(self.rule(&format!("{at}-obj"), body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn gbnf(schema: Value) -> String {
        schema_to_gbnf(&schema, Bounds::default()).unwrap()
    }

    #[test]
    fn plan_schema_becomes_a_closed_grammar() {
        let g = gbnf(json!({
            "type": "object",
            "properties": {
                "steps": {"type": "array", "maxItems": 4, "items": {
                    "type": "object",
                    "properties": {
                        "crew": {"enum": ["belter", "drummer"]},
                        "instruction": {"type": "string", "maxLength": 200}
                    },
                    "required": ["crew", "instruction"]
                }}
            },
            "required": ["steps"]
        }));
        assert!(g.starts_with("root ::= "), "{g}");
        assert!(g.contains(r#"("\"belter\"" | "\"drummer\"")"#), "{g}");
        assert!(g.contains("char{0,200}"), "{g}");
        assert!(g.contains("{0,3}"), "{g}");
        assert!(!g.contains(" ws "), "no free whitespace: {g}");
    }

    #[test]
    fn optional_properties_may_be_left_out() {
        let g = gbnf(json!({"type": "object", "properties": {
            "path": {"type": "string"}, "offset": {"type": "integer", "minimum": 0}
        }, "required": ["path"]}));
        assert!(g.contains(r#"("," "\"offset\":" uint)?"#), "{g}");
        let g = gbnf(
            json!({"type": "object", "properties": {"a": {"type": "boolean"}, "b": {"type": "null"}}}),
        );
        assert!(g.contains("\"{\" (") && g.contains(")? \"}\""), "{g}");
    }

    #[test]
    fn properties_keep_the_schema_order() {
        // An optional `path` before the required `pattern`: either may
        // open the object, and `path` can never follow `pattern`.
        let g = gbnf(json!({"type": "object", "properties": {
            "path": {"type": "string"}, "pattern": {"type": "string"}, "max": {"type": "integer", "minimum": 0}
        }, "required": ["pattern"]}));
        let obj = g.lines().find(|l| l.contains("pattern")).unwrap();
        let path = obj.find(r#""\"path\":""#).unwrap();
        let pattern = obj.find(r#""\"pattern\":""#).unwrap();
        assert!(path < pattern, "{obj}");
        assert!(obj.contains(r#"("," "\"max\":" uint)?"#), "{obj}");
        assert_eq!(obj.matches(r#""\"path\":""#).count(), 1, "{obj}");
        assert_eq!(obj.matches(r#""\"pattern\":""#).count(), 2, "{obj}");
    }

    #[test]
    fn refs_unions_and_any() {
        let g = gbnf(json!({
            "$defs": {"node": {"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}},
            "$ref": "#/$defs/node"
        }));
        assert!(g.contains("ref-1 ::= "), "{g}");
        let g = gbnf(json!({"type": ["string", "null"]}));
        assert!(g.contains("\"null\""), "{g}");
        let g = gbnf(json!({}));
        assert!(g.starts_with("root ::= any"), "{g}");
    }

    #[test]
    fn unsupported_schemas_are_errors() {
        let e = schema_to_gbnf(&json!({"type": "date"}), Bounds::default()).unwrap_err();
        assert!(e.reason.contains("unsupported type"));
        assert!(schema_to_gbnf(&json!({"$ref": "http://x/y"}), Bounds::default()).is_err());
        assert!(
            schema_to_gbnf(
                &json!({"type": "object", "required": ["x"]}),
                Bounds::default()
            )
            .is_err()
        );
        assert!(schema_to_gbnf(&json!(5), Bounds::default()).is_err());
    }

    #[test]
    fn alternatives_mix_shapes_and_schemas() {
        let args = json!({"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]});
        let name = json!({"const": "read_file"});
        let text = json!({"type": "string"});
        let g = alternatives_to_gbnf(
            &[
                Alt::Shape(vec![("tool", &name), ("arguments", &args)]),
                Alt::Shape(vec![("answer", &text)]),
                Alt::Schema(&args),
            ],
            Bounds::default(),
        )
        .unwrap();
        assert!(g.starts_with("root ::= alt0 | alt1 | alt2"), "{g}");
        assert!(g.contains(r#""\"read_file\"""#), "{g}");
    }
}
