#!/usr/bin/env python3
"""Prints a fixed set of greedy answers from a running `tern serve`, one JSON
line per request, with the fields that change from run to run (ids, clocks,
timings) removed, so two builds can be compared with `diff`:

    scripts/greedy-answers.py http://127.0.0.1:8080 > a.jsonl

The requests cover every API family, streamed and whole, with stops, token
prompts, embeddings and tokenization, all deterministic (temperature 0 or a
fixed seed).
"""
import json
import sys
import urllib.request

VOLATILE = {"created", "created_at", "timings", "total_duration", "load_duration",
            "prompt_eval_duration", "eval_duration", "generation_time_ms", "tokens_per_second",
            "request_id", "total_time_ms", "system_fingerprint",
            # What the prefix cache held depends on the requests before.
            "cached_tokens", "tokens_cached", "prompt_tokens_details"}


def fresh_id(key, value):
    """An id the server draws afresh for every answer."""
    return key == "id" and isinstance(value, str) and value.startswith(("chatcmpl-", "cmpl-", "job-", "req-"))


def scrub(value):
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items() if k not in VOLATILE and not fresh_id(k, v)}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value


def piece_text(event):
    """The text of an event that only carries a piece of text, else None:
    how a stream is cut into pieces depends on timing, so pieces are joined."""
    if not isinstance(event, dict) or event.get("usage"):
        return None
    if event.get("done") is False:
        return event.get("content", event.get("response", (event.get("message") or {}).get("content")))
    if event.get("stop") is False:
        return event.get("content")
    choices = event.get("choices") or [{}]
    choice = choices[0]
    if len(choices) == 1 and choice.get("finish_reason", "") is None and "role" not in choice.get("delta", {}):
        return choice.get("text", choice.get("delta", {}).get("content"))
    return None


def summarize(events):
    """A stream as its joined text and its other events, in order."""
    text, others = "", []
    for event in events:
        piece = piece_text(event)
        if piece is None:
            others.append(event)
        else:
            text += piece
    return {"text": text, "events": others}


def call(base, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            status, raw, kind = resp.status, resp.read(), resp.headers.get("content-type", "")
    except urllib.error.HTTPError as e:
        status, raw, kind = e.code, e.read(), e.headers.get("content-type", "")
    if "event-stream" in kind:
        events = [line[6:] for line in raw.decode().split("\n") if line.startswith("data: ")]
        parsed = [e if e == "[DONE]" else scrub(json.loads(e)) for e in events]
        return status, summarize(parsed)
    if "ndjson" in kind:
        return status, summarize([scrub(json.loads(line)) for line in raw.decode().splitlines() if line])
    try:
        return status, scrub(json.loads(raw))
    except ValueError:
        return status, raw.decode(errors="replace")


def main():
    base = sys.argv[1].rstrip("/")
    with urllib.request.urlopen(base + "/v1/models", timeout=30) as resp:
        model = json.loads(resp.read())["data"][0]["id"]
    hello = [{"role": "user", "content": "Speak of the king."}]
    requests = [
        ("POST", "/v1/chat/completions", {"model": model, "messages": hello, "max_tokens": 40, "temperature": 0, "use_cache": False}),
        ("POST", "/v1/chat/completions", {"model": model, "messages": hello, "max_tokens": 40, "temperature": 0, "stream": True,
                                          "stream_options": {"include_usage": True}, "use_cache": False}),
        ("POST", "/v1/chat/completions", {"model": model, "messages": [{"role": "system", "content": "Answer in verse."}] + hello,
                                          "max_tokens": 60, "temperature": 0.9, "seed": 7, "stop": ["\n\n"], "use_cache": False}),
        ("POST", "/v1/completions", {"model": model, "prompt": "To be, or not to be", "max_tokens": 32, "temperature": 0, "echo": True}),
        ("POST", "/v1/completions", {"model": model, "prompt": [[42, 455, 81, 300]], "max_tokens": 16, "temperature": 0, "stream": True}),
        ("POST", "/v1/embeddings", {"model": model, "input": ["The king", "The queen is dead, long live the queen"]}),
        ("POST", "/generate", {"prompt": "The king", "max_tokens": 24, "temperature": 0}),
        ("POST", "/batch", {"prompts": ["To be", "The king", "O Romeo"], "max_tokens": 12, "temperature": 0}),
        ("POST", "/api/chat-optimized", {"message": "Hello", "system_prompt": "Answer briefly.", "max_tokens": 24,
                                         "temperature": 0, "use_cache": False}),
        ("POST", "/api/generate", {"model": model, "prompt": "Why is the sky blue?", "stream": False,
                                   "options": {"num_predict": 32, "temperature": 0}}),
        ("POST", "/api/chat", {"model": model, "messages": hello, "options": {"num_predict": 24, "temperature": 0}}),
        ("POST", "/api/embed", {"model": model, "input": ["The king", "The queen"]}),
        ("POST", "/api/embeddings", {"model": model, "prompt": "The king"}),
        ("POST", "/api/show", {"model": model}),
        ("GET", "/api/tags", None),
        ("POST", "/completion", {"prompt": "Once upon a time", "n_predict": 24, "temperature": 0, "stop": ["."]}),
        ("POST", "/completion", {"prompt": "Once upon a time", "n_predict": 24, "temperature": 0, "stream": True}),
        ("POST", "/tokenize", {"content": "Hello, world", "with_pieces": True}),
        ("POST", "/detokenize", {"tokens": [42, 455, 81]}),
        ("POST", "/infer", {"model": model, "prompt": "The king", "options": {"maxTokens": 20, "temperature": 0}}),
        ("POST", "/embed", {"model": model, "input": ["The king"]}),
        ("POST", "/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": "x " * 3000}]}),
        # Long enough to be read in several prefill chunks.
        ("POST", "/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": "the king and the queen " * 40}],
                                          "max_tokens": 16, "temperature": 0, "use_cache": False}),
        ("POST", "/v1/embeddings", {"model": model, "input": "the king and the queen " * 40}),
    ]
    for method, path, body in requests:
        status, answer = call(base, method, path, body)
        print(json.dumps({"request": [method, path, body], "status": status, "answer": answer}, sort_keys=True))


if __name__ == "__main__":
    main()
