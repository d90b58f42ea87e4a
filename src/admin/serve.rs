//! Serves the admin router on its listener with the bounds `axum::serve`
//! cannot set: a header-read timeout, so a client that stalls mid-request (or
//! idles between requests) is closed instead of holding its socket forever,
//! and a cap on open connections, so many clients cannot exhaust the
//! gateway's file descriptors through the admin port.

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

/// What one admin server may hold.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
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
            refuse(stream);
            continue;
        };
        let app = app.clone();
        let stop = stop.clone();
        tracker.spawn(async move {
            let _slot = slot;
            connection(stream, app, limits, stop).await;
        });
    }
    tracker.close();
    tracker.wait().await;
}

fn refuse(stream: TcpStream) {
    tracing::debug!("Admin connection refused: no free slot.");
    // A full socket buffer just means the client reads a reset instead.
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{BUSY_BODY}",
        BUSY_BODY.len()
    );
    let _ = stream.try_write(answer.as_bytes());
}

async fn connection(stream: TcpStream, app: Router, limits: ServeLimits, stop: CancellationToken) {
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
