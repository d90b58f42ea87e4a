//! An MQTT 5 client (rumqttc's v5) whose event loop hands the test every
//! publish whole (properties, QoS, packet id), so a test can check what a
//! delivery carried and, with manual acks, when it acknowledges it.

use rumqttc::v5::mqttbytes::v5::{ConnAckProperties, Packet, Publish, SubscribeProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::mpsc;

/// What the event loop saw.
#[derive(Debug)]
pub enum Got {
    ConnAck(Option<ConnAckProperties>),
    Publish(Publish),
    SubAck(Vec<rumqttc::v5::mqttbytes::v5::SubscribeReasonCode>),
    PubAck,
    PubComp,
    Disconnect(rumqttc::v5::mqttbytes::v5::DisconnectReasonCode),
    Closed(String),
}

pub struct Peer {
    pub client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Got>,
}

impl Peer {
    /// Connects and returns once the CONNACK is seen.
    pub async fn connect(o: MqttOptions) -> (Peer, Option<ConnAckProperties>) {
        let (client, mut el) = AsyncClient::new(o, 1000);
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let seen = match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(a))) => Got::ConnAck(a.properties),
                    Ok(Event::Incoming(Packet::Publish(p))) => Got::Publish(p),
                    Ok(Event::Incoming(Packet::SubAck(s))) => Got::SubAck(s.return_codes),
                    Ok(Event::Incoming(Packet::PubAck(_))) => Got::PubAck,
                    Ok(Event::Incoming(Packet::PubComp(_))) => Got::PubComp,
                    Ok(Event::Incoming(Packet::Disconnect(d))) => Got::Disconnect(d.reason_code),
                    Ok(_) => continue,
                    Err(e) => {
                        let _ = tx.send(Got::Closed(e.to_string()));
                        return;
                    }
                };
                if tx.send(seen).is_err() {
                    return;
                }
            }
        });
        let mut c = Peer { client, rx };
        match c.next().await {
            Got::ConnAck(props) => (c, props),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    pub async fn next(&mut self) -> Got {
        super::next_event(&mut self.rx, Got::Closed).await
    }

    /// Subscribes to one filter, with a subscription identifier if `id`,
    /// and returns once the SUBACK granting it is seen.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS, id: Option<usize>) {
        match id {
            Some(id) => {
                let props = SubscribeProperties {
                    id: Some(id),
                    user_properties: Vec::new(),
                };
                self.client
                    .subscribe_with_properties(filter, qos, props)
                    .await
                    .unwrap();
            }
            None => self.client.subscribe(filter, qos).await.unwrap(),
        }
        match self.next().await {
            Got::SubAck(codes) => assert!(
                codes.iter().all(|c| matches!(
                    c,
                    rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(_)
                )),
                "{filter}: {codes:?}"
            ),
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// The next publish, skipping acknowledgements of our own publishes.
    pub async fn next_publish(&mut self) -> Publish {
        loop {
            match self.next().await {
                Got::Publish(p) => return p,
                Got::PubAck | Got::PubComp => continue,
                other => panic!("expected a publish, got {other:?}"),
            }
        }
    }

    /// Publishes and, for QoS 1 and 2, waits for the PUBACK or PUBCOMP
    /// (an account's is sent once the message is in the outbox and handed
    /// to the router).
    pub async fn publish(&mut self, topic: &str, qos: QoS, payload: &str) {
        self.client
            .publish(topic, qos, false, payload.to_owned())
            .await
            .unwrap();
        if qos == QoS::AtMostOnce {
            return;
        }
        loop {
            match self.next().await {
                Got::PubAck | Got::PubComp => return,
                Got::Publish(_) => continue,
                other => panic!("expected an acknowledgement, got {other:?}"),
            }
        }
    }

    pub async fn disconnect(mut self) {
        self.client.disconnect().await.unwrap();
        while !matches!(self.next().await, Got::Closed(_)) {}
    }
}

/// The payload of a publish, as text.
pub fn text(p: &Publish) -> String {
    String::from_utf8_lossy(&p.payload).into_owned()
}
