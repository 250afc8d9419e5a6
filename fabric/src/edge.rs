//! The edge protocol between `weft-agent` and a node's edge port (QUIC, ALPN
//! [`EDGE_ALPN`]): message types, local rules, and the batch framing. No I/O: the node's
//! `edge.rs` and the agent drive it (`docs/agent.md` §Protocol).
//!
//! Every bidirectional stream opened by the agent starts with one kind byte:
//!
//! - [`STREAM_HELLO`]: the control stream. The agent sends one [`Hello`] frame; the node
//!   answers with a [`Profile`] frame and sends a new one whenever its policy epoch changes.
//! - [`STREAM_BATCH`]: one batch of signed envelopes ([`encode_batch`]); the node answers
//!   one [`BatchAnswer`] frame once the events are durable (or busy, or refused).
//! - [`STREAM_COMMANDS`]: the downlink. The agent sends one [`Subscribe`] frame; the node
//!   sends [`encode_command`] frames (log position and envelope) as its log grows.
//!
//! Frames are a 4-byte big-endian length and that many bytes; control frames hold JSON
//! (self-describing, so both sides can add optional fields), batches and commands raw
//! envelopes. Local rules ([`LocalRule`]) are part of policy bundles (`devices.<name>.rules`)
//! and of the [`Profile`], which is why they live here (the policy crate depends on this one).

use serde::{Deserialize, Serialize};

/// ALPN protocol id of the edge protocol (version 1).
pub const EDGE_ALPN: &[u8] = b"weft-edge/1";
/// Stream kind: control (hello, profiles).
pub const STREAM_HELLO: u8 = 1;
/// Stream kind: one batch of events and its answer.
pub const STREAM_BATCH: u8 = 2;
/// Stream kind: the command downlink.
pub const STREAM_COMMANDS: u8 = 3;
/// Largest frame, bytes: one batch of [`BATCH_LEN_MAX`] events of typical size fits, and a
/// node never buffers more than this per stream.
pub const FRAME_LEN_MAX: usize = 4 << 20;
/// Most events in one batch: enough to amortise a round trip and a group commit, small
/// enough that a lost connection costs little to resend.
pub const BATCH_LEN_MAX: usize = 512;
/// Most local rules of one device (they run on every input event of a small device).
pub const RULES_MAX: usize = 32;
/// Most fields one aggregate rule summarises.
pub const AGGREGATE_FIELDS_MAX: usize = 16;
/// Longest aggregation window, seconds (one day: longer windows hold data back too long).
pub const AGGREGATE_WINDOW_S_MAX: u64 = 86_400;

/// The system stream of **void** events: when a node refuses a device's event for good
/// after the agent gave it a sequence number, the agent signs a void event under the same
/// number (a small JSON payload saying why) so that nodes are not left waiting for that
/// number. Nodes store every `_weft.>` stream; applications never read this one.
pub const VOID_STREAM: &str = "_weft.void";
/// Largest void payload, bytes.
pub const VOID_PAYLOAD_LEN_MAX: usize = 1024;
/// Content type of void payloads.
pub const VOID_CONTENT_TYPE: &str = "application/vnd.weft.void+json";

/// Reasons of a [`BatchAnswer::Refused`] that are the answering node's own: it may not
/// hold the event in clear (its jurisdiction is outside the event's residency), or does
/// not store the event's stream. Another node may take it, so an agent keeps the event
/// and moves to another node instead of dead-lettering it.
pub const REFUSED_HERE_ONLY: [&str; 2] = ["residency_ingress", "stream_not_stored"];

/// QUIC application close codes the node uses.
pub mod close {
    /// The device key is not enrolled (policy) or not allowed (config).
    pub const NOT_ENROLLED: u32 = 0x10;
    /// The node is shutting down.
    pub const SHUTDOWN: u32 = 0x11;
    /// The agent broke the protocol (bad frame, unknown stream kind).
    pub const PROTOCOL: u32 = 0x12;
    /// Too many agents are connected.
    pub const TOO_MANY_AGENTS: u32 = 0x13;
    /// A newer connection of the same device key replaced this one.
    pub const REPLACED: u32 = 0x14;
}

/// First frame on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The agent's version (`weft-agent 0.1.0`), for logs.
    pub agent: String,
    /// The device's name for logs (not an identity: the TLS key is).
    pub name: String,
}

/// How to stamp events of the streams a pattern matches (the first matching entry
/// applies, as in the policy's stream rules).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StampRule {
    /// Stream pattern.
    pub pattern: String,
    /// Classification to stamp.
    pub classification: String,
    /// Residency set to stamp (jurisdiction codes); `None` is unrestricted.
    pub residency: Option<Vec<String>>,
}

/// What the node tells an agent about itself: who it is to the fabric, where it may
/// publish, how to stamp, its local rules, the downlink, and the node's limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// The node's name.
    pub node: String,
    /// The node's region.
    pub region: String,
    /// The policy epoch this profile comes from (0: no policy, the node's allow-list).
    pub epoch: u64,
    /// The device's principal (the envelope's `security.principal`).
    pub principal: String,
    /// The device's tenant.
    pub tenant: String,
    /// Stream patterns the device may publish to.
    pub streams: Vec<String>,
    /// How to stamp classification and residency, first match wins; a stream matching
    /// none is stamped [`Profile::default_stamp`].
    pub stamps: Vec<StampRule>,
    /// The stamp for streams no stamp rule matches (`None`: such streams are refused).
    pub default_stamp: Option<StampRule>,
    /// Local rules (filter, sample, aggregate).
    pub rules: Vec<LocalRule>,
    /// The device's command stream, if the node stores it.
    pub commands: Option<String>,
    /// Most events per batch the node accepts.
    pub batch_len_max: u32,
    /// Most batches in flight per agent.
    pub batches_inflight_max: u32,
    /// The highest sequence number of the device's origin the node held (stored or erased)
    /// when it sent this profile (0: none). The agent numbers its next events after it: an
    /// agent whose outbox was lost or restored from an older copy must not reuse numbers,
    /// which the fabric would take for events it already has. Absent from an older node's
    /// profile (0).
    #[serde(default)]
    pub origin_seq_max: u64,
}

/// The node's answer to a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchAnswer {
    /// Every event of the batch is durable on the node (committed; duplicates of events it
    /// already held included). `ids` are the events' hex ids in batch order.
    Durable {
        /// Hex event ids.
        ids: Vec<String>,
    },
    /// The node cannot take the batch now (queue full); nothing of it was kept. Resend
    /// after `retry_ms`.
    Busy {
        /// Milliseconds to wait.
        retry_ms: u64,
    },
    /// The event at `index` is refused for good (bad signature, policy); nothing of the
    /// batch was kept.
    Refused {
        /// Index of the refused event in the batch.
        index: u32,
        /// Reason code (as counted in `weft_rejected_total`).
        reason: String,
        /// What was wrong.
        message: String,
    },
    /// The event at `index` reuses a sequence number the node already holds with other
    /// content (the agent lost its numbering state, e.g. an outbox restored from an older
    /// copy). The batch's other events were taken as usual. The agent numbers the refused
    /// events again, after `held_max`, and resends the rest.
    SeqReused {
        /// Index of the first refused event in the batch.
        index: u32,
        /// Every refused number of the batch (the agent numbers exactly these again).
        #[serde(default)]
        seqs: Vec<u64>,
        /// The highest number of the device this node held apart from the batch's own
        /// new events (stored or erased).
        held_max: u64,
        /// What was wrong.
        message: String,
    },
    /// The node failed to store the batch (store full, I/O); resend later.
    Failed {
        /// Reason code.
        reason: String,
        /// What happened.
        message: String,
    },
}

/// The downlink request: stream the device's command stream after log position `after`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribe {
    /// Last log position the agent handled (0: from the beginning).
    pub after: u64,
}

/// A local rule: applies to input events whose stream matches `stream`; exactly one of
/// `filter`, `sample`, `aggregate`. Rules run in order, before an event gets a sequence
/// number: what they drop leaves no gap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalRule {
    /// Stream pattern the rule applies to.
    pub stream: String,
    /// Drop events whose payload matches the predicate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<FieldPredicate>,
    /// Keep one event in `sample` (the first of every `sample`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample: Option<u64>,
    /// Replace the events of each window by one summary event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate: Option<AggregateRule>,
}

/// A predicate on one field of an event's JSON payload (a dotted path into `data`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldPredicate {
    /// Dotted field path (`reading.level`).
    pub field: String,
    /// Comparison.
    pub op: PredicateOp,
    /// The value compared with, as text: numbers compare numerically when both sides are
    /// numbers, otherwise as text. Not used by `exists`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// Comparison of a [`FieldPredicate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PredicateOp {
    /// Equal.
    Eq,
    /// Not equal (a missing field is not equal).
    Ne,
    /// Less than.
    Lt,
    /// Less than or equal.
    Le,
    /// Greater than.
    Gt,
    /// Greater than or equal.
    Ge,
    /// The field is present.
    Exists,
}

/// Windowed aggregation: per window, one summary event with `count` and, for each field,
/// its `count`, `min`, `max` and `avg` over the window's events (numbers only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateRule {
    /// Window length, seconds (1 to [`AGGREGATE_WINDOW_S_MAX`]).
    pub window_s: u64,
    /// Numeric fields summarised (dotted paths; at most [`AGGREGATE_FIELDS_MAX`]).
    pub fields: Vec<String>,
}

impl LocalRule {
    /// Checks the rule's shape and limits; the error names what is wrong.
    pub fn check(&self) -> Result<(), String> {
        crate::StreamPattern::new(self.stream.clone())
            .map_err(|e| format!("stream {:?}: {e}", self.stream))?;
        let kinds = [
            self.filter.is_some(),
            self.sample.is_some(),
            self.aggregate.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() != 1 {
            return Err("set exactly one of filter, sample, aggregate".into());
        }
        if let Some(f) = &self.filter {
            if f.field.is_empty() || f.field.len() > 256 {
                return Err("filter.field must be 1 to 256 bytes".into());
            }
            match (f.op, &f.value) {
                (PredicateOp::Exists, Some(_)) => {
                    return Err("filter.value is not used with op exists".into());
                }
                (PredicateOp::Exists, None) => {}
                (_, None) => return Err("filter.value is required".into()),
                (_, Some(v)) if v.len() > 256 => {
                    return Err("filter.value must be at most 256 bytes".into());
                }
                _ => {}
            }
        }
        if let Some(n) = self.sample
            && n == 0
        {
            return Err("sample must be at least 1".into());
        }
        if let Some(a) = &self.aggregate {
            if a.window_s == 0 || a.window_s > AGGREGATE_WINDOW_S_MAX {
                return Err(format!(
                    "aggregate.window_s must be 1 to {AGGREGATE_WINDOW_S_MAX} (AGGREGATE_WINDOW_S_MAX), got {}",
                    a.window_s
                ));
            }
            if a.fields.len() > AGGREGATE_FIELDS_MAX {
                return Err(format!(
                    "aggregate.fields has {} entries, over AGGREGATE_FIELDS_MAX ({AGGREGATE_FIELDS_MAX})",
                    a.fields.len()
                ));
            }
            if a.fields.iter().any(|f| f.is_empty() || f.len() > 256) {
                return Err("aggregate.fields entries must be 1 to 256 bytes".into());
            }
        }
        Ok(())
    }
}

/// Why a frame's content could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The frame ended before a declared length.
    #[error("truncated frame at byte {0}")]
    Truncated(usize),
    /// More events than [`BATCH_LEN_MAX`].
    #[error("batch of {0} events, over BATCH_LEN_MAX ({BATCH_LEN_MAX})")]
    TooMany(usize),
    /// Bytes left after the last declared item.
    #[error("{0} bytes left over after the batch")]
    Trailing(usize),
}

/// A batch body: a 4-byte big-endian count, then each envelope as a 4-byte length and
/// its bytes.
pub fn encode_batch<'a>(events: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = vec![0u8; 4];
    let mut n = 0u32;
    for e in events {
        out.extend_from_slice(&(e.len() as u32).to_be_bytes());
        out.extend_from_slice(e);
        n += 1;
    }
    out[..4].copy_from_slice(&n.to_be_bytes());
    out
}

fn take_u32(bytes: &[u8], at: usize) -> Result<u32, FrameError> {
    let b = bytes.get(at..at + 4).ok_or(FrameError::Truncated(at))?;
    Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Splits a batch body into its envelopes (not decoded).
pub fn decode_batch(bytes: &[u8]) -> Result<Vec<&[u8]>, FrameError> {
    let n = take_u32(bytes, 0)? as usize;
    if n > BATCH_LEN_MAX {
        return Err(FrameError::TooMany(n));
    }
    let mut at = 4;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let len = take_u32(bytes, at)? as usize;
        at += 4;
        let e = bytes
            .get(at..at.saturating_add(len))
            .ok_or(FrameError::Truncated(at))?;
        out.push(e);
        at += len;
    }
    if at != bytes.len() {
        return Err(FrameError::Trailing(bytes.len() - at));
    }
    Ok(out)
}

/// A downlink frame body: the 8-byte big-endian log position, then the envelope.
pub fn encode_command(pos: u64, envelope: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + envelope.len());
    out.extend_from_slice(&pos.to_be_bytes());
    out.extend_from_slice(envelope);
    out
}

/// Splits a downlink frame body into its log position and envelope.
pub fn decode_command(bytes: &[u8]) -> Result<(u64, &[u8]), FrameError> {
    let head = bytes.get(..8).ok_or(FrameError::Truncated(0))?;
    let mut pos = [0u8; 8];
    pos.copy_from_slice(head);
    Ok((u64::from_be_bytes(pos), &bytes[8..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_round_trip_and_bad_ones_are_refused() {
        let events: Vec<&[u8]> = vec![b"one", b"", b"three"];
        let body = encode_batch(events.iter().copied());
        assert_eq!(decode_batch(&body).unwrap(), events);
        assert_eq!(
            decode_batch(&body[..body.len() - 1]),
            Err(FrameError::Truncated(19))
        );
        let mut long = body.clone();
        long.push(0);
        assert_eq!(decode_batch(&long), Err(FrameError::Trailing(1)));
        let mut many = body;
        many[..4].copy_from_slice(&((BATCH_LEN_MAX + 1) as u32).to_be_bytes());
        assert_eq!(
            decode_batch(&many),
            Err(FrameError::TooMany(BATCH_LEN_MAX + 1))
        );
        let c = encode_command(7, b"env");
        assert_eq!(decode_command(&c).unwrap(), (7, &b"env"[..]));
    }

    #[test]
    fn rules_are_checked() {
        let ok = LocalRule {
            stream: "t.>".into(),
            filter: None,
            sample: Some(10),
            aggregate: None,
        };
        assert!(ok.check().is_ok());
        let two = LocalRule {
            aggregate: Some(AggregateRule {
                window_s: 60,
                fields: vec!["x".into()],
            }),
            ..ok.clone()
        };
        assert!(two.check().unwrap_err().contains("exactly one"));
        let zero = LocalRule {
            sample: Some(0),
            ..ok.clone()
        };
        assert!(zero.check().is_err());
        let no_value = LocalRule {
            sample: None,
            filter: Some(FieldPredicate {
                field: "level".into(),
                op: PredicateOp::Eq,
                value: None,
            }),
            ..ok
        };
        assert!(no_value.check().unwrap_err().contains("value"));
    }
}
