#!/usr/bin/env python3
"""What constrained decoding costs per generated token.

Starts `tern serve` on a synthetic model (the 2B-4T shape by default:
128,256-token vocabulary) and times, per generated token (the engine's
`timings.predicted_ms / predicted_n`, greedy, `ignore_eos`, uncached):

  1. a plain generation alone;
  2. the same under a JSON-like grammar whose automaton is already built
     (steady state: every token set it meets is cached);
  3. under a grammar never seen before (each round a new one: every token
     set is computed by walking the vocabulary trie);
  4. a plain generation in the same steps as 15 endless plain ones;
  5. the constrained generation of (2) in the same steps as those 15.

and prints the ratios 2/1, 3/1 and 5/4 (1.00: no cost). In 4 and 5 every
sequence waits for the step, so 5/4 is also what one constrained client
costs the 15 others.

    scripts/bench-constrained.py [--rounds N] [--tokens N] [--like bitnet-2b-4t|tern-tiny]
"""

import argparse
import json
import pathlib
import sys
import tempfile
import time

from benchlib import close_all, open_stream, post, serving, synth


def grammar(tag):
    """An endless list of small objects: never complete, so the generation
    runs to its token budget."""
    return (f'root ::= "{{\\"run\\": {tag}, \\"items\\": [" item ( ", " item )*\n'
            'item ::= "{\\"name\\": \\"" [a-z ]{0,12} "\\", \\"n\\": " [0-9]{1,4} "}"\n')


def per_token_ms(port, model, tokens, constraint):
    body = {"model": model, "messages": [{"role": "user", "content": "List some things."}], "max_tokens": tokens,
            "temperature": 0, "ignore_eos": True, "use_cache": False, **constraint}
    timings = json.loads(post(port, "/v1/chat/completions", body))["timings"]
    assert timings["predicted_n"] == tokens, timings
    return timings["predicted_ms"] / timings["predicted_n"]


def median(values):
    return sorted(values)[len(values) // 2]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--like", default="bitnet-2b-4t")
    args = ap.parse_args()
    model = pathlib.Path(tempfile.mkdtemp()) / "bench.gguf"
    synth(model, "--like", args.like, "--name", "bench")
    with serving(model) as port:
        warm = {"grammar": grammar(0)}
        per_token_ms(port, "bench", 4, warm)  # builds the automaton's first states
        rows = {k: [] for k in ["plain", "warm", "cold", "plain beside 15", "warm beside 15"]}
        endless = {"model": "bench", "messages": [{"role": "user", "content": "Go on."}], "max_tokens": 100000,
                   "temperature": 0, "ignore_eos": True, "stream": True, "use_cache": False}
        for r in range(args.rounds):
            rows["plain"].append(per_token_ms(port, "bench", args.tokens, {}))
            rows["warm"].append(per_token_ms(port, "bench", args.tokens, warm))
            rows["cold"].append(per_token_ms(port, "bench", args.tokens, {"grammar": grammar(r + 1)}))
            others = [open_stream(port, "/v1/chat/completions", endless) for _ in range(15)]
            time.sleep(1.0)
            rows["plain beside 15"].append(per_token_ms(port, "bench", args.tokens // 2, {}))
            rows["warm beside 15"].append(per_token_ms(port, "bench", args.tokens // 2, warm))
            close_all(port, others)
        m = {k: median(v) for k, v in rows.items()}
        for k, v in m.items():
            print(f"{k:<18} {v:8.2f} ms/token   (rounds: {', '.join(f'{x:.2f}' for x in rows[k])})")
        print(f"constrained, warm, alone:       {m['warm'] / m['plain']:.3f}x")
        print(f"constrained, new grammar, alone: {m['cold'] / m['plain']:.3f}x")
        print(f"constrained beside 15 plain:    {m['warm beside 15'] / m['plain beside 15']:.3f}x")


if __name__ == "__main__":
    sys.exit(main())
