//! Builds the C sealing library of `c/` into firmware-sim, for `--impl c`,
//! with the flags its own tests use. Without gcc or mbedTLS the simulator
//! still builds: `--impl c` then says what to install instead of running.
//! The outcome is kept until a C file or the CC/CFLAGS environment changes
//! (cargo reruns this only then), hence the `cargo clean` in the warning.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Set when the C library was compiled and links; `--impl c` needs it.
const CFG: &str = "has_c_sealer";
const INSTALL: &str = "apt-get install gcc libmbedtls-dev";
const SOURCES: [&str; 4] = ["device.c", "encode.c", "nonce.c", "seal.c"];

fn main() {
    println!("cargo::rustc-check-cfg=cfg({CFG})");
    let here = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let c = here.join("c");
    let layout = here.join("ffi/layout.c");
    for f in SOURCES.iter().map(|s| c.join("src").join(s)).chain([
        c.join("src/internal.h"),
        c.join("include/sealgate.h"),
        layout.clone(),
    ]) {
        println!("cargo:rerun-if-changed={}", f.display());
    }

    let mut build = cc::Build::new();
    build
        .std("c99")
        .warnings(true)
        .extra_warnings(true)
        .warnings_into_errors(true)
        .flag("-pedantic")
        .include(c.join("include"))
        .include(c.join("src"))
        .files(SOURCES.iter().map(|s| c.join("src").join(s)))
        // Pins sg_device's layout to the numbers src/c_sealer.rs asserts.
        .file(&layout);
    // cc shows the compiler's own diagnostics as warnings above ours.
    if let Err(e) = build.try_compile("sealgate_c") {
        let kind = e.to_string();
        let kind = kind.split(':').next().unwrap_or("error");
        unavailable(&format!("compiling c/src failed ({kind})"));
        return;
    }
    if let Err(e) = links_mbedcrypto(&build) {
        unavailable(&e);
        return;
    }
    println!("cargo:rustc-link-lib=mbedcrypto");
    println!("cargo:rustc-cfg={CFG}");
}

fn unavailable(why: &str) {
    // One line: cargo shows only the first line of a warning.
    let mut why = why.split_whitespace().collect::<Vec<_>>().join(" ");
    if why.len() > 400 {
        let cut = (0..=400)
            .rev()
            .find(|&i| why.is_char_boundary(i))
            .unwrap_or(0);
        why.truncate(cut);
        why.push_str(" ...");
    }
    println!(
        "cargo:warning=the C sealer (--impl c) is unavailable: {why}; \
         install gcc and the mbedTLS headers ({INSTALL}), then \
         `cargo clean -p firmware-sim` and rebuild"
    );
}

/// Whether a program calling mbedTLS links with `-lmbedcrypto`: headers
/// without the library would otherwise fail the link of the whole binary.
fn links_mbedcrypto(build: &cc::Build) -> Result<(), String> {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?);
    let src = out.join("probe_mbedcrypto.c");
    std::fs::write(
        &src,
        "#include <mbedtls/md.h>\n\
         int main(void) { return mbedtls_md_info_from_type(MBEDTLS_MD_SHA256) == 0; }\n",
    )
    .map_err(|e| format!("cannot write {}: {e}", src.display()))?;
    let exe = out.join("probe_mbedcrypto");
    let compiler = build
        .try_get_compiler()
        .map_err(|e| format!("no C compiler: {e}"))?;
    let mut cmd: Command = compiler.to_command();
    cmd.arg(&src).arg("-o").arg(&exe).arg("-lmbedcrypto");
    run(cmd, &src)
}

fn run(mut cmd: Command, src: &Path) -> Result<(), String> {
    match cmd.output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "linking {} with -lmbedcrypto failed: {}",
            src.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("cannot run the C compiler: {e}")),
    }
}
