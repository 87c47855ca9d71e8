//! How one step's token budget is shared out: a pure function of what each
//! running sequence still has to run.
//!
//! Every decoding sequence gets its one next token. The rest of the budget
//! goes to prompts (and embedding inputs), starved ones first, then
//! interactive before batch, shortest remaining first, so a short prompt
//! never waits behind a long one. A prompt that fits the rest of the step
//! runs whole; one that cannot end in this step gets at most a chunk, and
//! only when no prompt ends in this step or when it has been passed over
//! for [`STARVATION_STEPS`] steps.

use std::time::Instant;

use crate::request::Priority;

/// Steps a prompt that cannot finish in one step may be passed over before
/// it gets a share of the budget anyway.
pub(crate) const STARVATION_STEPS: u32 = 4;

/// What a running sequence asks of a step.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Demand {
    /// Tokens still to run before it can sample (1 while decoding).
    pub remaining: usize,
    /// It is decoding: its prompt is done and one token is left to run.
    pub decoding: bool,
    /// Consecutive steps its prompt was passed over.
    pub passed_over: u32,
    pub priority: Priority,
    pub admitted: Instant,
}

/// Tokens each sequence runs this step (index-aligned with `demands`),
/// within `step_tokens`, prompts in chunks of at most `prefill_chunk`.
pub(crate) fn plan(demands: &[Demand], step_tokens: usize, prefill_chunk: usize) -> Vec<usize> {
    let mut plan = vec![0; demands.len()];
    let mut left = step_tokens.max(1);
    for (i, d) in demands.iter().enumerate() {
        if d.decoding {
            plan[i] = 1;
            left = left.saturating_sub(1);
        }
    }
    let mut prompts: Vec<usize> = (0..demands.len()).filter(|&i| plan[i] == 0).collect();
    prompts.sort_by_key(|&i| {
        let d = &demands[i];
        (d.passed_over < STARVATION_STEPS, d.priority, d.remaining, d.admitted)
    });
    let chunk = prefill_chunk.max(1);
    let mut ends_here = false;
    for i in prompts {
        let d = &demands[i];
        // A short prompt finishes in one step (and then holds the long
        // ones back): its first token does not wait for their chunks.
        let take = if d.remaining <= left { d.remaining } else { d.remaining.min(chunk).min(left) };
        if take == 0 {
            // A prompt always moves when the step would otherwise be empty.
            if plan.iter().all(|&n| n == 0) {
                plan[i] = d.remaining.min(chunk);
            }
            break;
        }
        let ends = take == d.remaining;
        if !ends && ends_here && d.passed_over < STARVATION_STEPS {
            continue;
        }
        ends_here |= ends;
        plan[i] = take;
        left -= take;
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn prompt(remaining: usize, age_ms: u64) -> Demand {
        let admitted = Instant::now() - Duration::from_millis(1000 - age_ms);
        Demand { remaining, decoding: false, passed_over: 0, priority: Priority::Interactive, admitted }
    }

    fn decoding() -> Demand {
        Demand { decoding: true, ..prompt(1, 0) }
    }

    #[test]
    fn decoders_get_one_token_each_and_a_short_prompt_runs_whole() {
        let demands = [decoding(), prompt(10, 1), decoding()];
        assert_eq!(plan(&demands, 64, 16), vec![1, 10, 1]);
    }

    #[test]
    fn a_long_prompt_is_read_in_chunks_within_the_budget() {
        assert_eq!(plan(&[prompt(100, 0)], 64, 16), vec![16]);
        assert_eq!(plan(&[decoding(), prompt(100, 0)], 8, 16), vec![1, 7]);
    }

    #[test]
    fn a_prompt_that_ends_holds_back_the_chunks_of_longer_ones() {
        // The short prompt ends in this step; the long one waits a step.
        let demands = [prompt(200, 0), prompt(20, 5)];
        assert_eq!(plan(&demands, 64, 16), vec![0, 20]);
    }

    #[test]
    fn a_prompt_passed_over_long_enough_gets_its_chunk_anyway() {
        let mut starved = prompt(200, 0);
        starved.passed_over = STARVATION_STEPS;
        let demands = [starved, prompt(20, 5)];
        assert_eq!(plan(&demands, 64, 16), vec![16, 20]);
    }

    #[test]
    fn interactive_prompts_go_before_batch_ones_and_shorter_before_longer() {
        let mut batch = prompt(5, 0);
        batch.priority = Priority::Batch;
        let demands = [batch, prompt(30, 1), prompt(30, 2), prompt(8, 3)];
        // Budget 40: the 8-token prompt, then the first 30-token one; the
        // second would not end and one already ends; batch comes last.
        assert_eq!(plan(&demands, 40, 16), vec![0, 30, 0, 8]);
    }

    #[test]
    fn a_step_is_never_empty_while_a_prompt_waits() {
        // Eight decoders use the whole budget of 8; the prompt still moves.
        let mut demands = vec![decoding(); 8];
        demands.push(prompt(40, 0));
        let got = plan(&demands, 8, 16);
        assert_eq!(got[..8], [1; 8]);
        assert_eq!(got[8], 0, "the decoders ran, so the step is not empty");
        assert_eq!(plan(&[prompt(40, 0)], 0, 16), vec![1], "a budget of 0 counts as 1");
    }
}
