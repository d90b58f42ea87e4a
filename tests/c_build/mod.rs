//! Building and running C programs against the sealing library in
//! firmware-sim/c with the host's gcc, shared by the tests that need it.
//! A missing toolchain fails the test with what to install; it never skips.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn c_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("firmware-sim/c")
}

/// Runs `cmd`; failing to start it at all names what to install.
pub fn run(cmd: &mut Command, install: &str) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}; {install}"))
}

#[derive(Clone, Copy, Debug)]
pub enum Build {
    Plain,
    /// AddressSanitizer (leaks included) and UndefinedBehaviorSanitizer;
    /// any report ends the program with a failure.
    Sanitized,
}

/// Builds the library's sources with `main` into `exe`, warnings as errors,
/// linking `libs` (e.g. `-lmbedcrypto`).
pub fn build(main: &Path, kind: Build, exe: &Path, libs: &[&str], install: &str) -> PathBuf {
    let c = c_dir();
    let mut cmd = Command::new("gcc");
    cmd.args(["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-g"]);
    match kind {
        Build::Plain => cmd.arg("-O2"),
        Build::Sanitized => cmd.args([
            "-O1",
            "-fsanitize=address,undefined",
            "-fno-sanitize-recover=all",
            "-fno-omit-frame-pointer",
        ]),
    };
    cmd.arg("-I")
        .arg(c.join("include"))
        .arg("-I")
        .arg(c.join("src"));
    for name in ["device.c", "encode.c", "nonce.c", "seal.c"] {
        cmd.arg(c.join("src").join(name));
    }
    cmd.arg(main).arg("-o").arg(exe).args(libs);
    let out = run(&mut cmd, install);
    assert!(
        out.status.success(),
        "gcc failed building {}; {install}\n{}",
        main.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    exe.to_path_buf()
}

/// A command for a program built by [`build`], with the sanitizers set to
/// stop at the first report.
pub fn program(exe: &Path) -> Command {
    let mut cmd = Command::new(exe);
    cmd.env(
        "ASAN_OPTIONS",
        "halt_on_error=1:detect_leaks=1:abort_on_error=1",
    )
    .env("UBSAN_OPTIONS", "halt_on_error=1:print_stacktrace=1");
    cmd
}

/// Whether a program's stderr carries a sanitizer report.
pub fn sanitizer_report(stderr: &str) -> bool {
    stderr.contains("Sanitizer") || stderr.contains("runtime error")
}
