//! `/`: the chat page for browsers, Ollama's liveness text for the rest, and
//! the page's static files.

use super::script::*;
use crate::page::{entity_tag, wants_html, LIVENESS_TEXT};

const BROWSER_ACCEPT: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

fn get(path: &str, headers: &[(&str, &str)]) -> Response {
    let mut request = Request::new("GET", path);
    request.headers = headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
    route(&request, &Script::new(Vec::new()))
}

fn text_of(response: &Response) -> &str {
    match &response.body {
        Body::Full(bytes) | Body::Then(bytes, _) => std::str::from_utf8(bytes).expect("UTF-8"),
        Body::Stream(_) => panic!("expected a whole body"),
    }
}

#[test]
fn root_without_html_says_ollama_is_running() {
    for accept in [None, Some("*/*"), Some("application/json"), Some("text/html;q=0")] {
        let headers: Vec<(&str, &str)> = accept.map(|a| ("accept", a)).into_iter().collect();
        let response = get("/", &headers);
        assert_eq!(response.status, 200);
        assert_eq!(response.header("content-type"), Some("text/plain; charset=utf-8"));
        assert_eq!(text_of(&response), LIVENESS_TEXT);
        assert_eq!(text_of(&response), "Ollama is running");
        assert!(response.headers.iter().any(|(n, v)| n == "vary" && v == "accept"));
    }
}

#[test]
fn root_with_html_serves_the_chat_page() {
    let response = get("/", &[("accept", BROWSER_ACCEPT)]);
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(response.header("cache-control"), Some("no-cache"));
    assert!(response.header("content-security-policy").is_some_and(|p| p.contains("default-src 'none'")));
    let html = text_of(&response);
    assert!(html.starts_with("<!doctype html>"));
    for part in
        ["/static/chat.js", "/static/chat.css", "<label for=\"model\">", "<label for=\"message\">", "id=\"stop\""]
    {
        assert!(html.contains(part), "the page lacks {part}");
    }
    assert!(!html.contains("http://") && !html.contains("https://"), "the page loads nothing from elsewhere");
}

#[test]
fn accept_header_parsing_honours_quality_zero_and_case() {
    assert!(wants_html(Some(BROWSER_ACCEPT)));
    assert!(wants_html(Some("TEXT/HTML")));
    assert!(wants_html(Some("application/json, text/html; q=0.5")));
    assert!(!wants_html(Some("text/html;q=0.0")));
    assert!(!wants_html(Some("text/htmlx, */*")));
    assert!(!wants_html(None));
}

#[test]
fn head_root_has_the_headers_and_no_body() {
    let mut request = Request::new("HEAD", "/");
    request.headers.push(("accept".into(), "text/html".into()));
    let response = route(&request, &Script::new(Vec::new()));
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(response.header("etag").is_some());
    assert_eq!(text_of(&response), "");
}

#[test]
fn root_refuses_other_methods() {
    let script = Script::new(Vec::new());
    let response = route(&post("/", &json!({})), &script);
    assert_eq!(response.header("allow"), Some("GET, HEAD"));
    assert_openai_error(response, 405);
}

#[test]
fn static_files_have_their_types_and_revalidate() {
    for (path, content_type, needle) in [
        ("/static/chat.js", "text/javascript; charset=utf-8", "/v1/chat/completions"),
        ("/static/chat.css", "text/css; charset=utf-8", "#log"),
    ] {
        let response = get(path, &[]);
        assert_eq!(response.status, 200, "{path}");
        assert_eq!(response.header("content-type"), Some(content_type));
        assert_eq!(response.header("cache-control"), Some("no-cache"));
        assert_eq!(response.header("x-content-type-options"), Some("nosniff"));
        assert!(text_of(&response).contains(needle), "{path}");
        let tag = response.header("etag").expect("an etag").to_string();
        assert_eq!(tag, entity_tag(text_of(&response)));

        let again = get(path, &[("if-none-match", &format!("\"other\", {tag}"))]);
        assert_eq!(again.status, 304);
        assert_eq!(text_of(&again), "");
        assert_eq!(again.header("etag"), Some(tag.as_str()));
        assert_eq!(get(path, &[("if-none-match", "\"stale\"")]).status, 200);
    }
}

#[test]
fn the_script_asks_for_streaming_usage_and_reads_the_cache_signals() {
    let js = text_of(&get("/static/chat.js", &[])).to_string();
    for part in ["stream: true", "include_usage: true", "x-cache", "chunk.cached", "AbortController", "tokens/s"] {
        assert!(js.contains(part), "chat.js lacks {part}");
    }
}

#[test]
fn unknown_static_files_are_404() {
    for path in ["/static/", "/static/nope.js", "/static/../router.rs", "/static/chat.js/x"] {
        let error = assert_openai_error(get(path, &[]), 404);
        assert_eq!(error["code"], "unknown_url", "{path}");
    }
}

#[test]
fn entity_tags_differ_for_different_content() {
    assert_ne!(entity_tag("a"), entity_tag("b"));
    assert_eq!(entity_tag("a"), entity_tag("a"));
    assert!(entity_tag("").starts_with('"') && entity_tag("").ends_with('"'));
}
