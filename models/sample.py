#!/usr/bin/env python3
"""Draw samples from the exported model (GGUF, via the numpy reference).

Temperature sampling (default 0.8, no top-k/top-p), fixed seed, stops at
<|end_of_text|>, <|eot_id|> or --max-tokens. Prints each prompt and its
continuation verbatim.
"""
import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import jinja2
from tokenizers import Tokenizer

from reference import Reference, field

HERE = os.path.dirname(os.path.abspath(__file__))

PROMPTS = [
    ("text", "HAMLET.\n"),
    ("text", "And the LORD said unto Moses,"),
    ("text", "Shall I compare thee"),
    ("chat", "What say you to this, good sir?"),
    ("chat", "Where is the king?"),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", default=os.path.join(HERE, "tern-tiny.gguf"))
    ap.add_argument("--tokenizer", default=os.path.join(HERE, "tokenizer.json"))
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--max-tokens", type=int, default=100)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()

    ref = Reference(args.gguf)
    tok = Tokenizer.from_file(args.tokenizer)
    template = field(ref.reader, "tokenizer.chat_template")
    stop = {tok.token_to_id("<|end_of_text|>"), tok.token_to_id("<|eot_id|>")}
    rng = np.random.default_rng(args.seed)
    for kind, prompt in PROMPTS:
        if kind == "chat":
            text = jinja2.Environment().from_string(template).render(
                messages=[{"role": "user", "content": prompt}],
                bos_token=ref.tokens[ref.bos], add_generation_prompt=True)
            ids = tok.encode(text, add_special_tokens=False).ids
        else:
            text = prompt
            ids = [ref.bos] + tok.encode(prompt, add_special_tokens=False).ids
        n0 = len(ids)
        for _ in range(args.max_tokens):
            logits = ref.forward(ids[-ref.ctx:])[-1].astype(np.float64) / args.temperature
            p = np.exp(logits - logits.max())
            p /= p.sum()
            nxt = int(rng.choice(len(p), p=p))
            if nxt in stop:
                break
            ids.append(nxt)
        gen = tok.decode(ids[n0:], skip_special_tokens=False)
        print(f"--- [{kind}] prompt: {text!r}")
        print(gen)
        print()


if __name__ == "__main__":
    main()
