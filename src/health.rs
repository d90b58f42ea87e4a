//! Whether the gateway's own threads are alive.
//!
//! The router (rumqttd's thread, which we cannot join), the verifier, the
//! commit stage and the journal's checkpoints each run on one OS thread,
//! and nothing else can do their work (without checkpoints every commit
//! fails closed, and `/readyz` should say why). If one of them panics, the gateway would otherwise go on accepting
//! connections and refusing or losing everything behind them. Instead it
//! says so at once (`/readyz` answers 503) and exits non-zero, so that its
//! supervisor restarts it. A panic in one connection's task is not fatal:
//! tokio ends that task alone.

use std::sync::{Arc, OnceLock};

use tokio_util::sync::CancellationToken;

/// Names of the threads the gateway cannot live without.
fn critical(thread: &str) -> bool {
    thread.starts_with("router-") || ["verifier", "commit", "checkpoint"].contains(&thread)
}

/// Cancelled when a critical thread died.
pub struct Health {
    dead: CancellationToken,
    which: OnceLock<String>,
}

impl Health {
    /// Whether every critical thread is alive.
    pub fn ok(&self) -> bool {
        !self.dead.is_cancelled()
    }

    /// Completes when a critical thread has died.
    pub async fn died(&self) {
        self.dead.cancelled().await
    }

    /// The thread that died first, if one did.
    pub fn which(&self) -> Option<&str> {
        self.which.get().map(String::as_str)
    }

    fn mark_dead(&self, thread: &str) {
        let _ = self.which.set(thread.to_owned());
        self.dead.cancel();
    }
}

/// The process's health, with the panic hook that watches the critical
/// threads installed on first use. The default hook still prints the panic.
pub fn watch() -> Arc<Health> {
    static HEALTH: OnceLock<Arc<Health>> = OnceLock::new();
    HEALTH
        .get_or_init(|| {
            let health = Arc::new(Health {
                dead: CancellationToken::new(),
                which: OnceLock::new(),
            });
            let previous = std::panic::take_hook();
            let h = health.clone();
            std::panic::set_hook(Box::new(move |info| {
                previous(info);
                if let Some(name) = std::thread::current().name() {
                    if critical(name) {
                        h.mark_dead(name);
                    }
                }
            }));
            health
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_critical_threads_are_fatal() {
        assert!(critical("router-0"));
        assert!(critical("verifier"));
        assert!(critical("commit"));
        assert!(critical("checkpoint"));
        assert!(!critical("tokio-runtime-worker"));
        assert!(!critical("main"));
    }

    #[test]
    fn a_panic_on_a_critical_thread_marks_the_process_dead() {
        let health = watch();
        let ordinary = std::thread::Builder::new()
            .name("worker".into())
            .spawn(|| panic!("an ordinary thread"))
            .unwrap();
        assert!(ordinary.join().is_err());
        assert!(health.ok());
        let router = std::thread::Builder::new()
            .name("router-7".into())
            .spawn(|| panic!("the router"))
            .unwrap();
        assert!(router.join().is_err());
        assert!(!health.ok());
        assert_eq!(health.which(), Some("router-7"));
    }
}
