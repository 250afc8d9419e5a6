/* This Source Code Form is subject to the terms of the Mozilla Public
 * License, v. 2.0. If a copy of the MPL was not distributed with this
 * file, You can obtain one at https://mozilla.org/MPL/2.0/. */
use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;
use core::cmp::Ordering;
use core::hash::BuildHasherDefault;

use crate::member::AddrHasher;

use bytes::BufMut;

/// A type capable of decoding a (associated) broadcast from a buffer
/// and deciding whether to keep disseminating it for other members
/// of the cluster (when it's new information) or to discard it (when
/// its outdated/stale).
pub trait BroadcastHandler<T> {
    /// A unique identifier for the broadcasts this handler manages
    ///
    /// It should be able to compare itself against an arbitrary number
    /// of other [`Self::Key`] instances and decide wether it
    /// replaces it or not so conflicting/stale information isn't
    /// disseminated.
    type Key: Invalidates;

    /// The error type that `receive_item` may emit. Will be wrapped
    /// by [`crate::Error::CustomBroadcast`].
    type Error: core::error::Error + Send + Sync + 'static;

    /// Decodes a [`Self::Key`] from a buffer and either discards
    /// it or tells Foca to persist and disseminate it.
    ///
    /// `Sender` is `None` when you're adding broadcast data directly,
    /// via [`crate::Foca::add_broadcast`], otherwise it will be the
    /// address of the member that sent the data. Notice that Foca
    /// doesn't track the origin of packets- if you need it you
    /// have to add it to the data you're broadcasting.
    ///
    /// When you receive a broadcast you have to decide whether it's
    /// new information that needs to be disseminated (`Ok(Some(...))`)
    /// or not (`Ok(None)`).
    ///
    /// Always yielding `Some(...)` is wrong because Foca will never
    /// know when to stop sending this information to other members.
    ///
    /// Example: Assume your custom broadcast is a simple Set-Key-Value
    /// operation. When you receive it you should check if your map
    /// contains the Key-Value pair; If it didn't, you yield
    /// `Some`, otherwise the operation is stale, so you yield `None`.
    ///
    /// The `data` parameter is the exact data provided to
    /// [`crate::Foca::add_broadcast`]. When Foca receives N custom
    /// broadcasts at once, this gets called N times.
    fn receive_item(
        &mut self,
        data: &[u8],
        sender: Option<&T>,
    ) -> Result<Option<Self::Key>, Self::Error>;

    /// Decides whether Foca should add broadcast data to the message
    /// it's about to send to active member `T`.
    ///
    /// Normally when Foca sends a message it always tries to include
    /// custom broadcasts alongside the information it actually
    /// cares about; This allows implementations to override this
    /// logic with something else.
    ///
    /// Example: You are running a heterogeneous cluster and some nodes
    /// are always very busy and you'd rather they never have to deal
    /// with the extra cpu/bandwidth cost of receiving/sending
    /// your custom broadcasts.
    ///
    /// Returning `true` tells Foca to proceed as it would normally,
    /// including broadcasts in the messages it sends when it can.
    ///
    /// Returning `false` tells Foca to not include such broadcasts
    /// in the message. It does *not* prevent the message from being
    /// sent, just keeps Foca from attaching extra data to them.
    fn should_add_broadcast_data(&self, _member: &T) -> bool {
        true
    }
}

/// A type that's able to look at another and decide wether it's
/// newer/fresher (i.e. invalidates) than it.
///
/// As you send/receive broadcasts, Foca will hold them for a while
/// as it disseminates the data to other cluster members. This trait
/// helps with replacing data that hasn't been fully disseminated
/// yet but you already know it's stale.
///
/// Example: Assume a versioned broadcast like `{key,version,...}`;
/// After you receive `{K, 0, ...}` and keep it, Foca will be
/// disseminating it. Soon after you receive `{K, 1, ...}` which
/// is a newer version for this broadcast. This trait enables
/// Foca to immediately stop disseminating the previous version,
/// even if it hasn't sent it to everyone it can yet.
pub trait Invalidates {
    /// When `item.invalidates(&other)` it means that Foca will
    /// keep `item` and discard `other` from its dissemination
    /// backlog.
    fn invalidates(&self, other: &Self) -> bool;

    /// Weft patch: a hash of what [`Invalidates::invalidates`] compares,
    /// for items that only ever invalidate items with an equal key
    /// (`a.invalidates(b)` implies `a.invalidation_key() ==
    /// b.invalidation_key()`). The backlog then skips its scan for an
    /// item whose key no held entry has. `None` (the default): always scan.
    fn invalidation_key(&self) -> Option<u64> {
        None
    }
}

impl Invalidates for &[u8] {
    fn invalidates(&self, other: &Self) -> bool {
        self.eq(other)
    }
}

// Weft patch: the backlog is kept in classes of equal priority
// (remaining transmissions, data length) instead of one binary heap.
// Upstream's `fill` pops the whole heap for every message (entries that
// do not fit are pushed back), O(n log n) per message for a backlog of n
// updates, which dominated simulations of 1000-node clusters. Here each
// item taken costs a few ordered-map lookups: the highest-priority class
// whose length fits the room left, which is exactly the entry upstream's
// scan would take next (room only shrinks, so everything it skipped
// still does not fit). Entries of one class are taken oldest first
// (upstream leaves their order to the heap's layout, "unstable").
//
// Weft patch: an entry carries `D`, what it writes into a message, and its
// encoded length (the class key, room checks). Custom broadcasts carry their
// bytes (`D = Vec<u8>`); cluster updates carry the `Member` itself and are
// encoded as they are put in a message. Serialized at add time, each of a
// 1000-member cluster's updates was a heap allocation of its bytes in every
// member's backlog (a million while the cluster forms), read back cold for
// each of its `max_transmissions` copies.
pub(crate) struct Broadcasts<V, D = Vec<u8>> {
    classes: BTreeMap<(usize, usize), VecDeque<Entry<V, D>>>,
    len: usize,
    // Weft patch: how many held entries have each invalidation key. Upstream
    // scans the whole backlog on every added update (O(n) per update, O(n^2)
    // while a 1000-member cluster forms); an update whose key no entry has
    // cannot invalidate anything and skips the scan.
    keyed: hashbrown::HashMap<u64, usize, BuildHasherDefault<AddrHasher>>,
}

impl<T> Broadcasts<T, Vec<u8>>
where
    T: Invalidates,
{
    pub(crate) fn add_or_replace(&mut self, item: T, data: Vec<u8>, max_tx: usize) {
        let len = data.len();
        self.add_or_replace_sized(item, data, len, max_tx);
    }

    #[cfg(test)]
    pub(crate) fn fill(&mut self, buffer: impl BufMut, max_items: usize) -> usize {
        self.fill_inner(buffer, max_items, false, |data, _, buf| {
            buf.put_slice(data);
            true
        })
    }

    pub(crate) fn fill_with_len_prefix(&mut self, buffer: impl BufMut, max_items: usize) -> usize {
        self.fill_inner(buffer, max_items, true, |data, _, buf| {
            buf.put_slice(data);
            true
        })
    }
}

impl<T, D> Broadcasts<T, D>
where
    T: Invalidates,
{
    pub(crate) fn new() -> Self {
        Self {
            classes: BTreeMap::new(),
            len: 0,
            keyed: hashbrown::HashMap::default(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues `data`, whose encoding is `len` bytes long (what `fill`'s
    /// `write` puts in a message for it).
    pub(crate) fn add_or_replace_sized(&mut self, item: T, data: D, len: usize, max_tx: usize) {
        debug_assert!(max_tx > 0);
        let key = item.invalidation_key();
        if key.is_none_or(|k| self.keyed.contains_key(&k)) {
            let mut emptied = Vec::new();
            let keyed = &mut self.keyed;
            for (class_key, class) in self.classes.iter_mut() {
                let before = class.len();
                class.retain(|node| {
                    let invalidated = item.invalidates(&node.item);
                    if invalidated {
                        forget_key(keyed, node.key);
                    }
                    !invalidated
                });
                self.len -= before - class.len();
                if class.is_empty() {
                    emptied.push(*class_key);
                }
            }
            for class_key in emptied {
                self.classes.remove(&class_key);
            }
        }
        if let Some(k) = key {
            *self.keyed.entry(k).or_default() += 1;
        }
        self.push(Entry {
            remaining_tx: max_tx,
            len,
            item,
            data,
            key,
        });
    }

    fn push(&mut self, entry: Entry<T, D>) {
        self.len += 1;
        self.classes
            .entry((entry.remaining_tx, entry.len))
            .or_default()
            .push_back(entry);
    }

    /// The highest-priority class holding an entry of at most `room` bytes.
    fn best_fitting(&self, room: usize) -> Option<(usize, usize)> {
        let mut upper = (usize::MAX, usize::MAX);
        loop {
            let (&(tx, len), _) = self.classes.range(..=upper).next_back()?;
            if len <= room {
                return Some((tx, len));
            }
            if let Some((&key, _)) = self.classes.range((tx, 0)..=(tx, room)).next_back() {
                return Some(key);
            }
            if tx == 0 {
                return None;
            }
            upper = (tx - 1, usize::MAX);
        }
    }

    fn take(&mut self, key: (usize, usize)) -> Option<Entry<T, D>> {
        let class = self.classes.get_mut(&key)?;
        let entry = class.pop_front();
        if class.is_empty() {
            self.classes.remove(&key);
        }
        if entry.is_some() {
            self.len -= 1;
        }
        entry
    }

    /// Fills `buffer` with entries as `fill` does, each written by `write`
    /// (given the entry's length, which it must write exactly, or write
    /// nothing and return false: the entry is then dropped from the backlog).
    pub(crate) fn fill_with<B: BufMut>(
        &mut self,
        buffer: B,
        max_items: usize,
        write: impl FnMut(&D, usize, &mut B) -> bool,
    ) -> usize {
        self.fill_inner(buffer, max_items, false, write)
    }

    fn fill_inner<B: BufMut>(
        &mut self,
        mut buffer: B,
        max_items: usize,
        prefix: bool,
        mut write: impl FnMut(&D, usize, &mut B) -> bool,
    ) -> usize {
        if self.is_empty() {
            return 0;
        }
        let overhead = if prefix { 2 } else { 0 };

        let mut num_taken = 0;
        let mut remaining = max_items;
        // Taken entries still to be sent again; they rejoin the backlog at the
        // end (upstream's "flop"), so one message carries an entry once.
        let mut again = Vec::new();

        while buffer.has_remaining_mut() && remaining > 0 {
            let Some(room) = buffer.remaining_mut().checked_sub(overhead) else {
                break;
            };
            let Some(key) = self.best_fitting(room) else {
                break;
            };
            let Some(mut node) = self.take(key) else {
                break;
            };
            debug_assert!(node.remaining_tx > 0);

            if prefix {
                debug_assert!(u16::try_from(node.len).is_ok());
                buffer.put_u16(node.len as u16);
            }
            if !write(&node.data, node.len, &mut buffer) {
                // Not encodable (never with a prefix: bytes always are).
                debug_assert!(!prefix, "a prefixed entry failed to write");
                forget_key(&mut self.keyed, node.key);
                continue;
            }
            num_taken += 1;
            remaining -= 1;
            node.remaining_tx -= 1;

            if node.remaining_tx > 0 {
                again.push(node);
            } else {
                forget_key(&mut self.keyed, node.key);
            }
        }

        for node in again {
            self.push(node);
        }

        num_taken
    }
}

/// Weft patch: one entry of `key` left the backlog.
fn forget_key(
    keyed: &mut hashbrown::HashMap<u64, usize, BuildHasherDefault<AddrHasher>>,
    key: Option<u64>,
) {
    if let Some(k) = key
        && let hashbrown::hash_map::Entry::Occupied(mut held) = keyed.entry(k)
    {
        *held.get_mut() -= 1;
        if *held.get() == 0 {
            held.remove();
        }
    }
}

#[derive(Debug, Clone)]
struct Entry<T, D> {
    remaining_tx: usize,
    // Weft patch: the length of `data`'s encoding.
    len: usize,
    data: D,
    // ignored for eq/ord. sorting is unstable
    item: T,
    // Weft patch: `item.invalidation_key()`, computed once.
    key: Option<u64>,
}

impl<T, D> PartialEq for Entry<T, D> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl<T, D> Eq for Entry<T, D> {}

impl<T, D> PartialOrd for Entry<T, D> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T, D> Ord for Entry<T, D> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.remaining_tx
            .cmp(&other.remaining_tx)
            .then_with(|| self.len.cmp(&other.len))
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    struct Key(&'static str);

    impl Invalidates for Key {
        fn invalidates(&self, other: &Self) -> bool {
            self.0 == other.0
        }
    }

    #[test]
    fn piggyback_behaviour() {
        let max_tx = 5;
        let mut piggyback = Broadcasts::new();

        assert!(piggyback.is_empty(), "Piggyback starts empty");

        piggyback.add_or_replace(Key("AA"), b"AAabc".to_vec(), max_tx);

        assert_eq!(1, piggyback.len());

        piggyback.add_or_replace(Key("AA"), b"AAcba".to_vec(), max_tx);

        assert_eq!(
            1,
            piggyback.len(),
            "add_or_replace with same key should replace"
        );

        let mut buf = Vec::new();

        for _i in 0..max_tx {
            buf.clear();
            let num_items = piggyback.fill(&mut buf, usize::MAX);
            assert_eq!(1, num_items);
            assert_eq!(
                b"AAcba",
                &buf[..],
                "Should transmit an item at most max_tx times"
            );
        }

        assert!(
            piggyback.is_empty(),
            "Should remove item after being used max_tx times"
        );
    }

    // Weft patch (WEFT-PATCHES.md, 11): entries that carry a value, not bytes.
    #[test]
    fn fill_with_writes_each_entry_and_drops_the_unwritable() {
        let mut bcs: Broadcasts<Key, u8> = Broadcasts::new();
        bcs.add_or_replace_sized(Key("a"), 1, 3, 2);
        bcs.add_or_replace_sized(Key("b"), 2, 4, 2);
        bcs.add_or_replace_sized(Key("c"), 3, 5, 2);
        let write = |d: &u8, len: usize, b: &mut &mut Vec<u8>| {
            if *d == 2 {
                return false;
            }
            b.put_slice(&alloc::vec![*d; len]);
            true
        };
        let mut buf = Vec::new();
        // Longest first among equal transmissions left; "b" cannot be written.
        assert_eq!(2, bcs.fill_with(&mut buf, usize::MAX, write));
        assert_eq!(buf, [3, 3, 3, 3, 3, 1, 1, 1]);
        assert_eq!(2, bcs.len(), "the unwritable entry is gone");
        // Room is checked against the length given when queued.
        let mut small = Vec::new();
        assert_eq!(1, bcs.fill_with((&mut small).limit(4), usize::MAX, |d, len, b| {
            b.put_slice(&alloc::vec![*d; len]);
            true
        }));
        assert_eq!(small, [1, 1, 1]);
        assert_eq!(1, bcs.len(), "\"a\" was sent twice");
    }

    // Weft patch: a keyed item (see `Invalidates::invalidation_key`).
    struct Keyed(u8);

    impl Invalidates for Keyed {
        fn invalidates(&self, other: &Self) -> bool {
            self.0 == other.0
        }

        fn invalidation_key(&self) -> Option<u64> {
            // Deliberately colliding (1 and 3 share a key): a shared key
            // only costs a scan, which still compares the items.
            Some(u64::from(self.0 % 2))
        }
    }

    #[test]
    fn keyed_items_replace_exactly_and_leave_no_count_behind() {
        let max_tx = 2;
        let mut piggyback = Broadcasts::new();
        piggyback.add_or_replace(Keyed(1), b"1a".to_vec(), max_tx);
        piggyback.add_or_replace(Keyed(2), b"2a".to_vec(), max_tx);
        piggyback.add_or_replace(Keyed(3), b"3a".to_vec(), max_tx);
        assert_eq!(3, piggyback.len(), "a shared key is not equality");
        piggyback.add_or_replace(Keyed(1), b"1b".to_vec(), max_tx);
        assert_eq!(3, piggyback.len(), "the same item replaces");
        assert_eq!(Some(&2), piggyback.keyed.get(&1), "1b and 3a");
        assert_eq!(Some(&1), piggyback.keyed.get(&0), "2a");

        let mut sent = Vec::new();
        for _ in 0..max_tx {
            let mut buf = Vec::new();
            assert_eq!(3, piggyback.fill_with_len_prefix(&mut buf, usize::MAX));
            sent.push(buf);
        }
        assert!(piggyback.is_empty());
        assert!(piggyback.keyed.is_empty(), "no count outlives its entries");
        assert!(
            sent.iter().all(|b| !b.windows(2).any(|w| w == b"1a")),
            "the replaced update is never sent"
        );

        // Back in the backlog after it emptied: counted afresh.
        piggyback.add_or_replace(Keyed(3), b"3b".to_vec(), max_tx);
        assert_eq!(Some(&1), piggyback.keyed.get(&1));
    }

    #[test]
    fn fill_does_nothing_if_buffer_full() {
        let mut piggyback = Broadcasts::new();
        piggyback.add_or_replace(Key("a "), b"a super long value".to_vec(), 1);

        let buf = bytes::BytesMut::new();
        let mut limited = buf.limit(5);

        let num_items = piggyback.fill(&mut limited, usize::MAX);

        assert_eq!(0, num_items);
        assert_eq!(5, limited.remaining_mut());
        assert_eq!(1, piggyback.len());
    }

    #[test]
    fn piggyback_consumes_largest_first() {
        let max_tx = 10;
        let mut piggyback = Broadcasts::new();

        piggyback.add_or_replace(Key("00"), b"00hi".to_vec(), max_tx);
        piggyback.add_or_replace(Key("01"), b"01hello".to_vec(), max_tx);
        piggyback.add_or_replace(Key("02"), b"02hey".to_vec(), max_tx);

        let mut buf = Vec::new();
        let num_items = piggyback.fill(&mut buf, usize::MAX);

        assert_eq!(3, num_items);
        assert_eq!(b"01hello02hey00hi", &buf[..]);
    }

    #[test]
    fn highest_max_tx_is_consumed_first() {
        let mut piggyback = Broadcasts::new();

        // 3 items, same byte size, distinct max_tx
        piggyback.add_or_replace(Key("10"), b"100".to_vec(), 1);
        piggyback.add_or_replace(Key("20"), b"200".to_vec(), 2);
        piggyback.add_or_replace(Key("30"), b"300".to_vec(), 3);

        let mut buf = Vec::new();
        piggyback.fill(&mut buf, usize::MAX);
        assert_eq!(b"300200100", &buf[..]);

        buf.clear();
        piggyback.fill(&mut buf, usize::MAX);
        assert_eq!(b"300200", &buf[..]);

        buf.clear();
        piggyback.fill(&mut buf, usize::MAX);
        assert_eq!(b"300", &buf[..]);

        assert_eq!(0, piggyback.len());
    }

    #[test]
    fn piggyback_respects_limit() {
        let max_tx = 10;
        let mut piggyback = Broadcasts::new();

        piggyback.add_or_replace(Key("fo"), b"foo".to_vec(), max_tx);
        piggyback.add_or_replace(Key("ba"), b"bar".to_vec(), max_tx);
        piggyback.add_or_replace(Key("ba"), b"baz".to_vec(), max_tx);

        let mut buf = Vec::new();
        let num_items = piggyback.fill(&mut buf, 0);

        assert_eq!(0, num_items);
        assert!(buf.is_empty());

        let num_items = piggyback.fill(&mut buf, 2);
        assert_eq!(2, num_items);
    }

    #[test]
    fn fill_with_len_prefix() {
        let mut bcs = Broadcasts::new();

        bcs.add_or_replace(Key("fo"), b"foo".to_vec(), 10);
        bcs.add_or_replace(Key("ba"), b"barr".to_vec(), 10);
        bcs.add_or_replace(Key("ba"), b"bazz".to_vec(), 10);

        let mut buf = Vec::new();
        let num_items = bcs.fill_with_len_prefix(&mut buf, 0);

        assert_eq!(0, num_items);
        assert!(buf.is_empty());

        let num_items = bcs.fill_with_len_prefix(&mut buf, 2);
        assert_eq!(2, num_items);

        use bytes::Buf;
        let mut buf = &buf[..];
        assert_eq!(4, buf.get_u16());
        assert_eq!(&b"bazz"[..], &buf[..4]);
        buf.advance(4);
        assert_eq!(3, buf.get_u16());
        assert_eq!(&b"foo"[..], &buf[..3]);
        buf.advance(3);
        assert!(buf.is_empty());
    }
}
