//! The one implementation of SEALED-ENVELOPE-v1: identifiers, key derivation,
//! the MAC, both encodings and the connect token.
//!
//! The gateway, firmware-sim and the tests all use this module, so the wire
//! format is written down exactly once. Everything here is pure: no I/O, no
//! clocks (callers pass the time in), no global state.

mod codec;
mod id;
mod keys;

pub use codec::{looks_sealed, open_body, parse, seal, Enc, Parsed, SealInput, MAC_LEN};
pub use id::{normalise_device_id, SealedTopic, MAX_STREAM_LEN};
pub use keys::{connect_token, verify_connect_token, DeviceKeys, MasterKey, TokenError};

/// Why a payload could not even be read as an envelope. Every variant maps to
/// the spec's `malformed` verdict; the variant says which rule was broken so
/// logs can name it without echoing payload bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("device id does not match [a-z0-9][a-z0-9._:-]{{0,63}}")]
    DeviceId,
    #[error("stream longer than 200 bytes")]
    StreamTooLong,
    #[error("topic is not under the sealed prefix")]
    Topic,
    #[error("payload is neither a JSON nor a binary envelope")]
    NotEnvelope,
    #[error("JSON envelope does not parse")]
    Json,
    #[error("field v is missing or not 1")]
    Version,
    #[error("field kid is not an integer in 1..2^32-1")]
    Kid,
    #[error("field nonce is missing or not an integer in 1..2^64-1")]
    Nonce,
    #[error("field enc is not \"none\" or \"aes-128-cbc\"")]
    Enc,
    #[error("field iv is missing, present without encryption, or not 16 base64 bytes")]
    Iv,
    #[error("field payload is missing or not standard padded base64")]
    Payload,
    #[error("field mac is missing or not 64 hex digits")]
    Mac,
    #[error("binary frame shorter than its fixed fields")]
    TooShort,
}
