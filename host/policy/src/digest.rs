//! A SHA-256 digest as the host writes it everywhere (plugin records,
//! policy hashes, tool intents, before-images): `sha256:<64 lower-case
//! hex>`. Parsing accepts the bare hex too, in either case.

use sha2::{Digest as _, Sha256};

#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct Digest {
    /// 64 lower-case hex digits.
    hex: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a sha256 digest (64 hex digits, optionally after `sha256:`)")]
pub struct BadDigest(pub String);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self {
            hex: hex::encode(Sha256::digest(bytes)),
        }
    }

    /// `sha256:<hex>` or `<hex>`; surrounding white space is ignored.
    pub fn parse(text: &str) -> Result<Self, BadDigest> {
        let t = text.trim();
        let hex = t.strip_prefix("sha256:").unwrap_or(t);
        if hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
            Ok(Self {
                hex: hex.to_ascii_lowercase(),
            })
        } else {
            Err(BadDigest(text.to_owned()))
        }
    }

    /// The 64 hex digits (file names under the stores).
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The first 12 hex digits, for tables.
    pub fn short(&self) -> &str {
        &self.hex[..12]
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("sha256:")?;
        f.write_str(&self.hex)
    }
}

impl std::str::FromStr for Digest {
    type Err = BadDigest;
    fn from_str(s: &str) -> Result<Self, BadDigest> {
        Self::parse(s)
    }
}

impl TryFrom<String> for Digest {
    type Error = BadDigest;
    fn try_from(s: String) -> Result<Self, BadDigest> {
        Self::parse(&s)
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_written_one_way_and_read_in_any() {
        let d = Digest::of(b"abc");
        let text = d.to_string();
        assert!(text.starts_with("sha256:ba7816bf8f01cfea"), "{text}");
        assert_eq!(Digest::parse(&text).unwrap(), d);
        assert_eq!(Digest::parse(&d.hex().to_uppercase()).unwrap(), d);
        assert_eq!(serde_json::to_value(&d).unwrap(), text.as_str());
        assert_eq!(serde_json::from_value::<Digest>(text.into()).unwrap(), d);
        for bad in ["", "sha256:", "sha256:xyz", &"a".repeat(63), "md5:00"] {
            assert!(Digest::parse(bad).is_err(), "{bad}");
        }
        assert!(serde_json::from_value::<Digest>("sha256:nope".into()).is_err());
    }
}
