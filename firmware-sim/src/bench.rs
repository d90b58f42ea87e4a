//! `seal-bench`: seals per second of the Rust and the C sealer in-process,
//! through the same call the devices make, so the two can be compared
//! without a gateway or a network in the way.

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::{Duration, Instant};

use sealgate_envelope::DeviceKeys;
use serde::Serialize;

use crate::c_sealer::{self, CDevice};
use crate::fleet::SimDevice;
use crate::message::{self, SealImpl, SealStyle, Sealer};

pub struct BenchPlan {
    pub runs: u32,
    pub per_run: Duration,
    pub body_bytes: usize,
}

#[derive(Debug, Serialize)]
pub struct Cell {
    pub format: &'static str,
    pub encrypt: bool,
    /// Median seals per second over the runs.
    pub rust: f64,
    pub c: f64,
    /// `c / rust`: above 1, the C sealer is faster.
    pub c_over_rust: f64,
    pub rust_runs: Vec<f64>,
    pub c_runs: Vec<f64>,
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub mode: &'static str,
    pub body_bytes: usize,
    pub runs: u32,
    pub secs_per_run: f64,
    pub cells: Vec<Cell>,
}

const STREAM: &str = "telemetry";
/// Seals between two clock reads.
const BATCH: u64 = 64;

pub fn run(plan: &BenchPlan) -> Result<BenchReport, String> {
    c_sealer::available()?;
    let secret: [u8; 32] = rand::random();
    let id = "bench-0001";
    let device = |sealer| SimDevice {
        id: id.to_owned(),
        kid: 1,
        keys: DeviceKeys::from_secret(&secret),
        sealer,
        mqtt_password: String::new(),
    };
    let rust = device(Sealer::Rust);
    let c = device(Sealer::C(Box::new(CDevice::new(id, 1, &secret)?)));
    let body = message::plaintext(1, plan.body_bytes);

    let mut cells = Vec::new();
    for binary in [false, true] {
        for encrypt in [false, true] {
            let style = SealStyle { binary, encrypt };
            let (mut r_runs, mut c_runs) = (Vec::new(), Vec::new());
            // Alternating which goes first spreads any drift in the
            // machine's speed over both.
            for i in 0..plan.runs {
                let order = if i % 2 == 0 {
                    [SealImpl::Rust, SealImpl::C]
                } else {
                    [SealImpl::C, SealImpl::Rust]
                };
                for imp in order {
                    let (dev, out) = match imp {
                        SealImpl::Rust => (&rust, &mut r_runs),
                        SealImpl::C => (&c, &mut c_runs),
                    };
                    out.push(seals_per_sec(dev, &body, style, plan.per_run)?);
                }
            }
            let (r, cm) = (median(&r_runs), median(&c_runs));
            cells.push(Cell {
                format: if binary { "binary" } else { "json" },
                encrypt,
                rust: r,
                c: cm,
                c_over_rust: if r > 0.0 { cm / r } else { 0.0 },
                rust_runs: r_runs,
                c_runs,
            });
        }
    }
    Ok(BenchReport {
        mode: "seal-bench",
        body_bytes: plan.body_bytes,
        runs: plan.runs,
        secs_per_run: plan.per_run.as_secs_f64(),
        cells,
    })
}

fn seals_per_sec(
    dev: &SimDevice,
    body: &[u8],
    style: SealStyle,
    per_run: Duration,
) -> Result<f64, String> {
    let mut nonce = 1u64;
    let start = Instant::now();
    loop {
        for _ in 0..BATCH {
            let sealed = message::seal_as(dev, STREAM, nonce, black_box(body), style)?;
            black_box(sealed);
            nonce += 1;
        }
        let elapsed = start.elapsed();
        if elapsed >= per_run {
            return Ok((nonce - 1) as f64 / elapsed.as_secs_f64());
        }
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => 0.0,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

impl BenchReport {
    pub fn text(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "seals per second, {} B body, median of {} runs of {:.1} s each, alternating",
            self.body_bytes, self.runs, self.secs_per_run
        );
        let _ = writeln!(
            o,
            "  {:<7} {:<4} {:>12} {:>12} {:>7}",
            "format", "aes", "rust", "c", "c/rust"
        );
        for c in &self.cells {
            let _ = writeln!(
                o,
                "  {:<7} {:<4} {:>12.0} {:>12.0} {:>7.2}",
                c.format,
                if c.encrypt { "yes" } else { "no" },
                c.rust,
                c.c,
                c.c_over_rust
            );
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    }
}
