//! `tern compose`: the handler and an adapter as one component for stock
//! wasi:http runtimes (`wasmtime serve -Scli`, jco), composed with
//! wac-graph (what `wac plug` does). The adapter satisfies every import of
//! the handler that such runtimes lack; what is left are WASI's own. Each
//! composition is then checked against `wit/`'s `stock-http` world (what
//! `wac targets` does): it imports nothing beyond it and exports the
//! handler.
//!
//! The remote adapter is built into this binary; the local one (engine and
//! model inside) is built by scripts/dist, which composes both into `dist/`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use wac_graph::types::{validate_target, ItemKind, Package, Type, Types, WorldId};
use wac_graph::{plug, CompositionGraph, EncodeOptions};

/// The remote adapter built from guest/remote by build.rs.
static BUILT_REMOTE: &[u8] = include_bytes!(env!("TERN_REMOTE_WASM"));

/// The world every composition must fit.
const STOCK_WORLD: &str = "stock-http";

#[derive(clap::Args)]
pub struct ComposeArgs {
    /// The handler component (default: the one built into this binary).
    #[arg(long)]
    pub handler: Option<PathBuf>,
    /// The adapter plugged into it (default: the remote adapter built into
    /// this binary; scripts/dist builds the local one).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Where to write the composed component.
    #[arg(long, short, default_value = "dist/tern-remote.wasm")]
    pub out: PathBuf,
    /// The WIT folder holding the `stock-http` world the output is checked
    /// against (default: `wit` here, else the source tree's).
    #[arg(long)]
    pub wit: Option<PathBuf>,
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

/// Checks that `component` fits the world `world` of the WIT folder `wit`:
/// each import is one of the world's (or a subtype), each export of the
/// world is there.
pub fn check_fits(component: &[u8], wit: &Path, world: &str) -> anyhow::Result<()> {
    let mut resolve = wit_parser::Resolve::new();
    let (package, _) = resolve.push_dir(wit).with_context(|| format!("reading the WIT in {}", wit.display()))?;
    let encoded = wit_component::encode(&resolve, package).context("encoding the WIT package")?;
    let mut types = Types::default();
    let wit_package = Package::from_bytes("wit", None, encoded, &mut types)?;
    let component = Package::from_bytes("component", None, component.to_vec(), &mut types)?;
    let target = world_in(&types, wit_package.ty(), world)?;
    validate_target(&types, target, component.ty())
        .map_err(|report| anyhow::anyhow!("it does not fit {world}: {report}"))
}

/// The component type of the world named `name` in an encoded WIT package.
fn world_in(types: &Types, package: WorldId, name: &str) -> anyhow::Result<WorldId> {
    let Some(ItemKind::Type(Type::World(world))) = types[package].exports.get(name) else {
        anyhow::bail!("the WIT package has no world {name}");
    };
    match types[*world].exports.values().next() {
        Some(ItemKind::Component(component)) => Ok(*component),
        _ => anyhow::bail!("the world {name} is not encoded as a component type"),
    }
}

/// The WIT folder: as given, else `wit` in the working directory, else the
/// source tree this binary was built from.
fn wit_folder(given: Option<PathBuf>) -> PathBuf {
    given.unwrap_or_else(|| {
        let here = PathBuf::from("wit");
        if here.join("inference.wit").exists() {
            here
        } else {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit")
        }
    })
}

pub fn run(args: ComposeArgs) -> anyhow::Result<()> {
    let handler = read(args.handler.as_deref(), crate::serve::BUILT_HANDLER)?;
    let adapter = read(args.adapter.as_deref(), BUILT_REMOTE)?;
    let composed = compose(&handler, &adapter)?;
    let wit = wit_folder(args.wit);
    check_fits(&composed, &wit, STOCK_WORLD).with_context(|| format!("checking {}", args.out.display()))?;
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&args.out, &composed).with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("wrote {} ({} bytes), which fits {STOCK_WORLD} in {}", args.out.display(), composed.len(), wit.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wit() -> PathBuf {
        wit_folder(None)
    }

    #[test]
    fn the_composition_fits_the_stock_world() {
        let composed = compose(crate::serve::BUILT_HANDLER, BUILT_REMOTE).unwrap();
        check_fits(&composed, &wit(), STOCK_WORLD).unwrap();
        let engine = wasmtime::Engine::default();
        let component = wasmtime::component::Component::from_binary(&engine, &composed).unwrap();
        let imports: Vec<String> =
            component.component_type().imports(&engine).map(|(name, _)| name.to_string()).collect();
        assert!(imports.iter().any(|n| n.starts_with("wasi:http/outgoing-handler")));
    }

    #[test]
    fn the_handler_alone_does_not_fit_the_stock_world() {
        // It imports tern:llm and the rest, which stock runtimes lack: the
        // check names them.
        let error = check_fits(crate::serve::BUILT_HANDLER, &wit(), STOCK_WORLD).unwrap_err().to_string();
        assert!(error.contains("tern:llm/inference"), "{error}");
    }
}
