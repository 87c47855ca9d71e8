//! Handler components: compiled off the request path, type-checked against
//! everything the host provides, and swapped in atomically. A component that
//! fails to compile or link never replaces the one serving.
//!
//! 1. [`Components::compile`] hashes the bytes (SHA-256), looks for compiled
//!    code in the on-disk cache (keyed by that digest and the engine's
//!    compatibility hash), compiles and stores it if absent, then links it.
//!    Compiled code is native code run as is, so each file has its SHA-256
//!    beside it (`.cwasm.sha256`) and is used only when it matches; a
//!    damaged or unverifiable file is recompiled and replaced.
//! 2. [`Components::load`] runs that on a blocking thread and, on success,
//!    replaces the active [`Loaded`]; requests already running keep the
//!    `Arc` of the one they started on.
//! 3. [`watch`] reloads the `--component` file when it changes or on SIGHUP.

use crate::bindings::{Handler, HandlerPre};
use crate::metrics::HostMetrics;
use crate::state::HostState;
use anyhow::Context as _;
use sha2::{Digest as _, Sha256};
use std::hash::{Hash as _, Hasher as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::Store;

/// Compiled components kept in the cache folder; older ones are removed.
const CACHE_KEEP: usize = 16;

/// How often the watched component file is looked at.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);

/// A compiled, linked handler component.
pub struct Loaded {
    pub pre: HandlerPre<HostState>,
    /// SHA-256 of the component's bytes, in hex.
    pub digest: String,
    pub bytes: usize,
    /// Where it came from: `built-in`, a file path, or `upload`.
    pub source: String,
    pub loaded_at: SystemTime,
    /// Time to compile (or read from the cache) and link.
    pub load_ms: f64,
    /// True when the compiled code came from the disk cache.
    pub from_cache: bool,
    /// The component's imports and exports by name (its world).
    pub imports: Vec<String>,
    pub exports: Vec<String>,
    /// Instances kept for reuse (`--reuse-instances`).
    pub idle: Mutex<Vec<Reusable>>,
}

/// An instance that has answered `uses` requests and may answer more.
pub struct Reusable {
    pub store: Store<HostState>,
    /// Its place among `--max-instances`, given back after the store is
    /// dropped (fields drop in order).
    pub slot: tokio::sync::OwnedSemaphorePermit,
    pub handler: Handler,
    pub uses: u32,
}

impl Loaded {
    /// The short form of the digest sent in `x-tern-component`.
    pub fn version(&self) -> &str {
        &self.digest[..12]
    }

    /// What `GET /admin/component` reports.
    pub fn describe(&self) -> serde_json::Value {
        let loaded_at = self.loaded_at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        serde_json::json!({
            "digest": format!("sha256:{}", self.digest),
            "version": self.version(),
            "bytes": self.bytes,
            "source": self.source,
            "loaded_at": loaded_at.as_secs(),
            "load_ms": self.load_ms,
            "from_cache": self.from_cache,
            "world": {"imports": self.imports, "exports": self.exports},
        })
    }
}

/// The active handler and everything needed to load another.
pub struct Components {
    engine: wasmtime::Engine,
    linker: Linker<HostState>,
    cache_dir: Option<PathBuf>,
    active: RwLock<Arc<Loaded>>,
    metrics: Arc<HostMetrics>,
    /// One load at a time, so two quick swaps land in order.
    loading: tokio::sync::Mutex<()>,
}

impl Components {
    /// Links the host's interfaces and loads the first component; an error
    /// here stops start-up.
    pub fn new(
        engine: wasmtime::Engine,
        cache_dir: Option<PathBuf>,
        wasm: &[u8],
        source: &str,
        metrics: Arc<HostMetrics>,
    ) -> anyhow::Result<Self> {
        let linker = host_linker(&engine)?;
        let first = compile(&engine, &linker, cache_dir.as_deref(), wasm, source)?;
        log_loaded(&first, "handler loaded");
        Ok(Self {
            engine,
            linker,
            cache_dir,
            active: RwLock::new(Arc::new(first)),
            metrics,
            loading: tokio::sync::Mutex::new(()),
        })
    }

    /// The component new requests run on.
    pub fn active(&self) -> Arc<Loaded> {
        self.active.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn engine(&self) -> &wasmtime::Engine {
        &self.engine
    }

    /// Compiles and links `wasm` off the request path, then makes it the
    /// active component. On failure the active one stays and the reason is
    /// logged and returned.
    pub async fn load(self: &Arc<Self>, wasm: Vec<u8>, source: String) -> anyhow::Result<Arc<Loaded>> {
        let _one_at_a_time = self.loading.lock().await;
        let this = self.clone();
        let compiled = tokio::task::spawn_blocking(move || {
            compile(&this.engine, &this.linker, this.cache_dir.as_deref(), &wasm, &source)
        })
        .await
        .context("the compile task failed")?;
        match compiled {
            Ok(loaded) => {
                let loaded = Arc::new(loaded);
                *self.active.write().unwrap_or_else(|p| p.into_inner()) = loaded.clone();
                self.metrics.swapped();
                log_loaded(&loaded, "handler swapped in");
                Ok(loaded)
            }
            Err(e) => {
                self.metrics.rejected();
                tracing::error!(reason = format!("{e:#}"), "component rejected; the active handler keeps serving");
                Err(e)
            }
        }
    }
}

fn log_loaded(loaded: &Loaded, what: &str) {
    tracing::info!(version = loaded.version(), source = %loaded.source, bytes = loaded.bytes,
        ms = loaded.load_ms, from_cache = loaded.from_cache, "{what}");
}

/// A linker with WASI, wasi:http, Spin's SQL interfaces, wasi:config and
/// the host's own interfaces.
fn host_linker(engine: &wasmtime::Engine) -> anyhow::Result<Linker<HostState>> {
    let mut linker = Linker::<HostState>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    crate::bindings::inference::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |s| s)?;
    crate::bindings::store_usage::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |s| s)?;
    crate::bindings::sessions::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |s| s)?;
    crate::bindings::wasi::keyvalue::store::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |s| s)?;
    crate::bindings::wasi::keyvalue::atomics::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |s| s)?;
    crate::bindings::spin_sqlite::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |s| s)?;
    crate::bindings::spin_postgres::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |s| s)?;
    crate::bindings::config_store::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |s| s)?;
    Ok(linker)
}

fn compile(
    engine: &wasmtime::Engine,
    linker: &Linker<HostState>,
    cache_dir: Option<&Path>,
    wasm: &[u8],
    source: &str,
) -> anyhow::Result<Loaded> {
    let started = Instant::now();
    let digest = hex(&Sha256::digest(wasm));
    let cached = cache_dir.map(|dir| dir.join(format!("{digest}-{:016x}.cwasm", compatibility(engine))));
    let (component, from_cache) = match cached.as_deref().and_then(|p| read_cached(engine, p)) {
        Some(c) => (c, true),
        None => {
            let component =
                Component::new(engine, wasm).map_err(anyhow::Error::from).context("compiling the component")?;
            if let (Some(path), Some(dir)) = (&cached, cache_dir) {
                if let Err(e) = write_cached(&component, dir, path) {
                    tracing::warn!(error = format!("{e:#}"), dir = %dir.display(), "compiled component not cached");
                }
            }
            (component, false)
        }
    };
    let ty = component.component_type();
    let imports = ty.imports(engine).map(|(name, _)| name.to_string()).collect();
    let exports = ty.exports(engine).map(|(name, _)| name.to_string()).collect();
    let pre = linker
        .instantiate_pre(&component)
        .map_err(anyhow::Error::from)
        .context("linking the component against the host")?;
    let pre = HandlerPre::new(pre)
        .map_err(anyhow::Error::from)
        .context("the component does not export wasi:http/incoming-handler")?;
    Ok(Loaded {
        pre,
        digest,
        bytes: wasm.len(),
        source: source.to_string(),
        loaded_at: SystemTime::now(),
        load_ms: started.elapsed().as_secs_f64() * 1e3,
        from_cache,
        imports,
        exports,
        idle: Mutex::new(Vec::new()),
    })
}

/// The engine's compatibility hash: compiled code from another wasmtime
/// version or configuration never matches.
fn compatibility(engine: &wasmtime::Engine) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    h.finish()
}

/// Where the SHA-256 of the compiled file at `path` is kept.
fn digest_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".sha256");
    PathBuf::from(name)
}

fn read_cached(engine: &wasmtime::Engine, path: &Path) -> Option<Component> {
    if !path.exists() {
        return None;
    }
    let unusable = |why: String| {
        tracing::warn!(path = %path.display(), why, "cached component unusable; recompiling");
        None
    };
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => return unusable(format!("reading it failed: {e}")),
    };
    let expected = std::fs::read_to_string(digest_path(path)).unwrap_or_default();
    if expected.trim() != hex(&Sha256::digest(&bytes)) {
        return unusable("its SHA-256 does not match the one written with it".into());
    }
    // SAFETY: the bytes are those this host wrote from its own compilation
    // (their digest matches the one written beside them), under a name
    // carrying the engine's compatibility hash; wasmtime still checks the
    // header and rejects a mismatch.
    match unsafe { Component::deserialize(engine, &bytes) } {
        Ok(c) => Some(c),
        Err(e) => unusable(format!("{e:#}")),
    }
}

/// Writes the compiled code and then its digest, each atomically (by
/// rename): a reader finds either both or a mismatch it recompiles.
fn write_cached(component: &Component, dir: &Path, path: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let bytes = component.serialize()?;
    let digest = hex(&Sha256::digest(&bytes));
    for (target, contents) in [(path.to_path_buf(), bytes), (digest_path(path), digest.into_bytes())] {
        let mut tmp = target.as_os_str().to_owned();
        tmp.push(format!(".tmp{}", std::process::id()));
        std::fs::write(&tmp, contents).with_context(|| format!("writing {}", target.display()))?;
        std::fs::rename(&tmp, &target).with_context(|| format!("renaming to {}", target.display()))?;
    }
    prune_cache(dir);
    Ok(())
}

/// Keeps the [`CACHE_KEEP`] most recently written compiled components.
fn prune_cache(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut files: Vec<(SystemTime, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .collect();
    files.sort_by_key(|f| std::cmp::Reverse(f.0));
    for (_, old) in files.into_iter().skip(CACHE_KEEP) {
        let _ = std::fs::remove_file(digest_path(&old));
        let _ = std::fs::remove_file(old);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The default cache folder: `$XDG_CACHE_HOME/tern` or `~/.cache/tern`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("tern").join("components"))
}

/// Reloads `path` into `components` whenever its contents change (checked
/// every [`WATCH_INTERVAL`], once the file has stopped changing) and on
/// SIGHUP; a file over `max_bytes` is refused unread, as an upload would
/// be. Runs until the process ends.
pub async fn watch(components: Arc<Components>, path: PathBuf, max_bytes: usize) {
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "SIGHUP not handled");
            None
        }
    };
    let stamp = |p: &Path| p.metadata().ok().map(|m| (m.len(), m.modified().ok()));
    let mut seen = stamp(&path);
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    loop {
        let forced = tokio::select! {
            _ = tick.tick() => false,
            Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
        };
        let now = stamp(&path);
        if !forced && now == seen {
            continue;
        }
        if !forced {
            // Still being written? Wait for one quiet interval.
            tokio::time::sleep(WATCH_INTERVAL).await;
            if stamp(&path) != now {
                continue;
            }
        }
        seen = now;
        if let Some((len, _)) = now.filter(|(len, _)| *len > max_bytes as u64) {
            tracing::error!(path = %path.display(), bytes = len, max_bytes,
                "component file larger than --max-component-mib; the active handler keeps serving");
            continue;
        }
        let wasm = match std::fs::read(&path) {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "component file unreadable; the active handler keeps serving");
                continue;
            }
        };
        if !forced && hex(&Sha256::digest(&wasm)) == components.active().digest {
            continue;
        }
        let why = if forced { "SIGHUP" } else { "file changed" };
        tracing::info!(path = %path.display(), why, "reloading the handler component");
        let _ = components.load(wasm, path.display().to_string()).await;
    }
}
