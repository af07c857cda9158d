//! TLS for KNUL links: rustls (TLS 1.3 only, ring crypto) configured for
//! quinn with ALPN `knul/1`, and the development certificate helper.

use super::budget::DATAGRAM_BUFFER_BYTES;
use crate::error::{KernelError, KernelResult};
use crate::proto::{DevCertificate, ErrorCode};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;
use std::time::Duration;

/// The ALPN protocol id of KNUL version 1.
pub const ALPN: &[u8] = b"knul/1";
/// QUIC closes a link that was silent this long (keep-alives prevent it).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Keep-alive period: QUIC PING frames while a link is otherwise idle.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// Connection receive window before a link reaches JS (the hello needs 45
/// bytes): a connection that is never accepted holds little memory.
const INITIAL_RECEIVE_WINDOW: u32 = 64 << 10;

/// Opens a started link's connection receive window to its size
/// (`budget::connection_window`, charged to the budgets with its ring).
pub fn open_windows(conn: &quinn::Connection, window: u32) {
    conn.set_receive_window(quinn::VarInt::from_u32(window));
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(pem: &str, field: &str) -> KernelResult<Vec<CertificateDer<'static>>> {
    let certificates = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| {
            KernelError::invalid_argument(format!("{field} is not valid PEM: {error}"))
                .with_detail("field", field)
        })?;
    if certificates.is_empty() {
        return Err(KernelError::invalid_argument(format!(
            "{field} contains no PEM certificate (-----BEGIN CERTIFICATE-----)"
        ))
        .with_detail("field", field));
    }
    Ok(certificates)
}

/// The transport parameters both sides use. `server` allows the one
/// bidirectional control stream the client opens; each side may open one
/// unidirectional stream (its reliable packets). `stream_window` is a
/// stream's receive window (`budget::link_window`): smaller than the
/// connection's (`budget::connection_window`), so a data stream the
/// application does not read can never block the control stream's `close`.
fn transport_config(server: bool, stream_window: u32) -> quinn::TransportConfig {
    let mut config = quinn::TransportConfig::default();
    config
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(IDLE_TIMEOUT).expect("30 s is a valid idle timeout"),
        ))
        .keep_alive_interval(Some(KEEP_ALIVE))
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(u32::from(server)))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(1))
        // QUIC flow control on these windows is the link's back-pressure.
        // The connection's is small until the link reaches JS
        // (`open_windows`): a connection never accepted holds little memory.
        .stream_receive_window(quinn::VarInt::from_u32(stream_window))
        .receive_window(quinn::VarInt::from_u32(INITIAL_RECEIVE_WINDOW))
        .send_window(16 << 20)
        .datagram_receive_buffer_size(Some(DATAGRAM_BUFFER_BYTES as usize))
        .datagram_send_buffer_size(1 << 20);
    config
}

/// Server configuration from a PEM certificate chain and private key.
pub fn server_config(
    cert_pem: &str,
    key_pem: &str,
    stream_window: u32,
) -> KernelResult<quinn::ServerConfig> {
    let chain = certificates(cert_pem, "cert")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|error| {
        KernelError::invalid_argument(format!("key is not a PEM private key: {error}"))
            .with_detail("field", "key")
    })?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|error| KernelError::new(ErrorCode::Internal, format!("TLS setup: {error}")))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|error| {
            KernelError::invalid_argument(format!("cert and key are not usable together: {error}"))
                .with_detail("field", "cert")
        })?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.max_early_data_size = 0;
    let crypto = QuicServerConfig::try_from(tls)
        .map_err(|error| KernelError::new(ErrorCode::Internal, format!("QUIC TLS: {error}")))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config(true, stream_window)));
    // Connection attempts quinn buffers while handshakes wait their turn.
    config.max_incoming(4096);
    Ok(config)
}

/// Client configuration trusting exactly `ca_pems`.
pub fn client_config(ca_pems: &[String], stream_window: u32) -> KernelResult<quinn::ClientConfig> {
    if ca_pems.is_empty() {
        return Err(KernelError::invalid_argument(
            "caCerts is empty: KNUL trusts only the certificates you name (for a dev certificate, pass its own cert)",
        )
        .with_detail("field", "caCerts"));
    }
    let mut roots = rustls::RootCertStore::empty();
    for pem in ca_pems {
        for certificate in certificates(pem, "caCerts")? {
            roots.add(certificate).map_err(|error| {
                KernelError::invalid_argument(format!("caCerts: unusable certificate: {error}"))
                    .with_detail("field", "caCerts")
            })?;
        }
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|error| KernelError::new(ErrorCode::Internal, format!("TLS setup: {error}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(tls)
        .map_err(|error| KernelError::new(ErrorCode::Internal, format!("QUIC TLS: {error}")))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config(false, stream_window)));
    Ok(config)
}

/// A self-signed certificate for development: an end-entity certificate
/// (`CA:FALSE`) carrying `names` as subject alternative names, which rustls
/// accepts when the same certificate is the client's trust anchor.
pub fn dev_certificate(names: &[String]) -> KernelResult<DevCertificate> {
    let names = if names.is_empty() {
        vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ]
    } else {
        names.to_vec()
    };
    let mut params = rcgen::CertificateParams::new(names).map_err(|error| {
        KernelError::invalid_argument(format!("names: {error}")).with_detail("field", "names")
    })?;
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "krepis development certificate");
    let key = rcgen::KeyPair::generate().map_err(|error| {
        KernelError::new(ErrorCode::Internal, format!("key generation: {error}"))
    })?;
    let certificate = params
        .self_signed(&key)
        .map_err(|error| KernelError::new(ErrorCode::Internal, format!("signing: {error}")))?;
    Ok(DevCertificate {
        cert_pem: certificate.pem(),
        key_pem: key.serialize_pem(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_certificate_is_accepted_by_both_configs() {
        let certificate = dev_certificate(&[]).unwrap();
        server_config(&certificate.cert_pem, &certificate.key_pem, 1 << 20).unwrap();
        client_config(&[certificate.cert_pem], 1 << 20).unwrap();
    }

    #[test]
    fn bad_pem_names_the_field() {
        let error = server_config("nope", "nope", 1 << 20).unwrap_err();
        assert_eq!(error.details["field"], "cert");
        let certificate = dev_certificate(&["example.test".to_owned()]).unwrap();
        let error = server_config(&certificate.cert_pem, "garbage", 1 << 20).unwrap_err();
        assert_eq!(error.details["field"], "key");
        assert_eq!(
            client_config(&[], 1 << 20).unwrap_err().details["field"],
            "caCerts"
        );
    }
}
