//! Prepares a data directory whose outbox holds `COUNT` entries kept for an
//! offline persistent session, to measure how long the gateway takes to
//! start on it (`benches/outbox_startup.sh`).
//!
//! usage: cargo run --release --example fill_outbox -- DATA_DIR COUNT

use std::sync::Arc;

use bytes::Bytes;
use sealgate::outbox::{Entry, Origin, Outbox};

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(count)) = (args.next(), args.next()) else {
        eprintln!("usage: fill_outbox DATA_DIR COUNT");
        std::process::exit(2);
    };
    let count: u64 = count.parse().expect("COUNT is a number");
    let db = sealgate::database::Database::open_default(&std::path::Path::new(&dir).join("db"))
        .expect("open the database");
    let config = sealgate::config::Config::load(None, &[]).expect("default config");
    let (outbox, mut writer) = Outbox::open(&db, u64::MAX).expect("open the outbox");
    let metrics = Arc::new(sealgate::metrics::Metrics::new());
    let sessions =
        sealgate::sessions::Sessions::open(&db, outbox.clone(), config.sessions, metrics)
            .expect("open the sessions");
    // An offline session subscribed to everything clean, at the log's start.
    let id = "u.4.dash.startup-bench";
    let a = sessions.attach(id, "dash", true, 86_400).expect("attach");
    sessions
        .update(id, a.generation, |r| {
            r.filters = vec![("clean/#".into(), 1)]
        })
        .expect("subscribe");
    sessions.detach(id, a.generation, None);
    let now = sealgate::now_ms();
    let body = Bytes::from(vec![b'x'; 128]);
    let mut n = 0;
    while n < count {
        let batch = (count - n).min(10_000);
        let entries = (n..n + batch).map(|i| Entry {
            topic: format!("clean/sim-{:05}/t", i % 100),
            payload: body.clone(),
            qos: 1,
            retain: false,
            at_ms: now,
            origin: Some(Origin {
                device: format!("sim-{:05}", i % 100),
                kid: 1,
                nonce: i / 100 + 1,
            }),
            props: None,
        });
        writer.append(entries).expect("write");
        n += batch;
    }
    db.flush().expect("flush");
    println!("{count} entries, {} bytes", outbox.bytes());
}
