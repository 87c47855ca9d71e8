//! `tern compose`: the handler and the remote adapter as one component for
//! stock wasi:http runtimes (`wasmtime serve -Scli`, jco), composed with
//! wac-graph (what `wac plug` does). The adapter satisfies every import of
//! the handler that such runtimes lack; what is left are WASI's own.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use wac_graph::types::Package;
use wac_graph::{plug, CompositionGraph, EncodeOptions};

/// The remote adapter built from guest/remote by build.rs.
static BUILT_REMOTE: &[u8] = include_bytes!(env!("TERN_REMOTE_WASM"));

#[derive(clap::Args)]
pub struct ComposeArgs {
    /// The handler component (default: the one built into this binary).
    #[arg(long)]
    pub handler: Option<PathBuf>,
    /// The adapter plugged into it (default: the remote adapter built into
    /// this binary).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Where to write the composed component.
    #[arg(long, short, default_value = "dist/tern-remote.wasm")]
    pub out: PathBuf,
}

fn read(path: Option<&Path>, built: &[u8]) -> anyhow::Result<Vec<u8>> {
    match path {
        Some(p) => std::fs::read(p).with_context(|| format!("reading {}", p.display())),
        None => Ok(built.to_vec()),
    }
}

/// `handler` with `adapter` plugged into its imports.
pub fn compose(handler: &[u8], adapter: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut graph = CompositionGraph::new();
    let socket = Package::from_bytes("tern:handler", None, handler.to_vec(), graph.types_mut())
        .context("reading the handler component")?;
    let plugged = Package::from_bytes("tern:adapter", None, adapter.to_vec(), graph.types_mut())
        .context("reading the adapter component")?;
    let socket = graph.register_package(socket)?;
    let plugged = graph.register_package(plugged)?;
    plug(&mut graph, vec![plugged], socket).context("plugging the adapter into the handler")?;
    Ok(graph.encode(EncodeOptions::default())?)
}

pub fn run(args: ComposeArgs) -> anyhow::Result<()> {
    let handler = read(args.handler.as_deref(), crate::serve::BUILT_HANDLER)?;
    let adapter = read(args.adapter.as_deref(), BUILT_REMOTE)?;
    let composed = compose(&handler, &adapter)?;
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&args.out, &composed).with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("wrote {} ({} bytes)", args.out.display(), composed.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_composition_imports_only_wasi() {
        let composed = compose(crate::serve::BUILT_HANDLER, BUILT_REMOTE).unwrap();
        let engine = wasmtime::Engine::default();
        let component = wasmtime::component::Component::from_binary(&engine, &composed).unwrap();
        let imports: Vec<String> =
            component.component_type().imports(&engine).map(|(name, _)| name.to_string()).collect();
        assert!(!imports.is_empty());
        // What stock runtimes provide is left (wasmtime serve's config is
        // another version, so the adapter answers it).
        for name in &imports {
            assert!(name.starts_with("wasi:") && !name.starts_with("wasi:config"), "{name} is left unplugged");
        }
        assert!(imports.iter().any(|n| n.starts_with("wasi:http/outgoing-handler")));
    }
}
