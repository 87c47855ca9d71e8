"""Anthropic's Messages API with the `anthropic` client and OpenAI's Responses
API with the `openai` client, against a running `tern serve`."""

import anthropic
import openai
import pytest


@pytest.fixture(scope="module")
def claude(server):
    return anthropic.Anthropic(base_url=server.base, api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def oai(server):
    return openai.OpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=0)


def test_a_message_whole_and_streamed(claude, model_id):
    message = claude.messages.create(model=model_id, max_tokens=12, system="You are terse.",
                                     messages=[{"role": "user", "content": "Speak of the king."}], temperature=0)
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.input_tokens > 0 and 0 < message.usage.output_tokens <= 12
    with claude.messages.stream(model=model_id, max_tokens=12, temperature=0,
                                messages=[{"role": "user", "content": [{"type": "text", "text": "Speak of the king."}]}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == message.content[0].text == final.content[0].text, "greedy: the same text whole and streamed"
    assert final.stop_reason == message.stop_reason and final.usage.output_tokens == message.usage.output_tokens


def test_what_messages_cannot_honour_is_a_400_in_anthropics_shape(claude, model_id):
    hi = [{"role": "user", "content": "Hi"}]
    tool = {"name": "weather", "description": "w", "input_schema": {"type": "object"}}
    for extra in [{"tools": [tool]}, {"thinking": {"type": "enabled", "budget_tokens": 1024}},
                  {"stop_sequences": ["x"] * 17}]:
        with pytest.raises(anthropic.BadRequestError) as refused:
            claude.messages.create(model=model_id, max_tokens=4, messages=hi, **extra)
        assert refused.value.body["error"]["type"] == "invalid_request_error", refused.value.body
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.create(model="claude-unknown", max_tokens=4, messages=hi)
    image = [{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}]}]
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.create(model=model_id, max_tokens=4, messages=image)


def test_a_response_whole_and_streamed(oai, model_id):
    response = oai.responses.create(model=model_id, instructions="You are terse.", input="Speak of the king.",
                                    max_output_tokens=12, temperature=0)
    assert response.object == "response" and response.id.startswith("resp_")
    assert response.status in ("completed", "incomplete") and response.output_text
    assert response.usage.output_tokens <= 12 and response.usage.input_tokens > 0
    if response.status == "incomplete":
        assert response.incomplete_details.reason == "max_output_tokens"
    events = list(oai.responses.create(model=model_id, instructions="You are terse.", max_output_tokens=12,
                                       input=[{"role": "user", "content": [{"type": "input_text", "text": "Speak of the king."}]}],
                                       temperature=0, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == response.output_text == events[-1].response.output_text


def test_what_responses_cannot_honour_is_a_400_naming_the_field(oai, model_id):
    cases = [
        ({"previous_response_id": "resp_123"}, "previous_response_id"),
        ({"tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}]}, "tools"),
        ({"reasoning": {"effort": "high"}}, "reasoning"),
        ({"text": {"format": {"type": "yaml"}}}, "text.format.type"),
    ]
    for extra, param in cases:
        with pytest.raises(openai.BadRequestError) as refused:
            oai.responses.create(model=model_id, input="Hi", max_output_tokens=4, **extra)
        assert refused.value.param == param, refused.value.body
