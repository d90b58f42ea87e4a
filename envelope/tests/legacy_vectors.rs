//! The legacy envelope against `legacy-vectors.json` (made independently):
//! what can be decided without a replay window. The window verdicts
//! (`duplicate`, `stale_nonce`) are checked end to end in the gateway's tests.

#![cfg(feature = "json")]

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use sealgate_envelope::legacy::{self, LegacyKeys};
use serde_json::Value;

fn hex16(v: &Value) -> [u8; 16] {
    let mut out = [0u8; 16];
    hex::decode_to_slice(v.as_str().unwrap(), &mut out).unwrap();
    out
}

#[test]
fn every_legacy_vector_opens_to_its_verdict() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/vectors/legacy-vectors.json"
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let keys = LegacyKeys {
        psk_hmac: hex::decode(v["psk_hmac_hex"].as_str().unwrap()).unwrap(),
        psk_aes: hex16(&v["psk_aes_hex"]),
        iv: hex16(&v["iv_hex"]),
    };
    let messages = v["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 10);
    for m in messages {
        let payload = B64.decode(m["payload_b64"].as_str().unwrap()).unwrap();
        let parsed = legacy::parse(&payload);
        match m["verdict"].as_str().unwrap() {
            "malformed" => assert!(parsed.is_err(), "{}", m["name"]),
            "bad_mac" => assert_eq!(legacy::open(&parsed.unwrap(), &keys), None),
            // Accepted, or refused only by the window: the message itself opens.
            _ => {
                let plain = legacy::open(&parsed.unwrap(), &keys).expect("opens");
                if let Some(want) = m["clean_body_b64"].as_str() {
                    assert_eq!(plain, B64.decode(want).unwrap(), "{}", m["name"]);
                }
            }
        }
    }
}
