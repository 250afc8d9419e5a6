//! Member records: who a node is, as SWIM (foca) carries it around the mesh.

use std::borrow::Cow;
use std::sync::Arc;

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

/// A node's live members by key. Each record is the interned one SWIM holds ([`SwimId`]),
/// shared rather than copied: a node of a 1000-node mesh holds a thousand.
pub(crate) type MemberMap = std::collections::BTreeMap<OriginKey, Arc<MemberInfo>>;

/// SWIM's identity of a member: its [`MemberInfo`], held by reference.
///
/// foca keeps a copy of every member's identity, puts one in every update it sends and
/// decodes one from every update it receives, and compares each received one with the
/// copy it holds. While a 1000-node mesh forms, every node receives each of the 1000 joins
/// about a dozen times (SWIM's dissemination), nearly all of them changing nothing. Held
/// by value, each such update decoded four strings and compared a 144-byte record read
/// from a cold copy. Decoded records are instead interned ([`intern`]): an update naming a
/// record already held on this thread decodes to a handle on the same allocation, which
/// compares by pointer (handles made on different threads compare field by field). The
/// wire encoding is exactly [`MemberInfo`]'s.
#[derive(Clone)]
pub struct SwimId(Arc<MemberInfo>);

impl SwimId {
    /// The handle on `info` (interned: equal records made on one thread share one
    /// allocation).
    pub fn new(info: MemberInfo) -> Self {
        match intern::with(|table| table.get_or_insert(info)) {
            Ok(id) => id,
            Err(_) => unreachable!("a MemberInfo's strings are UTF-8"),
        }
    }

    /// The member record.
    pub fn info(&self) -> &MemberInfo {
        &self.0
    }

    /// The member record, shared (the core's member map holds this handle, not a copy).
    pub fn shared(&self) -> Arc<MemberInfo> {
        Arc::clone(&self.0)
    }
}

impl std::ops::Deref for SwimId {
    type Target = MemberInfo;

    fn deref(&self) -> &MemberInfo {
        &self.0
    }
}

impl From<MemberInfo> for SwimId {
    fn from(info: MemberInfo) -> Self {
        SwimId::new(info)
    }
}

impl PartialEq for SwimId {
    fn eq(&self, other: &Self) -> bool {
        // Interned: equal records are nearly always one allocation.
        Arc::ptr_eq(&self.0, &other.0) || *self.0 == *other.0
    }
}

impl Eq for SwimId {}

impl std::hash::Hash for SwimId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl std::fmt::Debug for SwimId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for SwimId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

/// [`MemberInfo`]'s fields in its order, the strings borrowed from the input where the
/// format allows and taken as bytes: a record already interned is found without building
/// its strings or checking that they are UTF-8 (bytes equal to a held record's are), and
/// only a new record's are checked. (While a 1000-node mesh forms, each node decodes
/// every member's record a dozen times: the checks were 9 % of the simulator's
/// instructions.)
#[derive(Deserialize)]
#[serde(rename = "MemberInfo")]
struct WireMember<'a> {
    key: [u8; 32],
    #[serde(borrow)]
    region: WireStr<'a>,
    #[serde(borrow)]
    cloud: WireStr<'a>,
    #[serde(borrow)]
    jurisdiction: WireStr<'a>,
    #[serde(borrow)]
    addr: WireStr<'a>,
    policy_epoch: u64,
    generation: u32,
}

/// A string of a [`WireMember`], as bytes not yet checked to be UTF-8. Asked of the
/// format as bytes (postcard, SWIM's codec, encodes a string and bytes alike); a format
/// that hands a string instead is taken as well.
struct WireStr<'a>(Cow<'a, [u8]>);

impl WireStr<'_> {
    fn is(&self, held: &str) -> bool {
        *self.0 == *held.as_bytes()
    }

    fn to_smol(&self) -> Result<SmolStr, std::str::Utf8Error> {
        std::str::from_utf8(&self.0).map(SmolStr::new)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for WireStr<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = WireStr<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_bytes<E>(self, v: &'de [u8]) -> Result<Self::Value, E> {
                Ok(WireStr(Cow::Borrowed(v)))
            }

            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(WireStr(Cow::Borrowed(v.as_bytes())))
            }

            fn visit_bytes<E>(self, v: &[u8]) -> Result<Self::Value, E> {
                Ok(WireStr(Cow::Owned(v.to_vec())))
            }

            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(WireStr(Cow::Owned(v.as_bytes().to_vec())))
            }

            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Self::Value, E> {
                Ok(WireStr(Cow::Owned(v)))
            }

            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(WireStr(Cow::Owned(v.into_bytes())))
            }
        }
        deserializer.deserialize_bytes(Visitor)
    }
}

impl intern::Candidate for WireMember<'_> {
    fn key(&self) -> ([u8; 32], u32) {
        (self.key, self.generation)
    }

    fn matches(&self, m: &MemberInfo) -> bool {
        m.policy_epoch == self.policy_epoch
            && self.region.is(&m.region)
            && self.cloud.is(&m.cloud)
            && self.jurisdiction.is(&m.jurisdiction)
            && self.addr.is(&m.addr)
    }

    fn into_info(self) -> Result<MemberInfo, std::str::Utf8Error> {
        Ok(MemberInfo {
            key: self.key,
            region: self.region.to_smol()?,
            cloud: self.cloud.to_smol()?,
            jurisdiction: self.jurisdiction.to_smol()?,
            addr: self.addr.to_smol()?,
            policy_epoch: self.policy_epoch,
            generation: self.generation,
        })
    }
}

impl intern::Candidate for MemberInfo {
    fn key(&self) -> ([u8; 32], u32) {
        (self.key, self.generation)
    }

    fn matches(&self, m: &MemberInfo) -> bool {
        self == m
    }

    fn into_info(self) -> Result<MemberInfo, std::str::Utf8Error> {
        Ok(self)
    }
}

impl<'de> Deserialize<'de> for SwimId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = WireMember::deserialize(deserializer)?;
        intern::with(|table| table.get_or_insert(wire)).map_err(|e| {
            serde::de::Error::custom(format_args!("a member record's string is not UTF-8: {e}"))
        })
    }
}

impl foca::Identity for SwimId {
    type Addr = [u8; 32];

    fn renew(&self) -> Option<Self> {
        let mut next = (*self.0).clone();
        next.generation = self.generation.checked_add(1)?;
        Some(SwimId::new(next))
    }

    fn addr(&self) -> [u8; 32] {
        self.key
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}

/// foca's codec for the mesh's SWIM messages: postcard, SWIM's wire format since the
/// start, with member updates (most of a SWIM message's bytes) encoded and decoded by hand
/// in exactly postcard's bytes. Through serde, postcard reads a member's 32-byte key one
/// byte at a time (a sequence element each) and every string through a visitor: decoding
/// updates was a sixth of the simulator's instructions while a 1000-node mesh forms (each
/// node decodes every member's record a dozen times). Headers, one per message, go
/// through postcard.
#[derive(Debug, Default, Clone, Copy)]
pub struct SwimCodec;

/// Why a SWIM message could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum SwimCodecError {
    /// The header, through postcard.
    #[error("SWIM header: {0}")]
    Header(#[from] postcard::Error),
    /// The buffer ends inside a member update.
    #[error("a member update is cut short")]
    CutShort,
    /// A varint longer than its type allows, or with bits past it.
    #[error("a member update holds a malformed varint")]
    BadVarint,
    /// A member state other than alive (0), suspect (1) or down (2).
    #[error("a member update names state {0}; the states are 0 to 2")]
    BadState(u32),
    /// A member record's string is not UTF-8.
    #[error("a member record's string is not UTF-8: {0}")]
    NotUtf8(#[from] std::str::Utf8Error),
    /// The update does not fit the room left in the message.
    #[error("a member update of {0} bytes does not fit the message")]
    Full(usize),
}

impl foca::Codec<SwimId> for SwimCodec {
    type Error = SwimCodecError;

    fn encode_header(
        &mut self,
        header: &foca::Header<SwimId>,
        buf: impl bytes::BufMut,
    ) -> Result<(), Self::Error> {
        Ok(foca::PostcardCodec.encode_header(header, buf)?)
    }

    fn decode_header(&mut self, buf: impl bytes::Buf) -> Result<foca::Header<SwimId>, Self::Error> {
        Ok(foca::PostcardCodec.decode_header(buf)?)
    }

    fn encode_member(
        &mut self,
        member: &foca::Member<SwimId>,
        mut buf: impl bytes::BufMut,
    ) -> Result<(), Self::Error> {
        // Whole or nothing: foca's contract is a clean buffer when the update does not fit.
        // Built on the stack and put in one piece (through foca's `Limit`, each `put_*`
        // is a generic slice copy).
        let m = member.id().info();
        let mut out = Out::default();
        out.put(&m.key);
        for s in [&m.region, &m.cloud, &m.jurisdiction, &m.addr] {
            out.varint(s.len() as u64);
            out.put(s.as_bytes());
        }
        out.varint(m.policy_epoch);
        out.varint(u64::from(m.generation));
        out.varint(u64::from(member.incarnation()));
        out.varint(match member.state() {
            foca::State::Alive => 0,
            foca::State::Suspect => 1,
            foca::State::Down => 2,
        });
        let bytes = out.bytes();
        if buf.remaining_mut() < bytes.len() {
            return Err(SwimCodecError::Full(bytes.len()));
        }
        buf.put_slice(bytes);
        Ok(())
    }

    fn decode_member(
        &mut self,
        mut buf: impl bytes::Buf,
    ) -> Result<foca::Member<SwimId>, Self::Error> {
        let input = buf.chunk();
        let mut r = Reader(input);
        let key: [u8; 32] = r.take(32)?.try_into().expect("took 32 bytes");
        let mut string = || -> Result<WireStr<'_>, SwimCodecError> {
            // postcard reads a length as a `usize` varint (5 bytes at most on 32-bit targets).
            let len = r.varint::<{ usize::BITS }>()?;
            let len = usize::try_from(len).map_err(|_| SwimCodecError::CutShort)?;
            Ok(WireStr(Cow::Borrowed(r.take(len)?)))
        };
        let (region, cloud, jurisdiction, addr) = (string()?, string()?, string()?, string()?);
        let policy_epoch = r.varint::<{ u64::BITS }>()?;
        let generation = r.varint::<{ u32::BITS }>()? as u32;
        let incarnation = r.varint::<{ u16::BITS }>()? as u16;
        let state = match r.varint::<{ u32::BITS }>()? as u32 {
            0 => foca::State::Alive,
            1 => foca::State::Suspect,
            2 => foca::State::Down,
            other => return Err(SwimCodecError::BadState(other)),
        };
        let used = input.len() - r.0.len();
        let wire = WireMember {
            key,
            region,
            cloud,
            jurisdiction,
            addr,
            policy_epoch,
            generation,
        };
        let id = intern::with(|table| table.get_or_insert(wire))?;
        buf.advance(used);
        Ok(foca::Member::new(id, incarnation, state))
    }
}

/// A member update being encoded: on the stack up to [`Out::STACK`] bytes (nearly every
/// update: four short strings), on the heap past that.
struct Out {
    stack: [u8; Out::STACK],
    len: usize,
    heap: Vec<u8>,
}

impl Default for Out {
    fn default() -> Self {
        Self {
            stack: [0; Out::STACK],
            len: 0,
            heap: Vec::new(),
        }
    }
}

impl Out {
    const STACK: usize = 256;

    fn put(&mut self, bytes: &[u8]) {
        if self.heap.is_empty() && self.len + bytes.len() <= Self::STACK {
            self.stack[self.len..self.len + bytes.len()].copy_from_slice(bytes);
            self.len += bytes.len();
        } else {
            if self.heap.is_empty() {
                self.heap.extend_from_slice(&self.stack[..self.len]);
            }
            self.heap.extend_from_slice(bytes);
        }
    }

    /// `v` as a postcard varint (7 bits a byte, low first).
    fn varint(&mut self, mut v: u64) {
        let mut bytes = [0u8; 10];
        let mut n = 0;
        while v >= 0x80 {
            bytes[n] = (v as u8) | 0x80;
            v >>= 7;
            n += 1;
        }
        bytes[n] = v as u8;
        self.put(&bytes[..=n]);
    }

    fn bytes(&self) -> &[u8] {
        if self.heap.is_empty() {
            &self.stack[..self.len]
        } else {
            &self.heap
        }
    }
}

/// Reads postcard's encoding from a byte slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SwimCodecError> {
        if self.0.len() < n {
            return Err(SwimCodecError::CutShort);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    /// A varint of an integer of `BITS` bits, refused as postcard refuses it: longer than
    /// the type's bytes, or with bits set past the type in its last possible byte.
    #[inline(always)]
    fn varint<const BITS: u32>(&mut self) -> Result<u64, SwimCodecError> {
        // Most are one byte: epochs, generations, incarnations, states, string lengths.
        if let Some(&first) = self.0.first()
            && first < 0x80
        {
            self.0 = &self.0[1..];
            return Ok(u64::from(first));
        }
        let max_len = BITS.div_ceil(7);
        let last_max = (1u16 << (BITS % 7)) - 1;
        let mut out = 0u64;
        for i in 0..max_len {
            let Some((&byte, rest)) = self.0.split_first() else {
                return Err(SwimCodecError::CutShort);
            };
            self.0 = rest;
            out |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                if i == max_len - 1 && u16::from(byte) > last_max {
                    return Err(SwimCodecError::BadVarint);
                }
                return Ok(out);
            }
        }
        Err(SwimCodecError::BadVarint)
    }
}

/// The interning table of [`SwimId`]: one per thread, so that equal records decoded by any
/// node on that thread share one allocation (the simulator runs all its nodes on one; the
/// node's core may move between the runtime's threads, and a record interned on two of
/// them is two allocations, equal by their fields). A thread's table holds at most 4,096
/// records or twice what was held at its last sweep, whichever is more (a sweep runs on an
/// insert that passes that). The table's hasher is `FxHash`, as the core's other
/// maps: its keys come from members, whose messages the transport authenticates.
///
/// Hand-written rather than an interning crate: the lookup is by a record's key and
/// generation with the other fields compared against the borrowed wire form (so a hit
/// builds nothing), and entries no handle holds any more are swept, which the general
/// interners (`internment`, `arc-interner`) do not offer together.
mod intern {
    use super::*;
    use std::cell::RefCell;

    /// The records of one (key, generation): several when the node changed its policy
    /// epoch or address under one generation.
    type Records = smallvec::SmallVec<[Arc<MemberInfo>; 1]>;

    /// Records by (key, generation).
    #[derive(Default)]
    pub(super) struct Table {
        by_key: rustc_hash::FxHashMap<([u8; 32], u32), Records>,
        len: usize,
        /// Entries after the last sweep: the next comes when the table has doubled.
        swept_len: usize,
    }

    /// The smallest table that is swept (below it, sweeping costs more than it frees).
    const SWEEP_FLOOR: usize = 4096;

    /// Records kept per (key, generation). A member changes its policy epoch or address a
    /// few times in a generation; a peer gossiping endless variants of one key would make
    /// every lookup of that key scan them all. Beyond this a new variant is not interned:
    /// its handle compares field by field, as handles made on different threads do.
    pub(super) const RECORDS_PER_KEY_MAX: usize = 8;

    /// A record to intern: its (key, generation), whether a held record is it, and the
    /// record itself (built only when none is).
    pub(super) trait Candidate {
        fn key(&self) -> ([u8; 32], u32);
        fn matches(&self, held: &MemberInfo) -> bool;
        /// The record itself: fails when the candidate is not a valid record.
        fn into_info(self) -> Result<MemberInfo, std::str::Utf8Error>;
    }

    impl Table {
        pub(super) fn get_or_insert(
            &mut self,
            record: impl Candidate,
        ) -> Result<SwimId, std::str::Utf8Error> {
            let key = record.key();
            if let Some(found) = self
                .by_key
                .get(&key)
                .and_then(|held| held.iter().find(|h| record.matches(h)))
            {
                return Ok(SwimId(Arc::clone(found)));
            }
            // Built (and checked) before it takes an entry: a record that fails leaves none.
            let made = Arc::new(record.into_info()?);
            let held = self.by_key.entry(key).or_default();
            if held.len() >= RECORDS_PER_KEY_MAX {
                return Ok(SwimId(made));
            }
            held.push(Arc::clone(&made));
            self.len += 1;
            if self.len > SWEEP_FLOOR.max(2 * self.swept_len) {
                self.sweep();
            }
            Ok(SwimId(made))
        }

        /// Records in the table, held or not.
        #[cfg(test)]
        pub(super) fn len(&self) -> usize {
            self.len
        }

        /// Drops the records no handle holds.
        fn sweep(&mut self) {
            self.by_key.retain(|_, held| {
                held.retain(|h| Arc::strong_count(h) > 1);
                !held.is_empty()
            });
            self.len = self.by_key.values().map(|h| h.len()).sum();
            self.swept_len = self.len;
        }
    }

    thread_local! {
        static TABLE: RefCell<Table> = RefCell::new(Table::default());
    }

    pub(super) fn with<R>(f: impl FnOnce(&mut Table) -> R) -> R {
        TABLE.with(|t| f(&mut t.borrow_mut()))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn len() -> usize {
        intern::with(|t| t.len())
    }

    /// A handle encodes exactly as its record (the wire is unchanged), decodes to an equal
    /// record, and decodes of one record share one allocation.
    #[test]
    fn a_handle_is_its_record_on_the_wire_and_equal_records_share_one() {
        let info = MemberInfo::for_test(7, "aws:eu-west-1");
        let id = SwimId::new(info.clone());
        let bytes = postcard::to_allocvec(&id).unwrap();
        assert_eq!(bytes, postcard::to_allocvec(&info).unwrap());
        let a: SwimId = postcard::from_bytes(&bytes).unwrap();
        let b: SwimId = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(*a.info(), info);
        assert!(Arc::ptr_eq(&a.0, &b.0) && Arc::ptr_eq(&a.0, &id.0));
        // Every field tells records apart: each changed one decodes to another record.
        let changes: [fn(&mut MemberInfo); 7] = [
            |m| m.key[31] ^= 1,
            |m| m.region = "aws:us-east-1".into(),
            |m| m.cloud = "d".into(),
            |m| m.jurisdiction = "US".into(),
            |m| m.addr = "elsewhere:1".into(),
            |m| m.policy_epoch += 1,
            |m| m.generation += 1,
        ];
        for change in changes {
            let mut other = info.clone();
            change(&mut other);
            let decoded: SwimId =
                postcard::from_bytes(&postcard::to_allocvec(&other).unwrap()).unwrap();
            assert_eq!(*decoded.info(), other);
            assert_ne!(decoded, a);
            assert!(!Arc::ptr_eq(&decoded.0, &a.0));
        }
        // A format that cannot lend its strings (escapes in JSON) decodes the same record.
        let mut escaped = info.clone();
        escaped.addr = "n\"7\"".into();
        let json = serde_json::to_string(&escaped).unwrap();
        let from_json: SwimId = serde_json::from_str(&json).unwrap();
        assert_eq!(*from_json.info(), escaped);
        // A renewed identity is the next generation of the same record.
        let next = foca::Identity::renew(&a).unwrap();
        assert_eq!(next.generation, 1);
        assert_eq!(foca::Identity::addr(&next), info.key);
        assert!(foca::Identity::win_addr_conflict(&next, &a));
    }

    /// Variants of one (key, generation) past `RECORDS_PER_KEY_MAX` (a peer gossiping
    /// endless epochs or addresses for one key) are not interned: each lookup of the key
    /// scans a bounded list, and such a record still decodes to itself.
    #[test]
    fn variants_of_one_key_past_the_cap_are_not_interned() {
        let before = len();
        let variants: Vec<MemberInfo> = (0..3 * intern::RECORDS_PER_KEY_MAX as u64)
            .map(|epoch| {
                let mut m = MemberInfo::for_test(99, "r");
                m.policy_epoch = epoch;
                m
            })
            .collect();
        let held: Vec<SwimId> = variants.iter().cloned().map(SwimId::new).collect();
        assert_eq!(len() - before, intern::RECORDS_PER_KEY_MAX);
        for (i, (info, id)) in variants.iter().zip(&held).enumerate() {
            let bytes = postcard::to_allocvec(info).unwrap();
            let again: SwimId = postcard::from_bytes(&bytes).unwrap();
            assert_eq!(again, *id);
            assert_eq!(*again.info(), *info);
            // Shared while under the cap, a fresh copy past it.
            assert_eq!(
                Arc::ptr_eq(&again.0, &id.0),
                i < intern::RECORDS_PER_KEY_MAX,
                "variant {i}"
            );
        }
        assert_eq!(len() - before, intern::RECORDS_PER_KEY_MAX);
    }

    /// Holds `n` records while 80,000 others pass through the table; returns the most the
    /// table held, having checked that a decode still finds each held one.
    fn churn_holding(n: u32) -> usize {
        let held: Vec<SwimId> = (0..n)
            .map(|g| {
                let mut m = MemberInfo::for_test(1, "r");
                m.generation = 1_000_000 + g;
                SwimId::new(m)
            })
            .collect();
        let mut most = 0;
        for g in 0..20 * 4096u32 {
            let mut m = MemberInfo::for_test(2, "r");
            m.generation = g;
            drop(SwimId::new(m));
            most = most.max(len());
        }
        // The held ones survived every sweep: a decode still finds them.
        for id in &held {
            let bytes = postcard::to_allocvec(id).unwrap();
            let again: SwimId = postcard::from_bytes(&bytes).unwrap();
            assert!(Arc::ptr_eq(&again.0, &id.0));
        }
        most
    }

    /// Records no handle holds any more are swept: the table holds at most its floor (4,096)
    /// or twice what is held (and the record being made), however many pass through it.
    #[test]
    fn records_no_handle_holds_are_swept() {
        let most = churn_holding(100);
        assert!(most <= 4096 + 1, "the table grew to {most} holding 100");
    }

    #[test]
    fn a_table_holding_many_records_stays_within_twice_what_it_holds() {
        let most = churn_holding(3000);
        assert!(
            most <= 2 * 3001 + 1,
            "the table grew to {most} holding 3000"
        );
    }

    /// Two records of one key and generation (another policy epoch) are both held, and
    /// each decodes to its own.
    /// A record whose string is not UTF-8 fails to decode, saying so, and leaves nothing
    /// in the table; the same record with the string intact decodes (strings are checked
    /// only when a record is new: bytes equal to a held record's are valid).
    #[test]
    fn a_record_with_a_string_that_is_not_utf8_is_refused() {
        let info = MemberInfo::for_test(41, "aws:eu-west-1");
        let bytes = postcard::to_allocvec(&info).unwrap();
        // The key's 32 bytes, the region's length, then its first byte.
        assert_eq!(bytes[33], b'a');
        let mut bad = bytes.clone();
        bad[33] = 0xff;
        let before = len();
        assert!(postcard::from_bytes::<SwimId>(&bad).is_err());
        assert_eq!(len(), before, "a refused record left an entry");
        let held: SwimId = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(*held.info(), info);
        // Refused also with a valid record of the same key and generation held.
        assert!(postcard::from_bytes::<SwimId>(&bad).is_err());
        // The error says what was wrong (postcard keeps no message; JSON lends the raw
        // bytes of a string to a visitor that asks for bytes).
        let json = serde_json::to_vec(&info).unwrap();
        let at = json.windows(3).position(|w| w == b"aws").unwrap();
        let mut bad_json = json.clone();
        bad_json[at] = 0xff;
        let message = serde_json::from_slice::<SwimId>(&bad_json)
            .unwrap_err()
            .to_string();
        assert!(message.contains("not UTF-8"), "{message}");
    }

    #[test]
    fn records_of_one_key_and_generation_are_told_apart() {
        let first = MemberInfo::for_test(3, "r");
        let mut second = first.clone();
        second.policy_epoch = 9;
        let (a, b) = (SwimId::new(first.clone()), SwimId::new(second.clone()));
        assert!(!Arc::ptr_eq(&a.0, &b.0));
        for (id, info) in [(&a, &first), (&b, &second)] {
            let again: SwimId =
                postcard::from_bytes(&postcard::to_allocvec(info).unwrap()).unwrap();
            assert!(Arc::ptr_eq(&again.0, &id.0));
        }
    }

    /// The node's core may move between threads: a record interned on another thread is
    /// another allocation, and still equal (foca must not see one member as two).
    #[test]
    fn handles_made_on_two_threads_are_equal() {
        let info = MemberInfo::for_test(4, "r");
        let bytes = postcard::to_allocvec(&info).unwrap();
        let here: SwimId = postcard::from_bytes(&bytes).unwrap();
        let there: SwimId = std::thread::spawn(move || postcard::from_bytes(&bytes).unwrap())
            .join()
            .unwrap();
        assert!(!Arc::ptr_eq(&here.0, &there.0));
        assert_eq!(here, there);
        let mut other = info.clone();
        other.addr = "moved:1".into();
        assert_ne!(here, SwimId::new(other));
    }

    mod codec {
        use super::*;
        use foca::Codec;
        use proptest::prelude::*;

        fn member() -> impl Strategy<Value = foca::Member<SwimId>> {
            (
                any::<[u8; 32]>(),
                // Up to 200 characters of any kind: lengths past one varint byte too.
                proptest::collection::vec(".{0,200}", 4),
                any::<u64>(),
                any::<u32>(),
                any::<u16>(),
                0u8..3,
            )
                .prop_map(|(key, s, policy_epoch, generation, incarnation, state)| {
                    let info = MemberInfo {
                        key,
                        region: s[0].as_str().into(),
                        cloud: s[1].as_str().into(),
                        jurisdiction: s[2].as_str().into(),
                        addr: s[3].as_str().into(),
                        policy_epoch,
                        generation,
                    };
                    let state = [foca::State::Alive, foca::State::Suspect, foca::State::Down]
                        [usize::from(state)];
                    foca::Member::new(SwimId::new(info), incarnation, state)
                })
        }

        /// What postcard makes of `bytes` as a member update: the member and the bytes
        /// it took, or an error.
        fn postcard_decode(bytes: &[u8]) -> Option<(foca::Member<SwimId>, usize)> {
            postcard::take_from_bytes::<foca::Member<SwimId>>(bytes)
                .ok()
                .map(|(m, rest)| (m, bytes.len() - rest.len()))
        }

        fn ours_decode(bytes: &[u8]) -> Option<(foca::Member<SwimId>, usize)> {
            let mut buf = bytes;
            SwimCodec
                .decode_member(&mut buf)
                .ok()
                .map(|m| (m, bytes.len() - buf.len()))
        }

        proptest! {
            /// A member update is exactly postcard's bytes, and decodes (with anything
            /// after it left in the buffer) to the same member, taking only its bytes.
            #[test]
            fn a_member_update_is_postcards_bytes(m in member(), tail in any::<Vec<u8>>()) {
                let mut ours = Vec::new();
                SwimCodec.encode_member(&m, &mut ours).unwrap();
                let theirs = postcard::to_allocvec(&m).unwrap();
                prop_assert_eq!(&ours, &theirs);
                let mut input = ours.clone();
                input.extend_from_slice(&tail);
                let (decoded, used) = ours_decode(&input).expect("decodes");
                prop_assert_eq!(used, ours.len());
                prop_assert_eq!(&decoded, &m);
                prop_assert!(Arc::ptr_eq(&decoded.id().0, &m.id().0), "interned");
                // Every cut of it is refused, as postcard refuses it.
                for cut in 0..ours.len() {
                    prop_assert!(ours_decode(&ours[..cut]).is_none(), "cut at {}", cut);
                    prop_assert!(postcard_decode(&ours[..cut]).is_none());
                }
            }

            /// Any bytes: the hand decoder takes what postcard takes, to the same member
            /// and the same length, and refuses what postcard refuses (a varint too long
            /// or with bits past its type, a state past 2, a string not UTF-8, a cut).
            #[test]
            fn any_bytes_decode_as_postcard_decodes_them(
                m in member(),
                flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            ) {
                let mut bytes = postcard::to_allocvec(&m).unwrap();
                for (at, value) in flips {
                    let i = at.index(bytes.len());
                    bytes[i] = value;
                }
                let ours = ours_decode(&bytes);
                let theirs = postcard_decode(&bytes);
                prop_assert_eq!(ours.is_some(), theirs.is_some());
                if let (Some(a), Some(b)) = (ours, theirs) {
                    prop_assert_eq!(a, b);
                }
            }
        }

        /// Malformed updates are refused with what was wrong.
        #[test]
        fn malformed_updates_say_what_is_wrong() {
            let m = foca::Member::new(
                SwimId::new(MemberInfo::for_test(3, "r")),
                1,
                foca::State::Alive,
            );
            let good = postcard::to_allocvec(&m).unwrap();
            let decode = |bytes: &[u8]| {
                let mut buf = bytes;
                SwimCodec.decode_member(&mut buf).unwrap_err().to_string()
            };
            assert!(decode(&good[..10]).contains("cut short"));
            let mut state = good.clone();
            *state.last_mut().unwrap() = 7;
            assert!(decode(&state).contains("state 7"));
            // The incarnation (a u16) in three bytes with bits past 16 in the last.
            let mut varint = good[..good.len() - 2].to_vec();
            varint.extend_from_slice(&[0xff, 0xff, 0x7f, 0]);
            assert!(decode(&varint).contains("malformed varint"));
            let mut utf8 = good.clone();
            utf8[33] = 0xff; // the region's first byte
            assert!(decode(&utf8).contains("not UTF-8"));
            // Too big for the room left: nothing written.
            let mut small = [0u8; 8];
            let mut room = &mut small[..];
            let err = SwimCodec.encode_member(&m, &mut room).unwrap_err();
            assert!(err.to_string().contains("does not fit"), "{err}");
            assert_eq!(small, [0; 8]);
        }
    }
}
