//! Why a connection ended in error. An error is a lost connection: the
//! session's clean-up (will, router DISCONNECT) runs all the same.

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol: {0:?}")]
    Protocol(Box<rumqttd::protocol::Error>),
    #[error("router link: {0}")]
    Link(Box<rumqttd::local::LinkError>),
    #[error("second CONNECT on one connection")]
    DuplicateConnect,
    #[error("the socket took nothing for the write timeout")]
    Stalled,
    /// rumqttd's codec panicked on a packet (caught: the session still ends
    /// cleanly, with its will and the router's DISCONNECT).
    #[error("the codec could not {0} a packet")]
    Codec(&'static str),
}

impl From<rumqttd::local::LinkError> for ConnError {
    fn from(e: rumqttd::local::LinkError) -> Self {
        ConnError::Link(Box::new(e))
    }
}

impl From<rumqttd::protocol::Error> for ConnError {
    fn from(e: rumqttd::protocol::Error) -> Self {
        ConnError::Protocol(Box::new(e))
    }
}
