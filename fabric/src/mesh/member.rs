//! Member records: who a node is, as SWIM (foca) carries it around the mesh.

use serde::{Deserialize, Serialize};
use smol_str::SmolStr;

use crate::envelope::OriginKey;

/// A node's identity and placement, gossiped by SWIM. `generation` grows each time the node
/// rejoins after a crash, so the fresh record replaces the stale one everywhere.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MemberInfo {
    /// The node's Ed25519 public key: its stable identity.
    pub key: [u8; 32],
    /// Cloud region id, e.g. `aws:eu-west-1`.
    pub region: SmolStr,
    /// Cloud provider, e.g. `aws`.
    pub cloud: SmolStr,
    /// Jurisdiction code the node claims (policy checks it in issue 6).
    pub jurisdiction: SmolStr,
    /// Where peers reach it (a socket address for the node, a label in the simulator).
    pub addr: SmolStr,
    /// The policy epoch the node enforces.
    pub policy_epoch: u64,
    /// Incremented on every rejoin.
    pub generation: u32,
}

impl MemberInfo {
    /// The node key as an [`OriginKey`].
    pub fn node_key(&self) -> OriginKey {
        OriginKey(self.key)
    }
}

impl foca::Identity for MemberInfo {
    type Addr = [u8; 32];

    fn renew(&self) -> Option<Self> {
        let mut next = self.clone();
        next.generation = self.generation.checked_add(1)?;
        Some(next)
    }

    fn addr(&self) -> [u8; 32] {
        self.key
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}

#[cfg(test)]
impl MemberInfo {
    /// A member record for tests: key `[key; 32]` in `region`.
    pub(crate) fn for_test(key: u8, region: &str) -> Self {
        MemberInfo {
            key: [key; 32],
            region: region.into(),
            cloud: "c".into(),
            jurisdiction: "EU".into(),
            addr: format!("n{key}").into(),
            policy_epoch: 0,
            generation: 0,
        }
    }
}
