//! Serves an HTTP router (the admin API, and the device-facing ingest) on
//! its listener with the bounds `axum::serve` cannot set: a header-read
//! timeout, so a client that stalls mid-request (or idles between requests)
//! is closed instead of holding its socket forever, and a cap on open
//! connections, so many clients cannot exhaust the gateway's file
//! descriptors through an HTTP port. Optionally over TLS.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
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
