//! Tool calling on the OpenAI routes: what reaches the engine, and how a
//! call comes back, whole and streamed.

use super::script::*;
use crate::engine_client::Constraint;

fn weather() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
        {"type": "function", "function": {"name": "get_time"}}
    ])
}

#[test]
fn a_forced_call_is_constrained_to_the_tools_and_told_to_the_model() {
    for (choice, names) in [
        (json!("required"), vec!["get_weather", "get_time"]),
        (json!({"type": "function", "function": {"name": "get_time"}}), vec!["get_time"]),
    ] {
        let script = Script::saying(&[r#"{"name": "get_time", "arguments": {}}"#], FinishReason::Stop);
        let body = json_of(route(&chat(hello(json!({"tools": weather(), "tool_choice": choice}))), &script));
        let started = script.started();
        let Some(Constraint::JsonSchema(schema)) = started.params.constraint else { panic!("a schema constraint") };
        let schema: Value = serde_json::from_str(&schema).unwrap();
        let called: Vec<&str> = match schema.get("anyOf") {
            Some(alts) => {
                alts.as_array().unwrap().iter().map(|a| a["properties"]["name"]["const"].as_str().unwrap()).collect()
            }
            None => vec![schema["properties"]["name"]["const"].as_str().unwrap()],
        };
        assert_eq!(called, names);
        let Prompt::Chat(messages) = &started.prompt else { panic!("a chat") };
        assert_eq!(messages[0].role, "system");
        assert!(names.iter().all(|n| messages[0].content.contains(n)), "{}", messages[0].content);
        let choice = &body["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert_eq!(choice["message"]["content"], Value::Null);
        let call = &choice["message"]["tool_calls"][0];
        assert!(call["id"].as_str().unwrap().starts_with("call_"));
        assert_eq!(call["type"], "function");
        assert_eq!(call["function"], json!({"name": "get_time", "arguments": "{}"}));
    }
}

#[test]
fn with_auto_the_model_answers_in_prose_or_calls() {
    let script = Script::saying(&["It is ", "sunny."], FinishReason::Stop);
    let body = json_of(route(&chat(hello(json!({"tools": weather()}))), &script));
    assert!(matches!(script.started().params.constraint, Some(Constraint::JsonOrText(_))));
    assert_eq!(body["choices"][0]["message"]["content"], "It is sunny.");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert!(body["choices"][0]["message"].get("tool_calls").is_none());

    let script =
        Script::saying(&["{\"name\": \"get_weather\", ", "\"arguments\": {\"city\": \"Oslo\"}}"], FinishReason::Stop);
    let body = json_of(route(&chat(hello(json!({"tools": weather(), "tool_choice": "auto"}))), &script));
    let call = &body["choices"][0]["message"]["tool_calls"][0]["function"];
    assert_eq!(call["name"], "get_weather");
    assert_eq!(serde_json::from_str::<Value>(call["arguments"].as_str().unwrap()).unwrap(), json!({"city": "Oslo"}));

    let script = Script::saying(&["ok"], FinishReason::Stop);
    route(&chat(hello(json!({"tools": weather(), "tool_choice": "none"}))), &script);
    let started = script.started();
    assert!(started.params.constraint.is_none(), "none: no tools at all");
    let Prompt::Chat(messages) = &started.prompt else { panic!("a chat") };
    assert_eq!(messages[0].role, "user");
}

#[test]
fn a_streamed_call_arrives_as_one_tool_calls_delta() {
    let script =
        Script::saying(&["{\"name\": \"get_weather\", ", "\"arguments\": {\"city\": \"Oslo\"}}"], FinishReason::Stop);
    let response = route(&chat(hello(json!({"tools": weather(), "stream": true}))), &script);
    let chunks: Vec<Value> = frames(response).iter().filter(|f| !f.contains("[DONE]")).map(|f| frame_json(f)).collect();
    assert!(chunks.iter().all(|c| c["choices"][0]["delta"].get("content").is_none_or(|t| t == "")), "no text");
    let deltas: Vec<&Value> = chunks.iter().filter_map(|c| c["choices"][0]["delta"].get("tool_calls")).collect();
    assert_eq!(deltas.len(), 1);
    assert_eq!(deltas[0][0]["index"], 0);
    assert_eq!(deltas[0][0]["function"]["name"], "get_weather");
    assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], "tool_calls");

    let script = Script::saying(&["Plain ", "words"], FinishReason::Stop);
    let response = route(&chat(hello(json!({"tools": weather(), "stream": true}))), &script);
    let text: String = frames(response)
        .iter()
        .filter(|f| !f.contains("[DONE]"))
        .filter_map(|f| frame_json(f)["choices"][0]["delta"]["content"].as_str().map(str::to_string))
        .collect();
    assert_eq!(text, "Plain words", "prose streams as it comes");
}

#[test]
fn earlier_calls_and_results_are_written_into_the_conversation() {
    let script = Script::saying(&["Oslo is sunny."], FinishReason::Stop);
    let messages = json!([
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]);
    let body = json!({"model": MODEL, "messages": messages, "tools": weather()});
    assert_eq!(route(&chat(body), &script).status, 200);
    let Prompt::Chat(sent) = script.started().prompt else { panic!("a chat") };
    assert_eq!(sent[2].role, "assistant");
    assert_eq!(
        serde_json::from_str::<Value>(&sent[2].content).unwrap(),
        json!({"name": "get_weather", "arguments": {"city": "Oslo"}})
    );
    assert_eq!(sent[3].role, "user");
    assert_eq!(
        serde_json::from_str::<Value>(&sent[3].content).unwrap(),
        json!({"tool_result": {"call_id": "call_1", "content": "sunny"}})
    );

    let bad_arguments = json!({"model": MODEL, "messages": [{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]});
    assert_eq!(param_error(chat(bad_arguments))["param"], "messages[0].tool_calls[0].function.arguments");
    let user_calls = json!({"model": MODEL, "messages": [{"role": "user", "content": "x", "tool_calls": []}]});
    assert_eq!(param_error(chat(user_calls))["param"], "messages[0].tool_calls");
}
