//! Node identity on the wire: TLS 1.3 for QUIC with certificates bound to the node's
//! Ed25519 key, and peers verified by that key.
//!
//! Each node makes a self-signed certificate from its own Ed25519 key at start (rcgen). No
//! certificate authority is involved: what authenticates a peer is the public key in its
//! certificate, which must be in the trusted set (the config's `trusted_nodes` for now;
//! policy bundles take over in issue 6), and TLS's handshake signature, which proves the
//! peer holds the matching secret key. The same check runs on both sides (mutual TLS), so
//! every mesh connection knows the verified node key of the other end.

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::Context as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// ALPN protocol id of the mesh protocol (version 1).
pub(crate) const MESH_ALPN: &[u8] = b"weft-mesh/1";

/// DER prefix of an Ed25519 `SubjectPublicKeyInfo` (RFC 8410 §4): the 32 key bytes follow.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
/// DER prefix of an Ed25519 PKCS#8 v1 private key (RFC 8410 §7): the 32 seed bytes follow.
pub(crate) const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// The Ed25519 public key in a certificate, if its key is Ed25519.
pub(crate) fn cert_key(cert: &CertificateDer<'_>) -> Option<[u8; 32]> {
    let parsed = webpki::EndEntityCert::try_from(cert).ok()?;
    let spki = parsed.subject_public_key_info();
    let der: &[u8] = spki.as_ref();
    let key = der.strip_prefix(&ED25519_SPKI_PREFIX[..])?;
    key.try_into().ok()
}

/// Which node keys may connect; shared by the client and server verifiers.
#[derive(Debug)]
pub(crate) struct TrustedKeys {
    keys: BTreeSet<[u8; 32]>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl TrustedKeys {
    fn check(&self, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let key = cert_key(cert).ok_or_else(|| {
            rustls::Error::General("peer certificate does not carry an Ed25519 key".into())
        })?;
        if self.keys.contains(&key) {
            Ok(())
        } else {
            Err(rustls::Error::General(format!(
                "peer key {} is not in trusted_nodes",
                hex::encode(key)
            )))
        }
    }
}

#[derive(Debug)]
struct ServerVerifier(Arc<TrustedKeys>);

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0.check(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

#[derive(Debug)]
struct ClientVerifier(Arc<TrustedKeys>);

impl ClientCertVerifier for ClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0.check(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// QUIC client and server configurations for a node with Ed25519 secret `seed`, trusting
/// `trusted` node keys.
pub(crate) fn quic_configs(
    seed: &[u8; 32],
    trusted: impl IntoIterator<Item = [u8; 32]>,
) -> anyhow::Result<(quinn::ClientConfig, quinn::ServerConfig)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut pkcs8 = ED25519_PKCS8_PREFIX.to_vec();
    pkcs8.extend_from_slice(seed);
    let key_der = PrivatePkcs8KeyDer::from(pkcs8.clone());
    let key_pair = rcgen::KeyPair::try_from(&key_der).context("loading the node key for TLS")?;
    let params = rcgen::CertificateParams::new(vec!["weft-node".to_string()])
        .context("certificate parameters")?;
    let cert = params
        .self_signed(&key_pair)
        .context("self-signing the node certificate")?;
    let chain = vec![cert.der().clone()];
    let trusted = Arc::new(TrustedKeys {
        keys: trusted.into_iter().collect(),
        algorithms: provider.signature_verification_algorithms,
    });

    let mut client = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 client")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ServerVerifier(trusted.clone())))
        .with_client_auth_cert(chain.clone(), PrivateKeyDer::Pkcs8(key_der.clone_key()))
        .context("client certificate")?;
    client.alpn_protocols = vec![MESH_ALPN.to_vec()];

    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 server")?
        .with_client_cert_verifier(Arc::new(ClientVerifier(trusted)))
        .with_single_cert(chain, PrivateKeyDer::Pkcs8(key_der))
        .context("server certificate")?;
    server.alpn_protocols = vec![MESH_ALPN.to_vec()];

    let client =
        quinn::crypto::rustls::QuicClientConfig::try_from(client).context("QUIC client crypto")?;
    let server =
        quinn::crypto::rustls::QuicServerConfig::try_from(server).context("QUIC server crypto")?;
    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(std::time::Duration::from_secs(5)))
        .max_idle_timeout(Some(quinn::VarInt::from_u32(30_000).into()))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(256))
        // Unread data per connection (what waits behind STREAM_READS_MAX).
        .receive_window(quinn::VarInt::from_u32(64 << 20))
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(256))
        .datagram_receive_buffer_size(Some(4 << 20));
    let transport = Arc::new(transport);
    let mut client = quinn::ClientConfig::new(Arc::new(client));
    client.transport_config(transport.clone());
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server));
    server.transport_config(transport);
    Ok((client, server))
}

/// The verified node key of the other end of an established connection.
pub(crate) fn peer_key(conn: &quinn::Connection) -> Option<[u8; 32]> {
    let identity = conn.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    certs.first().and_then(cert_key)
}
