//! Builds the handler component (guest/handler) for wasm32-wasip2 so that
//! `cargo build` of the host always embeds an up-to-date handler.
//!
//! The nested cargo uses its own target directory: sharing the outer one
//! would wait forever on the outer build's lock.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest.parent().expect("host/ sits in the workspace").to_path_buf();
    for watched in ["guest/handler/src", "guest/handler/Cargo.toml", "wit", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    println!("cargo:rerun-if-env-changed=TERN_HANDLER_WASM");

    // A prebuilt handler may be named instead (e.g. for cross builds).
    if let Ok(prebuilt) = env::var("TERN_HANDLER_WASM") {
        println!("cargo:rustc-env=TERN_HANDLER_WASM={prebuilt}");
        return;
    }

    let target_dir =
        env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| root.join("target")).join("guest");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&root)
        .args(["build", "--release", "--package", "tern-handler", "--target", "wasm32-wasip2", "--target-dir"])
        .arg(&target_dir)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .expect("running cargo to build the handler component");
    if !status.success() {
        panic!("building the handler component (guest/handler) for wasm32-wasip2 failed");
    }
    let wasm = target_dir.join("wasm32-wasip2/release/tern_handler.wasm");
    println!("cargo:rustc-env=TERN_HANDLER_WASM={}", wasm.display());
}
