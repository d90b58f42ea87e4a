//! The three ways in: plain TCP, TLS (rustls) and MQTT over WebSocket
//! (subprotocol `mqtt`, for browser dashboards). Each ends as one byte
//! stream, so every connection goes through the same front door and rules.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::compat::FuturesAsyncReadCompatExt;

/// A connection's byte stream, whatever the transport.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub type Stream = Pin<Box<dyn Io>>;

#[derive(Clone)]
pub enum Transport {
    Tcp,
    Tls(tokio_rustls::TlsAcceptor),
    WebSocket,
}

impl Transport {
    pub fn name(&self) -> &'static str {
        match self {
            Transport::Tcp => "mqtt",
            Transport::Tls(_) => "mqtts",
            Transport::WebSocket => "ws",
        }
    }

    /// Runs the transport's handshake on an accepted socket. `max_packet`
    /// bounds WebSocket messages and frames too: tungstenite buffers a whole
    /// message before we see a byte of it, and its defaults (64 MiB
    /// messages, 16 MiB frames) would let one client hold that much.
    pub async fn upgrade(&self, tcp: TcpStream, max_packet: usize) -> std::io::Result<Stream> {
        match self {
            Transport::Tcp => Ok(Box::pin(tcp)),
            Transport::Tls(acceptor) => Ok(Box::pin(acceptor.accept(tcp).await?)),
            Transport::WebSocket => {
                let ws = async_tungstenite::tokio::accept_hdr_async_with_config(
                    tcp,
                    MqttSubprotocol,
                    Some(ws_limits(max_packet)),
                )
                .await
                .map_err(std::io::Error::other)?;
                Ok(Box::pin(ws_stream_tungstenite::WsStream::new(ws).compat()))
            }
        }
    }
}

/// Room for MQTT's own fixed header around a packet of `max_packet` bytes
/// when a client puts one packet per WebSocket message, with some slack for
/// clients that pack a few small packets into one message.
const WS_SLACK: usize = 4096;

/// WebSocket limits for packets of at most `max_packet` bytes.
fn ws_limits(max_packet: usize) -> WebSocketConfig {
    WebSocketConfig {
        max_message_size: Some(max_packet + WS_SLACK),
        max_frame_size: Some(max_packet + WS_SLACK),
        ..WebSocketConfig::default()
    }
}

/// Answers the WebSocket handshake with subprotocol `mqtt`, which MQTT
/// clients ask for and browsers insist on.
struct MqttSubprotocol;

impl async_tungstenite::tungstenite::handshake::server::Callback for MqttSubprotocol {
    fn on_request(
        self,
        _request: &async_tungstenite::tungstenite::handshake::server::Request,
        mut response: async_tungstenite::tungstenite::handshake::server::Response,
    ) -> Result<
        async_tungstenite::tungstenite::handshake::server::Response,
        async_tungstenite::tungstenite::handshake::server::ErrorResponse,
    > {
        response.headers_mut().insert(
            "sec-websocket-protocol",
            async_tungstenite::tungstenite::http::HeaderValue::from_static("mqtt"),
        );
        Ok(response)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("certificate file {path}: {reason}")]
    Cert { path: String, reason: String },
    #[error("key file {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("certificate and key do not form a TLS configuration: {0}")]
    Config(String),
}

/// A TLS acceptor from PEM files: the certificate chain and its private key.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, TlsSetupError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| TlsSetupError::Cert {
            path: cert.display().to_string(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsSetupError::Cert {
            path: cert.display().to_string(),
            reason: "no certificate in the file".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsSetupError::Key {
        path: key.display().to_string(),
        reason: e.to_string(),
    })?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| TlsSetupError::Config(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| TlsSetupError::Config(e.to_string()))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
