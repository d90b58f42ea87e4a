//! The crate builds for firmware: `no_std`, no `alloc`, linked into a static
//! library that defines its own panic handler (see `nostd-check/Cargo.toml`).
//! No cross target can be installed here, so this host build is the proof.

use std::path::Path;
use std::process::Command;

#[test]
fn builds_without_std_or_alloc() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("nostd-check");
    let out = Command::new(env!("CARGO"))
        .args(["build", "--locked", "--manifest-path"])
        .arg(here.join("nostd-check/Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "the no_std build failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(target
        .join("debug/libsealgate_envelope_nostd_check.a")
        .exists());
}
