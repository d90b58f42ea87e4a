//! The embedded rumqttd router and the local links into it.
//!
//! sealgate serves every socket itself (see [`crate::front_door`]) and uses
//! rumqttd only as the router: subscriptions, fan-out, retained messages and
//! sessions. rumqttd's router handle has a type the crate does not export,
//! so it is captured once in a closure and links are made through it.

use std::sync::Arc;

use rumqttd::local::{LinkBuilder, LinkError, LinkRx, LinkTx};
use rumqttd::Notification;

use crate::config::RouterConfig;

type MakeLink =
    dyn Fn(&str, bool) -> Result<(LinkTx, LinkRx, Notification), Box<LinkError>> + Send + Sync;

/// Handle to the running router; cheap to clone.
#[derive(Clone)]
pub struct Broker {
    make_link: Arc<MakeLink>,
}

/// Router client-id namespaces, so that no subscriber account can take over
/// a device's session by choosing its client id, nor the other way round.
pub const DEVICE_NS: &str = "d.";
pub const USER_NS: &str = "u.";

impl Broker {
    /// Spawns the router thread. rumqttd's router runs until the process ends.
    pub fn start(config: &RouterConfig) -> Broker {
        let router = rumqttd::Router::new(
            0,
            rumqttd::RouterConfig {
                max_connections: config.max_connections,
                max_outgoing_packet_count: 200,
                max_segment_size: config.max_segment_size,
                max_segment_count: config.max_segment_count,
                ..Default::default()
            },
        );
        let router_tx = router.spawn();
        Broker {
            make_link: Arc::new(move |client_id: &str, clean: bool| {
                LinkBuilder::new(client_id, router_tx.clone())
                    .clean_session(clean)
                    .build()
                    .map_err(Box::new)
            }),
        }
    }

    /// Registers a connection with the router. Blocks until the router
    /// answers: call it from a blocking context.
    pub fn link(
        &self,
        client_id: &str,
        clean_session: bool,
    ) -> Result<(LinkTx, LinkRx, Notification), Box<LinkError>> {
        (self.make_link)(client_id, clean_session)
    }
}
