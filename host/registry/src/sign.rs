//! Signed plugins: a detached ed25519 signature over the component's digest
//! and the policy's hash, so a signature vouches for *what runs* and *what it
//! may touch* together. Trusted public keys live in
//! `<home>/trusted_keys/<signer>.pub`; the signer recorded at install is the
//! name of the trusted key that verified, not whatever the file claims.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const FORMAT: &str = "camina-signature/1";

/// `FILE.wasm.sig`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureFile {
    pub format: String,
    /// The name the signer gave (informational).
    pub signer: String,
    /// base64 of the 32-byte ed25519 public key.
    pub public_key: String,
    /// `sha256:<hex>` of the component.
    pub component: String,
    /// `sha256:<hex>` of the policy text (of "" for no policy).
    pub policy: String,
    /// base64 of the signature over [`message`].
    pub signature: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("the signature file is not a {FORMAT} signature: {0}")]
    Format(String),
    #[error("the signature is for another component ({signed}), not this one ({actual})")]
    WrongComponent { signed: String, actual: String },
    #[error("the signature is for another policy ({signed}), not this one ({actual})")]
    WrongPolicy { signed: String, actual: String },
    #[error("the signing key is not trusted: add its .pub file to {dir} (camina key trust)")]
    Untrusted { dir: String },
    #[error(
        "the signature does not verify: the component, the policy or the signature was altered"
    )]
    Invalid,
    #[error("signatures are required ([plugins] require_signatures) and none was given")]
    Missing,
}

fn file_err(path: &Path) -> impl FnOnce(std::io::Error) -> SignError + '_ {
    move |e| SignError::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// What is signed.
pub fn message(component_digest: &str, policy_hash: &str) -> Vec<u8> {
    format!("{FORMAT}\n{component_digest}\n{policy_hash}\n").into_bytes()
}

/// Makes a key pair: `<dir>/<name>.key` (secret, mode 0600) and
/// `<dir>/<name>.pub`; returns the public key (base64).
pub fn generate(dir: &Path, name: &str) -> Result<(PathBuf, PathBuf, String), SignError> {
    check_key_name(name)?;
    std::fs::create_dir_all(dir).map_err(file_err(dir))?;
    let secret = dir.join(format!("{name}.key"));
    if secret.exists() {
        return Err(SignError::File {
            path: secret.display().to_string(),
            reason: "exists; refusing to overwrite a key".into(),
        });
    }
    let key = SigningKey::generate(&mut rand_core::OsRng);
    let public = B64.encode(key.verifying_key().to_bytes());
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&secret)
            .map_err(file_err(&secret))?;
        f.write_all(format!("{}\n", B64.encode(key.to_bytes())).as_bytes())
            .map_err(file_err(&secret))?;
    }
    let public_path = dir.join(format!("{name}.pub"));
    std::fs::write(&public_path, format!("{public}\n")).map_err(file_err(&public_path))?;
    Ok((secret, public_path, public))
}

fn read_key<const N: usize>(path: &Path) -> Result<[u8; N], SignError> {
    let text = std::fs::read_to_string(path).map_err(file_err(path))?;
    let bytes = B64.decode(text.trim()).map_err(|e| SignError::File {
        path: path.display().to_string(),
        reason: format!("not a base64 key: {e}"),
    })?;
    <[u8; N]>::try_from(bytes.as_slice()).map_err(|_| SignError::File {
        path: path.display().to_string(),
        reason: format!("a key must be {N} bytes"),
    })
}

/// Signs a component + policy with the secret key at `key_file`.
pub fn sign(
    key_file: &Path,
    signer: &str,
    component_digest: &str,
    policy_hash: &str,
) -> Result<SignatureFile, SignError> {
    let key = SigningKey::from_bytes(&read_key::<32>(key_file)?);
    let sig = key.sign(&message(component_digest, policy_hash));
    Ok(SignatureFile {
        format: FORMAT.into(),
        signer: signer.to_owned(),
        public_key: B64.encode(key.verifying_key().to_bytes()),
        component: component_digest.to_owned(),
        policy: policy_hash.to_owned(),
        signature: B64.encode(sig.to_bytes()),
    })
}

/// Reads a signature file.
pub fn load(path: &Path) -> Result<SignatureFile, SignError> {
    let text = std::fs::read_to_string(path).map_err(file_err(path))?;
    let sig: SignatureFile = serde_json::from_str(&text).map_err(|e| SignError::File {
        path: path.display().to_string(),
        reason: format!("not a signature file: {e}"),
    })?;
    if sig.format != FORMAT {
        return Err(SignError::Format(sig.format));
    }
    Ok(sig)
}

/// Key names become file names: letters, digits, `-`, `_` only.
fn check_key_name(name: &str) -> Result<(), SignError> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(SignError::Format(format!(
            "key name `{name}`: use up to 64 letters, digits, `-`, `_`"
        )));
    }
    Ok(())
}

/// Copies a public key into the trusted keys as `<name>.pub`.
pub fn trust(public_file: &Path, trusted_dir: &Path, name: &str) -> Result<PathBuf, SignError> {
    check_key_name(name)?;
    let key = read_key::<32>(public_file)?;
    VerifyingKey::from_bytes(&key).map_err(|e| SignError::File {
        path: public_file.display().to_string(),
        reason: format!("not an ed25519 public key: {e}"),
    })?;
    std::fs::create_dir_all(trusted_dir).map_err(file_err(trusted_dir))?;
    let dest = trusted_dir.join(format!("{name}.pub"));
    std::fs::write(&dest, format!("{}\n", B64.encode(key))).map_err(file_err(&dest))?;
    Ok(dest)
}

/// Checks `sig` against the component and policy actually installed and the
/// trusted keys; returns the trusted key's name.
pub fn verify(
    sig: &SignatureFile,
    component_digest: &str,
    policy_hash: &str,
    trusted_dir: &Path,
) -> Result<String, SignError> {
    if sig.component != component_digest {
        return Err(SignError::WrongComponent {
            signed: sig.component.clone(),
            actual: component_digest.to_owned(),
        });
    }
    if sig.policy != policy_hash {
        return Err(SignError::WrongPolicy {
            signed: sig.policy.clone(),
            actual: policy_hash.to_owned(),
        });
    }
    let public = B64
        .decode(sig.public_key.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
        .ok_or_else(|| SignError::Format("public_key is not 32 base64 bytes".into()))?;
    let mut trusted_name = None;
    if let Ok(entries) = std::fs::read_dir(trusted_dir) {
        let mut entries: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        entries.sort();
        for p in entries
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "pub"))
        {
            if read_key::<32>(p).is_ok_and(|k| k == public) {
                trusted_name = p.file_stem().map(|s| s.to_string_lossy().into_owned());
                break;
            }
        }
    }
    let Some(name) = trusted_name else {
        return Err(SignError::Untrusted {
            dir: trusted_dir.display().to_string(),
        });
    };
    let key = VerifyingKey::from_bytes(&public).map_err(|_| SignError::Invalid)?;
    let bytes = B64
        .decode(sig.signature.trim())
        .map_err(|_| SignError::Invalid)?;
    let signature = ed25519_dalek::Signature::from_slice(&bytes).map_err(|_| SignError::Invalid)?;
    key.verify(&message(component_digest, policy_hash), &signature)
        .map_err(|_| SignError::Invalid)?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_name_traversal_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let trusted = dir.path().join("trusted");
        let (_, public, _) = generate(&keys, "alice").unwrap();
        for name in ["../evil", "a/b", "", ".."] {
            assert!(matches!(
                trust(&public, &trusted, name),
                Err(SignError::Format(_))
            ));
            assert!(generate(&keys, name).is_err());
        }
        assert!(!dir.path().join("evil.pub").exists());
    }

    #[test]
    fn sign_trust_verify_and_every_way_to_fail() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let trusted = dir.path().join("trusted");
        let (secret, public, _) = generate(&keys, "alice").unwrap();
        assert!(generate(&keys, "alice").is_err(), "no overwrite");
        let sig = sign(&secret, "alice", "sha256:c", "sha256:p").unwrap();
        assert!(matches!(
            verify(&sig, "sha256:c", "sha256:p", &trusted),
            Err(SignError::Untrusted { .. })
        ));
        trust(&public, &trusted, "alice-laptop").unwrap();
        assert_eq!(
            verify(&sig, "sha256:c", "sha256:p", &trusted).unwrap(),
            "alice-laptop"
        );
        assert!(matches!(
            verify(&sig, "sha256:X", "sha256:p", &trusted),
            Err(SignError::WrongComponent { .. })
        ));
        assert!(matches!(
            verify(&sig, "sha256:c", "sha256:X", &trusted),
            Err(SignError::WrongPolicy { .. })
        ));
        let mut forged = sig.clone();
        forged.component = "sha256:X".into();
        assert!(matches!(
            verify(&forged, "sha256:X", "sha256:p", &trusted),
            Err(SignError::Invalid)
        ));
        let (mallory, _, _) = generate(&keys, "mallory").unwrap();
        let mut swapped = sign(&mallory, "alice", "sha256:c", "sha256:p").unwrap();
        swapped.public_key = sig.public_key.clone();
        assert!(matches!(
            verify(&swapped, "sha256:c", "sha256:p", &trusted),
            Err(SignError::Invalid)
        ));
        let untrusted = sign(&mallory, "alice", "sha256:c", "sha256:p").unwrap();
        assert!(matches!(
            verify(&untrusted, "sha256:c", "sha256:p", &trusted),
            Err(SignError::Untrusted { .. })
        ));
    }
}
