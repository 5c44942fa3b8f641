//! Builds every guest component the tests need, once per build (not per
//! test), like wasmtime's `test-programs-artifacts`: the bundled skills in
//! `plugins/` and the hostile fixtures in `tests/guests/`, for
//! `wasm32-wasip2`, into `target/wasm/`. Their paths become constants.

use std::path::{Path, PathBuf};
use std::process::Command;

const COMPONENTS: &[(&str, &str, &str)] = &[
    ("BELTER_FS", "plugins", "belter_fs"),
    ("DRUMMER_SEARCH", "plugins", "drummer_search"),
    ("DRUMMER_WEB", "plugins", "drummer_web"),
    ("ATTACKER", "tests/guests", "attacker"),
    ("SOCKET_USER", "tests/guests", "socket_user"),
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let root = manifest_dir
        .parent()
        .and_then(Path::parent)
        .expect("tests/artifacts is two levels below the root")
        .to_path_buf();
    let target_dir = root.join("target").join("wasm");
    for dir in ["plugins", "tests/guests", "wit"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }

    for workspace in ["plugins", "tests/guests"] {
        let manifest = root.join(workspace).join("Cargo.toml");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .arg("build")
            .arg("--release")
            .arg("--target=wasm32-wasip2")
            .arg("--manifest-path")
            .arg(&manifest)
            .arg("--target-dir")
            .arg(&target_dir)
            // Flags meant for the host build must not leak into the guests.
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_BUILD_RUSTFLAGS")
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("CARGO_BUILD_TARGET")
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .status()
            .unwrap_or_else(|e| panic!("cannot run cargo to build {workspace}: {e}"));
        assert!(
            status.success(),
            "building the {workspace} components failed; is the target installed? \
             (rustup target add wasm32-wasip2)"
        );
    }

    let out = target_dir.join("wasm32-wasip2").join("release");
    let mut code = String::new();
    for (konst, _, file) in COMPONENTS {
        let path = out.join(format!("{file}.wasm"));
        assert!(path.exists(), "{} was not built", path.display());
        code.push_str(&format!(
            "pub const {konst}: &str = {:?};\n",
            path.display().to_string()
        ));
    }
    code.push_str(&format!(
        "pub const ROOT: &str = {:?};\n",
        root.display().to_string()
    ));
    let dest = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it")).join("artifacts.rs");
    std::fs::write(dest, code).expect("write artifacts.rs");
}
