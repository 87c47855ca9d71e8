//! `tern serve`: loads the model in the background, compiles the handler
//! (built into this binary, or `--component FILE`), serves until SIGTERM or
//! SIGINT, then drains: no new connections, requests in flight get
//! `--shutdown-grace` seconds, then their generations end with an error.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tern_engine::{Engine, EngineError};

use crate::app::App;
use crate::cli::{apply_threads, engine_config, AppArgs, ServeArgs};
use crate::database::{self, Database};
use crate::kv::KeyValue;
use crate::shared_jobs::SharedJobs;
use crate::state::Shared;
use crate::{auth, components, metrics, server};

/// The handler component built from guest/handler by build.rs.
pub static BUILT_HANDLER: &[u8] = include_bytes!(env!("TERN_HANDLER_WASM"));

/// Task polls between tokio's checks for I/O and for work from other threads.
const EVENT_INTERVAL: u32 = 4;

/// `--addr`, with the port from `PORT` when the address was not given as a
/// flag or `TERN_ADDR` (the convention of hosting platforms).
fn listen_addr(args: &ServeArgs, matches: &clap::ArgMatches) -> anyhow::Result<SocketAddr> {
    let mut addr = args.addr;
    let explicit = matches!(
        matches.value_source("addr"),
        Some(clap::parser::ValueSource::CommandLine | clap::parser::ValueSource::EnvVariable)
    );
    if let (false, Ok(port)) = (explicit, std::env::var("PORT")) {
        addr.set_port(port.trim().parse().with_context(|| format!("PORT={port} is not a port number"))?);
    }
    Ok(addr)
}

/// Runs the server until a signal stops it.
pub fn serve(args: ServeArgs, matches: &clap::ArgMatches) -> anyhow::Result<()> {
    let addr = listen_addr(&args, matches)?;
    let keys = auth::Keys::load(&args.api_key, &args.api_key_file)?;
    let admin_keys = auth::Keys::load(&args.admin_key, &args.admin_key_file)?;
    let (server_keys, admin_on) = (keys.len(), !admin_keys.is_empty());
    apply_threads(&args.model);
    let mut config = engine_config(&args.model);
    config.max_running = args.max_running;
    config.max_queue = args.max_queue;
    config.default_timeout = Some(Duration::from_secs(args.request_timeout));
    config.kv_memory = args.kv_memory_mib << 20;
    config.kv_prefault = args.kv_prefault;
    config.step_tokens = args.step_tokens;
    config.prefill_chunk = args.prefill_chunk;
    config.job_ttl = Duration::from_secs(args.job_ttl);
    config.aliases = args.aliases.clone();
    config.accept_any_model = args.accept_any_model;
    let model = config.models[0].clone();
    anyhow::ensure!(model.exists(), "model file {} not found (give one with --model)", model.display());
    config.device.check().map_err(|e| anyhow::anyhow!("--device {}: {e}", config.device))?;
    let engine = Engine::start(config);

    let settings = server::Settings {
        memory_bytes: args.instance_memory_mib << 20,
        request_timeout: Duration::from_secs(args.request_timeout),
        max_instances: args.max_instances,
        reuse_instances: args.reuse_instances,
        guest_env: [
            ("TERN_MAX_BATCH".into(), args.max_batch.to_string()),
            ("TERN_CACHE_TTL".into(), args.cache_ttl.to_string()),
            ("TERN_CORS_ORIGINS".into(), args.cors_origins.join(",")),
        ]
        .into_iter()
        .chain(webui_env(args.app.webui.as_deref())?)
        .collect(),
        header_timeout: Duration::from_secs(args.header_timeout),
        body_timeout: Duration::from_secs(args.body_timeout),
        keep_alive: Duration::from_secs(args.keep_alive),
        max_header_bytes: args.max_header_bytes,
        max_body_bytes: args.max_body_kib << 10,
        max_connections: args.max_connections,
        max_component_bytes: args.max_component_mib << 20,
        max_upload_bytes: args.app.max_upload_mib << 20,
        compress: args.compress,
        component_file: args.component.clone(),
        trusted_proxies: crate::proxies::TrustedProxies::parse(&args.trusted_proxies)?,
        webui: args.app.webui.clone(),
    };
    // A guest that computes yields at every epoch tick, but tokio wakes a
    // yielding task again without looking for I/O; look for it every few
    // polls so new connections are accepted while guests are busy.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .event_interval(EVENT_INTERVAL)
        .global_queue_interval(EVENT_INTERVAL)
        .build()?;
    let app = runtime.block_on(open_app(&args.app))?;
    // Redis's connection manager starts its tasks on this runtime.
    let kv = {
        let _inside = runtime.enter();
        KeyValue::open(&args.keyvalue, args.cache_mib << 20, args.cache_ttl)?
    };
    let jobs =
        kv.redis().map(|r| Arc::new(SharedJobs::new(r.clone(), engine.clone(), Duration::from_secs(args.job_ttl))));
    let shared = Shared { kv, jobs, app, sessions: Default::default() };
    let metrics = Arc::new(metrics::HostMetrics::default());
    let wasm_engine = server::instances::wasm_engine(&settings)?;
    let (wasm, source) = match &args.component {
        Some(p) => (std::fs::read(p).with_context(|| format!("reading {}", p.display()))?, p.display().to_string()),
        None => (BUILT_HANDLER.to_vec(), "built-in".to_string()),
    };
    let cache_dir =
        if args.no_compile_cache { None } else { args.compile_cache.clone().or_else(components::default_cache_dir) };
    let components =
        Arc::new(components::Components::new(wasm_engine.clone(), cache_dir, &wasm, &source, metrics.clone())?);
    server::instances::start_epoch_ticker(&wasm_engine);
    let server = Arc::new(server::Server::new(
        components.clone(),
        engine.clone(),
        shared.clone(),
        settings,
        keys,
        admin_keys,
        metrics,
    ));
    runtime.block_on(async move {
        if let Some(redis) = shared.kv.redis().cloned() {
            tracing::info!("key-value store: Redis (shared by replicas)");
            tokio::spawn(async move { redis.wait_reachable().await });
        }
        if let Some(jobs) = shared.jobs.clone() {
            tokio::spawn(jobs.mirror());
        }
        let listener = server::connection::bind(addr).await?;
        tracing::info!(addr = %listener.local_addr()?, model = %model.display(), api_keys = server_keys,
            admin = admin_on, "listening");
        if let Some(path) = args.component.clone() {
            tokio::spawn(components::watch(components.clone(), path, args.max_component_mib << 20));
        }
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let serving = tokio::spawn(server.clone().serve(listener, stopped));
        let signal = shutdown_signal().await;
        let in_flight = server.metrics.in_flight.load(std::sync::atomic::Ordering::Relaxed);
        tracing::info!(signal, in_flight, grace_s = args.shutdown_grace, "shutting down: no new connections");
        let _ = stop.send(true);
        let _ = serving.await;
        if !server.drain(Duration::from_secs(args.shutdown_grace)).await {
            tracing::warn!("grace period over; ending the remaining generations with an error");
            engine.abort_all(EngineError::Unavailable("the server is shutting down".into()));
            if !server.drain(Duration::from_secs(5)).await {
                tracing::warn!("requests still running at exit");
            }
        }
        if !server.connections_closed(Duration::from_secs(2)).await {
            tracing::warn!("connections still open at exit");
        }
        tracing::info!("stopped");
        Ok(())
    })
}

/// The settings components read through `wasi:config`, and the database
/// (migrated): SQLite now, PostgreSQL as soon as it answers (the server
/// reports not ready until then, so replicas may start before it).
async fn open_app(args: &AppArgs) -> anyhow::Result<Arc<App>> {
    let data_dir = args.data_dir.clone().unwrap_or_else(database::default_data_dir);
    let kind = if args.database_url.is_some() { "postgres" } else { "sqlite" };
    let mut config = vec![
        ("database".to_string(), kind.to_string()),
        ("session_seconds".to_string(), (args.session_hours * 3600).to_string()),
        ("max_upload_bytes".to_string(), (args.max_upload_mib << 20).to_string()),
    ];
    if let Some(url) = &args.database_url {
        config.push(("database_url".to_string(), url.clone()));
    }
    let media_upstream = match &args.media_upstream {
        Some(url) => {
            config.push(("media_upstream".to_string(), url.trim_end_matches('/').to_string()));
            Some(App::upstream_origin(url)?)
        }
        None => None,
    };
    if let Some(key) = &args.media_upstream_key {
        config.push(("media_upstream_key".to_string(), key.clone()));
    }
    let app = Arc::new(App::new(config, media_upstream));
    match args.database_url.clone() {
        None => {
            let db = Database::open_sqlite(&data_dir).await?;
            app.connected(db, database::signing_secret(args.jwt_secret.as_deref(), &data_dir)?);
        }
        Some(url) => {
            database::check_postgres_url(&url)?;
            let signing = match &args.jwt_secret {
                Some(secret) => Signing::Given(database::signing_secret(Some(secret), &data_dir)?),
                // A secret this folder kept from before is offered as the
                // shared one, so a server that becomes a replica keeps its
                // sessions.
                None => Signing::Offer(match database::kept_secret(&data_dir)? {
                    Some(kept) => kept,
                    None => database::random_secret()?,
                }),
            };
            let target = Postgres { url, connections: args.database_connections, signing };
            // A first try here: a database this tern cannot use stops
            // start-up; one that does not answer yet is waited for.
            match target.open().await {
                Ok((db, secret)) => app.connected(db, secret),
                Err(e) if e.downcast_ref::<database::NewerSchema>().is_some() => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"),
                        "waiting for PostgreSQL (--database-url); not ready until it answers");
                    tokio::spawn(target.connect(app.clone()));
                }
            }
        }
    }
    Ok(app)
}

/// The sign-in signing secret on PostgreSQL.
enum Signing {
    /// `--jwt-secret`.
    Given(String),
    /// Offered as the one every replica shares; the database keeps the
    /// first offer it gets.
    Offer(String),
}

/// The PostgreSQL database the app layer is to use.
struct Postgres {
    url: String,
    connections: usize,
    signing: Signing,
}

impl Postgres {
    /// The database, migrated, and the signing secret.
    async fn open(&self) -> anyhow::Result<(Database, String)> {
        let db = Database::open_postgres(&self.url, self.connections).await?;
        let secret = match &self.signing {
            Signing::Given(secret) => secret.clone(),
            Signing::Offer(fresh) => {
                db.postgres().expect("a database URL opens PostgreSQL").shared_secret("jwt_secret", fresh).await?
            }
        };
        Ok((db, secret))
    }

    /// Retries opening until PostgreSQL answers, then hands it to the app.
    /// A schema from a newer tern ends the process: waiting will not help.
    async fn connect(self, app: Arc<App>) {
        let mut wait = Duration::from_millis(250);
        let mut last_error = String::new();
        loop {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
            match self.open().await {
                Ok((db, secret)) => {
                    app.connected(db, secret);
                    return;
                }
                Err(e) if e.downcast_ref::<database::NewerSchema>().is_some() => {
                    tracing::error!(error = %format!("{e:#}"), "stopping");
                    std::process::exit(1);
                }
                Err(e) => {
                    let error = format!("{e:#}");
                    if error != last_error {
                        tracing::warn!(error = %error, "PostgreSQL still does not answer");
                        last_error = error;
                    }
                }
            }
        }
    }
}

/// Waits for SIGTERM or SIGINT and names it.
async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// What the handler needs to serve `--webui`'s folder: where it sees it, and
/// the version the frontend was built as (`open-webui-version`, written by
/// `scripts/fetch-webui`). A folder without an index page is an error.
fn webui_env(dir: Option<&Path>) -> anyhow::Result<Vec<(String, String)>> {
    let Some(dir) = dir else { return Ok(Vec::new()) };
    anyhow::ensure!(
        dir.join("index.html").is_file(),
        "--webui {}: no index.html there (scripts/fetch-webui fetches Open WebUI's frontend into target/webui)",
        dir.display()
    );
    let version = std::fs::read_to_string(dir.join("open-webui-version")).map(|v| v.trim().to_string());
    let version = version.unwrap_or_else(|_| {
        tracing::warn!(dir = %dir.display(), "no open-webui-version file: /api/version answers tern's version, and the frontend may reload");
        String::new()
    });
    tracing::info!(dir = %dir.display(), version, "serving Open WebUI's frontend");
    Ok(vec![
        ("TERN_WEBUI".into(), crate::server::settings::WEBUI_GUEST_DIR.into()),
        ("TERN_WEBUI_VERSION".into(), version),
    ])
}
