//! The seed's spelling of the queue API: `?requestId=` on `/api/chat-queue`.

use super::script::*;

#[test]
fn request_id_in_the_query_reads_and_cancels_like_the_path_form() {
    let script = Script::saying(&[], FinishReason::Stop);
    for (method, id) in [("GET", job_id("job-running")), ("DELETE", job_id("job-1"))] {
        let by_query = json_of(route(&Request::new(method, &format!("/api/chat-queue?requestId={id}")), &script));
        let by_path = json_of(route(&Request::new(method, &format!("/api/chat-queue/{id}")), &script));
        assert_eq!(by_query, by_path);
    }
    // Percent-escapes are decoded.
    let escaped_id = job_id("job-done").replace('-', "%2D");
    let escaped = route(&Request::new("GET", &format!("/api/chat-queue?x=1&requestId={escaped_id}")), &script);
    assert_eq!(json_of(escaped)["id"], job_id("job-done"));
}

#[test]
fn a_query_without_request_id_is_400_and_an_unknown_one_404() {
    let script = Script::saying(&[], FinishReason::Stop);
    let error = assert_openai_error(route(&Request::new("GET", "/api/chat-queue"), &script), 400);
    assert_eq!(error["param"], "requestId");
    assert_openai_error(route(&Request::new("DELETE", "/api/chat-queue?requestId=nope"), &script), 404);
    let wrong = route(&Request::new("PUT", "/api/chat-queue"), &script);
    assert_eq!(wrong.status, 405);
    assert_eq!(wrong.header("allow"), Some("POST, GET, DELETE"));
}
