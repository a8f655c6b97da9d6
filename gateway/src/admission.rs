//! Admission at the edge: every call's deadline, and a bound on the calls in flight per service.
//!
//! The deadline is the sooner of the client's `grpc-timeout` and `REQUEST_TIMEOUT_MS`. `DeadlineLayer`
//! answers DEADLINE_EXCEEDED when it passes (tonic's own timeout answers CANCELLED, which tells a client
//! nothing) and hands the deadline to the handlers, which carry it into the wallet actors so that a
//! command still queued when it passes is skipped, never decided.
//!
//! Why a layer, and why no `Server::timeout`: tonic still times a call by its `grpc-timeout` header
//! itself, in a wrapper whose inner service is this layer. The layer computes its deadline while that
//! wrapper calls it, before the wrapper starts its own timer, and the wrapper polls the call before its
//! timer; so our deadline fires first, or in the same tick and is seen first.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::{Service, http};
use tonic::server::NamedService;

use crate::limits::REQUEST_TIMEOUT_MS;
use crate::service::Gate;

/// When the call's caller stops waiting; in every request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline(pub Instant);

/// The deadline of a request that passed through [`DeadlineLayer`] (none in unit tests that call a
/// handler directly).
pub fn deadline<T>(request: &tonic::Request<T>) -> Option<Instant> {
    request.extensions().get::<Deadline>().map(|d| d.0)
}

/// A `grpc-timeout` value: at most eight digits and a unit (H, M, S, m, u, n).
fn grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at_checked(value.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3_600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[derive(Debug, Clone, Copy, Default)]
pub struct DeadlineLayer;

impl<S> tower_layer::Layer<S> for DeadlineLayer {
    type Service = WithDeadline<S>;

    fn layer(&self, inner: S) -> WithDeadline<S> {
        WithDeadline { inner }
    }
}

#[derive(Debug, Clone)]
pub struct WithDeadline<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<http::Request<B>> for WithDeadline<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<http::Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let server = Duration::from_millis(REQUEST_TIMEOUT_MS);
        let client = request.headers().get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(grpc_timeout);
        let deadline = Instant::now() + client.map_or(server, |c| c.min(server));
        request.extensions_mut().insert(Deadline(deadline));
        let call = self.inner.call(request);
        Box::pin(async move {
            match tokio::time::timeout_at(deadline, call).await {
                Ok(response) => response,
                Err(_) => Ok(Status::deadline_exceeded(
                    "deadline exceeded: a command not yet decided was skipped, one being decided may have been \
                     applied; retry with the same idempotency key to learn its outcome",
                )
                .into_http()),
            }
        })
    }
}

/// A service behind a [`Gate`]: beyond its bound a call is refused at once with RESOURCE_EXHAUSTED
/// (and with UNAVAILABLE once the gate closes for shutdown).
#[derive(Debug, Clone)]
pub struct Admitted<S> {
    inner: S,
    gate: Arc<Gate>,
}

impl<S> Admitted<S> {
    pub fn new(inner: S, gate: Arc<Gate>) -> Self {
        Self { inner, gate }
    }
}

impl<S: NamedService> NamedService for Admitted<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for Admitted<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<http::Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let gate = Arc::clone(&self.gate);
        let call = self.inner.call(request);
        Box::pin(async move {
            let _permit = match gate.admit() {
                Ok(permit) => permit,
                Err(status) => return Ok(status.into_http()),
            };
            call.await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A call that never finishes.
    #[derive(Debug, Clone)]
    struct Stuck;

    impl Service<http::Request<()>> for Stuck {
        type Response = http::Response<Body>;
        type Error = std::convert::Infallible;
        type Future = std::future::Pending<Result<http::Response<Body>, Self::Error>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _request: http::Request<()>) -> Self::Future {
            std::future::pending()
        }
    }

    fn grpc_status(response: &http::Response<Body>) -> Option<&str> {
        response.headers().get("grpc-status").and_then(|v| v.to_str().ok())
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_past_its_deadline_is_answered_deadline_exceeded() {
        use tower_layer::Layer;
        let started = Instant::now();
        let mut service = DeadlineLayer.layer(Stuck);
        let request = http::Request::builder().header("grpc-timeout", "250m").body(()).unwrap();
        let response = service.call(request).await.unwrap();
        assert_eq!(grpc_status(&response), Some("4"), "DEADLINE_EXCEEDED");
        assert_eq!(started.elapsed(), Duration::from_millis(250), "the client's deadline, sooner than the server's");
        let response = service.call(http::Request::new(())).await.unwrap();
        assert_eq!(grpc_status(&response), Some("4"));
        assert_eq!(started.elapsed(), Duration::from_millis(250 + REQUEST_TIMEOUT_MS), "the server's deadline");
    }

    #[tokio::test]
    async fn a_full_gate_refuses_at_once() {
        let gate = Arc::new(Gate::new(1));
        let held = gate.admit().unwrap();
        let mut service = Admitted::new(Stuck, Arc::clone(&gate));
        let response = service.call(http::Request::new(())).await.unwrap();
        assert_eq!(grpc_status(&response), Some("8"), "RESOURCE_EXHAUSTED");
        drop(held);
        gate.close();
        let response = service.call(http::Request::new(())).await.unwrap();
        assert_eq!(grpc_status(&response), Some("14"), "UNAVAILABLE while shutting down");
    }

    #[test]
    fn grpc_timeouts_parse_as_the_spec_writes_them() {
        assert_eq!(grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(grpc_timeout("1H"), Some(Duration::from_secs(3_600)));
        assert_eq!(grpc_timeout("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "m", "123456789m", "10x", "-1S", "1.5S"] {
            assert_eq!(grpc_timeout(bad), None, "{bad}");
        }
    }
}
