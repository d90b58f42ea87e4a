//! Device ids and sealed topics (spec sections 1 and 2).

use super::Malformed;

/// The longest stream the spec allows, in bytes.
pub const MAX_STREAM_LEN: usize = 200;

/// Normalises a raw device id: trim ASCII white space, lower-case ASCII, then
/// check `[a-z0-9][a-z0-9._:-]{0,63}`. The normalised id is the one identity
/// used for keys, the MAC, the registry and clean topics, so `ESP32-A1` and
/// `esp32-a1` can never be two devices.
pub fn normalise_device_id(raw: &str) -> Result<String, Malformed> {
    let id = raw
        .trim_matches(|c: char| c.is_ascii_whitespace())
        .to_ascii_lowercase();
    let bytes = id.as_bytes();
    let first_ok = bytes
        .first()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let rest_ok = bytes[1.min(bytes.len())..]
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".:_-".contains(b));
    if first_ok && rest_ok && bytes.len() <= 64 {
        Ok(id)
    } else {
        Err(Malformed::DeviceId)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_case_and_space() {
        assert_eq!(normalise_device_id(" ESP32-A1\t").unwrap(), "esp32-a1");
        assert_eq!(normalise_device_id("a.b:c_d-e").unwrap(), "a.b:c_d-e");
    }

    #[test]
    fn rejects_bad_ids() {
        for bad in ["", "-a", ".a", "esp32 a1!", "a/b", "é", &"a".repeat(65)] {
            assert_eq!(
                normalise_device_id(bad),
                Err(Malformed::DeviceId),
                "{bad:?}"
            );
        }
        assert!(normalise_device_id(&"a".repeat(64)).is_ok());
    }

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
        let long = format!("sealed/a/{}", "s".repeat(201));
        assert_eq!(
            SealedTopic::parse("sealed", &long),
            Err(Malformed::StreamTooLong)
        );
    }
}
