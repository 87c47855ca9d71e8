//! `tern`: serves ternary (BitNet b1.58) language models over HTTP through a
//! WebAssembly handler component, or generates from the command line.
//!
//! 1. `tern serve` (`serve`) loads the model on a background thread,
//!    compiles the handler (embedded at build time, or `--component FILE`),
//!    and answers every request with an instance of it (`server`).
//! 2. `tern generate` (`generate`) runs the same engine without HTTP and
//!    streams to stdout.
//! 3. `tern bench` and `tern synth` run the tools of `tern-tools`.
//!
//! Every subcommand's flags are in `cli`; `tern.toml` and `TERN_*`
//! variables feed them (`config`).

mod admin;
mod app;
mod auth;
mod bindings;
mod cli;
mod components;
mod compose;
mod compress;
mod config;
mod config_store;
mod database;
mod generate;
mod inference;
mod keyvalue;
mod kv;
mod metrics;
mod proxies;
mod resources;
mod responses;
mod serve;
mod server;
mod sessions;
mod shared_jobs;
mod socket_sessions;
mod spin_postgres;
mod spin_sqlite;
mod state;

use anyhow::Context as _;
use clap::{CommandFactory as _, FromArgMatches as _};

use crate::cli::{Cli, Command};

fn main() -> anyhow::Result<()> {
    metrics::mark_start();
    let (matches, from_file) = config::parse(Cli::command(), std::env::args_os().collect())?;
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let json_logs = matches!(&cli.command, Command::Serve(a) if a.log_format == "json");
    init_logging(json_logs);
    tern_kernels::dispatch::check_variant_env().map_err(anyhow::Error::msg)?;
    match cli.command {
        Command::Serve(args) => {
            let sub = matches.subcommand_matches("serve").context("serve matches")?;
            tracing::info!("settings:\n{}", config::render(&serve_spec("serve"), sub, &from_file).trim_end());
            serve::serve(args, sub)
        }
        Command::Config(args) => {
            let sub = matches.subcommand_matches("config").context("config matches")?;
            if args.print {
                print!("{}", config::render(&serve_spec("config"), sub, &from_file));
            } else {
                eprintln!("nothing to do; `tern config --print` shows the settings");
            }
            Ok(())
        }
        Command::Generate(args) => generate::generate(args),
        Command::Synth(args) => tern_tools::synth_file::write_file(&args.spec()?, &args.out),
        Command::Bench(args) => tern_tools::bench::run(args.options()),
        Command::Compose(args) => compose::run(args),
    }
}

fn serve_spec(name: &str) -> clap::Command {
    Cli::command().find_subcommand(name).expect("the subcommand exists").clone()
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,wasmtime=warn,cranelift=warn".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).with_current_span(true).with_span_list(false).init();
    } else {
        builder.init();
    }
}
