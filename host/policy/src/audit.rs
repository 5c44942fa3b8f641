//! Policy audit: what a plugin may do, judged against what its component
//! can use, and against what is risky anywhere.
//!
//! Pure: it looks at a [`Policy`] and the component's facts (its imports and
//! its tools' effects) and returns [`Finding`]s with a level and a stable
//! code. Approval and drift are the plugin store's business (it knows what
//! was approved); they add findings of the same shape.

use crate::net::{HostRule, non_public_class};
use crate::{Access, HostPath, Policy};
use serde::Serialize;
use std::path::Path;

/// How much a finding matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Info,
    Medium,
    High,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Medium => "medium",
            Level::High => "high",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "info" => Some(Level::Info),
            "medium" => Some(Level::Medium),
            "high" => Some(Level::High),
            _ => None,
        }
    }
}

/// One audit finding. `code` is stable (documented in the README).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub level: Level,
    pub code: &'static str,
    pub message: String,
}

/// What the audit needs to know about the component.
#[derive(Debug, Clone, Default)]
pub struct ComponentFacts {
    /// Import names (`wasi:http/outgoing-handler@0.2.12`, …).
    pub imports: Vec<String>,
    /// Every tool is `read-only`.
    pub all_tools_read_only: bool,
    /// Installed without a policy file.
    pub no_policy: bool,
}

impl ComponentFacts {
    fn imports(&self, prefix: &str) -> bool {
        self.imports.iter().any(|i| i.starts_with(prefix))
    }
}

/// Where the audit draws lines.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    /// The user's home directory.
    pub home: Option<&'a Path>,
    /// Fixed mounts outside it are flagged.
    pub workspace_root: &'a Path,
}

/// Environment names that look like secrets.
fn secret_like(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    [
        "TOKEN",
        "SECRET",
        "PASSWORD",
        "PASSWD",
        "KEY",
        "CREDENTIAL",
        "AUTH",
        "COOKIE",
        "SESSION",
        "PRIVATE",
    ]
    .iter()
    .any(|w| n.contains(w))
        || n.starts_with("AWS_")
        || n.starts_with("AZURE_")
        || n.starts_with("GCP_")
        || n.starts_with("GOOGLE_APPLICATION")
}

const BROAD: &[&str] = &[
    "/", "/etc", "/usr", "/var", "/root", "/home", "/opt", "/proc", "/sys", "/dev", "/boot",
];

fn f(level: Level, code: &'static str, message: String) -> Finding {
    Finding {
        level,
        code,
        message,
    }
}

/// Audits one plugin.
pub fn audit(policy: &Policy, facts: &ComponentFacts, cx: &Context<'_>) -> Vec<Finding> {
    let mut out = Vec::new();
    if facts.no_policy {
        out.push(f(
            Level::Info,
            "no-policy",
            "installed without a policy: it gets no filesystem, network or environment".into(),
        ));
    }
    if policy.crew.is_none() {
        out.push(f(
            Level::Info,
            "no-crew",
            "no crew: its tools are offered to no agent (callable with `camina tool call`)".into(),
        ));
    }

    // Least privilege: grants the component cannot use…
    let http = facts.imports("wasi:http/outgoing-handler");
    let fs = facts.imports("wasi:filesystem/");
    let env = facts.imports("wasi:cli/environment");
    if !policy.net.is_empty() && !http {
        out.push(f(
            Level::Medium,
            "unused-net",
            "network is allowed but the component does not import wasi:http".into(),
        ));
    }
    if !policy.mounts.is_empty() && !fs {
        out.push(f(
            Level::Medium,
            "unused-fs",
            "directories are mounted but the component does not import wasi:filesystem".into(),
        ));
    }
    if !policy.env.is_empty() && !env {
        out.push(f(Level::Medium, "unused-env", "environment variables are passed but the component does not import wasi:cli/environment".into()));
    }
    if facts.all_tools_read_only
        && let Some(m) = policy.mounts.iter().find(|m| m.access == Access::ReadWrite)
    {
        out.push(f(
            Level::Medium,
            "unused-write",
            format!(
                "{} is mounted read-write but every tool is read-only",
                m.guest
            ),
        ));
    }
    // …and capabilities it imports that are never granted.
    if http && policy.net.is_empty() {
        out.push(f(
            Level::Info,
            "ungranted-net",
            "the component imports wasi:http but no host is allowed: its requests will be denied"
                .into(),
        ));
    }
    if fs && policy.mounts.is_empty() && !facts.no_policy {
        out.push(f(
            Level::Info,
            "ungranted-fs",
            "the component imports wasi:filesystem but nothing is mounted: file access will fail"
                .into(),
        ));
    }

    // Risk: filesystem.
    for m in &policy.mounts {
        let HostPath::Fixed(path) = &m.host else {
            continue;
        };
        let shown = path.display();
        let is_home = cx.home.is_some_and(|h| path == h);
        let broad = BROAD.iter().any(|b| path == Path::new(b)) || is_home;
        if m.access == Access::ReadWrite {
            if path == Path::new("/") {
                out.push(f(
                    Level::High,
                    "write-root",
                    format!("{} mounts / read-write", m.guest),
                ));
            } else if is_home {
                out.push(f(
                    Level::High,
                    "write-home",
                    format!("{} mounts the home directory {shown} read-write", m.guest),
                ));
            } else if !path.starts_with(cx.workspace_root) {
                out.push(f(
                    Level::High,
                    "write-outside-workspaces",
                    format!(
                        "{} mounts {shown} read-write, outside the workspace root {}",
                        m.guest,
                        cx.workspace_root.display()
                    ),
                ));
            }
        } else if broad {
            out.push(f(
                Level::Medium,
                "broad-mount",
                format!(
                    "{} mounts {shown}: a broad host directory, even read-only",
                    m.guest
                ),
            ));
        }
    }

    // Risk: network.
    for rule in &policy.net.rules {
        match &rule.host {
            HostRule::Any => out.push(f(
                Level::High,
                "net-any",
                format!("`{}` allows any public host", rule.text),
            )),
            HostRule::Suffix(s) if is_public_suffix(s) => out.push(f(
                Level::High,
                "net-public-suffix",
                format!("`{}` is a wildcard over the public suffix `{s}`", rule.text),
            )),
            HostRule::Ip(ip) if non_public_class(*ip).is_some() => out.push(f(
                Level::Medium,
                "net-private",
                format!(
                    "`{}` reaches {} address",
                    rule.text,
                    non_public_class(*ip).unwrap_or("a private")
                ),
            )),
            HostRule::Name(n)
                if n == "localhost"
                    || n.ends_with(".local")
                    || n.ends_with(".internal")
                    || n.ends_with(".lan") =>
            {
                out.push(f(
                    Level::Medium,
                    "net-private",
                    format!("`{}` names a private-network host", rule.text),
                ))
            }
            _ => {}
        }
    }

    // Risk: environment.
    for name in policy.env.iter().filter(|n| secret_like(n)) {
        out.push(f(
            Level::High,
            "env-secret",
            format!("passes `{name}`, which looks like a secret"),
        ));
    }

    // Risk: limits.
    let l = &policy.limits;
    if l.memory_mib > 1024 {
        out.push(f(
            Level::Medium,
            "large-memory",
            format!("memory limit {} MiB (> 1024)", l.memory_mib),
        ));
    }
    if l.timeout_ms > 300_000 {
        out.push(f(
            Level::Medium,
            "large-timeout",
            format!("time limit {} ms (> 5 min)", l.timeout_ms),
        ));
    }
    if l.max_output_kib > 16 * 1024 {
        out.push(f(
            Level::Medium,
            "large-output",
            format!("output limit {} KiB (> 16 MiB)", l.max_output_kib),
        ));
    }
    out.sort_by(|a, b| b.level.cmp(&a.level).then(a.code.cmp(b.code)));
    out
}

/// True if `suffix` is itself a public suffix (`com`, `co.uk`, `github.io`):
/// a wildcard over it matches domains of unrelated owners.
pub fn is_public_suffix(suffix: &str) -> bool {
    let s = suffix.trim_end_matches('.').to_ascii_lowercase();
    if !s.contains('.') {
        return true;
    }
    // The public suffix of "x.<s>" is `<s>` exactly when `<s>` is public.
    let probe = format!("x.{s}");
    psl::suffix(probe.as_bytes()).is_some_and(|p| p.as_bytes() == s.as_bytes() && p.is_known())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Policy;

    fn codes(policy: &str, facts: ComponentFacts) -> Vec<&'static str> {
        let p = Policy::parse(policy, "t.toml").unwrap();
        let cx = Context {
            home: Some(Path::new("/home/u")),
            workspace_root: Path::new("/srv/ws"),
        };
        audit(&p, &facts, &cx).into_iter().map(|f| f.code).collect()
    }

    fn facts(imports: &[&str], read_only: bool) -> ComponentFacts {
        ComponentFacts {
            imports: imports.iter().map(|s| s.to_string()).collect(),
            all_tools_read_only: read_only,
            no_policy: false,
        }
    }

    const FS: &str = "wasi:filesystem/types@0.2.6";
    const HTTP: &str = "wasi:http/outgoing-handler@0.2.6";

    #[test]
    fn unused_grants_are_least_privilege_findings() {
        let c = codes(
            "plugin = \"p\"\ncrew = \"drummer\"\n[net]\nallow = [\"https://x.org\"]\n",
            facts(&[], true),
        );
        assert_eq!(c, ["unused-net"]);
        let c = codes(
            "plugin = \"p\"\ncrew = \"belter\"\n[[fs]]\nhost = \"{workspace}\"\nguest = \"/w\"\naccess = \"read-write\"\n",
            facts(&[FS], true),
        );
        assert_eq!(c, ["unused-write"]);
        let c = codes(
            "plugin = \"p\"\ncrew = \"belter\"\n[[fs]]\nhost = \"{workspace}\"\nguest = \"/w\"\n",
            facts(&[], true),
        );
        assert_eq!(c, ["unused-fs"]);
        let c = codes(
            "plugin = \"p\"\ncrew = \"belter\"\n[env]\nallow = [\"LANG\"]\n",
            facts(&[], false),
        );
        assert_eq!(c, ["unused-env"]);
    }

    #[test]
    fn imported_but_ungranted_capabilities_are_reported() {
        let c = codes(
            "plugin = \"p\"\ncrew = \"drummer\"\n",
            facts(&[HTTP, FS], true),
        );
        assert_eq!(c, ["ungranted-fs", "ungranted-net"]);
    }

    #[test]
    fn risky_grants_are_high_or_medium() {
        let c = codes(
            "plugin = \"p\"\ncrew = \"belter\"\n[[fs]]\nhost = \"/\"\nguest = \"/r\"\naccess = \"read-write\"\n",
            facts(&[FS], false),
        );
        assert_eq!(c, ["write-root"]);
        let c = codes(
            "plugin = \"p\"\ncrew = \"belter\"\n[[fs]]\nhost = \"/etc\"\nguest = \"/e\"\n",
            facts(&[FS], false),
        );
        assert_eq!(c, ["broad-mount"]);
        let c = codes(
            "plugin = \"p\"\ncrew = \"belter\"\n[[fs]]\nhost = \"/tmp\"\nguest = \"/t\"\naccess = \"read-write\"\n",
            facts(&[FS], false),
        );
        assert_eq!(c, ["write-outside-workspaces"]);
        let c = codes(
            "plugin = \"p\"\ncrew = \"drummer\"\n[net]\nallow = [\"*\"]\n",
            facts(&[HTTP], true),
        );
        assert_eq!(c, ["net-any"]);
        let c = codes(
            "plugin = \"p\"\ncrew = \"drummer\"\n[net]\nallow = [\"https://*.co.uk\", \"https://*.example.co.uk\"]\n",
            facts(&[HTTP], true),
        );
        assert_eq!(c, ["net-public-suffix"]);
        let c = codes(
            "plugin = \"p\"\ncrew = \"drummer\"\n[net]\nallow = [\"http://10.0.0.5:80\", \"http://localhost:8080\"]\n",
            facts(&[HTTP], true),
        );
        assert_eq!(c, ["net-private", "net-private"]);
        let c = codes(
            "plugin = \"p\"\ncrew = \"drummer\"\n[env]\nallow = [\"GITHUB_TOKEN\", \"LANG\"]\n",
            facts(&["wasi:cli/environment@0.2.6"], true),
        );
        assert_eq!(c, ["env-secret"]);
        let c = codes(
            "plugin = \"p\"\ncrew = \"drummer\"\n[limits]\nmemory_mib = 2048\ntimeout_ms = 600000\n",
            facts(&[], true),
        );
        assert_eq!(c, ["large-memory", "large-timeout"]);
    }

    #[test]
    fn home_output_and_missing_policy_findings() {
        let home = tempfile::tempdir().unwrap();
        let h = home.path().display().to_string();
        let cx = Context {
            home: Some(home.path()),
            workspace_root: Path::new("/srv/ws"),
        };
        let run = |text: String| -> Vec<&'static str> {
            let p = Policy::parse(&text, "t.toml").unwrap();
            audit(&p, &facts(&[FS], false), &cx)
                .into_iter()
                .map(|f| f.code)
                .collect()
        };
        let rw = format!(
            "plugin = \"p\"\ncrew = \"belter\"\n[[fs]]\nhost = \"{h}\"\nguest = \"/h\"\naccess = \"read-write\"\n"
        );
        assert_eq!(run(rw), ["write-home"]);
        let ro =
            format!("plugin = \"p\"\ncrew = \"belter\"\n[[fs]]\nhost = \"{h}\"\nguest = \"/h\"\n");
        assert_eq!(run(ro), ["broad-mount"]);
        let c = codes(
            "plugin = \"p\"\ncrew = \"belter\"\n[limits]\nmax_output_kib = 32768\n",
            facts(&[], false),
        );
        assert_eq!(c, ["large-output"]);
        let p = Policy::deny_all("p");
        let cx = Context {
            home: None,
            workspace_root: Path::new("/srv/ws"),
        };
        let f = audit(
            &p,
            &ComponentFacts {
                imports: vec![FS.into()],
                all_tools_read_only: true,
                no_policy: true,
            },
            &cx,
        );
        let c: Vec<&str> = f.iter().map(|f| f.code).collect();
        assert_eq!(
            c,
            ["no-crew", "no-policy"],
            "no `ungranted-fs` noise when there is no policy at all"
        );
    }

    #[test]
    fn findings_sort_high_first_and_levels_compare() {
        let c = codes("plugin = \"p\"\n[net]\nallow = [\"*\"]\n", facts(&[], true));
        assert_eq!(c, ["net-any", "unused-net", "no-crew"]);
        assert!(Level::High > Level::Medium && Level::Medium > Level::Info);
    }

    #[test]
    fn public_suffixes() {
        for s in ["com", "co.uk", "github.io", "org"] {
            assert!(is_public_suffix(s), "{s}");
        }
        for s in ["example.com", "wikipedia.org", "bbc.co.uk"] {
            assert!(!is_public_suffix(s), "{s}");
        }
    }
}
