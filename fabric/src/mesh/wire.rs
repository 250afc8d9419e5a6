//! Bytes on the wire for mesh [`Message`]s, as the node sends them over QUIC.
//!
//! Framing is postcard (serde, varint lengths, no padding): the messages are a handful of
//! fixed-shape records, and postcard is the compact, well-kept encoding foca already uses
//! for SWIM. Events travel as their signed envelopes (`docs/wire.md`), byte for byte, so a
//! receiver checks each signature itself: decoding yields [`IncomingMessage`], whose events
//! are unverified until [`IncomingMessage::verify`] runs them through the batch verifier.
//!
//! Every message is one QUIC datagram or one stream; the transport bounds its length with
//! [`MESSAGE_LEN_MAX`] before anything is decoded.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_bytes::Bytes;

use crate::envelope::{EventId, OriginKey, UnverifiedEvent};
use crate::error::{EnvelopeError, VerifyError};
use crate::mesh::message::{Digest, EventRef, Message, Settled};
use crate::mesh::route::{LinkRecord, RelayHop};
use crate::sign::verify_batch;

/// Largest encoded message accepted from a peer (a full push or sync batch of large events;
/// the core keeps its batches under [`crate::mesh::node::BATCH_BYTES_MAX`]).
pub const MESSAGE_LEN_MAX: usize = 16 << 20;

/// Why bytes from a peer are not a message.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Longer than [`MESSAGE_LEN_MAX`].
    #[error("message of {len} bytes is over MESSAGE_LEN_MAX ({max})")]
    TooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not a valid postcard encoding of a message, or bytes left over.
    #[error("malformed mesh message: {0}")]
    Malformed(String),
    /// An event inside is not a valid envelope.
    #[error("event {index} of the message: {source}")]
    Event {
        /// Its position in the message.
        index: usize,
        /// Why.
        source: EnvelopeError,
    },
}

impl WireError {
    /// Short code for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            WireError::TooLong { .. } => "message_too_long",
            WireError::Malformed(_) => "malformed_message",
            WireError::Event { .. } => "bad_envelope",
        }
    }
}

#[derive(Serialize, Deserialize)]
struct WireRef {
    origin: [u8; 32],
    seq: u64,
    id: [u8; 32],
}

impl From<&EventRef> for WireRef {
    fn from(r: &EventRef) -> Self {
        Self {
            origin: r.origin.0,
            seq: r.seq,
            id: r.id.0,
        }
    }
}

impl From<WireRef> for EventRef {
    fn from(r: WireRef) -> Self {
        Self {
            origin: OriginKey(r.origin),
            seq: r.seq,
            id: EventId(r.id),
        }
    }
}

/// One origin's sequence ranges in a digest.
type WireRanges = ([u8; 32], Vec<(u64, u64)>);

/// The encoded form. Variant order is the wire tag: append only.
#[derive(Serialize, Deserialize)]
enum Wire<'a> {
    Swim(#[serde(borrow)] &'a Bytes),
    Push {
        #[serde(borrow)]
        events: Vec<&'a Bytes>,
        relay: Vec<RelayHop>,
        ack: u64,
        reroutes: u8,
    },
    IHave(Vec<WireRef>),
    Graft(Vec<WireRef>),
    SyncRequest {
        digest: Vec<WireRanges>,
        from_origin: Option<[u8; 32]>,
    },
    SyncResponse {
        #[serde(borrow)]
        events: Vec<&'a Bytes>,
        resume: Option<[u8; 32]>,
        held: u64,
    },
    PushAck(u64),
    Probe {
        nonce: u64,
        coord: weft_routing::Coordinate,
    },
    ProbeAck {
        nonce: u64,
        coord: weft_routing::Coordinate,
    },
    Links(Vec<Arc<LinkRecord>>),
    Skip(Vec<([u8; 32], u64)>),
    LinkDigest(Vec<([u8; 32], u64)>),
    LinkPull(Vec<[u8; 32]>),
    /// A `SyncRequest` with a summary of the origins its digest leaves out: the request's
    /// key, the count, the sum of their hashes. (A request without one keeps the
    /// `SyncRequest` tag.)
    SyncRequestSettled {
        digest: Vec<WireRanges>,
        from_origin: Option<[u8; 32]>,
        settled: ([u64; 2], u32, u64),
    },
    /// A `SyncResponse` saying the request's summary did not match (no events).
    SyncUnsettled {
        held: u64,
        key: [u64; 2],
    },
    Lost(Vec<(u64, u64)>),
    /// A `SyncResponse` with [`Message::SyncResponse::your_high`] set (a request from a
    /// node that asked for its own events; every other answer keeps the `SyncResponse`
    /// tag and its bytes).
    SyncResponseHigh {
        #[serde(borrow)]
        events: Vec<&'a Bytes>,
        resume: Option<[u8; 32]>,
        held: u64,
        your_high: u64,
    },
}

/// Encodes `msg` for the wire.
pub fn encode(msg: &Message) -> Vec<u8> {
    let envelopes = |events: &[Arc<crate::envelope::Event>]| -> Vec<Vec<u8>> {
        events.iter().map(|e| e.encode()).collect()
    };
    let refs = |refs: &[EventRef]| refs.iter().map(WireRef::from).collect::<Vec<_>>();
    let owned;
    let wire = match msg {
        Message::Swim(bytes) => Wire::Swim(Bytes::new(bytes)),
        Message::Push {
            events,
            relay,
            ack,
            reroutes,
        } => {
            owned = envelopes(events);
            Wire::Push {
                events: owned.iter().map(|b| Bytes::new(b)).collect(),
                relay: relay.clone(),
                ack: *ack,
                reroutes: *reroutes,
            }
        }
        Message::PushAck(id) => Wire::PushAck(*id),
        Message::Probe { nonce, coord } => Wire::Probe {
            nonce: *nonce,
            coord: *coord,
        },
        Message::ProbeAck { nonce, coord } => Wire::ProbeAck {
            nonce: *nonce,
            coord: *coord,
        },
        Message::Links(records) => Wire::Links(records.clone()),
        Message::Skip(list) => Wire::Skip(list.iter().map(|(o, s)| (o.0, *s)).collect()),
        Message::LinkDigest(list) => {
            Wire::LinkDigest(list.iter().map(|(k, v)| (k.0, *v)).collect())
        }
        Message::LinkPull(keys) => Wire::LinkPull(keys.iter().map(|k| k.0).collect()),
        Message::Lost(ranges) => Wire::Lost(ranges.clone()),
        Message::IHave(r) => Wire::IHave(refs(r)),
        Message::Graft(r) => Wire::Graft(refs(r)),
        Message::SyncRequest {
            digest,
            from_origin,
            settled,
        } => {
            let digest = digest.iter().map(|(o, r)| (o.0, r.to_vec())).collect();
            let from_origin = from_origin.map(|o| o.0);
            match settled {
                None => Wire::SyncRequest {
                    digest,
                    from_origin,
                },
                Some(s) => Wire::SyncRequestSettled {
                    digest,
                    from_origin,
                    settled: (s.key, s.count, s.hash),
                },
            }
        }
        Message::SyncResponse {
            held,
            unsettled: Some(key),
            ..
        } => Wire::SyncUnsettled {
            held: *held,
            key: *key,
        },
        Message::SyncResponse {
            events,
            resume,
            held,
            unsettled: None,
            your_high,
        } => {
            owned = envelopes(events);
            let events = owned.iter().map(|b| Bytes::new(b)).collect();
            match *your_high {
                0 => Wire::SyncResponse {
                    events,
                    resume: resume.map(|o| o.0),
                    held: *held,
                },
                your_high => Wire::SyncResponseHigh {
                    events,
                    resume: resume.map(|o| o.0),
                    held: *held,
                    your_high,
                },
            }
        }
    };
    // Serializing these types to a Vec has no failure mode (no maps with non-string keys,
    // no unknown lengths); postcard's error type is shared with decoding.
    postcard::to_allocvec(&wire).unwrap_or_else(|e| unreachable!("postcard to Vec: {e}"))
}

impl Message {
    /// Encoded size in bytes, exactly what [`encode`] produces, computed without encoding
    /// (the simulator's byte counters use it). Defined here, beside the encoding it sizes,
    /// so that the message types do not depend on their wire form.
    pub fn wire_len(&self) -> usize {
        encoded_len(self)
    }
}

/// The length of [`encode`]'s output for `msg`, computed without encoding it (the
/// simulator's byte counters read it for every message it delivers). Postcard is simple
/// enough to size by hand: a variant tag and every length and integer but a `u8` are
/// varints, an array of 32 bytes is 32 bytes, an `Option` one byte more than its value.
/// The nested records (relay hops, coordinates, link records) are sized by postcard's own
/// size-counting serializer. Tests hold it to `encode(msg).len()` for every kind.
pub fn encoded_len(msg: &Message) -> usize {
    // The tags of `Wire`'s variants (all below 128: one byte each).
    const TAG: usize = 1;
    const KEY: usize = 32;
    let events = |events: &[Arc<crate::envelope::Event>]| -> usize {
        varint_len(events.len() as u64)
            + events
                .iter()
                .map(|e| {
                    let n = crate::codec::envelope_len(e.body_bytes().len());
                    varint_len(n as u64) + n
                })
                .sum::<usize>()
    };
    let refs = |refs: &[EventRef]| -> usize {
        varint_len(refs.len() as u64)
            + refs
                .iter()
                .map(|r| KEY + varint_len(r.seq) + KEY)
                .sum::<usize>()
    };
    let key_option = |k: &Option<OriginKey>| 1 + k.map_or(0, |_| KEY);
    TAG + match msg {
        Message::Swim(bytes) => varint_len(bytes.len() as u64) + bytes.len(),
        Message::Push {
            events: e,
            relay,
            ack,
            reroutes: _,
        } => events(e) + postcard_len(relay) + varint_len(*ack) + 1,
        Message::PushAck(id) => varint_len(*id),
        Message::Probe { nonce, coord } | Message::ProbeAck { nonce, coord } => {
            varint_len(*nonce) + postcard_len(coord)
        }
        Message::Links(records) => {
            varint_len(records.len() as u64)
                + records.iter().map(|r| postcard_len(&**r)).sum::<usize>()
        }
        Message::Skip(list) | Message::LinkDigest(list) => {
            varint_len(list.len() as u64)
                + list
                    .iter()
                    .map(|(_, n)| KEY + varint_len(*n))
                    .sum::<usize>()
        }
        Message::LinkPull(keys) => varint_len(keys.len() as u64) + keys.len() * KEY,
        Message::Lost(ranges) => {
            varint_len(ranges.len() as u64)
                + ranges
                    .iter()
                    .map(|(lo, hi)| varint_len(*lo) + varint_len(*hi))
                    .sum::<usize>()
        }
        Message::IHave(r) | Message::Graft(r) => refs(r),
        Message::SyncRequest {
            digest,
            from_origin,
            settled,
        } => {
            varint_len(digest.len() as u64)
                + digest
                    .iter()
                    .map(|(_, ranges)| {
                        KEY + varint_len(ranges.len() as u64)
                            + ranges
                                .iter()
                                .map(|(lo, hi)| varint_len(*lo) + varint_len(*hi))
                                .sum::<usize>()
                    })
                    .sum::<usize>()
                + key_option(from_origin)
                + settled.map_or(0, |s| {
                    varint_len(s.key[0])
                        + varint_len(s.key[1])
                        + varint_len(u64::from(s.count))
                        + varint_len(s.hash)
                })
        }
        Message::SyncResponse {
            held,
            unsettled: Some(key),
            ..
        } => varint_len(*held) + varint_len(key[0]) + varint_len(key[1]),
        Message::SyncResponse {
            events: e,
            resume,
            held,
            unsettled: None,
            your_high,
        } => {
            events(e)
                + key_option(resume)
                + varint_len(*held)
                + if *your_high == 0 {
                    0
                } else {
                    varint_len(*your_high)
                }
        }
    }
}

/// Bytes of `v` as a postcard varint (7 bits a byte).
fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// The postcard length of a nested serde record, by postcard's size-counting serializer.
fn postcard_len<T: Serialize + ?Sized>(value: &T) -> usize {
    // Sizing these types cannot fail (no maps with non-string keys, no unknown lengths);
    // postcard's error type is shared with decoding.
    postcard::experimental::serialized_size(value)
        .unwrap_or_else(|e| unreachable!("postcard sizing: {e}"))
}

/// A decoded message whose events have not been verified yet.
#[derive(Debug)]
pub enum IncomingMessage {
    /// A message that carries no events.
    Plain(Message),
    /// An eager push.
    Push {
        /// The events, unverified.
        events: Vec<UnverifiedEvent>,
        /// Relay hops (see [`Message::Push`]).
        relay: Vec<RelayHop>,
        /// Acknowledgement id, 0 for none.
        ack: u64,
        /// Reroutes so far.
        reroutes: u8,
    },
    /// An anti-entropy answer.
    SyncResponse {
        /// The events, unverified.
        events: Vec<UnverifiedEvent>,
        /// Where to resume.
        resume: Option<OriginKey>,
        /// Sequence numbers the responder has seen (see [`Message::SyncResponse`]).
        held: u64,
        /// See [`Message::SyncResponse::your_high`].
        your_high: u64,
    },
}

/// An event that failed verification, for the caller to count and log.
#[derive(Debug)]
pub struct Rejected {
    /// The id it claims.
    pub id: EventId,
    /// The origin it claims.
    pub origin: OriginKey,
    /// Why it was refused.
    pub error: VerifyError,
}

impl IncomingMessage {
    /// The acknowledgement id a push asks for (taking it: the message then asks for
    /// none), for a transport that acknowledges arrival itself. `None` for other messages
    /// and pushes that ask for none.
    pub fn take_push_ack(&mut self) -> Option<u64> {
        match self {
            IncomingMessage::Push { ack, .. } if *ack != 0 => Some(std::mem::take(ack)),
            _ => None,
        }
    }

    /// How many events the message carries.
    pub fn event_count(&self) -> usize {
        match self {
            IncomingMessage::Plain(_) => 0,
            IncomingMessage::Push { events: e, .. }
            | IncomingMessage::SyncResponse { events: e, .. } => e.len(),
        }
    }

    /// Verifies the events (in batches) and returns the message holding only those that
    /// passed, with the ones that did not.
    pub fn verify(self) -> (Message, Vec<Rejected>) {
        self.verify_by(verify_batch)
    }

    /// [`IncomingMessage::verify`], skipping envelopes `cache` saw pass (and remembering
    /// those that pass now).
    pub fn verify_cached(self, cache: &crate::sign::VerifiedCache) -> (Message, Vec<Rejected>) {
        self.verify_by(|events| cache.verify_batch(events).0)
    }

    fn verify_by(
        self,
        verify: impl Fn(Vec<UnverifiedEvent>) -> Vec<crate::sign::BatchResult>,
    ) -> (Message, Vec<Rejected>) {
        let check = |events: Vec<UnverifiedEvent>| {
            let mut good = Vec::with_capacity(events.len());
            let mut bad = Vec::new();
            for result in verify(events) {
                match result {
                    Ok(event) => good.push(Arc::new(event)),
                    Err((event, error)) => bad.push(Rejected {
                        id: event.id(),
                        origin: event.origin(),
                        error,
                    }),
                }
            }
            (good, bad)
        };
        match self {
            IncomingMessage::Plain(msg) => (msg, Vec::new()),
            IncomingMessage::Push {
                events,
                relay,
                ack,
                reroutes,
            } => {
                let (good, bad) = check(events);
                (
                    Message::Push {
                        events: good,
                        relay,
                        ack,
                        reroutes,
                    },
                    bad,
                )
            }
            IncomingMessage::SyncResponse {
                events,
                resume,
                held,
                your_high,
            } => {
                let (good, bad) = check(events);
                (
                    Message::SyncResponse {
                        events: good,
                        resume,
                        held,
                        unsettled: None,
                        your_high,
                    },
                    bad,
                )
            }
        }
    }
}

/// An anti-entropy request as the core takes it, with or without a summary.
fn sync_request(
    digest: Vec<WireRanges>,
    from_origin: Option<[u8; 32]>,
    settled: Option<Settled>,
) -> IncomingMessage {
    IncomingMessage::Plain(Message::SyncRequest {
        digest: digest
            .into_iter()
            .map(|(o, r)| (OriginKey(o), r.into()))
            .collect::<Digest>(),
        from_origin: from_origin.map(OriginKey),
        settled,
    })
}

/// Decodes a message from a peer. Trailing bytes, an unknown tag and any malformed event
/// are errors; signatures are checked later by [`IncomingMessage::verify`].
pub fn decode(bytes: &[u8]) -> Result<IncomingMessage, WireError> {
    if bytes.len() > MESSAGE_LEN_MAX {
        return Err(WireError::TooLong {
            len: bytes.len(),
            max: MESSAGE_LEN_MAX,
        });
    }
    let (wire, rest): (Wire<'_>, &[u8]) =
        postcard::take_from_bytes(bytes).map_err(|e| WireError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(WireError::Malformed(format!(
            "{} bytes after the message",
            rest.len()
        )));
    }
    let events = |list: Vec<&Bytes>| {
        list.into_iter()
            .enumerate()
            .map(|(index, b)| {
                crate::codec::decode(b).map_err(|source| WireError::Event { index, source })
            })
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(match wire {
        Wire::Swim(b) => IncomingMessage::Plain(Message::Swim(b.to_vec())),
        Wire::Push {
            events: list,
            relay,
            ack,
            reroutes,
        } => IncomingMessage::Push {
            events: events(list)?,
            relay,
            ack,
            reroutes,
        },
        Wire::PushAck(id) => IncomingMessage::Plain(Message::PushAck(id)),
        Wire::Probe { nonce, coord } => IncomingMessage::Plain(Message::Probe { nonce, coord }),
        Wire::ProbeAck { nonce, coord } => {
            IncomingMessage::Plain(Message::ProbeAck { nonce, coord })
        }
        Wire::Links(records) => IncomingMessage::Plain(Message::Links(records)),
        Wire::Skip(list) => IncomingMessage::Plain(Message::Skip(
            list.into_iter().map(|(o, s)| (OriginKey(o), s)).collect(),
        )),
        Wire::LinkDigest(list) => IncomingMessage::Plain(Message::LinkDigest(
            list.into_iter().map(|(k, v)| (OriginKey(k), v)).collect(),
        )),
        Wire::LinkPull(keys) => {
            IncomingMessage::Plain(Message::LinkPull(keys.into_iter().map(OriginKey).collect()))
        }
        Wire::Lost(ranges) => IncomingMessage::Plain(Message::Lost(ranges)),
        Wire::IHave(r) => {
            IncomingMessage::Plain(Message::IHave(r.into_iter().map(Into::into).collect()))
        }
        Wire::Graft(r) => {
            IncomingMessage::Plain(Message::Graft(r.into_iter().map(Into::into).collect()))
        }
        Wire::SyncRequest {
            digest,
            from_origin,
        } => sync_request(digest, from_origin, None),
        Wire::SyncRequestSettled {
            digest,
            from_origin,
            settled: (key, count, hash),
        } => sync_request(digest, from_origin, Some(Settled { key, count, hash })),
        Wire::SyncUnsettled { held, key } => IncomingMessage::Plain(Message::SyncResponse {
            events: Vec::new(),
            resume: None,
            held,
            unsettled: Some(key),
            your_high: 0,
        }),
        Wire::SyncResponse {
            events: list,
            resume,
            held,
        } => IncomingMessage::SyncResponse {
            events: events(list)?,
            resume: resume.map(OriginKey),
            held,
            your_high: 0,
        },
        Wire::SyncResponseHigh {
            events: list,
            resume,
            held,
            your_high,
        } => IncomingMessage::SyncResponse {
            events: events(list)?,
            resume: resume.map(OriginKey),
            held,
            your_high,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{EventDraft, Payload, Residency, SecurityContext};
    use crate::hlc::Hlc;
    use crate::sign::Signer;
    use crate::stream::StreamName;

    fn event(seq: u64) -> Arc<crate::envelope::Event> {
        let draft = EventDraft {
            stream: StreamName::new("orders.eu").unwrap(),
            key: None,
            seq,
            hlc: Hlc::new(1_764_000_000_000, 0).unwrap(),
            security: SecurityContext {
                tenant: "acme".into(),
                principal: "svc".into(),
                classification: "internal".into(),
                residency: Residency::Unrestricted,
                scopes: Default::default(),
                policy_epoch: 0,
            },
            content_type: "text/plain".into(),
            payload: Payload::Clear(format!("event {seq}").into_bytes()),
            trace: None,
        };
        Arc::new(Signer::from_secret(&[3; 32]).sign(draft).unwrap())
    }

    fn round_trip(msg: &Message) -> (Message, Vec<Rejected>) {
        decode(&encode(msg)).unwrap().verify()
    }

    #[test]
    fn every_message_kind_round_trips() {
        let e1 = event(1);
        let e2 = event(2);
        let r = EventRef::of(&e1);
        let msgs = vec![
            Message::Swim(vec![1, 2, 3]),
            Message::Push {
                events: vec![e1.clone(), e2.clone()],
                relay: vec![RelayHop {
                    region: "aws:us-east-1".into(),
                    parent: None,
                }],
                ack: 7,
                reroutes: 1,
            },
            Message::PushAck(7),
            Message::Skip(vec![(e1.origin(), 3)]),
            Message::Probe {
                nonce: 3,
                coord: weft_routing::Coordinate::origin(),
            },
            Message::ProbeAck {
                nonce: 3,
                coord: weft_routing::Coordinate::origin(),
            },
            Message::Links(vec![Arc::new(LinkRecord {
                node: [9; 32],
                version: 1 << 32 | 4,
                coord: weft_routing::Coordinate::origin(),
                links: vec![([8; 32], 80_600)],
                status: crate::mesh::route::NodeStatus {
                    name: "eu-1".into(),
                    http: "127.0.0.1:8401".into(),
                    published: 5,
                    stored: 9,
                    missing: 0,
                    policy_epoch: 0,
                },
            })]),
            Message::LinkDigest(vec![(OriginKey([9; 32]), 1 << 32 | 4), (e1.origin(), 2)]),
            Message::LinkPull(vec![OriginKey([9; 32]), e2.origin()]),
            Message::IHave(vec![r]),
            Message::Graft(vec![r, EventRef::of(&e2)]),
            Message::SyncRequest {
                digest: vec![(e1.origin(), vec![(1, 2), (5, 9)].into())],
                from_origin: Some(e2.origin()),
                settled: None,
            },
            Message::SyncRequest {
                digest: vec![(e1.origin(), vec![(1, 2)].into())],
                from_origin: None,
                settled: Some(Settled {
                    key: [3, 4],
                    count: 7,
                    hash: 0xdead_beef,
                }),
            },
            Message::SyncResponse {
                events: vec![e2.clone()],
                resume: None,
                held: 42,
                unsettled: None,
                your_high: 0,
            },
            Message::SyncResponse {
                events: vec![e1.clone()],
                resume: Some(e1.origin()),
                held: 42,
                unsettled: None,
                your_high: 77,
            },
            Message::SyncResponse {
                events: Vec::new(),
                resume: None,
                held: 42,
                unsettled: Some([3, 4]),
                your_high: 0,
            },
        ];
        for msg in &msgs {
            let (back, rejected) = round_trip(msg);
            assert!(rejected.is_empty());
            // Messages hold events by Arc; compare through their encodings.
            assert_eq!(encode(&back), encode(msg), "{msg:?}");
        }
        match round_trip(&msgs[msgs.len() - 4]).0 {
            Message::SyncRequest { settled, .. } => assert_eq!(settled.unwrap().count, 7),
            other => panic!("expected a sync request, got {other:?}"),
        }
        match round_trip(&msgs[msgs.len() - 2]).0 {
            Message::SyncResponse { your_high, .. } => assert_eq!(your_high, 77),
            other => panic!("expected a sync response, got {other:?}"),
        }
        match round_trip(&msgs[msgs.len() - 1]).0 {
            Message::SyncResponse {
                unsettled, held, ..
            } => assert!(unsettled == Some([3, 4]) && held == 42),
            other => panic!("expected a sync response, got {other:?}"),
        }
        match round_trip(&msgs[1]).0 {
            Message::Push {
                events,
                relay,
                ack,
                reroutes,
            } => {
                assert_eq!(reroutes, 1);
                assert_eq!(ack, 7);
                assert_eq!(relay[0].region, "aws:us-east-1");
                assert_eq!(events.len(), 2);
                assert_eq!(events[0].id(), e1.id());
                assert_eq!(events[1].seq(), 2);
            }
            other => panic!("expected a push, got {other:?}"),
        }
    }

    /// A message of kind `kind` (0..16, one per `Wire` variant) built from `n` and `words`:
    /// lengths from `n`, integers from `words` (every varint width), events whose bodies
    /// cross the CBOR length-header sizes.
    fn sample(kind: u8, n: usize, words: &[u64]) -> Message {
        let w = |i: usize| words[i % words.len()];
        let key = |i: usize| OriginKey([(w(i) % 251) as u8; 32]);
        let events = |seq: u64| -> Vec<Arc<crate::envelope::Event>> {
            (0..n.min(4)).map(|i| event(seq + i as u64)).collect()
        };
        match kind {
            0 => Message::Swim(vec![7; (w(0) % 2000) as usize]),
            1 => Message::Push {
                events: events(w(1) % 1000 + 1),
                relay: (0..n % 5)
                    .map(|i| RelayHop {
                        region: format!("aws:region-{}", w(i)).into(),
                        parent: (i > 0).then(|| (i - 1) as u8),
                    })
                    .collect(),
                ack: w(2),
                reroutes: w(3) as u8,
            },
            2 => Message::IHave(
                (0..n)
                    .map(|i| EventRef::of(&event(w(i) % 1000 + 1)))
                    .collect(),
            ),
            3 => Message::Graft(
                (0..n)
                    .map(|i| EventRef::of(&event(w(i) % 1000 + 1)))
                    .collect(),
            ),
            4 | 13 => Message::SyncRequest {
                digest: (0..n)
                    .map(|i| {
                        let ranges: crate::mesh::message::DigestRanges = (0..(w(i) % 4) as usize)
                            .map(|j| (w(i + j), w(i + j + 1)))
                            .collect();
                        (key(i), ranges)
                    })
                    .collect(),
                from_origin: (w(4) % 2 == 0).then(|| key(5)),
                settled: (kind == 13).then(|| Settled {
                    key: [w(6), w(7)],
                    count: w(8) as u32,
                    hash: w(9),
                }),
            },
            5 | 14 | 16 => Message::SyncResponse {
                events: if kind != 14 {
                    events(w(1) % 1000 + 1)
                } else {
                    Vec::new()
                },
                resume: (w(4) % 2 == 0).then(|| key(5)),
                held: w(2),
                unsettled: (kind == 14).then(|| [w(6), w(7)]),
                your_high: if kind == 16 { w(3).max(1) } else { 0 },
            },
            6 => Message::PushAck(w(0)),
            7 | 8 => {
                let mut coord = weft_routing::Coordinate::origin();
                coord.height = w(1) as f32;
                if kind == 7 {
                    Message::Probe { nonce: w(0), coord }
                } else {
                    Message::ProbeAck { nonce: w(0), coord }
                }
            }
            9 => Message::Links(
                (0..n % 6)
                    .map(|i| {
                        Arc::new(LinkRecord {
                            node: key(i).0,
                            version: w(i),
                            coord: weft_routing::Coordinate::origin(),
                            links: (0..(w(i) % 64) as usize)
                                .map(|j| (key(i + j).0, w(j) as u32))
                                .collect(),
                            status: crate::mesh::route::NodeStatus {
                                name: format!("node-{}", w(i)),
                                http: "127.0.0.1:8401".into(),
                                published: w(i + 1),
                                stored: w(i + 2),
                                missing: w(i + 3),
                                policy_epoch: w(i + 4),
                            },
                        })
                    })
                    .collect(),
            ),
            10 => Message::Skip((0..n).map(|i| (key(i), w(i))).collect()),
            11 => Message::LinkDigest((0..n).map(|i| (key(i), w(i))).collect()),
            15 => Message::Lost((0..n).map(|i| (w(i), w(i + 1))).collect()),
            _ => Message::LinkPull((0..n).map(key).collect()),
        }
    }

    proptest::proptest! {
        /// `Message::wire_len` (the simulator's byte counters) is exactly the encoded
        /// length, for every kind and every varint width.
        #[test]
        fn wire_len_is_the_encoded_length(
            kind in 0u8..17,
            n in 0usize..24,
            words in proptest::collection::vec(
                proptest::prop_oneof![0u64..200, 0u64..70_000, proptest::num::u64::ANY],
                1..12,
            ),
        ) {
            let msg = sample(kind, n, &words);
            proptest::prop_assert_eq!(msg.wire_len(), encode(&msg).len(), "{:?}", msg.kind());
        }

        /// The decoder is total on what a broken or hostile peer can send: a message of any
        /// kind with bytes overwritten, cut short or extended is refused with an error or
        /// decoded; nothing panics, and what is decoded and verified (forged events
        /// dropped) encodes to a message that decodes again.
        #[test]
        fn decode_is_total_on_damaged_messages(
            kind in 0u8..17,
            n in 0usize..8,
            words in proptest::collection::vec(
                proptest::prop_oneof![0u64..200, proptest::num::u64::ANY],
                1..8,
            ),
            edits in proptest::collection::vec(
                (proptest::prelude::any::<proptest::sample::Index>(), proptest::prelude::any::<u8>()),
                0..4,
            ),
            cut in proptest::option::of(proptest::prelude::any::<proptest::sample::Index>()),
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3),
        ) {
            let mut bytes = encode(&sample(kind, n, &words));
            for (at, b) in edits {
                let i = at.index(bytes.len());
                bytes[i] = b;
            }
            if let Some(cut) = cut {
                bytes.truncate(cut.index(bytes.len() + 1));
            }
            bytes.extend(tail);
            if let Ok(incoming) = decode(&bytes) {
                let (msg, _rejected) = incoming.verify();
                let again = encode(&msg);
                proptest::prop_assert!(decode(&again).is_ok(), "{:?} does not decode again", msg.kind());
            }
        }

        /// Arbitrary bytes: refused or decoded, never a panic.
        #[test]
        fn decode_is_total_on_arbitrary_bytes(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
        ) {
            if let Ok(incoming) = decode(&bytes) {
                let _ = incoming.verify();
            }
        }
    }

    /// Event bodies of every CBOR length-header size, sized exactly.
    #[test]
    fn wire_len_sizes_events_of_every_body_length() {
        for len in [0usize, 10, 200, 300, 70_000] {
            let draft = EventDraft {
                payload: Payload::Clear(vec![b'x'; len]),
                ..event(1).draft().clone()
            };
            let e = Arc::new(Signer::from_secret(&[3; 32]).sign(draft).unwrap());
            for msg in [
                Message::Push {
                    events: vec![e.clone(), e.clone()],
                    relay: Vec::new(),
                    ack: 0,
                    reroutes: 0,
                },
                Message::SyncResponse {
                    events: vec![e.clone()],
                    resume: Some(e.origin()),
                    held: u64::MAX,
                    unsettled: None,
                    your_high: 0,
                },
            ] {
                assert_eq!(msg.wire_len(), encode(&msg).len(), "payload of {len} bytes");
            }
        }
    }

    /// Tags are append-only: messages that existed before a newer variant keep their first
    /// byte, so a request without a summary and an answer that is not `unsettled` encode
    /// as older nodes expect (only the new kinds are unknown to them).
    #[test]
    fn older_message_kinds_keep_their_tags() {
        let request = Message::SyncRequest {
            digest: Vec::new(),
            from_origin: None,
            settled: None,
        };
        assert_eq!(encode(&request), vec![4, 0, 0]);
        let answer = Message::SyncResponse {
            events: Vec::new(),
            resume: None,
            held: 7,
            unsettled: None,
            your_high: 0,
        };
        assert_eq!(encode(&answer), vec![5, 0, 0, 7]);
        assert_eq!(encode(&Message::Links(Vec::new())), vec![9, 0]);
        assert_eq!(encode(&Message::Skip(Vec::new())), vec![10, 0]);
        assert_eq!(encode(&Message::LinkDigest(Vec::new()))[0], 11);
        assert_eq!(encode(&Message::LinkPull(Vec::new()))[0], 12);
        assert_eq!(encode(&Message::Lost(Vec::new())), vec![15, 0]);
    }

    #[test]
    fn trailing_bytes_unknown_tags_and_oversize_are_refused() {
        let mut bytes = encode(&Message::IHave(vec![EventRef::of(&event(1))]));
        bytes.push(0);
        assert!(matches!(decode(&bytes), Err(WireError::Malformed(_))));
        assert!(matches!(decode(&[200]), Err(WireError::Malformed(_))));
        assert!(matches!(decode(&[]), Err(WireError::Malformed(_))));
        let big = vec![0u8; MESSAGE_LEN_MAX + 1];
        let err = decode(&big).unwrap_err();
        assert_eq!(err.reason(), "message_too_long");
    }

    #[test]
    fn a_malformed_envelope_names_its_index() {
        let good = event(1).encode();
        let wire = Wire::Push {
            events: vec![Bytes::new(&good), Bytes::new(&[1, 2, 3])],
            relay: Vec::new(),
            ack: 0,
            reroutes: 0,
        };
        let bytes = postcard::to_allocvec(&wire).unwrap();
        match decode(&bytes) {
            Err(WireError::Event { index, .. }) => assert_eq!(index, 1),
            other => panic!("expected an event error, got {other:?}"),
        }
    }

    #[test]
    fn a_forged_event_is_dropped_and_reported_the_rest_kept() {
        let good = event(1);
        let mut forged = event(2).encode();
        // The signature is the last 64 bytes of the envelope: flip one bit of it.
        let last = forged.len() - 1;
        forged[last] ^= 1;
        let good_bytes = good.encode();
        let wire = Wire::Push {
            events: vec![Bytes::new(&good_bytes), Bytes::new(&forged)],
            relay: Vec::new(),
            ack: 0,
            reroutes: 0,
        };
        let bytes = postcard::to_allocvec(&wire).unwrap();
        let (msg, rejected) = decode(&bytes).unwrap().verify();
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].origin, good.origin());
        match msg {
            Message::Push { events, .. } => {
                assert_eq!(events.len(), 1);
                assert_eq!(events[0].id(), good.id());
            }
            other => panic!("expected a push, got {other:?}"),
        }
    }
}
