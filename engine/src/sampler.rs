//! Picking the next token from logits.
//!
//! The order of the steps follows llama.cpp's default chain so that users'
//! settings mean what they are used to: repeat penalty, top-k, then (with a
//! temperature) softmax, top-p, min-p, and a draw from a seeded generator.
//! A constrained generation's tokens are first masked by its grammar.

use crate::grammar::automaton::Mask;
use crate::grammar::Constraint;

/// Sampling settings of one generation; neutral values switch a step off.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: f32,
    pub repeat_penalty: f32,
    /// Window of recent tokens the three penalties look at.
    pub repeat_last_n: usize,
    /// Subtracted once from the logit of every token in the window.
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per appearance in the window.
    pub frequency_penalty: f32,
    pub seed: u64,
    /// Never pick an end-of-generation token: the generation runs until
    /// `max_tokens`, the context's end or a stop string.
    pub ignore_eos: bool,
    /// Report each generated token's log-probability and this many of the
    /// likeliest tokens at its position (at most [`MAX_TOP_LOGPROBS`]).
    pub logprobs: Option<u8>,
    /// Text the output must be: a JSON object, JSON valid against a
    /// schema, or a grammar's sentence.
    pub constraint: Option<Constraint>,
}

/// Most alternatives `logprobs` may ask for.
pub const MAX_TOP_LOGPROBS: u8 = 20;

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: 0,
            ignore_eos: false,
            logprobs: None,
            constraint: None,
        }
    }
}

impl SamplingParams {
    /// Why these settings cannot be used, if they cannot.
    pub fn validate(&self) -> Result<(), String> {
        let finite = |v: f32| v.is_finite();
        if !finite(self.temperature) || self.temperature < 0.0 {
            return Err(format!("temperature must be >= 0, got {}", self.temperature));
        }
        if !finite(self.top_p) || self.top_p <= 0.0 || self.top_p > 1.0 {
            return Err(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !finite(self.min_p) || !(0.0..=1.0).contains(&self.min_p) {
            return Err(format!("min_p must be in [0, 1], got {}", self.min_p));
        }
        if !finite(self.repeat_penalty) || self.repeat_penalty <= 0.0 {
            return Err(format!("repeat_penalty must be > 0, got {}", self.repeat_penalty));
        }
        if self.logprobs.is_some_and(|n| n > MAX_TOP_LOGPROBS) {
            return Err(format!("at most {MAX_TOP_LOGPROBS} top log-probabilities per token are reported"));
        }
        for (name, v) in [("presence_penalty", self.presence_penalty), ("frequency_penalty", self.frequency_penalty)] {
            if !finite(v) || !(-2.0..=2.0).contains(&v) {
                return Err(format!("{name} must be in [-2, 2], got {v}"));
            }
        }
        Ok(())
    }
}

/// A small, fast generator (SplitMix64) whose sequence never changes between
/// versions or platforms, so a seed reproduces a sample.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Samples token ids for one sequence.
pub struct Sampler {
    params: SamplingParams,
    /// Tokens never picked.
    banned: Vec<u32>,
    rng: Rng,
    /// (id, logit or probability) candidates, reused between steps.
    candidates: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        Self::banning(params, Vec::new())
    }

    /// A sampler that never picks a token of `banned`.
    pub fn banning(params: SamplingParams, banned: Vec<u32>) -> Self {
        let rng = Rng::new(params.seed);
        Self { params, banned, rng, candidates: Vec::new() }
    }

    /// Picks the next token from `logits` (vocab,), given the tokens so far,
    /// out of those `allowed` (all when `None`).
    pub fn sample(&mut self, logits: &[f32], history: &[u32], allowed: Option<&Mask>) -> u32 {
        let p = &self.params;
        // Penalties work on a copy; untouched logits are used as they are.
        let mut owned: Option<Vec<f32>> = None;
        let penalised = p.repeat_penalty != 1.0 || p.presence_penalty != 0.0 || p.frequency_penalty != 0.0;
        if penalised && p.repeat_last_n > 0 {
            let buf = owned.get_or_insert_with(|| logits.to_vec());
            let start = history.len().saturating_sub(p.repeat_last_n);
            let mut counts = std::collections::HashMap::new();
            for &t in &history[start..] {
                *counts.entry(t).or_insert(0u32) += 1;
            }
            for (t, n) in counts {
                if let Some(l) = buf.get_mut(t as usize) {
                    *l = if *l > 0.0 { *l / p.repeat_penalty } else { *l * p.repeat_penalty };
                    *l -= p.presence_penalty + p.frequency_penalty * n as f32;
                }
            }
        }
        let logits = owned.as_deref().unwrap_or(logits);
        // Banned tokens are skipped where the choice is made, not copied away.
        if p.temperature == 0.0 {
            return argmax_allowed(logits, &self.banned, allowed);
        }
        let c = &mut self.candidates;
        c.clear();
        match allowed {
            None => c.extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l))),
            Some(mask) => {
                c.extend(logits.iter().enumerate().filter(|&(i, _)| mask.allows(i as u32)).map(|(i, &l)| (i as u32, l)))
            }
        }
        if c.is_empty() {
            return argmax(logits);
        }
        for &t in &self.banned {
            // Without a mask, candidate i is token i.
            let at = if allowed.is_none() { Some(t as usize) } else { c.iter().position(|e| e.0 == t) };
            if let Some(e) = at.and_then(|i| c.get_mut(i)) {
                e.1 = f32::NEG_INFINITY;
            }
        }
        // Highest logit first; ties keep the lower id first.
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if p.top_k > 0 && p.top_k < c.len() {
            c.select_nth_unstable_by(p.top_k - 1, by_logit);
            c.truncate(p.top_k);
        }
        c.sort_unstable_by(by_logit);
        // Softmax with temperature.
        let max = c[0].1;
        let mut sum = 0.0f64;
        for e in c.iter_mut() {
            e.1 = ((e.1 - max) / p.temperature).exp();
            sum += e.1 as f64;
        }
        for e in c.iter_mut() {
            e.1 = (e.1 as f64 / sum) as f32;
        }
        if p.top_p < 1.0 {
            let mut acc = 0.0f32;
            let mut keep = c.len();
            for (i, e) in c.iter().enumerate() {
                acc += e.1;
                if acc >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
            c.truncate(keep);
        }
        if p.min_p > 0.0 {
            let floor = c[0].1 * p.min_p;
            let keep = c.iter().take_while(|e| e.1 >= floor).count().max(1);
            c.truncate(keep);
        }
        let total: f64 = c.iter().map(|e| e.1 as f64).sum();
        let mut r = self.rng.next_f64() * total;
        for e in c.iter() {
            r -= e.1 as f64;
            if r < 0.0 {
                return e.0;
            }
        }
        c[c.len() - 1].0
    }
}

/// The log-probability of `token` under the model's distribution (the
/// softmax of the raw `logits`, before any sampling setting), and the `top`
/// likeliest tokens with theirs, most likely first.
pub fn logprobs(logits: &[f32], token: u32, top: usize) -> (f32, Vec<(u32, f32)>) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    let log_z = max + sum.ln() as f32;
    let chosen = logits.get(token as usize).map_or(f32::NEG_INFINITY, |&l| l - log_z);
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(top + 1);
    for (i, &l) in logits.iter().enumerate() {
        if best.len() < top || best.last().is_some_and(|&(_, b)| l > b) {
            let at = best.partition_point(|&(_, b)| b >= l);
            best.insert(at, (i as u32, l));
            best.truncate(top);
        }
    }
    (chosen, best.into_iter().map(|(i, l)| (i, l - log_z)).collect())
}

/// [`argmax`] over the tokens `allowed` and not in `banned` (a short list).
fn argmax_allowed(logits: &[f32], banned: &[u32], allowed: Option<&Mask>) -> u32 {
    if banned.is_empty() && allowed.is_none() {
        return argmax(logits);
    }
    let mut best: Option<usize> = None;
    for (i, &l) in logits.iter().enumerate() {
        let ok = allowed.is_none_or(|m| m.allows(i as u32)) && !banned.contains(&(i as u32));
        if ok && best.is_none_or(|b| l > logits[b]) {
            best = Some(i);
        }
    }
    best.unwrap_or(0) as u32
}

/// Index of the largest logit; the lowest index wins ties.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32) -> SamplingParams {
        SamplingParams {
            temperature,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            repeat_last_n: 0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: 7,
            ignore_eos: false,
            logprobs: None,
            constraint: None,
        }
    }

    #[test]
    fn logprobs_are_the_log_softmax_with_the_likeliest_first() {
        let logits = [1.0f32, 3.0, 2.0, 3.0];
        let (chosen, top) = logprobs(&logits, 2, 3);
        let z: f32 = logits.iter().map(|l| l.exp()).sum();
        assert!((chosen - (2.0f32.exp() / z).ln()).abs() < 1e-5);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 3, 2], "ties keep the lower id first");
        assert!((top[0].1 - (3.0f32.exp() / z).ln()).abs() < 1e-5);
        assert!(logprobs(&logits, 0, 0).1.is_empty());
    }

    #[test]
    fn banned_tokens_are_never_picked() {
        let logits = [0.0, 5.0, 4.9, -1.0];
        let mut greedy = Sampler::banning(params(0.0), vec![1]);
        assert_eq!(greedy.sample(&logits, &[], None), 2);
        let mut sampled = Sampler::banning(params(2.0), vec![1, 2]);
        assert!((0..200).all(|_| matches!(sampled.sample(&logits, &[], None), 0 | 3)));
    }

    #[test]
    fn only_tokens_the_mask_allows_are_picked() {
        let logits = [0.0, 5.0, 4.9, -1.0, 3.0];
        let mask = Mask::of(5, &[2, 3]);
        assert_eq!(Sampler::new(params(0.0)).sample(&logits, &[], Some(&mask)), 2);
        let mut sampled = Sampler::banning(params(3.0), vec![2]);
        assert!((0..200).all(|_| sampled.sample(&logits, &[], Some(&mask)) == 3));
    }

    #[test]
    fn temperature_zero_is_argmax_with_lowest_index_on_ties() {
        let mut s = Sampler::new(params(0.0));
        assert_eq!(s.sample(&[0.1, 3.0, 3.0, -1.0], &[], None), 1);
    }

    #[test]
    fn same_seed_same_samples_different_seed_differs() {
        let logits: Vec<f32> = (0..50).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let draw = |seed| {
            let mut s = Sampler::new(SamplingParams { seed, ..params(1.0) });
            (0..40).map(|_| s.sample(&logits, &[], None)).collect::<Vec<_>>()
        };
        assert_eq!(draw(1), draw(1));
        assert_ne!(draw(1), draw(2));
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut s = Sampler::new(SamplingParams { top_k: 1, ..params(1.5) });
        for _ in 0..20 {
            assert_eq!(s.sample(&[0.0, 0.5, 2.0, 1.9], &[], None), 2);
        }
    }

    #[test]
    fn min_p_drops_unlikely_tokens() {
        let mut s = Sampler::new(SamplingParams { min_p: 0.5, ..params(1.0) });
        // exp(-10) is far below half the top probability: never drawn.
        for _ in 0..200 {
            assert_ne!(s.sample(&[5.0, 5.0, -5.0], &[], None), 2);
        }
    }

    #[test]
    fn repeat_penalty_moves_greedy_choice_off_recent_token() {
        let mut s = Sampler::new(SamplingParams { repeat_penalty: 2.0, repeat_last_n: 8, ..params(0.0) });
        assert_eq!(s.sample(&[3.0, 2.0], &[0], None), 1);
    }

    #[test]
    fn presence_and_frequency_penalties_subtract_per_token_and_per_count() {
        let p = SamplingParams { repeat_last_n: 8, ..params(0.0) };
        // Token 0 appeared twice, token 1 once: by count 3.0-1.6 < 2.5-0.8,
        // while a flat 0.8 keeps token 0 ahead.
        let mut s = Sampler::new(SamplingParams { frequency_penalty: 0.8, ..p.clone() });
        assert_eq!(s.sample(&[3.0, 2.5, 1.0], &[0, 1, 0], None), 1);
        let mut s = Sampler::new(SamplingParams { presence_penalty: 0.8, ..p.clone() });
        assert_eq!(s.sample(&[3.0, 2.5, 1.0], &[0, 1, 0], None), 0);
        let mut s = Sampler::new(SamplingParams { presence_penalty: 1.0, ..p.clone() });
        assert_eq!(s.sample(&[3.0, 2.0, 2.5], &[0, 1, 0], None), 2);
        assert!(SamplingParams { presence_penalty: 2.5, ..p }.validate().is_err());
    }

    #[test]
    fn validate_rejects_out_of_range() {
        assert!(SamplingParams { temperature: -1.0, ..params(1.0) }.validate().is_err());
        assert!(SamplingParams { top_p: 0.0, ..params(1.0) }.validate().is_err());
        assert!(SamplingParams { temperature: f32::NAN, ..params(1.0) }.validate().is_err());
        assert!(params(1.0).validate().is_ok());
    }
}
