//! `tern synth`'s file handling: a synthetic model is written to
//! `FILE.part` with a progress line on stderr, synced, and renamed when
//! complete, so a file that exists is a whole one.

use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::synth::{self, Progress, SynthSpec};

/// Output buffer: large writes keep a 1 GB file from costing a million syscalls.
const BUFFER_BYTES: usize = 8 << 20;
/// How often the progress line is redrawn.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// Writes the model `spec` describes to `out` and prints what was written.
pub fn write_file(spec: &SynthSpec, out: &Path) -> anyhow::Result<()> {
    spec.check()?;
    let mut part = out.to_path_buf().into_os_string();
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
    let written = synth::write(spec, BufWriter::with_capacity(BUFFER_BYTES, file), draw)
        .with_context(|| format!("writing {}", part.display()))?;
    written.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    eprintln!();
    std::fs::rename(&part, out).with_context(|| format!("renaming {} to {}", part.display(), out.display()))?;

    let size = std::fs::metadata(out)?.len();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "wrote {}: {} ({} x {} layers, {} projections, {} head), {:.1} MB ({:.2} GiB) in {:.1} s ({:.0} MB/s)",
        out.display(),
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
