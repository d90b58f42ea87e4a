//! Replays the committed fuzz corpus (fuzz/corpus/<target>/) through the
//! same target bodies libFuzzer runs (fuzz/harness.rs), on stable, so every
//! CI run re-checks each input the fuzzer kept, including past crashes.
//! How the corpus is made is in docs/fuzzing.md.

#[path = "../fuzz/harness.rs"]
mod harness;

use std::path::PathBuf;

/// Runs every file of one target's corpus; a missing or empty corpus fails,
/// so a renamed directory cannot silently turn the replay into a no-op.
fn replay(target: &str, body: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {} unreadable: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    for file in &files {
        let data = std::fs::read(file).expect("corpus file reads");
        let outcome = std::panic::catch_unwind(|| body(&data));
        assert!(outcome.is_ok(), "{target}: {} fails", file.display());
    }
}

#[test]
fn mqtt_frame_corpus() {
    replay("mqtt_frame", harness::mqtt_frame);
}

#[test]
fn envelope_json_corpus() {
    replay("envelope_json", harness::envelope_json);
}

#[test]
fn envelope_binary_corpus() {
    replay("envelope_binary", harness::envelope_binary);
}

#[test]
fn envelope_legacy_corpus() {
    replay("envelope_legacy", harness::envelope_legacy);
}

#[test]
fn connect_token_corpus() {
    replay("connect_token", harness::connect_token);
}

#[test]
fn topic_corpus() {
    replay("topic", harness::topic);
}
