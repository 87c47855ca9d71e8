//! `tern synth`: writes a GGUF with a known model's shapes and random ternary
//! weights, so benchmarks (ours and llama.cpp's, on the same file) can run at
//! full size without downloading the model.
//!
//! The file is written to `FILE.part` and renamed when complete, so a file
//! that exists is a whole one.

use anyhow::Context as _;
use clap::builder::PossibleValuesParser;
use clap::{Args, ValueEnum};
use std::io::{BufWriter, Write as _};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tern_engine::gguf::GgmlType;
use tern_engine::synth::{self, Progress, SynthSpec};

/// Output buffer: large writes keep a 1 GB file from costing a million syscalls.
const BUFFER_BYTES: usize = 8 << 20;
/// How often the progress line is redrawn.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

#[derive(Clone, Copy, ValueEnum)]
enum Ternary {
    #[value(name = "tq2_0")]
    Tq2_0,
    #[value(name = "tq1_0")]
    Tq1_0,
    #[value(name = "i2_s")]
    I2S,
}

#[derive(Clone, Copy, ValueEnum)]
enum Head {
    #[value(name = "f16")]
    F16,
    #[value(name = "q8_0")]
    Q8_0,
}

#[derive(Args)]
pub struct SynthArgs {
    /// Model whose shapes to copy.
    #[arg(long, default_value = "bitnet-2b-4t", value_parser = PossibleValuesParser::new(synth::PRESETS))]
    like: String,
    /// Format of the ternary projections.
    #[arg(long, value_enum, default_value_t = Ternary::Tq2_0)]
    ternary: Ternary,
    /// Format of the embedding, which is also the output head.
    #[arg(long, value_enum, default_value_t = Head::F16)]
    head: Head,
    /// Number of layers, instead of the model's.
    #[arg(long)]
    layers: Option<usize>,
    /// Context length (default: the preset's).
    #[arg(long)]
    context: Option<usize>,
    /// `general.name`, the id clients use (default: the preset's name with `-synth`).
    #[arg(long)]
    name: Option<String>,
    /// Seed of the weights: one seed gives the same model in every format.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The GGUF file to write.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: SynthArgs) -> anyhow::Result<()> {
    let mut spec = SynthSpec::preset(&args.like).context("unknown preset")?;
    spec.ternary = match args.ternary {
        Ternary::Tq2_0 => GgmlType::TQ2_0,
        Ternary::Tq1_0 => GgmlType::TQ1_0,
        Ternary::I2S => GgmlType::I2_S,
    };
    spec.head = match args.head {
        Head::F16 => GgmlType::F16,
        Head::Q8_0 => GgmlType::Q8_0,
    };
    spec.n_layer = args.layers.unwrap_or(spec.n_layer);
    spec.n_ctx = args.context.unwrap_or(spec.n_ctx);
    if let Some(name) = args.name {
        spec.name = name;
    }
    spec.seed = args.seed;
    spec.check()?;

    let mut part = args.out.clone().into_os_string();
    part.push(".part");
    let part = PathBuf::from(part);
    let file = std::fs::File::create(&part).with_context(|| format!("creating {}", part.display()))?;
    let started = Instant::now();
    let mut last_drawn: Option<Instant> = None;
    let draw = |p: &Progress| {
        let done = p.written == p.total;
        if !done && last_drawn.is_some_and(|t| t.elapsed() < PROGRESS_EVERY) {
            return;
        }
        last_drawn = Some(Instant::now());
        let mb = |b: u64| b as f64 / 1e6;
        let mut err = std::io::stderr().lock();
        let _ =
            write!(err, "\r  tensor {}/{}  {:.0} / {:.0} MB  ", p.tensor + 1, p.n_tensors, mb(p.written), mb(p.total));
        let _ = err.flush();
    };
    let out = synth::write(&spec, BufWriter::with_capacity(BUFFER_BYTES, file), draw)
        .with_context(|| format!("writing {}", part.display()))?;
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    eprintln!();
    std::fs::rename(&part, &args.out)
        .with_context(|| format!("renaming {} to {}", part.display(), args.out.display()))?;

    let size = std::fs::metadata(&args.out)?.len();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "wrote {}: {} ({} x {} layers, {} projections, {} head), {:.1} MB ({:.2} GiB) in {:.1} s ({:.0} MB/s)",
        args.out.display(),
        spec.name,
        spec.n_embd,
        spec.n_layer,
        spec.ternary,
        spec.head,
        size as f64 / 1e6,
        size as f64 / (1u64 << 30) as f64,
        secs,
        size as f64 / 1e6 / secs
    );
    Ok(())
}
