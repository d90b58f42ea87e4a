//! Serves an HTTP router (the admin API, and the device-facing ingest) on
//! its listener with the bounds `axum::serve` cannot set: a header-read
//! timeout, so a client that stalls mid-request (or idles between requests)
//! is closed instead of holding its socket forever, and a cap on open
//! connections, so many clients cannot exhaust the gateway's file
//! descriptors through an HTTP port; the same timeout again for a request's
//! body ([`BodyTimedOut`]). Optionally over TLS.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use hyper::body::Frame;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What one HTTP server may hold.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
}

/// How a server presents itself beyond its router.
#[derive(Clone)]
pub struct ServeOptions {
    pub limits: ServeLimits,
    /// HTTPS: the handshake must finish within the header-read timeout.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// The JSON body a socket past the connection cap gets with its 503.
    pub busy_body: &'static str,
}

/// Sent, best effort, to a socket past the cap before it is closed, so a
/// client sees why instead of a bare reset.
const BUSY_BODY: &str =
    r#"{"error":"too_many_connections","message":"the admin API has no free connection slot"}"#;

/// Accepts until `stop`, then lets open connections finish their current
/// request (idle ones close at once) and returns when all are closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServeLimits,
    stop: CancellationToken,
) {
    let options = ServeOptions {
        limits,
        tls: None,
        busy_body: BUSY_BODY,
    };
    serve_with(listener, app, options, stop).await
}

/// [`serve`] with TLS and the busy answer chosen by the caller.
pub async fn serve_with(
    listener: TcpListener,
    app: Router,
    options: ServeOptions,
    stop: CancellationToken,
) {
    let limits = options.limits;
    let app = app.layer(axum::middleware::from_fn_with_state(
        limits.header_read_timeout,
        body_deadline,
    ));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let tracker = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "Admin accept failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refuse(stream, options.busy_body);
            continue;
        };
        let app = app.clone();
        let stop = stop.clone();
        let tls = options.tls.clone();
        tracker.spawn(async move {
            let _slot = slot;
            match tls {
                None => connection(stream, app, limits, stop).await,
                Some(acceptor) => {
                    let handshake = acceptor.accept(stream);
                    match tokio::time::timeout(limits.header_read_timeout, handshake).await {
                        Ok(Ok(tls)) => connection(tls, app, limits, stop).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed."),
                        Err(_) => tracing::debug!("TLS handshake timed out."),
                    }
                }
            }
        });
    }
    tracker.close();
    tracker.wait().await;
}

fn refuse(stream: TcpStream, body: &str) {
    tracing::debug!("HTTP connection refused: no free slot.");
    // A full socket buffer just means the client reads a reset instead.
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(answer.as_bytes());
}

async fn connection<S>(stream: S, app: Router, limits: ServeLimits, stop: CancellationToken)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// A request body that has not arrived within the header-read timeout of
/// its headers. hyper's own timeout ends with the headers: without this, a
/// client that declares a body and sends it slowly, or never, holds its
/// connection slot for ever, and the ingest and `/api/v1/claim` read bodies
/// before any credential is checked.
#[derive(Debug)]
pub struct BodyTimedOut;

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body did not arrive in time")
    }
}

impl std::error::Error for BodyTimedOut {}

impl BodyTimedOut {
    /// Whether `e` (from reading a body) is, or was caused by, a timeout.
    pub fn caused(e: &(dyn std::error::Error + 'static)) -> bool {
        let mut cur = Some(e);
        while let Some(c) = cur {
            if c.is::<BodyTimedOut>() {
                return true;
            }
            cur = c.source();
        }
        false
    }
}

async fn body_deadline(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    let req = req.map(|body| {
        Body::new(Deadline {
            body,
            sleep: Box::pin(tokio::time::sleep(limit)),
        })
    });
    next.run(req).await
}

/// A body that fails with [`BodyTimedOut`] once its deadline has passed:
/// one deadline for the whole body, not one per chunk.
struct Deadline {
    body: Body,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl hyper::body::Body for Deadline {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.body).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}
