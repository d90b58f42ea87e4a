//! Topic aliases a client uses in its PUBLISHes (MQTT 5 section
//! 3.3.2.3.4), resolved as the packet is read, so the topic rules, the
//! verifier (whose MAC covers the topic) and the router only ever see full
//! topic names. Per connection, as MQTT says, and up to the Topic Alias
//! Maximum the CONNACK announced (`mqtt.topic_alias_maximum`).

use rumqttd::protocol::{Publish, PublishProperties};

/// Why a PUBLISH's alias cannot be used: DISCONNECT 0x94 (topic alias
/// invalid) in every case.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Invalid {
    /// 0, or above the maximum the CONNACK announced.
    OutOfRange,
    /// An empty topic name with an alias this connection never set.
    Unknown,
}

/// One connection's aliases: alias `n` is `topics[n - 1]`. At most
/// `mqtt.topic_alias_maximum` topics of at most `mqtt.max_packet_bytes`
/// each.
#[derive(Debug, Default)]
pub(super) struct Aliases {
    topics: Vec<Option<bytes::Bytes>>,
    maximum: u16,
}

impl Aliases {
    pub(super) fn new(maximum: u16) -> Aliases {
        Aliases {
            topics: Vec::new(),
            maximum,
        }
    }

    /// Gives `publish` its full topic name and takes the alias out of its
    /// properties, so nothing after this sees one. A PUBLISH with a topic
    /// name and an alias sets the alias; one with an empty name uses it.
    pub(super) fn resolve(
        &mut self,
        publish: &mut Publish,
        props: &mut Option<PublishProperties>,
    ) -> Result<(), Invalid> {
        let Some(alias) = props.as_mut().and_then(|p| p.topic_alias.take()) else {
            return Ok(());
        };
        if alias == 0 || alias > self.maximum {
            return Err(Invalid::OutOfRange);
        }
        let slot = usize::from(alias - 1);
        if publish.topic.is_empty() {
            let topic = self.topics.get(slot).cloned().flatten();
            publish.topic = topic.ok_or(Invalid::Unknown)?;
            return Ok(());
        }
        if self.topics.len() <= slot {
            self.topics.resize(slot + 1, None);
        }
        // `Bytes` shares the packet's buffer; a copy keeps the alias from
        // holding the whole packet (payload included) for the connection.
        // Many clients send the topic with its alias every time: copy only
        // what changed.
        if self.topics[slot].as_deref() != Some(&publish.topic[..]) {
            self.topics[slot] = Some(bytes::Bytes::copy_from_slice(&publish.topic));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(topic: &str, alias: Option<u16>) -> (Publish, Option<PublishProperties>) {
        let p = Publish::new(topic.as_bytes().to_vec(), b"x".to_vec(), false);
        let props = alias.map(|a| PublishProperties {
            topic_alias: Some(a),
            ..Default::default()
        });
        (p, props)
    }

    #[test]
    fn an_alias_is_set_by_a_named_publish_and_used_by_an_empty_one() {
        let mut a = Aliases::new(2);
        let (mut p, mut props) = publish("sealed/d1/t", Some(2));
        assert_eq!(a.resolve(&mut p, &mut props), Ok(()));
        assert_eq!(props.and_then(|p| p.topic_alias), None);
        let (mut p, mut props) = publish("", Some(2));
        assert_eq!(a.resolve(&mut p, &mut props), Ok(()));
        assert_eq!(&p.topic[..], b"sealed/d1/t");
        // Reset to another topic.
        let (mut p, mut props) = publish("sealed/d1/u", Some(2));
        assert_eq!(a.resolve(&mut p, &mut props), Ok(()));
        let (mut p, mut props) = publish("", Some(2));
        assert_eq!(a.resolve(&mut p, &mut props), Ok(()));
        assert_eq!(&p.topic[..], b"sealed/d1/u");
        // No alias: untouched, an empty name stays empty (invalid later).
        let (mut p, mut props) = publish("", None);
        assert_eq!(a.resolve(&mut p, &mut props), Ok(()));
        assert!(p.topic.is_empty());
    }

    #[test]
    fn out_of_range_and_unknown_aliases_are_invalid() {
        let mut a = Aliases::new(2);
        for alias in [0, 3, u16::MAX] {
            let (mut p, mut props) = publish("x/y", Some(alias));
            assert_eq!(a.resolve(&mut p, &mut props), Err(Invalid::OutOfRange));
        }
        let (mut p, mut props) = publish("", Some(1));
        assert_eq!(a.resolve(&mut p, &mut props), Err(Invalid::Unknown));
        let mut none = Aliases::new(0);
        let (mut p, mut props) = publish("x/y", Some(1));
        assert_eq!(none.resolve(&mut p, &mut props), Err(Invalid::OutOfRange));
    }
}
