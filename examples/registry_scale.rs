//! How the registry's cost grows with the number of registered devices:
//! time to open, resident memory, and the cost of a lookup, for a fleet of
//! which only some devices are active (docs/benchmarks.md, "Registry").
//!
//!     cargo run --release --example registry_scale -- DIR DEVICES [ACTIVE]
//!
//! Creates DEVICES devices in DIR the first time (10,000 per transaction),
//! then, in a fresh process, opens the registry as the gateway does, looks up
//! ACTIVE devices (default 10,000) once each, then again in a loop, and
//! prints one JSON line.

use std::time::Instant;

use sealgate::registry::Registry;

fn rss_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().ok_or("DIR")?);
    let devices: u64 = args.next().ok_or("DEVICES")?.parse()?;
    let active: u64 = args.next().map_or(Ok(10_000), |a| a.parse())?;
    let db_path = dir.join("db");
    if !db_path.exists() {
        let db = sealgate::database::Database::open_default(&db_path)?;
        let registry = Registry::open(&db)?;
        let mut next = 0;
        while next < devices {
            let n = (devices - next).min(10_000);
            let ids: Vec<String> = (next..next + n).map(|i| format!("dev-{i:08}")).collect();
            registry.add_many(&ids, 1)?;
            next += n;
        }
        db.flush()?;
        drop(registry);
        drop(db);
        // Measure in a fresh process, as a restarted gateway would be.
        let status = std::process::Command::new(std::env::current_exe()?)
            .args(std::env::args().skip(1))
            .status()?;
        std::process::exit(status.code().unwrap_or(1));
    }
    let started = Instant::now();
    let db = sealgate::database::Database::open_default(&db_path)?;
    let registry = Registry::open(&db)?;
    let open_ms = started.elapsed().as_secs_f64() * 1e3;
    let rss_open = rss_kb("VmRSS:");
    // Active devices spread over the whole id range.
    let step = (devices / active.max(1)).max(1);
    let ids: Vec<String> = (0..active.min(devices))
        .map(|i| format!("dev-{:08}", i * step))
        .collect();
    let started = Instant::now();
    let mut found = 0u64;
    for id in &ids {
        found += registry.with(id, |d| d.is_some()) as u64;
    }
    let first_ns = started.elapsed().as_nanos() as f64 / ids.len() as f64;
    let rounds = 20;
    let started = Instant::now();
    for _ in 0..rounds {
        for id in &ids {
            found += registry.with(id, |d| d.map_or(0, |d| d.kid)) as u64;
        }
    }
    let hot_ns = started.elapsed().as_nanos() as f64 / (ids.len() * rounds) as f64;
    println!(
        "{{\"devices\":{devices},\"active\":{},\"open_ms\":{open_ms:.0},\"rss_after_open_kb\":{rss_open},\"rss_kb\":{},\"hwm_kb\":{},\"first_lookup_ns\":{first_ns:.0},\"lookup_ns\":{hot_ns:.0},\"found\":{found}}}",
        ids.len(),
        rss_kb("VmRSS:"),
        rss_kb("VmHWM:"),
    );
    Ok(())
}
