"""Tool calling with real clients: the `openai` package's tool-calling loop
(forced, named, automatic; whole and streamed), the `ollama` package's
`tools`, and LangChain's `bind_tools`. The bundled model knows nothing of
tools: a forced call is the grammar's doing, and its arguments always
validate against the tool's schema."""

import json

import jsonschema
import ollama
import openai
import pytest

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                                        "unit": {"enum": ["C", "F"]}},
                       "required": ["city", "unit"], "additionalProperties": False},
    },
}
CLOCK = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"type": "integer", "minimum": -12, "maximum": 14}}, "required": ["zone"]}}}
TOOLS = [WEATHER, CLOCK]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


@pytest.fixture(scope="module")
def oai(server):
    return openai.OpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=0)


def run_tool(call):
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, SCHEMAS[call.function.name])
    return json.dumps({"ok": True, "args": args})


def test_the_openai_tool_calling_loop(oai, model_id):
    messages = [{"role": "user", "content": "What is the weather in Oslo?"}]
    for seed in range(3):
        first = oai.chat.completions.create(model=model_id, messages=messages, tools=TOOLS, tool_choice="required",
                                            max_tokens=80, temperature=1.0, seed=seed)
        choice = first.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        calls = choice.message.tool_calls
        assert len(calls) == 1 and calls[0].id.startswith("call_") and calls[0].type == "function"
        results = [{"role": "tool", "tool_call_id": c.id, "content": run_tool(c)} for c in calls]
        history = messages + [choice.message.model_dump(exclude_none=True)] + results
        second = oai.chat.completions.create(model=model_id, messages=history, tools=TOOLS, tool_choice="none",
                                             max_tokens=16)
        assert second.choices[0].message.tool_calls is None and second.choices[0].message.content


def test_a_named_function_is_the_one_called(oai, model_id):
    for seed in range(3):
        reply = oai.chat.completions.create(
            model=model_id, messages=[{"role": "user", "content": "Time?"}], tools=TOOLS, max_tokens=60, seed=seed,
            temperature=1.2, tool_choice={"type": "function", "function": {"name": "get_time"}})
        (call,) = reply.choices[0].message.tool_calls
        assert call.function.name == "get_time"
        run_tool(call)


def test_auto_answers_in_prose_or_calls_and_says_which(oai, model_id):
    for seed in range(4):
        reply = oai.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "Hello"}],
                                            tools=TOOLS, max_tokens=24, seed=seed, temperature=1.0)
        choice = choice = reply.choices[0]
        if choice.message.tool_calls:
            assert choice.finish_reason == "tool_calls"
            run_tool(choice.message.tool_calls[0])
        else:
            assert choice.finish_reason in ("stop", "length") and not choice.message.content.startswith("{")


def test_a_streamed_call_accumulates_like_openais(oai, model_id):
    stream = oai.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "Oslo weather"}],
                                         tools=TOOLS, tool_choice="required", max_tokens=80, stream=True, seed=4)
    calls, finish = {}, None
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        assert not delta.content
        for d in delta.tool_calls or []:
            entry = calls.setdefault(d.index, {"id": d.id, "name": "", "arguments": ""})
            entry["name"] += d.function.name or ""
            entry["arguments"] += d.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and len(calls) == 1
    jsonschema.validate(json.loads(calls[0]["arguments"]), SCHEMAS[calls[0]["name"]])


def test_bad_tools_are_400_naming_the_field(oai, model_id):
    hi = [{"role": "user", "content": "Hi"}]
    cases = [
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice.function.name"),
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"x": {"type": "array", "uniqueItems": True}}}}}],
          "tool_choice": "required"}, None),
        ({"tools": TOOLS, "response_format": {"type": "json_object"}}, "tools"),
        ({"tool_choice": "required"}, "tool_choice"),
        # Limits, each just past: 129 tools, a 65-character name.
        ({"tools": [{"type": "function", "function": {"name": f"f{i}"}} for i in range(129)]}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "x" * 65}}]}, "tools[0].function.name"),
    ]
    for extra, param in cases:
        with pytest.raises(openai.BadRequestError) as refused:
            oai.chat.completions.create(model=model_id, messages=hi, max_tokens=4, **extra)
        if param:
            assert refused.value.param == param, refused.value.body
        else:
            assert "uniqueItems" in refused.value.body["message"]
    bad_args = hi + [{"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                                           "function": {"name": "get_time", "arguments": "{oops"}}]}]
    with pytest.raises(openai.BadRequestError) as refused:
        oai.chat.completions.create(model=model_id, messages=bad_args, max_tokens=4)
    assert refused.value.param == "messages[1].tool_calls[0].function.arguments"


def test_the_limits_themselves_are_accepted_and_hostile_text_stays_text(oai, model_id):
    many = [{"type": "function", "function": {"name": f"f{i}", "description": "'; DROP TABLE users; --"}}
            for i in range(128)]
    many[0]["function"]["name"] = "x" * 64
    many[0]["function"]["description"] = "../../etc/passwd <|eot_id|> <|begin_of_text|>"
    reply = oai.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "Hi"}], tools=many,
                                        tool_choice={"type": "function", "function": {"name": "x" * 64}},
                                        max_tokens=120)
    assert reply.choices[0].message.tool_calls[0].function.name == "x" * 64


def test_ollama_tools(server, model_id):
    client = ollama.Client(host=server.base)
    for seed in range(4):
        reply = client.chat(model=model_id, messages=[{"role": "user", "content": "Weather in Oslo?"}],
                            tools=TOOLS, options={"num_predict": 60, "seed": seed, "temperature": 1.0})
        for call in reply.message.tool_calls or []:
            jsonschema.validate(dict(call.function.arguments), SCHEMAS[call.function.name])
        assert reply.message.tool_calls or not reply.message.content.startswith("{")
    history = [{"role": "user", "content": "Weather?"},
               {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather",
                                                                                  "arguments": {"city": "Oslo", "unit": "C"}}}]},
               {"role": "tool", "content": "12 degrees", "tool_name": "get_weather"}]
    reply = client.chat(model=model_id, messages=history, tools=TOOLS, options={"num_predict": 8})
    assert reply.done


def test_langchain_bind_tools(server, model_id):
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return "sunny"

    llm = ChatOpenAI(base_url=server.base + "/v1", api_key="unused", model=model_id, max_tokens=60, max_retries=0)
    message = llm.bind_tools([get_weather], tool_choice="get_weather").invoke("Weather in Oslo?")
    assert message.tool_calls and message.tool_calls[0]["name"] == "get_weather"
    assert isinstance(message.tool_calls[0]["args"]["city"], str)
    followed = get_weather.invoke(message.tool_calls[0])
    answer = llm.bind_tools([get_weather]).invoke(["Weather in Oslo?", message, followed])
    assert answer.content or answer.tool_calls
