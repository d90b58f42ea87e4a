//! Does opening a legacy envelope take measurably different time for a bad
//! padding than for a bad MAC? (It must not: that difference would be a
//! padding oracle.) Times `legacy::open` on four classes of input of the
//! same length, interleaved, and prints the median and the 10th/90th
//! percentile of each class's batches.
//!
//! `cargo run --release --example legacy_timing [-- ROUNDS]`

use std::hint::black_box;
use std::time::Instant;

use sealgate::envelope::legacy::{self, LegacyEnvelope, LegacyKeys};

const BATCH: usize = 2_000;

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let keys = LegacyKeys {
        psk_hmac: vec![0x7d; 32],
        psk_aes: [0x3c; 16],
        iv: [1; 16],
    };
    // 95 bytes of plaintext: six blocks of ciphertext, a typical reading.
    let plain = [b'x'; 95];
    let good = legacy::parse(&legacy::seal(&keys, 7, &plain, true)).expect("parses");
    let n = good.body.len();
    let mut bad_mac = good.clone();
    bad_mac.mac[0] ^= 1;
    // A change to the second-to-last ciphertext block flips the same bits of
    // the last plaintext block: here the padding byte, so the padding breaks.
    let mut bad_pad = good.clone();
    bad_pad.body[n - 17] ^= 0x20;
    // The padding is one byte, 0x01; make the last two plaintext bytes
    // 0x02 0x02: a valid padding of another length, so a wrong MAC.
    let mut other_pad = good.clone();
    other_pad.body[n - 17] ^= 0x01 ^ 0x02;
    other_pad.body[n - 18] ^= b'x' ^ 0x02;
    let classes: [(&str, &LegacyEnvelope); 4] = [
        ("accepted", &good),
        ("bad MAC", &bad_mac),
        ("bad padding", &bad_pad),
        ("valid padding, bad MAC", &other_pad),
    ];
    assert!(legacy::open(&good, &keys).is_some());
    for (name, e) in &classes[1..] {
        assert!(legacy::open(e, &keys).is_none(), "{name} opened");
    }
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); classes.len()];
    for _ in 0..rounds {
        for (i, (_, e)) in classes.iter().enumerate() {
            let t = Instant::now();
            for _ in 0..BATCH {
                black_box(legacy::open(black_box(e), &keys));
            }
            samples[i].push(t.elapsed().as_nanos() as f64 / BATCH as f64);
        }
    }
    let reference = median(&mut samples[1].clone());
    println!(
        "{:<24} {:>9} {:>9} {:>9} {:>8}",
        "class", "p10 ns", "median", "p90 ns", "vs bad MAC"
    );
    for (i, (name, _)) in classes.iter().enumerate() {
        let s = &mut samples[i];
        s.sort_by(f64::total_cmp);
        let pick = |q: f64| s[((s.len() - 1) as f64 * q) as usize];
        println!(
            "{name:<24} {:>9.0} {:>9.0} {:>9.0} {:>8.3}",
            pick(0.1),
            pick(0.5),
            pick(0.9),
            pick(0.5) / reference
        );
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
