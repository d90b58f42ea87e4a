//! Test-only fail points: faults a test selects by name to prove what the
//! gateway does when a part of it fails at an exact moment. They are off
//! unless `SEALGATE_FAILPOINTS` (comma-separated names) is set, and cost
//! one lookup in a short list when they are. Never set it in production.

use std::sync::OnceLock;

/// Kills the router thread after startup, the way a router panic would.
pub const ROUTER_PANIC: &str = "router_panic";
/// Panics the verifier thread on the first message it receives.
pub const VERIFIER_PANIC: &str = "verifier_panic";

/// Whether the fail point `name` is selected.
pub fn enabled(name: &str) -> bool {
    static SELECTED: OnceLock<Vec<String>> = OnceLock::new();
    SELECTED
        .get_or_init(|| {
            std::env::var("SEALGATE_FAILPOINTS")
                .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect())
                .unwrap_or_default()
        })
        .iter()
        .any(|s| s == name)
}
