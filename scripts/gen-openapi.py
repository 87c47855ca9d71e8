#!/usr/bin/env python3
"""Writes the handler's OpenAPI document (guest/handler/src/openapi.json,
served at /openapi.json) to stdout:

    python3 scripts/gen-openapi.py > guest/handler/src/openapi.json

Edit the routes here, not the JSON; tests/e2e/test_openapi.py checks that the
two agree, and schemathesis checks the document against the server."""

import json
import pathlib

S = lambda **kw: {"type": "string", **kw}
I = lambda **kw: {"type": "integer", **kw}
N = lambda **kw: {"type": "number", **kw}
B = {"type": "boolean"}
A = lambda items, **kw: {"type": "array", "items": items, **kw}
def O(props, required=(), **kw):
    o = {"type": "object", "properties": props, **kw}
    if required:
        o["required"] = list(required)
    return o
R = lambda name: {"$ref": f"#/components/schemas/{name}"}
NUL = lambda s: {**s, "nullable": True}

def body(schema, required=True):
    return {"required": required, "content": {"application/json": {"schema": schema}}}

def resp(desc, schema=None, ctype="application/json", headers=None):
    r = {"description": desc}
    if schema is not None:
        r["content"] = {ctype: {"schema": schema}}
    if headers:
        r["headers"] = headers
    return r

OPENAI_ERR = {
    "400": resp("Malformed JSON, a wrong type or an out-of-range value", R("Error")),
    "404": resp("Unknown model, route or id", R("Error")),
    "403": resp("The key is valid but not an admin key", R("Error")),
    "413": resp("Body over 1 MiB", R("Error")),
    "429": resp("The queue is full", R("Error"), headers={"Retry-After": {"schema": I()}}),
    "503": resp("The model is still loading", R("Error")),
    "529": resp("The queue is full (Anthropic's status for it)", R("Error"), headers={"Retry-After": {"schema": I()}}),
}
def errs(*codes, schema="Error"):
    return {c: {**OPENAI_ERR[c], "content": {"application/json": {"schema": R(schema)}}} for c in codes}

tool_call = O({"id": S(), "type": S(enum=["function"]), "function": O({"name": S(), "arguments": S()}, ["name", "arguments"])},
              ["function"])
messages = A(O({"role": S(enum=["system", "user", "assistant", "tool"]), "content": NUL(S()), "tool_call_id": S(),
                "tool_calls": A(tool_call)}, ["role"]), minItems=1)
tools = A(O({"type": S(enum=["function"]), "function": O({"name": S(pattern="^[A-Za-z0-9_-]{1,64}$"), "description": S(),
                                                            "parameters": O({}), "strict": B}, ["name"])}, ["function"]))
tool_choice = {"anyOf": [S(enum=["none", "auto", "required"]),
                         O({"type": S(enum=["function"]), "function": O({"name": S()}, ["name"])}, ["function"])]}
stop = {"anyOf": [S(maxLength=256), A(S(maxLength=256), maxItems=4)]}
sampling = {
    "temperature": N(minimum=0, maximum=2),
    "top_p": N(minimum=0, maximum=1),
    "top_k": I(minimum=0),
    "min_p": N(minimum=0, maximum=1),
    "repeat_penalty": N(minimum=0),
    "repeat_last_n": I(minimum=0),
    "presence_penalty": N(minimum=-2, maximum=2),
    "frequency_penalty": N(minimum=-2, maximum=2),
    "seed": I(),
    "stop": stop,
    "timeout_ms": I(minimum=1),
    "priority": S(enum=["interactive", "batch"]),
    "ignore_eos": B,
    # Structured output: one of the three.
    "response_format": O({"type": S(enum=["text", "json_object", "json_schema"]),
                          "json_schema": O({"name": S(), "description": S(), "strict": B, "schema": O({})})}, ["type"]),
    "grammar": S(),
    "json_schema": O({}),
}
usage = O({"prompt_tokens": I(), "completion_tokens": I(), "total_tokens": I(),
           "prompt_tokens_details": O({"cached_tokens": I()})}, ["prompt_tokens", "completion_tokens", "total_tokens"])
timings = O({k: N() for k in ["prompt_n", "prompt_ms", "prompt_per_second", "predicted_n", "predicted_ms", "predicted_per_second", "cache_n"]})
finish = NUL(S(enum=["stop", "length", "timeout", "cancelled"]))
model = O({"id": S(), "object": S(), "created": I(), "owned_by": S()}, ["id", "object", "created", "owned_by"])
sse = {"description": "Server-sent events: `data: {json}` lines, ending with `data: [DONE]` where OpenAI does"}
ndjson = {"description": "One JSON object per line"}

schemas = {
    "Error": O({"error": O({"message": S(), "type": S(), "param": NUL(S()), "code": NUL({"anyOf": [S(), I()]})},
                           ["message", "type", "param", "code"])}, ["error"]),
    "OllamaError": O({"error": S()}, ["error"]),
    "AnthropicError": O({"type": S(enum=["error"]), "error": O({"type": S(), "message": S()}, ["type", "message"])},
                        ["type", "error"]),
    "MessageRequest": O({"model": S(), "max_tokens": I(minimum=1),
                         "messages": A(O({"role": S(enum=["user", "assistant"]),
                                          "content": {"anyOf": [S(), A(O({"type": S(enum=["text"]), "text": S()}, ["type", "text"]))]}},
                                         ["role", "content"]), minItems=1),
                         "system": {"anyOf": [S(), A(O({"type": S(enum=["text"]), "text": S()}, ["type", "text"]))]},
                         "stop_sequences": A(S(maxLength=256), maxItems=16), "temperature": N(minimum=0, maximum=1),
                         "top_p": N(minimum=0, maximum=1), "top_k": I(minimum=0), "stream": B, "metadata": O({})},
                        ["model", "max_tokens", "messages"]),
    "Message": O({"id": S(), "type": S(enum=["message"]), "role": S(enum=["assistant"]), "model": S(),
                  "content": A(O({"type": S(), "text": S()}, ["type", "text"])), "stop_reason": NUL(S()),
                  "usage": O({"input_tokens": I(), "output_tokens": I()}, ["input_tokens", "output_tokens"])},
                 ["id", "type", "role", "model", "content", "stop_reason", "usage"]),
    "ResponseRequest": O({"model": S(), "input": {"anyOf": [S(), A(O({"role": S(enum=["user", "assistant", "system", "developer"]),
                                                                      "content": {"anyOf": [S(), A(O({"type": S(enum=["input_text", "output_text"]), "text": S()}, ["type", "text"]))]}},
                                                                     ["role", "content"]), minItems=1)]},
                          "instructions": S(), "max_output_tokens": I(minimum=1), "temperature": N(minimum=0, maximum=2),
                          "top_p": N(minimum=0, maximum=1), "stream": B, "store": B, "user": S(),
                          "text": O({"format": O({"type": S(enum=["text", "json_object", "json_schema"]), "name": S(),
                                                  "strict": B, "schema": O({})}, ["type"])})},
                         ["model", "input"]),
    "Response": O({"id": S(), "object": S(enum=["response"]), "created_at": I(), "model": S(),
                   "status": S(enum=["completed", "incomplete", "in_progress", "failed"]), "output": A(O({})),
                   "usage": NUL(O({}))}, ["id", "object", "created_at", "model", "status", "output"]),
    "Usage": usage,
    "Model": model,
    "ChatCompletionRequest": O({"model": S(), "messages": messages, "max_tokens": I(minimum=1),
                                "max_completion_tokens": I(minimum=1), "n": I(minimum=1, maximum=8), "stream": B,
                                "stream_options": O({"include_usage": B}), "use_cache": B, "user": S(),
                                "logprobs": B, "top_logprobs": I(minimum=0, maximum=20), "tools": tools,
                                "tool_choice": tool_choice, "parallel_tool_calls": B, **sampling},
                               ["model", "messages"]),
    "ChatCompletion": O({"id": S(), "object": S(enum=["chat.completion"]), "created": I(), "model": S(),
                         "choices": A(O({"index": I(), "message": O({"role": S(), "content": NUL(S()), "tool_calls": A(tool_call)},
                                                                    ["role", "content"]),
                                         "finish_reason": finish}, ["index", "message", "finish_reason"])),
                         "usage": usage, "timings": timings},
                        ["id", "object", "created", "model", "choices", "usage"]),
    "CompletionRequest": O({"model": S(), "prompt": {"anyOf": [S(), A(S(), minItems=1, maxItems=1), A(I(minimum=0), minItems=1)]},
                            "max_tokens": I(minimum=1), "n": I(minimum=1, maximum=8), "best_of": I(minimum=1, maximum=1),
                            "echo": B, "stream": B, "stream_options": O({"include_usage": B}), "user": S(),
                            "logprobs": I(minimum=0, maximum=5), **sampling},
                           ["model", "prompt"]),
    "Completion": O({"id": S(), "object": S(enum=["text_completion"]), "created": I(), "model": S(),
                     "choices": A(O({"text": S(), "index": I(), "logprobs": {"type": "object", "nullable": True}, "finish_reason": finish},
                                    ["text", "index", "finish_reason"])),
                     "usage": usage}, ["id", "object", "created", "model", "choices", "usage"]),
    "EmbeddingRequest": O({"model": S(), "input": {"anyOf": [S(minLength=1), A(S(minLength=1), minItems=1),
                                                             A(I(minimum=0), minItems=1), A(A(I(minimum=0), minItems=1), minItems=1)]},
                           "encoding_format": S(enum=["float", "base64"]), "dimensions": I(minimum=1), "user": S()},
                          ["model", "input"]),
    "Embeddings": O({"object": S(enum=["list"]), "model": S(),
                     "data": A(O({"object": S(enum=["embedding"]), "index": I(), "embedding": {"anyOf": [A(N()), S()]}},
                                 ["object", "index", "embedding"])),
                     "usage": O({"prompt_tokens": I(), "total_tokens": I()}, ["prompt_tokens", "total_tokens"])},
                    ["object", "model", "data", "usage"]),
    "Job": O({"id": S(), "model": S(), "status": S(enum=["queued", "running", "done", "cancelled", "failed"]),
              "created_at": I(), "prompt_tokens": I(), "text": S(), "position": I(), "estimated_wait_ms": I(),
              "finish_reason": finish, "usage": usage, "error": {}},
             ["id", "model", "status", "created_at", "prompt_tokens", "text"]),
    "OllamaOptions": O({"num_predict": I(), "temperature": N(minimum=0), "top_k": I(minimum=0), "top_p": N(minimum=0, maximum=1),
                        "min_p": N(minimum=0, maximum=1), "repeat_penalty": N(minimum=0), "repeat_last_n": I(minimum=0),
                        "presence_penalty": N(minimum=-2, maximum=2), "frequency_penalty": N(minimum=-2, maximum=2),
                        "seed": I(), "stop": A(S(maxLength=256), maxItems=16), "num_ctx": I(minimum=1)}),
    "OllamaDetails": O({"parent_model": S(), "format": S(), "family": S(), "families": A(S()),
                        "parameter_size": S(), "quantization_level": S()}),
}

def openai_post(summary, req, res, stream_desc=True):
    content = {"application/json": {"schema": R(res)}}
    if stream_desc:
        content["text/event-stream"] = {"schema": sse}
    return {"post": {"summary": summary, "requestBody": body(R(req)),
                     "responses": {"200": {"description": "The answer, whole or streamed", "content": content},
                                   **errs("400", "404", "413", "429", "503")}}}

def simple_post(summary, req, res, code="200", errors=("400", "404", "413", "429", "503"), schema="Error", ctype="application/json", stream=None):
    ok = resp("OK", res, ctype)
    if stream:
        ok["content"][stream] = {"schema": ndjson if "ndjson" in stream else sse}
    return {"post": {"summary": summary, "requestBody": body(req),
                     "responses": {code: ok, **errs(*errors, schema=schema)}}}

def get(summary, res, ctype="application/json", errors=()):
    return {"get": {"summary": summary, "responses": {"200": resp("OK", res, ctype), **errs(*errors)}}}

job_id = [{"name": "id", "in": "path", "required": True, "schema": S(minLength=1, pattern="^[^/]+$")}]
request_id = [{"name": "requestId", "in": "query", "required": True, "schema": S(minLength=1)}]

paths = {
    "/": {"get": {"summary": "The chat page for browsers (Accept: text/html); Ollama's liveness text otherwise",
                  "responses": {"200": {"description": "OK", "content": {"text/html": {"schema": S()}, "text/plain": {"schema": S()}}}}}},
    "/health": {"get": {"summary": "Liveness and load (llama.cpp's shape)",
                        "responses": {"200": resp("Ready", O({"status": S()}, ["status"])), "503": resp("Loading", R("Error"))}}},
    "/metrics": {"get": {"summary": "The seed's JSON counters; Prometheus text when Accept asks for text/plain",
                         "responses": {"200": {"description": "OK", "content": {
                             "application/json": {"schema": O({"requests_total": I(), "generation_time_total_ms": N(),
                                                               "errors_total": I(), "average_generation_time_ms": N()},
                                                              ["requests_total", "generation_time_total_ms", "errors_total", "average_generation_time_ms"])},
                             "text/plain": {"schema": S()}}}}}},
    "/metrics/prometheus": get("Prometheus text exposition", S(), "text/plain"),
    # Answered by the host (tern serve), whatever handler is loaded; marked
    # `x-tern-host` so the handler's own tests leave them out.
    "/ready": {"get": {"summary": "Readiness (the host's): ready, or loading / draining", "x-tern-host": True,
                       "responses": {"200": resp("Ready", O({"status": S(enum=["ready"])}, ["status"])),
                                     "503": resp("Loading or shutting down", O({"status": S(enum=["loading", "draining"])}, ["status"]))}}},
    "/metrics/host": {"get": {**get("The host's Prometheus counters (HTTP, instances, swaps, traps, memory)", S(), "text/plain")["get"],
                              "x-tern-host": True}},
    "/openapi.json": get("This document", O({"openapi": S()}, ["openapi"])),
    "/v1/models": get("Models (OpenAI list)", O({"object": S(), "data": A(R("Model"))}, ["object", "data"])),
    "/v1/models/{id}": {"get": {"summary": "One model", "parameters": [{"name": "id", "in": "path", "required": True, "schema": S(minLength=1)}],
                                "responses": {"200": resp("OK", R("Model")), **errs("404")}}},
    "/v1/chat/completions": openai_post("OpenAI chat completions", "ChatCompletionRequest", "ChatCompletion"),
    "/v1/messages": simple_post("Anthropic's Messages API (named server-sent events with stream)", R("MessageRequest"),
                                R("Message"), errors=("400", "404", "413", "503", "529"), schema="AnthropicError",
                                stream="text/event-stream"),
    "/v1/responses": simple_post("OpenAI's Responses API (named server-sent events with stream)", R("ResponseRequest"),
                                 R("Response"), stream="text/event-stream"),
    "/v1/completions": openai_post("OpenAI (legacy) completions", "CompletionRequest", "Completion"),
    "/v1/embeddings": {"post": {"summary": "OpenAI embeddings: unit-length means of the final hidden states",
                                "requestBody": body(R("EmbeddingRequest")),
                                "responses": {"200": resp("OK", R("Embeddings")), **errs("400", "404", "413", "503")}}},
    "/generate": simple_post("Plain completion", O({"prompt": S(), "model": S(), "max_tokens": I(minimum=1),
                                                    "temperature": N(minimum=0, maximum=2), "top_p": N(minimum=0, maximum=1),
                                                    "priority": S(enum=["interactive", "batch"])}, ["prompt"]),
                             O({"text": S(), "finish_reason": finish, "usage": usage}, ["text", "finish_reason", "usage"])),
    "/batch": simple_post("Several prompts run as one batch", O({"prompts": A(S(), minItems=1, maxItems=32), "model": S(),
                                                                  "max_tokens": I(minimum=1), "temperature": N(minimum=0, maximum=2),
                                                                  "top_p": N(minimum=0, maximum=1)}, ["prompts"]),
                          O({"results": A(O({"index": I(), "text": S()}, ["index", "text"])), "total_time_ms": N(), "batch_size": I()},
                            ["results", "total_time_ms", "batch_size"])),
    "/api/chat-queue": {
        "post": {"summary": "Queue a chat job", "requestBody": body(O({"model": S(), "messages": messages, "max_tokens": I(minimum=1), **sampling}, ["messages"])),
                 "responses": {"202": resp("Queued", R("Job")), **errs("400", "404", "413", "429", "503")}},
        "get": {"summary": "A job's state (the seed's spelling)", "parameters": request_id,
                "responses": {"200": resp("OK", R("Job")), **errs("400", "404")}},
        "delete": {"summary": "Cancel a job (the seed's spelling)", "parameters": request_id,
                   "responses": {"200": resp("OK", R("Job")), **errs("400", "404")}},
    },
    "/api/chat-queue/{id}": {
        "get": {"summary": "A job's state", "parameters": job_id, "responses": {"200": resp("OK", R("Job")), **errs("404")}},
        "delete": {"summary": "Cancel a job", "parameters": job_id, "responses": {"200": resp("OK", R("Job")), **errs("404")}},
    },
    "/api/chat-optimized": {"post": {"summary": "The seed's cached chat stream (SSE)",
                                     "requestBody": body(O({"message": S(), "messages": messages, "system_prompt": S(), "use_cache": B,
                                                            "model": S(), "max_tokens": I(minimum=1), "temperature": N(minimum=0, maximum=2),
                                                            "top_p": N(minimum=0, maximum=1), "seed": I()})),
                                     "responses": {"200": resp("Stream", sse, "text/event-stream"),
                                                   **{c: resp(OPENAI_ERR[c]["description"] + " (one `data:` event with `error`)", sse, "text/event-stream")
                                                      for c in ("400", "404", "413", "429", "503")}}}},
    "/api/cache-stats": {
        "get": {"summary": "Response cache statistics (`?keys=1`, the keys too: admin key only)",
                "responses": {"200": resp("OK", O({"hits": I(), "misses": I(), "entries": I()}, ["hits", "misses", "entries"])),
                              **errs("403")}},
        "post": {"summary": "Clear the cache or invalidate one key (admin key only)",
                 "requestBody": body(O({"action": S(enum=["clear", "invalidate"]), "key": S()}, ["action"])),
                 "responses": {"200": resp("Done", O({})), **errs("400", "403", "404", "413")}},
    },
    "/api/generate": simple_post("Ollama generate (NDJSON stream by default)",
                                 O({"model": S(), "prompt": S(), "system": S(), "raw": B, "stream": B, "keep_alive": {},
                                    "format": {"anyOf": [S(enum=["", "json"]), O({})]},
                                    "options": R("OllamaOptions")}, ["model"]),
                                 O({"model": S(), "created_at": S(), "response": S(), "done": B}, ["model", "created_at", "response", "done"]),
                                 schema="OllamaError", stream="application/x-ndjson"),
    "/api/chat": simple_post("Ollama chat (NDJSON stream by default)",
                             O({"model": S(), "messages": A(O({"role": S(enum=["system", "user", "assistant"]), "content": S()}, ["role", "content"])),
                                "stream": B, "keep_alive": {}, "format": {"anyOf": [S(enum=["", "json"]), O({})]}, "tools": tools,
                                "options": R("OllamaOptions")}, ["model", "messages"]),
                             O({"model": S(), "created_at": S(), "message": O({"role": S(), "content": S()}), "done": B},
                               ["model", "created_at", "done"]), schema="OllamaError", stream="application/x-ndjson"),
    "/api/tags": get("Ollama model list", O({"models": A(O({"name": S(), "model": S(), "modified_at": S(), "size": I(), "digest": S(),
                                                             "details": R("OllamaDetails")}, ["name", "model", "modified_at", "size", "digest", "details"]))}, ["models"])),
    "/api/show": simple_post("Ollama model details", O({"model": S(), "name": S()}),
                             O({"details": R("OllamaDetails"), "model_info": O({})}, ["details", "model_info"]),
                             errors=("400", "404", "413"), schema="OllamaError"),
    "/api/ps": get("Ollama running models", O({"models": A(O({"name": S(), "model": S(), "size": I()}, ["name", "model", "size"]))}, ["models"])),
    "/api/version": get("Ollama version", O({"version": S()}, ["version"])),
    "/api/embed": simple_post("Ollama embeddings", O({"model": S(), "input": {"anyOf": [S(), A(S())]}, "truncate": B, "keep_alive": {},
                                                       "options": R("OllamaOptions")}, ["model", "input"]),
                              O({"model": S(), "embeddings": A(A(N()))}, ["model", "embeddings"]), schema="OllamaError"),
    "/api/embeddings": simple_post("Ollama embeddings (legacy)", O({"model": S(), "prompt": S()}, ["model", "prompt"]),
                                   O({"embedding": A(N())}, ["embedding"]), schema="OllamaError"),
    "/completion": simple_post("llama.cpp completion", O({"prompt": {"anyOf": [S(), A(I(minimum=0))]}, "n_predict": I(minimum=-1),
                                                          "stream": B, "cache_prompt": B, "n_probs": I(minimum=0, maximum=20),
                                                          **sampling}, ["prompt"]),
                               O({"content": S(), "stop": B, "timings": timings,
                                  "completion_probabilities": A(O({"id": I(), "token": S(), "bytes": A(I()), "logprob": N(),
                                                                   "top_logprobs": A(O({}))}))}, ["content", "stop"]),
                               stream="text/event-stream"),
    "/tokenize": simple_post("llama.cpp tokenize", O({"content": S(), "with_pieces": B, "add_special": B}, ["content"]),
                             O({"tokens": A({})}, ["tokens"])),
    "/detokenize": simple_post("llama.cpp detokenize", O({"tokens": A(I(minimum=0))}, ["tokens"]), O({"content": S()}, ["content"])),
    "/props": get("llama.cpp server properties", O({"default_generation_settings": O({}), "total_slots": I()}, ["default_generation_settings", "total_slots"])),
    "/infer": simple_post("Spin remote LLM inference",
                          O({"model": S(), "prompt": S(), "options": O({"maxTokens": I(minimum=1), "repeatPenalty": N(minimum=0),
                                                                         "repeatPenaltyLastNTokenCount": I(minimum=0),
                                                                         "temperature": N(minimum=0, maximum=2), "topK": I(minimum=0),
                                                                         "topP": N(minimum=0, maximum=1)})}, ["model", "prompt"]),
                          O({"text": S(), "usage": O({"promptTokenCount": I(), "generatedTokenCount": I()}, ["promptTokenCount", "generatedTokenCount"])},
                            ["text", "usage"])),
    "/embed": simple_post("Spin remote LLM embeddings", O({"model": S(), "input": A(S(), minItems=1)}, ["model", "input"]),
                          O({"embeddings": A(A(N())), "usage": O({"promptTokenCount": I()}, ["promptTokenCount"])}, ["embeddings", "usage"])),
}

def handler_version():
    """The handler crate's version (the workspace's), as `x-tern-handler` says."""
    root = pathlib.Path(__file__).resolve().parents[1]
    for line in (root / "Cargo.toml").read_text().splitlines():
        if line.startswith("version = "):
            return line.split('"')[1]
    raise SystemExit("no version in Cargo.toml")


doc = {
    "openapi": "3.0.3",
    "info": {"title": "tern", "version": handler_version(),
             "description": "A server for ternary (BitNet b1.58) language models. OpenAI, Ollama, llama.cpp server and Spin APIs, plus tern's own routes."},
    "paths": paths,
    "components": {"schemas": schemas},
}
print(json.dumps(doc, indent=1))
