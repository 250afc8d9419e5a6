//! LAN discovery with libp2p's mDNS (config `mdns = true`): nodes on one network segment
//! find each other without seeds.
//!
//! libp2p is used only to discover, never for the data path. Each node runs a minimal
//! libp2p swarm whose identity is the node's own Ed25519 key (so the libp2p peer id *is*
//! the node key) and which listens on TCP at the mesh port, only so that mDNS has an
//! address to announce (nothing is served there but the libp2p handshake). A discovered
//! peer id is decoded back to the node key; the QUIC mesh address is the announced IP with
//! the same port number. Trusted keys are then dialed like seeds, and the TLS handshake
//! still checks the key, so mDNS cannot introduce an untrusted node.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::Context as _;
use futures_util::StreamExt as _;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, mdns, noise, tcp, yamux};
use tracing::{debug, info, warn};

use crate::transport::Transport;

/// The node key behind a libp2p peer id, when it is an inlined Ed25519 key.
pub(crate) fn node_key(peer: &PeerId) -> Option<[u8; 32]> {
    let multihash: &libp2p::multihash::Multihash<64> = peer.as_ref();
    if multihash.code() != 0 {
        return None; // not the identity hash: the key is not inlined
    }
    let public = libp2p::identity::PublicKey::try_decode_protobuf(multihash.digest()).ok()?;
    Some(public.try_into_ed25519().ok()?.to_bytes())
}

/// The mesh address an mDNS announcement stands for: its IP with the TCP port.
pub(crate) fn mesh_addr(addr: &Multiaddr) -> Option<SocketAddr> {
    let mut ip: Option<IpAddr> = None;
    let mut port = None;
    for p in addr.iter() {
        match p {
            Protocol::Ip4(a) => ip = Some(a.into()),
            Protocol::Ip6(a) => ip = Some(a.into()),
            Protocol::Tcp(p) => port = Some(p),
            _ => {}
        }
    }
    Some(SocketAddr::new(ip?, port?))
}

/// Starts discovery on the mesh address's IP and port; discovered trusted nodes are dialed
/// through `transport`.
pub(crate) fn start(
    seed: &[u8; 32],
    mesh: SocketAddr,
    trusted: BTreeSet<[u8; 32]>,
    transport: Arc<Transport>,
) -> anyhow::Result<()> {
    let mut secret = *seed;
    let keypair = libp2p::identity::Keypair::ed25519_from_bytes(&mut secret)
        .context("node key for libp2p")?;
    let me = keypair.public().to_peer_id();
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .context("libp2p transport")?
        .with_behaviour(|_| {
            mdns::tokio::Behaviour::new(mdns::Config::default(), me)
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
        })
        .map_err(|e| anyhow::anyhow!("mDNS: {e}"))?
        .build();
    let ip = match mesh.ip() {
        IpAddr::V4(a) => Protocol::Ip4(a),
        IpAddr::V6(a) => Protocol::Ip6(a),
    };
    let listen = Multiaddr::empty().with(ip).with(Protocol::Tcp(mesh.port()));
    swarm
        .listen_on(listen.clone())
        .with_context(|| format!("mDNS announcement listener on {listen}"))?;
    tokio::spawn(async move {
        let mut dialed: BTreeSet<[u8; 32]> = BTreeSet::new();
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::Behaviour(mdns::Event::Discovered(found)) => {
                    for (peer, addr) in found {
                        let (Some(key), Some(addr)) = (node_key(&peer), mesh_addr(&addr)) else {
                            continue;
                        };
                        if !trusted.contains(&key) {
                            debug!(%peer, %addr, "mDNS found an untrusted node; ignored");
                            continue;
                        }
                        if dialed.insert(key) {
                            info!(peer = %hex::encode(key), %addr, "found by mDNS; dialing");
                            transport.dial_seeds(vec![addr]);
                        }
                    }
                }
                SwarmEvent::Behaviour(mdns::Event::Expired(gone)) => {
                    for (peer, _) in gone {
                        if let Some(key) = node_key(&peer) {
                            // Let a later announcement dial it again.
                            dialed.remove(&key);
                        }
                    }
                }
                SwarmEvent::ListenerError { error, .. } => {
                    warn!(%error, "mDNS listener failed");
                }
                _ => {}
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_id_decodes_back_to_the_node_key_and_addresses_map_to_the_mesh_port() {
        let seed = [5u8; 32];
        let signer = weft_fabric::Signer::from_secret(&seed);
        let mut secret = seed;
        let kp = libp2p::identity::Keypair::ed25519_from_bytes(&mut secret).unwrap();
        let peer = kp.public().to_peer_id();
        assert_eq!(node_key(&peer), Some(signer.origin().0));
        let addr: Multiaddr = "/ip4/10.77.0.2/tcp/7400".parse().unwrap();
        assert_eq!(mesh_addr(&addr), Some("10.77.0.2:7400".parse().unwrap()));
        let no_port: Multiaddr = "/ip4/10.77.0.2".parse().unwrap();
        assert_eq!(mesh_addr(&no_port), None);
    }
}
