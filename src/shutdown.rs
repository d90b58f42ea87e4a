//! Shutdown signalling. One token is cancelled on SIGTERM or Ctrl-C; every
//! task watches it (or a child of it) and finishes its work in the order
//! `app::run` drives: stop accepting, drain the verifier, close connections,
//! flush sled.

pub use tokio_util::sync::CancellationToken as Shutdown;

/// Resolves on SIGTERM or Ctrl-C.
pub async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
