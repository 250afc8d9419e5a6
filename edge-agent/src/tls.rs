//! TLS for the uplink: the agent's client certificate is self-signed with its device key
//! (the node admits the key, not a CA), and the node must present the key the agent
//! expects for that address (from the config, or from the mDNS peer id).

use std::sync::Arc;

use anyhow::Context as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::keys::ED25519_PKCS8_PREFIX;

/// DER prefix of an Ed25519 `SubjectPublicKeyInfo` (RFC 8410 §4).
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Starts the error of a node whose certificate carries another key than the one this
/// agent was told to trust for its address (`agent::failure` reads it to say so as a
/// security matter).
pub(crate) const WRONG_NODE_KEY: &str = "the node presented key";

fn cert_key(cert: &CertificateDer<'_>) -> Option<[u8; 32]> {
    let parsed = webpki::EndEntityCert::try_from(cert).ok()?;
    let spki = parsed.subject_public_key_info();
    let der: &[u8] = spki.as_ref();
    der.strip_prefix(&ED25519_SPKI_PREFIX[..])?.try_into().ok()
}

#[derive(Debug)]
struct NodeVerifier {
    expected: [u8; 32],
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for NodeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match cert_key(end_entity) {
            Some(k) if k == self.expected => Ok(ServerCertVerified::assertion()),
            Some(k) => Err(rustls::Error::General(format!(
                "{WRONG_NODE_KEY} {}, not the configured {}",
                hex::encode(k),
                hex::encode(self.expected)
            ))),
            None => Err(rustls::Error::General(
                "node certificate does not carry an Ed25519 key".into(),
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// The device's certificate chain and key, made once at start.
#[derive(Debug)]
pub(crate) struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl Identity {
    /// A self-signed certificate for the device key `seed`.
    pub(crate) fn new(seed: &[u8; 32]) -> anyhow::Result<Self> {
        let mut pkcs8 = ED25519_PKCS8_PREFIX.to_vec();
        pkcs8.extend_from_slice(seed);
        let key = PrivatePkcs8KeyDer::from(pkcs8);
        let pair = rcgen::KeyPair::try_from(&key).context("loading the device key for TLS")?;
        let cert = rcgen::CertificateParams::new(vec!["weft-agent".to_string()])
            .context("certificate parameters")?
            .self_signed(&pair)
            .context("self-signing the device certificate")?;
        Ok(Self {
            chain: vec![cert.der().clone()],
            key,
        })
    }

    /// A QUIC client configuration that presents the device key and accepts only a node
    /// holding `node_key`.
    pub(crate) fn client_config(&self, node_key: [u8; 32]) -> anyhow::Result<quinn::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = NodeVerifier {
            expected: node_key,
            algorithms: provider.signature_verification_algorithms,
        };
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .context("TLS 1.3 client")?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(
                self.chain.clone(),
                PrivateKeyDer::Pkcs8(self.key.clone_key()),
            )
            .context("client certificate")?;
        tls.alpn_protocols = vec![weft_fabric::edge::EDGE_ALPN.to_vec()];
        let crypto =
            quinn::crypto::rustls::QuicClientConfig::try_from(tls).context("QUIC client crypto")?;
        let mut transport = quinn::TransportConfig::default();
        transport
            // Keep-alives every second and a short idle timeout: a dead node is noticed
            // within ~3 s, and failover starts.
            .keep_alive_interval(Some(std::time::Duration::from_secs(1)))
            .max_idle_timeout(Some(quinn::VarInt::from_u32(3_000).into()))
            .max_concurrent_uni_streams(quinn::VarInt::from_u32(0))
            .max_concurrent_bidi_streams(quinn::VarInt::from_u32(0))
            // A small device: modest windows (one batch at a time per stream).
            .receive_window(quinn::VarInt::from_u32(2 << 20))
            .stream_receive_window(quinn::VarInt::from_u32(1 << 20))
            .send_window(8 << 20);
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        client.transport_config(Arc::new(transport));
        Ok(client)
    }
}
