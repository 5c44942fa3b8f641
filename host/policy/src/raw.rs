//! The policy file format, as serde sees it, and its validation.

use crate::fs::{Access, Mount, normalise_guest, parse_host};
use crate::locate::locate;
use crate::{Crew, Error, Limits, NetPolicy, Policy, Result, hash_text};
use serde::Deserialize;
use std::ops::Range;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    plugin: Spanned<String>,
    #[serde(default)]
    crew: Option<Crew>,
    #[serde(default)]
    fs: Vec<RawMount>,
    #[serde(default)]
    net: RawAllow,
    #[serde(default)]
    env: RawAllow,
    #[serde(default)]
    limits: RawLimits,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMount {
    host: Spanned<String>,
    guest: Spanned<String>,
    #[serde(default)]
    access: Option<Access>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAllow {
    #[serde(default)]
    allow: Vec<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    memory_mib: Option<Spanned<u32>>,
    timeout_ms: Option<Spanned<u64>>,
    max_output_kib: Option<Spanned<u32>>,
}

struct Ctx<'a> {
    text: &'a str,
    file: &'a str,
}

impl Ctx<'_> {
    fn error(&self, span: Range<usize>, reason: impl Into<String>) -> Error {
        let at = locate(self.text, span.start);
        Error::Invalid {
            file: self.file.to_owned(),
            line: at.line,
            column: at.column,
            key: at.key,
            reason: reason.into(),
        }
    }

    fn bounded<T: PartialOrd + Copy + std::fmt::Display>(
        &self,
        value: Option<&Spanned<T>>,
        min: T,
        max: T,
        default: T,
        unit: &str,
    ) -> Result<T> {
        let Some(v) = value else { return Ok(default) };
        let n = *v.get_ref();
        if n < min || n > max {
            return Err(self.error(
                v.span(),
                format!("{n} is out of range: must be from {min} to {max} {unit}"),
            ));
        }
        Ok(n)
    }
}

/// A plugin name: lower-case ASCII letters, digits, `-` and `_`, starting
/// with a letter or digit, at most 64 bytes. Names become file names in the
/// plugin store, so nothing else may pass.
pub fn valid_plugin_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name.len() <= 64
}

fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

pub(crate) fn parse(text: &str, file: &str) -> Result<Policy> {
    let cx = Ctx { text, file };
    let raw: RawPolicy = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        cx.error(span, e.message().trim().to_owned())
    })?;

    let plugin = raw.plugin.get_ref().clone();
    if !valid_plugin_name(&plugin) {
        return Err(cx.error(
            raw.plugin.span(),
            format!(
                "`{plugin}` is not a plugin name: use 1-64 lower-case letters, digits, `-` or `_`"
            ),
        ));
    }

    let mut mounts: Vec<Mount> = Vec::new();
    for m in &raw.fs {
        let host = parse_host(m.host.get_ref()).map_err(|e| cx.error(m.host.span(), e))?;
        let guest = normalise_guest(m.guest.get_ref()).map_err(|e| cx.error(m.guest.span(), e))?;
        if mounts.iter().any(|other| other.guest == guest) {
            return Err(cx.error(
                m.guest.span(),
                format!("guest path {guest} is mounted twice"),
            ));
        }
        mounts.push(Mount {
            host,
            guest,
            access: m.access.unwrap_or(Access::Read),
        });
    }

    let net = NetPolicy::parse(
        &raw.net
            .allow
            .iter()
            .map(|s| s.get_ref().as_str())
            .collect::<Vec<_>>(),
    )
    .map_err(|(i, e)| cx.error(raw.net.allow[i].span(), e))?;

    let mut env: Vec<String> = Vec::new();
    for name in &raw.env.allow {
        let n = name.get_ref();
        if !valid_env_name(n) {
            return Err(cx.error(
                name.span(),
                format!("`{n}` is not an environment variable name"),
            ));
        }
        if env.contains(n) {
            return Err(cx.error(name.span(), format!("`{n}` is listed twice")));
        }
        env.push(n.clone());
    }

    let l = &raw.limits;
    let limits = Limits {
        memory_mib: cx.bounded(
            l.memory_mib.as_ref(),
            1,
            Limits::MAX_MEMORY_MIB,
            Limits::DEFAULT_MEMORY_MIB,
            "MiB",
        )?,
        timeout_ms: cx.bounded(
            l.timeout_ms.as_ref(),
            1,
            Limits::MAX_TIMEOUT_MS,
            Limits::DEFAULT_TIMEOUT_MS,
            "ms",
        )?,
        max_output_kib: cx.bounded(
            l.max_output_kib.as_ref(),
            1,
            Limits::MAX_OUTPUT_KIB,
            Limits::DEFAULT_MAX_OUTPUT_KIB,
            "KiB",
        )?,
    };

    Ok(Policy {
        plugin,
        crew: raw.crew,
        mounts,
        net,
        env,
        limits,
        source: text.to_owned(),
        hash: hash_text(text),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HostPath;

    const FULL: &str = r#"
plugin = "belter-fs"
crew   = "belter"

[[fs]]
host   = "{workspace}"
guest  = "/workspace"
access = "read-write"

[net]
allow = ["https://api.github.com", "http://127.0.0.1:8080"]

[env]
allow = ["LANG"]

[limits]
memory_mib     = 32
timeout_ms     = 500
max_output_kib = 16
"#;

    fn err(text: &str) -> String {
        parse(text, "p.toml").unwrap_err().to_string()
    }

    #[test]
    fn parses_the_documented_format() {
        let p = parse(FULL, "p.toml").unwrap();
        assert_eq!(p.plugin, "belter-fs");
        assert_eq!(p.crew, Some(Crew::Belter));
        assert_eq!(p.mounts.len(), 1);
        assert_eq!(p.mounts[0].host, HostPath::Workspace { sub: None });
        assert_eq!(p.mounts[0].access, Access::ReadWrite);
        assert_eq!(p.net.rules.len(), 2);
        assert_eq!(p.env, vec!["LANG"]);
        assert_eq!(
            p.limits,
            Limits {
                memory_mib: 32,
                timeout_ms: 500,
                max_output_kib: 16
            }
        );
        assert_eq!(p.hash, crate::hash_text(FULL));
    }

    #[test]
    fn a_minimal_policy_denies_everything_and_uses_default_limits() {
        let p = parse("plugin = \"x\"\n", "p.toml").unwrap();
        assert!(p.grants_nothing());
        assert_eq!(p.crew, None);
        assert_eq!(p.limits, Limits::default());
    }

    #[test]
    fn unknown_keys_name_file_line_and_key() {
        let e = err("plugin = \"x\"\n[limits]\nmemory = 5\n");
        assert!(e.starts_with("p.toml:3:1: `limits.memory`"), "{e}");
        assert!(e.contains("unknown field `memory`"), "{e}");
        let e = err("plugin = \"x\"\nnetwork = true\n");
        assert!(
            e.contains("p.toml:2") && e.contains("unknown field `network`"),
            "{e}"
        );
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = err(
            "plugin = \"x\"\n[[fs]]\nhost = \"{workspace}\"\nguest = \"/w\"\naccess = \"rw\"\n",
        );
        assert!(
            e.contains("p.toml:5") && e.contains("`fs[0].access`"),
            "{e}"
        );
        let e = err("plugin = \"x\"\ncrew = \"pilot\"\n");
        assert!(e.contains("`crew`") && e.contains("pilot"), "{e}");
        let e = err("plugin = \"x\"\n[limits]\nmemory_mib = 0\n");
        assert!(
            e.contains("`limits.memory_mib`") && e.contains("out of range"),
            "{e}"
        );
        let e = err("plugin = \"x\"\n[limits]\ntimeout_ms = -5\n");
        assert!(e.contains("`limits.timeout_ms`"), "{e}");
        let e = err("plugin = \"x\"\n[net]\nallow = [\"https://ok.org\", \"nope\"]\n");
        assert!(
            e.contains("`net.allow`") && e.contains("`nope` has no scheme"),
            "{e}"
        );
        let e = err("plugin = \"x\"\n[env]\nallow = [\"A-B\"]\n");
        assert!(e.contains("`env.allow`"), "{e}");
        let e = err("plugin = \"Bad Name\"\n");
        assert!(e.contains("`plugin`"), "{e}");
        let e = err("crew = \"belter\"\n");
        assert!(e.contains("missing field `plugin`"), "{e}");
        let e = err("plugin = \"x\"\n[[fs]]\nhost = \"/no/such/dir/for/camina\"\nguest = \"/d\"\n");
        assert!(
            e.contains("`fs[0].host`") && e.contains("does not exist"),
            "{e}"
        );
        let e = err(
            "plugin = \"x\"\n[[fs]]\nhost = \"{workspace}\"\nguest = \"/w\"\n[[fs]]\nhost = \"{workspace}\"\nguest = \"/w/\"\n",
        );
        assert!(e.contains("`fs[1].guest`") && e.contains("twice"), "{e}");
    }

    #[test]
    fn broken_toml_is_an_error_not_a_panic() {
        for text in [
            "plugin = ",
            "[[fs]",
            "plugin = \"x\"\nplugin = \"y\"\n",
            "\u{0}",
            "plugin = 5",
        ] {
            assert!(parse(text, "p.toml").is_err(), "{text:?}");
        }
    }
}

#[cfg(test)]
mod fuzz {
    use super::parse;
    use proptest::prelude::*;

    const VALID: &str = "plugin = \"p\"\ncrew = \"belter\"\n[[fs]]\nhost = \"{workspace}\"\nguest = \"/w\"\naccess = \"read-write\"\n[net]\nallow = [\"https://x.org\", \"http://10.0.0.1:*\", \"*\"]\n[env]\nallow = [\"LANG\"]\n[limits]\nmemory_mib = 8\ntimeout_ms = 10\nmax_output_kib = 1\n";

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any text: an error or a policy, never a panic.
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
            let _ = parse(&text, "fuzz.toml");
        }

        /// A valid policy with bytes changed, cut or inserted.
        #[test]
        fn mutated_policies_never_panic(pos in 0usize..VALID.len(), cut in 0usize..40, insert in "[\\[\\]{}\"=:*./a-z0-9 \n\\\\]{0,12}") {
            let mut text = VALID.to_owned();
            let at = (0..=pos).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
            let end = (at + cut).min(text.len());
            let end = (end..=text.len()).find(|i| text.is_char_boundary(*i)).unwrap_or(text.len());
            text.replace_range(at..end, &insert);
            let _ = parse(&text, "fuzz.toml");
        }

        /// Any allow rule.
        #[test]
        fn arbitrary_net_rules_never_panic(rule in "\\PC{0,80}") {
            let _ = crate::NetRule::parse(&rule);
            if let Ok(url) = url::Url::parse(&rule) {
                let p = crate::NetPolicy::parse(&["*", "https://*.example.com", "http://127.0.0.1:8080"]).unwrap();
                if p.check_url(&url).is_ok() {
                    let _ = p.check_addr(&url, "127.0.0.1".parse().unwrap());
                }
            }
        }
    }
}
