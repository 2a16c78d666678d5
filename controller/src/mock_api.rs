//! A mock Kubernetes API server for tests that pin the exact requests portkeeper sends.

use std::fmt::Debug;
use std::future::Future;

use http::{Method, Request, Response};
use kube::client::Body;

/// The server side of a mock client.
pub type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// A client whose requests arrive at the returned handle.
pub fn client() -> (kube::Client, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, "default"), handle)
}

/// Waits up to 5 s for the next request, answers it with `reply` applied to its JSON body, and
/// returns the request with its body.
pub async fn answer(
    handle: &mut Handle,
    reply: impl FnOnce(&serde_json::Value) -> serde_json::Value,
) -> (http::request::Parts, serde_json::Value) {
    let (request, send) =
        tokio::time::timeout(std::time::Duration::from_secs(5), handle.next_request())
            .await
            .expect("the client sent a request")
            .expect("the client sent a request");
    let (parts, body) = request.into_parts();
    let bytes = body.collect_bytes().await.unwrap();
    let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let reply = serde_json::to_vec(&reply(&body)).unwrap();
    send.send_response(Response::new(Body::from(reply)));
    (parts, body)
}

/// What a PATCH carried: its URI, its content type and its JSON body.
pub struct Patched {
    /// Path and query.
    pub uri: String,
    /// The `content-type` header: the patch strategy.
    pub content_type: String,
    /// The body.
    pub body: serde_json::Value,
}

/// Sends `request`, answers it with `reply`, and returns what it sent, which must be a PATCH.
pub async fn patched<T, E: Debug>(
    handle: &mut Handle,
    request: impl Future<Output = Result<T, E>>,
    reply: serde_json::Value,
) -> Patched {
    let (sent, (parts, body)) = tokio::join!(request, answer(handle, |_| reply));
    sent.unwrap();
    assert_eq!(parts.method, Method::PATCH);
    Patched {
        uri: parts.uri.to_string(),
        content_type: parts.headers["content-type"].to_str().unwrap().to_owned(),
        body,
    }
}
