//! CORS: the origin list, headers on allowed and refused origins, and
//! preflights on every route, all under explicit policies.

use super::script::*;
use crate::cors::{allowed_headers, CorsPolicy, EXPOSE_HEADERS, PREFLIGHT_MAX_AGE_SECONDS};
use crate::router::route_with;

const SITE: &str = "http://example.test";

fn from(origin: &str, request: Request) -> Request {
    let mut request = request;
    request.headers.push(("origin".into(), origin.into()));
    request
}

fn preflight(origin: &str, path: &str, method: &str, headers: Option<&str>) -> Request {
    let mut request = from(origin, Request::new("OPTIONS", path));
    request.headers.push(("access-control-request-method".into(), method.into()));
    if let Some(headers) = headers {
        request.headers.push(("access-control-request-headers".into(), headers.into()));
    }
    request
}

fn cors_headers(response: &Response) -> Vec<&str> {
    response.headers.iter().filter(|(n, _)| n.starts_with("access-control-")).map(|(n, _)| n.as_str()).collect()
}

#[test]
fn origin_list_parses_origins_star_and_blanks() {
    assert_eq!(CorsPolicy::parse(""), CorsPolicy::SameOrigin);
    assert_eq!(CorsPolicy::parse(" , ,"), CorsPolicy::SameOrigin);
    assert_eq!(CorsPolicy::parse("*"), CorsPolicy::AnyOrigin);
    assert_eq!(CorsPolicy::parse("http://a.test, *"), CorsPolicy::AnyOrigin);
    assert_eq!(
        CorsPolicy::parse(" http://A.test/ ,https://b.test:8443,http://a.test"),
        CorsPolicy::Origins(vec!["http://a.test".into(), "https://b.test:8443".into()])
    );
}

#[test]
fn allowed_origins_match_exactly_ignoring_case() {
    let policy = CorsPolicy::parse("http://a.test,https://b.test:8443");
    assert_eq!(policy.allow_origin("http://a.test"), Some("http://a.test"));
    assert_eq!(policy.allow_origin("HTTP://A.TEST"), Some("HTTP://A.TEST"));
    assert_eq!(policy.allow_origin("https://b.test:8443"), Some("https://b.test:8443"));
    for refused in ["https://a.test", "http://a.test:80", "https://b.test", "http://a.test.evil", "null", ""] {
        assert_eq!(policy.allow_origin(refused), None, "{refused}");
    }
    assert_eq!(CorsPolicy::parse("*").allow_origin("http://anything.test"), Some("*"));
    assert_eq!(CorsPolicy::SameOrigin.allow_origin("http://a.test"), None);
}

#[test]
fn same_origin_policy_sends_no_cors_headers() {
    let script = Script::saying(&["a"], FinishReason::Stop);
    for request in [
        from(SITE, Request::new("GET", "/v1/models")),
        from(SITE, chat(hello(json!({"stream": true})))),
        Request::new("GET", "/health"),
    ] {
        let response = route_with(&request, &script, &CorsPolicy::SameOrigin);
        assert_eq!(response.status, 200);
        assert!(cors_headers(&response).is_empty(), "{:?}", response.headers);
        assert!(!response.headers.iter().any(|(n, v)| n == "vary" && v == "origin"));
    }
}

#[test]
fn allowed_origin_gets_its_origin_vary_and_exposed_headers() {
    let script = Script::saying(&["a"], FinishReason::Stop);
    let policy = CorsPolicy::parse(SITE);
    for request in [from(SITE, Request::new("GET", "/v1/models")), from(SITE, chat(hello(json!({"stream": true}))))] {
        let response = route_with(&request, &script, &policy);
        assert_eq!(response.header("access-control-allow-origin"), Some(SITE));
        assert_eq!(response.header("access-control-expose-headers"), Some(EXPOSE_HEADERS));
        assert!(response.headers.iter().any(|(n, v)| n == "vary" && v == "origin"));
        assert_eq!(response.header("x-tern-handler"), Some(HANDLER_VERSION));
    }
    for exposed in ["x-cache", "x-tern-handler", "retry-after", "x-request-id"] {
        assert!(EXPOSE_HEADERS.split(", ").any(|h| h == exposed), "{exposed}");
    }
}

#[test]
fn errors_carry_cors_headers_so_the_page_can_read_them() {
    let script = Script::refusing(Error::Overloaded("full".into()));
    let response = route_with(&from(SITE, chat(hello(json!({})))), &script, &CorsPolicy::parse(SITE));
    assert_eq!(response.header("access-control-allow-origin"), Some(SITE));
    assert_eq!(response.header("retry-after"), Some("1"));
    assert_openai_error(response, 429);
}

#[test]
fn refused_origin_gets_vary_but_no_allow_origin() {
    let script = Script::new(Vec::new());
    let response =
        route_with(&from("http://evil.test", Request::new("GET", "/v1/models")), &script, &CorsPolicy::parse(SITE));
    assert_eq!(response.status, 200);
    assert!(cors_headers(&response).is_empty(), "{:?}", response.headers);
    assert!(response.headers.iter().any(|(n, v)| n == "vary" && v == "origin"));
}

#[test]
fn star_policy_allows_any_origin_with_a_star() {
    let script = Script::new(Vec::new());
    let response =
        route_with(&from("http://elsewhere.test", Request::new("GET", "/health")), &script, &CorsPolicy::AnyOrigin);
    assert_eq!(response.header("access-control-allow-origin"), Some("*"));
    assert_eq!(response.header("access-control-allow-credentials"), None);
}

#[test]
fn preflight_lists_the_routes_methods_headers_and_max_age() {
    let script = Script::new(Vec::new());
    let policy = CorsPolicy::parse(SITE);
    let cases = [
        ("/v1/chat/completions", "POST"),
        ("/v1/models", "GET"),
        ("/api/chat-queue/job-1", "GET, DELETE"),
        ("/", "GET, HEAD"),
    ];
    for (path, methods) in cases {
        let request = preflight(SITE, path, "POST", Some("Content-Type, X-Client-Trace"));
        let response = route_with(&request, &script, &policy);
        assert_eq!(response.status, 204, "{path}");
        assert_eq!(response.header("access-control-allow-origin"), Some(SITE));
        assert_eq!(response.header("access-control-allow-methods"), Some(methods), "{path}");
        assert_eq!(
            response.header("access-control-allow-headers"),
            Some("authorization, content-type, x-client-trace")
        );
        assert_eq!(response.header("access-control-max-age"), Some(PREFLIGHT_MAX_AGE_SECONDS.to_string().as_str()));
        assert!(matches!(&response.body, Body::Full(b) if b.is_empty()));
    }
    assert!(script.started.borrow().is_none(), "a preflight never reaches the engine");
}

#[test]
fn preflight_from_a_refused_origin_is_403_json() {
    let script = Script::new(Vec::new());
    for policy in [CorsPolicy::parse(SITE), CorsPolicy::SameOrigin] {
        let request = preflight("http://evil.test", "/v1/chat/completions", "POST", None);
        let response = route_with(&request, &script, &policy);
        assert!(cors_headers(&response).is_empty(), "{:?}", response.headers);
        let error = assert_openai_error(response, 403);
        assert_eq!(error["code"], "origin_not_allowed");
        assert!(error["message"].as_str().unwrap().contains("http://evil.test"));
    }
}

#[test]
fn preflight_on_an_unknown_route_is_404() {
    let script = Script::new(Vec::new());
    let request = preflight(SITE, "/v2/nothing", "GET", None);
    let response = route_with(&request, &script, &CorsPolicy::parse(SITE));
    assert_eq!(response.header("access-control-allow-origin"), Some(SITE));
    assert_openai_error(response, 404);
}

#[test]
fn plain_options_answers_allow_without_cors_headers() {
    let script = Script::new(Vec::new());
    let response = route_with(&Request::new("OPTIONS", "/v1/chat/completions"), &script, &CorsPolicy::SameOrigin);
    assert_eq!(response.status, 204);
    assert_eq!(response.header("allow"), Some("POST, OPTIONS"));
    assert!(cors_headers(&response).is_empty());
}

#[test]
fn requested_headers_are_echoed_within_limits() {
    assert_eq!(allowed_headers("").unwrap(), "authorization, content-type");
    assert_eq!(allowed_headers("AUTHORIZATION,x-a , x-a,").unwrap(), "authorization, content-type, x-a");
    let many: Vec<String> = (0..17).map(|i| format!("x-h{i}")).collect();
    assert!(allowed_headers(&many[..16].join(",")).is_ok());
    for bad in [many.join(","), "x y".into(), "x-\u{e9}".into(), "a".repeat(65), "x:y".into()] {
        let error = allowed_headers(&bad).expect_err(&bad);
        assert!(matches!(error, ApiError::InvalidParam { ref param, .. } if param == "access-control-request-headers"));
    }
}

#[test]
fn preflight_asking_for_a_bad_header_is_400() {
    let script = Script::new(Vec::new());
    let request = preflight(SITE, "/v1/chat/completions", "POST", Some("x\u{1}y"));
    let response = route_with(&request, &script, &CorsPolicy::parse(SITE));
    assert_eq!(response.header("access-control-allow-origin"), Some(SITE));
    assert_openai_error(response, 400);
}
