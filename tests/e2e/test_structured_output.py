"""Structured output through every API that asks for it, with real clients:
the `openai` package's `beta.chat.completions.parse` with Pydantic models,
`response_format` with many JSON Schemas (each answer validated with the
`jsonschema` package), the Responses API's `text.format`, the `ollama`
package's `format`, llama.cpp's `grammar` and `json_schema`, and LangChain's
`with_structured_output`. The bundled model is small and writes Shakespeare:
the grammar alone keeps its answers valid."""

import json
from typing import Literal, Optional

import jsonschema
import ollama
import openai
import pytest
from pydantic import BaseModel, Field


@pytest.fixture(scope="module")
def oai(server):
    return openai.OpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=0)


class Address(BaseModel):
    city: str = Field(max_length=20)
    zip: int = Field(ge=0, le=99999)
    country: str = Field(pattern=r"^[A-Z]{2}$")


class Person(BaseModel):
    name: str = Field(max_length=24)
    age: int = Field(ge=0, le=130)
    role: Literal["king", "fool", "ghost"]
    address: Address
    nicknames: list[str] = Field(max_length=3)
    spouse: Optional[str] = None


def test_the_openai_client_parses_into_a_pydantic_model(oai, model_id):
    for seed in range(4):
        completion = oai.beta.chat.completions.parse(
            model=model_id, messages=[{"role": "user", "content": "Who is Hamlet?"}],
            response_format=Person, max_tokens=160, temperature=1.0, seed=seed)
        message = completion.choices[0].message
        assert isinstance(message.parsed, Person), message.content
        assert list(json.loads(message.content))[:5] == ["name", "age", "role", "address", "nicknames"], \
            "properties come in the schema's order"
        assert completion.choices[0].finish_reason == "stop"


SCHEMAS = [
    {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 30}}, "required": ["answer"],
     "additionalProperties": False},
    {"type": "object", "properties": {"n": {"type": "integer", "minimum": -50, "maximum": -7},
                                      "x": {"type": "number", "minimum": 0, "maximum": 1},
                                      "ok": {"type": "boolean"}, "none": {"type": "null"}},
     "required": ["n", "x", "ok", "none"], "additionalProperties": False},
    {"type": "array", "items": {"enum": ["north", "south", 7, None, True]}, "minItems": 2, "maxItems": 4},
    {"type": "object", "properties": {"quote": {"type": "string", "minLength": 3, "maxLength": 40}},
     "required": ["quote"], "additionalProperties": False},
    {"type": "object", "properties": {"matrix": {"type": "array", "items": {"type": "array", "items": {"type": "integer"},
                                                                             "maxItems": 3}, "maxItems": 3}},
     "required": ["matrix"]},
    {"$defs": {"node": {"type": "object", "properties": {"v": {"type": "string", "maxLength": 5},
                                                        "kids": {"type": "array", "maxItems": 2,
                                                                 "items": {"$ref": "#/$defs/node"}}},
                        "required": ["v", "kids"], "additionalProperties": False}},
     "$ref": "#/$defs/node"},
    {"anyOf": [{"type": "string", "maxLength": 10}, {"type": "object", "properties": {"k": {"const": "v\"\\"}},
                                                     "required": ["k"]}]},
    {"type": "object", "properties": {"when": {"type": "string", "format": "date"},
                                      "id": {"type": "string", "format": "uuid"}},
     "required": ["when", "id"]},
    {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}, "c": {"type": "boolean"}},
     "required": ["b"], "additionalProperties": False},
    {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0, "maximum": 9}, "maxLength": 1},
    {"type": "array", "prefixItems": [{"type": "string", "maxLength": 8}, {"type": "integer"}], "items": False},
    {"type": ["string", "null"], "maxLength": 12},
    {"type": "object", "properties": {"sku": {"type": "string", "pattern": "^[A-Z]{3}-\\d{4}(-[a-z]+)?$"},
                                      "mail": {"type": "string", "pattern": "^\\w{1,8}@example\\.(com|org)$"},
                                      "quoted": {"type": "string", "pattern": "^\"[^\"\\\\]{0,6}\"$"}},
     "required": ["sku", "mail", "quoted"], "additionalProperties": False},
]


@pytest.mark.parametrize("index", range(len(SCHEMAS)))
def test_every_answer_validates_against_its_schema(oai, model_id, index):
    schema = SCHEMAS[index]
    for seed, temperature in [(0, 0.0), (1, 1.0), (2, 1.5)]:
        completion = oai.chat.completions.create(
            model=model_id, messages=[{"role": "user", "content": "Answer in JSON."}], max_tokens=200,
            temperature=temperature, seed=seed,
            response_format={"type": "json_schema", "json_schema": {"name": "t", "strict": True, "schema": schema}})
        text = completion.choices[0].message.content
        jsonschema.validate(json.loads(text), schema)


def test_json_object_mode_and_a_budget_too_short_to_wander(oai, model_id):
    for max_tokens in (8, 40):
        completion = oai.chat.completions.create(
            model=model_id, messages=[{"role": "user", "content": "JSON please"}], max_tokens=max_tokens,
            temperature=1.2, seed=3, response_format={"type": "json_object"})
        assert isinstance(json.loads(completion.choices[0].message.content), dict)


def test_streamed_structured_output_joins_into_valid_json(oai, model_id):
    schema = SCHEMAS[1]
    stream = oai.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": "Numbers"}], max_tokens=120, temperature=1.0, seed=9,
        stream=True, response_format={"type": "json_schema", "json_schema": {"name": "t", "schema": schema}})
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    jsonschema.validate(json.loads(text), schema)


def test_the_responses_api_text_format(oai, model_id):
    response = oai.responses.create(
        model=model_id, input="Describe a castle.", max_output_tokens=120, temperature=1.0,
        text={"format": {"type": "json_schema", "name": "castle", "schema": SCHEMAS[0], "strict": True}})
    jsonschema.validate(json.loads(response.output_text), SCHEMAS[0])
    parsed = oai.responses.parse(model=model_id, input="Who is Lear?", text_format=Person, max_output_tokens=160)
    assert isinstance(parsed.output_parsed, Person)


def test_ollama_format_json_and_a_schema(server, model_id):
    client = ollama.Client(host=server.base)
    reply = client.chat(model=model_id, messages=[{"role": "user", "content": "JSON"}], format="json",
                        options={"num_predict": 60, "seed": 4})
    assert isinstance(json.loads(reply.message.content), dict)
    reply = client.generate(model=model_id, prompt="A person", format=Person.model_json_schema(),
                            options={"num_predict": 160, "seed": 5})
    Person.model_validate_json(reply.response)


def test_llama_cpp_grammar_and_json_schema(server):
    grammar = 'root ::= ("yes" | "no") ", because " [a-z ]{1,20} "."'
    status, _, body = server.json("POST", "/completion", {"prompt": "Is it?", "grammar": grammar, "n_predict": 40,
                                                           "seed": 1})
    assert status == 200
    verdict, reason = body["content"].split(", because ")
    assert verdict in ("yes", "no") and reason.endswith("."), body["content"]
    status, _, body = server.json("POST", "/completion", {"prompt": "JSON:", "json_schema": SCHEMAS[2],
                                                           "n_predict": 60})
    assert status == 200
    jsonschema.validate(json.loads(body["content"]), SCHEMAS[2])


def test_langchain_with_structured_output(server, model_id):
    from langchain_openai import ChatOpenAI
    llm = ChatOpenAI(base_url=server.base + "/v1", api_key="unused", model=model_id, max_tokens=160, temperature=0.7,
                     max_retries=0)
    person = llm.with_structured_output(Person, method="json_schema").invoke("Describe Ophelia.")
    assert isinstance(person, Person)


def test_what_cannot_be_built_is_a_400_naming_it(server, oai, model_id):
    hi = [{"role": "user", "content": "Hi"}]
    for schema, words in [({"type": "string", "pattern": "^(a)\\1$"}, "backreferences"),
                          ({"type": "array", "uniqueItems": True}, "uniqueItems"),
                          ({"$ref": "#/$defs/missing"}, "points at nothing"),
                          ({"type": "integer", "minimum": 3, "maximum": 1}, "no integer")]:
        with pytest.raises(openai.BadRequestError) as refused:
            oai.chat.completions.create(model=model_id, messages=hi, max_tokens=4, response_format={
                "type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
        assert words in refused.value.body["message"]
    for grammar, words in [("root ::= nothing", "not defined"), ("root ::= root \"a\"", "left-recursive"),
                           ("x ::= \"a\"", "root"), ("root ::= \"a\"{999999}", "too large")]:
        status, _, body = server.json("POST", "/completion", {"prompt": "x", "grammar": grammar, "n_predict": 4})
        assert status == 400 and words in body["error"]["message"], body
    status, _, body = server.json("POST", "/v1/chat/completions", {
        "model": model_id, "messages": hi, "response_format": {"type": "json_object"}, "grammar": "root ::= \"a\""})
    assert status == 400 and body["error"]["param"] == "grammar"
    status, _, body = server.json("POST", "/api/chat", {"model": model_id, "messages": hi, "format": "xml"})
    assert status == 400 and "format" in body["error"]


def test_sql_and_path_strings_in_schemas_and_grammars_are_only_text(server, oai, model_id):
    nasty = "'; DROP TABLE users; -- ../../etc/passwd \u0000"
    schema = {"type": "object", "properties": {nasty: {"const": nasty}}, "required": [nasty]}
    completion = oai.chat.completions.create(model=model_id, messages=[{"role": "user", "content": nasty}],
                                             max_tokens=200, response_format={
                                                 "type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    assert json.loads(completion.choices[0].message.content) == {nasty: nasty}
    status, _, body = server.json("POST", "/completion", {"prompt": "x", "grammar": "root ::= \"../../etc/passwd'--\"",
                                                           "n_predict": 30})
    assert status == 200 and body["content"] == "../../etc/passwd'--"
