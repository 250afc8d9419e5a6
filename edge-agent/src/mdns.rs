//! LAN discovery of nodes with libp2p mDNS (`[mdns] enabled = true`; cargo feature
//! `mdns`, on by default).
//!
//! Nodes with `mdns = true` announce themselves with a libp2p peer id that *is* their
//! Ed25519 node key (`node/src/discovery.rs`). The agent runs an mDNS querier only: its
//! swarm has no transport (libp2p's dummy transport), so it listens on nothing and
//! dials nothing. A discovered peer id is decoded back to the node key; if the key is
//! trusted (a configured node's, or in `mdns.trusted`), the announced IP with the
//! configured edge port (`mdns.port`) becomes a candidate. TLS then checks the key, so
//! mDNS cannot introduce an untrusted node.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use libp2p::core::transport::Transport as _;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, mdns};
use tracing::{debug, warn};

use crate::agent::Shared;

/// How often the agent asks the LAN for nodes.
const QUERY_INTERVAL: Duration = Duration::from_secs(10);

/// The node key behind a libp2p peer id, when it is an inlined Ed25519 key.
fn node_key(peer: &PeerId) -> Option<[u8; 32]> {
    let multihash: &libp2p::multihash::Multihash<64> = peer.as_ref();
    if multihash.code() != 0 {
        return None;
    }
    let public = libp2p::identity::PublicKey::try_decode_protobuf(multihash.digest()).ok()?;
    Some(public.try_into_ed25519().ok()?.to_bytes())
}

fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(a) => Some(IpAddr::V4(a)),
        Protocol::Ip6(a) => Some(IpAddr::V6(a)),
        _ => None,
    })
}

/// Starts discovery; trusted nodes found become candidates of `shared`.
pub(crate) fn start(shared: Arc<Shared>, port: u16, trusted: Vec<[u8; 32]>) -> anyhow::Result<()> {
    let keypair = libp2p::identity::Keypair::generate_ed25519();
    let me = keypair.public().to_peer_id();
    let transport = libp2p::core::transport::dummy::DummyTransport::<(
        PeerId,
        libp2p::core::muxing::StreamMuxerBox,
    )>::new()
    .boxed();
    let config = mdns::Config {
        query_interval: QUERY_INTERVAL,
        ..Default::default()
    };
    let behaviour =
        mdns::tokio::Behaviour::new(config, me).map_err(|e| anyhow::anyhow!("mDNS: {e}"))?;
    let mut swarm = libp2p::Swarm::new(
        transport,
        behaviour,
        me,
        libp2p::swarm::Config::with_tokio_executor(),
    );
    tokio::spawn(async move {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::Behaviour(mdns::Event::Discovered(found)) => {
                    for (peer, addr) in found {
                        let (Some(key), Some(ip)) = (node_key(&peer), ip_of(&addr)) else {
                            continue;
                        };
                        if !trusted.contains(&key) {
                            debug!(%peer, %addr, "mDNS found an untrusted node; ignored");
                            continue;
                        }
                        shared.discovered(SocketAddr::new(ip, port), key);
                    }
                }
                SwarmEvent::ListenerError { error, .. } => warn!(%error, "mDNS"),
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
    fn a_peer_id_decodes_to_the_node_key() {
        let seed = [5u8; 32];
        let signer = weft_fabric::Signer::from_secret(&seed);
        let mut secret = seed;
        let kp = libp2p::identity::Keypair::ed25519_from_bytes(&mut secret).unwrap();
        assert_eq!(node_key(&kp.public().to_peer_id()), Some(signer.origin().0));
        let addr: Multiaddr = "/ip4/10.77.0.2/tcp/7400".parse().unwrap();
        assert_eq!(ip_of(&addr), Some("10.77.0.2".parse().unwrap()));
    }
}
