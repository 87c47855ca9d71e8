//! Builds the handler component (guest/handler) and the remote adapter
//! (guest/remote) for wasm32-wasip2 so that `cargo build` of the host
//! always embeds up-to-date ones.
//!
//! 1. A toolchain without the `wasm32-wasip2` target gets it from rustup
//!    (one warning line says so): `rust-toolchain.toml`'s `targets` is only
//!    honoured when rustup installs the toolchain itself, not when the
//!    toolchain is already there.
//! 2. The nested cargo uses its own target directory: sharing the outer one
//!    would wait forever on the outer build's lock.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest.parent().expect("host/ sits in the workspace").to_path_buf();
    for watched in [
        "guest/handler/src",
        "guest/handler/Cargo.toml",
        "guest/remote/src",
        "guest/remote/Cargo.toml",
        "wit",
        "Cargo.toml",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    println!("cargo:rerun-if-env-changed=TERN_HANDLER_WASM");
    println!("cargo:rerun-if-env-changed=TERN_REMOTE_WASM");

    // A prebuilt handler may be named instead (e.g. for cross builds).
    if let (Ok(handler), Ok(remote)) = (env::var("TERN_HANDLER_WASM"), env::var("TERN_REMOTE_WASM")) {
        println!("cargo:rustc-env=TERN_HANDLER_WASM={handler}");
        println!("cargo:rustc-env=TERN_REMOTE_WASM={remote}");
        return;
    }

    let target_libdir = ensure_target_installed();
    // Removing the target later makes this script run (and install it) again.
    println!("cargo:rerun-if-changed={}", target_libdir.display());

    let target_dir =
        env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| root.join("target")).join("guest");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&root)
        .args(["build", "--release", "--package", "tern-handler", "--package", "tern-remote", "--target", TARGET])
        .arg("--target-dir")
        .arg(&target_dir)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .expect("running cargo to build the handler component");
    if !status.success() {
        panic!(
            "building the handler component (guest/handler) and the remote adapter (guest/remote) for {TARGET} failed"
        );
    }
    let built = target_dir.join(TARGET).join("release");
    println!("cargo:rustc-env=TERN_HANDLER_WASM={}", built.join("tern_handler.wasm").display());
    println!("cargo:rustc-env=TERN_REMOTE_WASM={}", built.join("tern_remote.wasm").display());
}

/// The target's library folder in the active toolchain, installed with
/// `rustup target add` first when it is missing.
fn ensure_target_installed() -> PathBuf {
    let libdir = target_libdir();
    if has_std(&libdir) {
        return libdir;
    }
    println!("cargo:warning=the toolchain lacks the {TARGET} target the handler component is built for: adding it with `rustup target add {TARGET}`");
    let added = Command::new("rustup").args(["target", "add", TARGET]).status();
    match added {
        Ok(status) if status.success() && has_std(&target_libdir()) => target_libdir(),
        _ => panic!(
            "the {TARGET} target is missing and `rustup target add {TARGET}` could not add it: run it yourself, \
             or set TERN_HANDLER_WASM to a prebuilt handler component"
        ),
    }
}

/// Where rustc looks for the target's standard library (it need not exist).
fn target_libdir() -> PathBuf {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(rustc)
        .args(["--print", "target-libdir", "--target", TARGET])
        .output()
        .expect("running rustc --print target-libdir");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn has_std(libdir: &Path) -> bool {
    std::fs::read_dir(libdir)
        .map(|entries| entries.flatten().any(|e| e.file_name().to_string_lossy().starts_with("libstd-")))
        .unwrap_or(false)
}
