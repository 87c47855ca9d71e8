#!/usr/bin/env python3
"""What stop strings cost the other clients of a shared decode step.

Starts `tern serve` on a synthetic model of the bundled model's shape with
a 16,384-token context (random weights: it rarely ends its turn) and times one client's 200-token
stream three ways, in the same run: alone; next to four endless generations
without stop strings; and next to four carrying the most the engine takes
(16 stop strings of 256 bytes each, which never match). Prints each time
and the ratio of the last two: 1.0 means the stop strings cost the step
nothing.

    scripts/bench-stops.py [--rounds N]
"""

import argparse
import json
import pathlib
import sys
import tempfile
import time

from benchlib import close_all, open_stream, post, running, serving, synth


def timed_stream(port):
    """Seconds for one greedy 200-token stream, end of text ignored."""
    body = {"model": "tern-tiny", "messages": [{"role": "user", "content": "Speak of the king."}],
            "max_tokens": 200, "temperature": 0, "ignore_eos": True, "stream": True, "use_cache": False}
    started = time.perf_counter()
    post(port, "/v1/chat/completions", body)
    return time.perf_counter() - started


def median_with(port, neighbours, rounds):
    times = []
    for _ in range(rounds):
        others = [open_stream(port, "/api/generate", body) for body in neighbours]
        time.sleep(0.2)
        times.append(timed_stream(port))
        still = running(port)
        assert still == len(neighbours), f"{still} neighbours still running: one ended by itself"
        close_all(port, others)
    return sorted(times)[len(times) // 2]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    model = pathlib.Path(tempfile.mkdtemp()) / "tern-tiny.gguf"
    synth(model, "--like", "tern-tiny", "--name", "tern-tiny", "--context", "16384")
    with serving(model) as port:
        def endless(stops):
            return {"model": "tern-tiny", "prompt": "Once upon a time", "stream": True,
                    "options": {"num_predict": 100000, "temperature": 0, "stop": stops}}

        # Strings the text never completes, each almost matching all along.
        stops = [" " * 255 + chr(0x41 + i) for i in range(16)]
        alone = median_with(port, [], args.rounds)
        plain = median_with(port, [endless([])] * 4, args.rounds)
        stopped = median_with(port, [endless(stops)] * 4, args.rounds)
        print(f"200-token stream alone:                         {alone * 1e3:8.1f} ms")
        print(f"beside 4 generations without stop strings:      {plain * 1e3:8.1f} ms")
        print(f"beside 4 generations with 16 x 256-byte stops:  {stopped * 1e3:8.1f} ms")
        print(f"cost of the stop strings to the neighbour:      {stopped / plain:8.2f}x")


if __name__ == "__main__":
    sys.exit(main())
