//! The verify stage alone, per message: topic, parse, device and kid, MAC
//! (constant time), nonce window and decrypt of a 128-byte body, exactly as
//! the verifier calls it, next to a bare HMAC-SHA256 of the same 128 bytes
//! (issue 11's bar: at most 2x). `Checker::check` records nothing, so the
//! same sealed message stays fresh across iterations; the window it checks
//! against is the device's real one, loaded from sled once.
//!
//!     cargo bench --bench verify
//!
//! Results and ratios: docs/benchmarks.md, "Verify stage".

use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use hmac::{Hmac, Mac};
use sealgate::envelope::{seal, MasterKey, SealInput};
use sealgate::metrics::Metrics;
use sealgate::registry::Registry;
use sealgate::replay::ReplayStore;
use sealgate::verifier::check::{Checked, Checker};
use sha2::Sha256;

const DEVICE: &str = "bench-1";
const TOPIC: &str = "sealed/bench-1/telemetry";

fn verify(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = sealgate::database::Database::open_default(&dir.path().join("db")).expect("sled");
    let registry = Registry::open(&db).expect("registry");
    registry.add(DEVICE, None, 1).expect("device");
    let windows = sealgate::journal::Windows::open(&db).expect("windows");
    let mut store = ReplayStore::new(windows, 64);
    let master = MasterKey::from_bytes([7; 32]);
    let keys = master.device_keys(DEVICE, 1);
    let mut checker = Checker::new(
        master,
        registry,
        "sealed".into(),
        false,
        false,
        Arc::new(Metrics::new()),
    );
    let body = [0x5a_u8; 128];

    let mut group = c.benchmark_group("verify_128B");
    group.throughput(Throughput::Elements(1));
    group.bench_function("bare_hmac_sha256", |b| {
        b.iter(|| {
            let mut m = Hmac::<Sha256>::new_from_slice(&keys.mac).expect("any key length");
            m.update(black_box(&body));
            black_box(m.finalize().into_bytes())
        })
    });
    for (name, binary, aes) in [
        ("json", false, false),
        ("json_aes", false, true),
        ("binary", true, false),
        ("binary_aes", true, true),
    ] {
        let sealed = seal(
            &keys,
            &SealInput {
                device_id: DEVICE,
                stream: "telemetry",
                kid: 1,
                nonce: 1,
                iv: aes.then_some([3; 16]),
                plaintext: &body,
                binary,
            },
        )
        .expect("seals");
        let checked = checker.check(TOPIC, &sealed, &mut store, 0);
        assert!(
            matches!(checked, Ok(Checked::Accept { .. })),
            "{name}: the benchmark's message must be accepted"
        );
        group.bench_function(name, |b| {
            b.iter(|| black_box(checker.check(TOPIC, black_box(&sealed), &mut store, 0)))
        });
    }
    group.finish();
}

criterion_group!(benches, verify);
criterion_main!(benches);
