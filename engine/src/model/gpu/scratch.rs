//! Device buffers of a step, grown to the largest step seen.

use tern_shaders::{wgpu, Gpu, Quantized};

use crate::model::config::ModelConfig;

#[derive(Default)]
pub(super) struct Scratch {
    /// Rows, head rows, table entries the buffers hold.
    rows: usize,
    head_rows: usize,
    table_len: usize,
    bufs: Option<Buffers>,
}

pub(super) struct Buffers {
    pub x: wgpu::Buffer,
    /// int8 rows for the q/k/v and gate/up products (n_embd wide), the
    /// output projection (q_dim) and the down projection (n_ff)
    pub xq_embd: Quantized,
    pub xq_q: Quantized,
    pub xq_ff: Quantized,
    pub q: wgpu::Buffer,
    pub k: wgpu::Buffer,
    pub v: wgpu::Buffer,
    pub att: wgpu::Buffer,
    pub out: wgpu::Buffer,
    pub gate: wgpu::Buffer,
    pub up: wgpu::Buffer,
    pub h: wgpu::Buffer,
    pub cos_sin: wgpu::Buffer,
    pub slots: wgpu::Buffer,
    pub row_info: wgpu::Buffer,
    pub tables: wgpu::Buffer,
    pub head_in: wgpu::Buffer,
    pub head_norm: wgpu::Buffer,
    pub logits: wgpu::Buffer,
}

impl Scratch {
    /// Room for `rows` rows, `head_rows` rows through the head and
    /// `table_len` block-table entries; `words` are the int8 widths of the
    /// n_embd-, q_dim- and n_ff-wide products.
    pub fn reserve(
        &mut self,
        gpu: &Gpu,
        c: &ModelConfig,
        rows: usize,
        head_rows: usize,
        table_len: usize,
        words: [usize; 3],
    ) {
        if self.bufs.is_some() && rows <= self.rows && head_rows <= self.head_rows && table_len <= self.table_len {
            return;
        }
        // Grow to at least twice the last size, so a run of growing steps
        // allocates a few times, not every step.
        let grow = |want: usize, had: usize| if want > had { want.max(2 * had) } else { had };
        self.rows = grow(rows, self.rows);
        self.head_rows = grow(head_rows.max(1), self.head_rows);
        self.table_len = grow(table_len, self.table_len);
        let (n, m) = (self.rows, self.head_rows);
        let f = |label: &str, len: usize| gpu.buffer(label, (len * 4) as u64);
        self.bufs = Some(Buffers {
            x: f("x", n * c.n_embd),
            xq_embd: Quantized::new(gpu, n, words[0]),
            xq_q: Quantized::new(gpu, n, words[1]),
            xq_ff: Quantized::new(gpu, n, words[2]),
            q: f("q", n * c.q_dim()),
            k: f("k", n * c.kv_dim()),
            v: f("v", n * c.kv_dim()),
            att: f("att", n * c.q_dim()),
            out: f("out", n * c.n_embd),
            gate: f("gate", n * c.n_ff),
            up: f("up", n * c.n_ff),
            h: f("h", n * c.n_ff),
            cos_sin: f("cos_sin", n * c.rope_dim.max(2)),
            slots: f("slots", n),
            row_info: f("row_info", 2 * n),
            tables: f("tables", self.table_len.max(1)),
            head_in: f("head_in", m * c.n_embd),
            head_norm: f("head_norm", m * c.n_embd),
            logits: f("logits", m * c.n_vocab),
        });
    }
}

impl std::ops::Deref for Scratch {
    type Target = Buffers;

    fn deref(&self) -> &Buffers {
        self.bufs.as_ref().expect("reserve() comes first")
    }
}
