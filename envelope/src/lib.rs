//! The one implementation of SEALED-ENVELOPE-v1: identifiers, key derivation,
//! the MAC, both encodings, the connect token and the claim proofs.
//!
//! The gateway, firmware-sim and the tests all use this crate, so the wire
//! format is written down exactly once in Rust. Everything here is pure: no
//! I/O, no clocks (callers pass the time in), no global state.
//!
//! It is `no_std`, and a device needs no heap: [`seal_into`],
//! [`ConnectToken`], [`claim_mac`], [`claim_code`], [`DeviceId`] and
//! [`parse_binary`] work on caller buffers, so Rust firmware (esp-rs) can use
//! the crate as it is. The `alloc` feature adds owned conveniences; `json`
//! adds parsing the JSON encoding, which only the gateway needs.

#![no_std]
#![forbid(unsafe_code)]

#[cfg(feature = "alloc")]
extern crate alloc;

mod claim;
mod id;
mod keys;
/// The legacy EcoWatt-style envelope (gateway side, so it needs `json`).
#[cfg(feature = "json")]
pub mod legacy;
mod open;
mod seal;

pub use claim::{claim_code, claim_code_matches, claim_mac, ClaimCode, CLAIM_CODE_LEN};
#[cfg(feature = "alloc")]
pub use id::{normalise_device_id, SealedTopic};
pub use id::{DeviceId, MAX_DEVICE_ID_LEN, MAX_STREAM_LEN};
#[cfg(feature = "alloc")]
pub use keys::connect_token;
pub use keys::{verify_connect_token, ConnectToken, DeviceKeys, MasterKey, TokenError};
/// For differential tests of `parse`'s shortcut (unit tests, fuzz corpus).
#[cfg(feature = "json")]
#[doc(hidden)]
pub use open::parse_json_by_serde;
#[cfg(feature = "json")]
pub use open::{looks_sealed, parse};
#[cfg(feature = "alloc")]
pub use open::{open_body, open_body_keyed, DecKey, Parsed};
pub use open::{parse_binary, Envelope};
#[cfg(feature = "alloc")]
pub use seal::seal;
pub use seal::{seal_into, sealed_len, Enc, MacKey, SealError, SealInput, IV_LEN, MAC_LEN};

/// Why a payload could not even be read as an envelope. Every variant maps to
/// the spec's `malformed` verdict; the variant says which rule was broken so
/// logs can name it without echoing payload bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    DeviceId,
    StreamTooLong,
    Topic,
    NotEnvelope,
    Json,
    Version,
    Kid,
    Nonce,
    Enc,
    Iv,
    Payload,
    Mac,
    TooShort,
}

impl core::fmt::Display for Malformed {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Malformed::DeviceId => "device id does not match [a-z0-9][a-z0-9._:-]{0,63}",
            Malformed::StreamTooLong => "stream longer than 200 bytes",
            Malformed::Topic => "topic is not under the sealed prefix",
            Malformed::NotEnvelope => "payload is neither a JSON nor a binary envelope",
            Malformed::Json => "JSON envelope does not parse",
            Malformed::Version => "field v is missing or not 1",
            Malformed::Kid => "field kid is not an integer in 1..2^32-1",
            Malformed::Nonce => "field nonce is missing or not an integer in 1..2^64-1",
            Malformed::Enc => "field enc is not \"none\" or \"aes-128-cbc\"",
            Malformed::Iv => {
                "field iv is missing, present without encryption, or not 16 base64 bytes"
            }
            Malformed::Payload => "field payload is missing or not standard padded base64",
            Malformed::Mac => "field mac is missing or not 64 hex digits",
            Malformed::TooShort => "binary frame shorter than its fixed fields",
        })
    }
}

impl core::error::Error for Malformed {}
