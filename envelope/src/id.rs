//! Device ids and sealed topics (spec sections 1 and 2).

use super::Malformed;

/// The longest stream the spec allows, in bytes.
pub const MAX_STREAM_LEN: usize = 200;
/// The longest normalised device id, in bytes.
pub const MAX_DEVICE_ID_LEN: usize = 64;

/// A normalised device id held without a heap: ASCII white space trimmed,
/// lower-cased, and matching `[a-z0-9][a-z0-9._:-]{0,63}`. The normalised id
/// is the one identity used for keys, the MAC, the registry and clean topics,
/// so `ESP32-A1` and `esp32-a1` can never be two devices.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DeviceId {
    buf: [u8; MAX_DEVICE_ID_LEN],
    len: u8,
}

impl DeviceId {
    pub fn new(raw: &str) -> Result<DeviceId, Malformed> {
        let trimmed = raw.trim_matches(|c: char| c.is_ascii_whitespace());
        let bytes = trimmed.as_bytes();
        if bytes.is_empty() || bytes.len() > MAX_DEVICE_ID_LEN {
            return Err(Malformed::DeviceId);
        }
        let mut buf = [0u8; MAX_DEVICE_ID_LEN];
        for (i, b) in bytes.iter().enumerate() {
            let b = b.to_ascii_lowercase();
            let ok = b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || (i > 0 && matches!(b, b'.' | b':' | b'_' | b'-'));
            if !ok {
                return Err(Malformed::DeviceId);
            }
            buf[i] = b;
        }
        Ok(DeviceId {
            buf,
            len: bytes.len() as u8,
        })
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII bytes are ever stored.
        core::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or("")
    }

    /// Whether `id` is already in normal form, as the MAC and keys need it.
    pub(crate) fn is_normal(id: &str) -> bool {
        DeviceId::new(id).is_ok_and(|n| n.as_str() == id)
    }
}

impl core::fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl core::fmt::Display for DeviceId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(feature = "alloc")]
pub use owned::*;

#[cfg(feature = "alloc")]
mod owned {
    use alloc::borrow::ToOwned;
    use alloc::format;
    use alloc::string::String;

    use super::{DeviceId, Malformed, MAX_STREAM_LEN};

    /// [`DeviceId::new`] as a `String`.
    pub fn normalise_device_id(raw: &str) -> Result<String, Malformed> {
        DeviceId::new(raw).map(|id| id.as_str().to_owned())
    }

    /// A topic under the sealed prefix, split into its normalised device id and
    /// its stream (case kept, possibly empty).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct SealedTopic {
        pub device_id: String,
        pub stream: String,
    }

    impl SealedTopic {
        /// Splits `{prefix}/{device}[/{stream}]`. `prefix` has no trailing slash.
        pub fn parse(prefix: &str, topic: &str) -> Result<SealedTopic, Malformed> {
            let rest = topic
                .strip_prefix(prefix)
                .and_then(|r| r.strip_prefix('/'))
                .ok_or(Malformed::Topic)?;
            let (raw_id, stream) = rest.split_once('/').unwrap_or((rest, ""));
            let device_id = normalise_device_id(raw_id)?;
            if stream.len() > MAX_STREAM_LEN {
                return Err(Malformed::StreamTooLong);
            }
            Ok(SealedTopic {
                device_id,
                stream: stream.to_owned(),
            })
        }

        /// The same device and stream under another prefix: `clean/{id}[/{stream}]`.
        pub fn under(&self, prefix: &str) -> String {
            if self.stream.is_empty() {
                format!("{prefix}/{}", self.device_id)
            } else {
                format!("{prefix}/{}/{}", self.device_id, self.stream)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_case_and_space() {
        assert_eq!(DeviceId::new(" ESP32-A1\t").unwrap().as_str(), "esp32-a1");
        assert_eq!(DeviceId::new("a.b:c_d-e").unwrap().as_str(), "a.b:c_d-e");
        assert!(DeviceId::is_normal("esp32-a1"));
        assert!(!DeviceId::is_normal("ESP32-A1"));
    }

    #[test]
    fn rejects_bad_ids() {
        let long = [b'a'; 65];
        let long = core::str::from_utf8(&long).unwrap();
        for bad in ["", " ", "-a", ".a", "esp32 a1!", "a/b", "é", long] {
            assert_eq!(DeviceId::new(bad), Err(Malformed::DeviceId), "{bad:?}");
        }
        assert!(DeviceId::new(&long[..64]).is_ok());
    }

    #[cfg(feature = "alloc")]
    #[test]
    fn splits_topics() {
        let t = SealedTopic::parse("sealed", "sealed/ESP32-A1/power/Inverter/1").unwrap();
        assert_eq!(t.device_id, "esp32-a1");
        assert_eq!(t.stream, "power/Inverter/1");
        assert_eq!(t.under("clean"), "clean/esp32-a1/power/Inverter/1");
        let t = SealedTopic::parse("sealed", "sealed/esp32-a1").unwrap();
        assert_eq!(t.under("clean"), "clean/esp32-a1");
        assert_eq!(
            SealedTopic::parse("sealed", "clean/x"),
            Err(Malformed::Topic)
        );
        assert_eq!(
            SealedTopic::parse("sealed", "sealedx/y"),
            Err(Malformed::Topic)
        );
        let long = alloc::format!("sealed/a/{}", "s".repeat(201));
        assert_eq!(
            SealedTopic::parse("sealed", &long),
            Err(Malformed::StreamTooLong)
        );
    }
}
