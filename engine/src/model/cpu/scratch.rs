//! Buffers of one forward pass, kept between passes: each is resized to the
//! step's row count, so once the largest step has run, a step allocates
//! nothing.

use crate::model::config::ModelConfig;

/// Buffers of a forward pass over n rows.
#[derive(Default)]
pub(crate) struct Scratch {
    pub x: Vec<f32>,    // (n, d) residual stream
    pub xn: Vec<f32>,   // (n, max(d, q, ff)) normed input of a projection
    pub xq: Vec<i8>,    // (n, max(d, q, ff)) its int8 quantisation
    pub xs: Vec<f32>,   // (n,) quantisation scales
    pub q: Vec<f32>,    // (n, q_dim)
    pub k: Vec<f32>,    // (n, kv_dim)
    pub v: Vec<f32>,    // (n, kv_dim)
    pub att: Vec<f32>,  // (n, q_dim) attention output
    pub out: Vec<f32>,  // (n, d) projection output
    pub gate: Vec<f32>, // (n, ff)
    pub up: Vec<f32>,   // (n, ff)
    pub h: Vec<f32>,    // (n, ff)
}

impl Scratch {
    /// Sizes every buffer for `n` rows of model `c`. Contents are left over
    /// from the last pass: every buffer is written before it is read.
    pub fn resize(&mut self, n: usize, c: &ModelConfig) {
        let (d, qd, kvd, ff) = (c.n_embd, c.q_dim(), c.kv_dim(), c.n_ff);
        let widest = d.max(qd).max(ff);
        self.x.resize(n * d, 0.0);
        self.xn.resize(n * widest, 0.0);
        self.xq.resize(n * widest, 0);
        self.xs.resize(n, 0.0);
        self.q.resize(n * qd, 0.0);
        self.k.resize(n * kvd, 0.0);
        self.v.resize(n * kvd, 0.0);
        self.att.resize(n * qd, 0.0);
        self.out.resize(n * d, 0.0);
        self.gate.resize(n * ff, 0.0);
        self.up.resize(n * ff, 0.0);
        self.h.resize(n * ff, 0.0);
    }
}
