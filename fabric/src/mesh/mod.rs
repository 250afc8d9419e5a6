//! The mesh core: one deterministic state machine per node ([`Node`]) with SWIM membership,
//! PlumTree dissemination, anti-entropy and a [`Store`] it persists through.

pub mod member;
pub mod message;
pub mod node;
pub mod ranges;
pub mod route;
mod seen;
pub mod store;
mod timers;
pub mod wire;

pub use member::{MemberInfo, SwimCodec, SwimCodecError, SwimId};
pub use message::{Channel, Digest, DigestRanges, EventRef, Message, Settled};
pub use node::{
    AllowAll, AppEvent, BATCH_BYTES_MAX, FilterHop, LOST_WAIT_US, MeshConfig, Micros, Node,
    OWN_FLOOR_PER_MS, OWN_NUMBERS_ASKED_WAIT_US, OWN_NUMBERS_WAIT_US, ReplicationFilter,
    StampedResidency, Stats, Transmit, batches_of, own_numbers_floor, own_numbers_worth_waiting,
};
pub use ranges::SeqRanges;
pub use route::{LinkRecord, NodeStatus, RegionRoute, RelayHop};
pub use store::{Inserted, MemStore, Store, StoreError, answer_len, within_bytes};
