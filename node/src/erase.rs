//! Erasure fabric-wide: an erase request (`POST /v1/erase`, `weft erase`) travels as an
//! event on the system stream [`ERASE_STREAM`], like a policy bundle (`policy_push.rs`),
//! and every node applies it when the event reaches its log, whether it arrived by push,
//! by anti-entropy after an outage, or was published here.
//!
//! Applying records a rule in the store (`erase_rules`), deletes every stored event the
//! rule covers (rows in `events`, `log`, `ce_dedup`, the key's `table_keys` row) and
//! remembers each erased event's `(origin, seq, id)` in `erased`. From then on the store
//! refuses events the rule covers ([`weft_fabric::mesh::Inserted::Erased`]), whoever sends
//! them, and the mesh core answers requests for erased sequence numbers with Skips, so no
//! node's ordered delivery waits for them (`docs/tables.md`, Erasure).
//!
//! A rule covers events stamped (HLC) up to [`COVER_AFTER_MS`] after the erase request's
//! own stamp: the data that existed when the erase was asked for, including writes still
//! in flight from a partitioned node or an outbox, but not a key or principal written
//! afresh long after (an erase is not a ban).

use serde::{Deserialize, Serialize};
use weft_fabric::{Event, Hlc, Payload, StreamName};

/// The system stream carrying erase requests (every node stores `_weft.>`).
pub(crate) const ERASE_STREAM: &str = "_weft.erase";
/// Content type of an erase request's payload (a [`Rule`] as JSON).
pub(crate) const CONTENT_TYPE: &str = "application/vnd.weft.erase+json";
/// How long after the erase request's stamp a rule still covers events, ms: the HLC
/// drift bound a node accepts (`serve.rs` `HLC_DRIFT_MS_MAX`), so a producer whose clock
/// runs ahead by up to that much cannot slip a write made before the erase past it.
pub(crate) const COVER_AFTER_MS: u64 = 60_000;
/// Most erase rules a node keeps. Each is a few hundred bytes in memory and checked by
/// map lookups on every insert; 100 000 erasures is far beyond a realistic backlog of
/// subject requests, and the API refuses more (`erase_rules_full`) instead of growing
/// without bound.
pub(crate) const RULES_MAX: usize = 100_000;
/// Longest principal or tenant name in a request, bytes (the envelope's own limit for
/// these fields is lower; this only bounds the request).
pub(crate) const NAME_LEN_MAX: usize = 256;
/// Content type of a retraction on the erase stream: a node retracting its own egress
/// derivatives of sources an erase removed (`store/derived.rs`), a [`Retraction`] as JSON.
pub(crate) const RETRACT_CONTENT_TYPE: &str = "application/vnd.weft.retract+json";
/// How long a node waits for its own retraction to come back through its log before it
/// publishes the numbers still pending again.
pub(crate) const RETRACT_RESEND: std::time::Duration = std::time::Duration::from_secs(60);

/// A retraction: sequence numbers of the publishing node's own derived events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Retraction {
    /// The derivatives' sequence numbers (the carrier's origin is theirs).
    pub(crate) derivatives: Vec<u64>,
}

/// What an erase covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Rule {
    /// With `key`: every event of this key on this stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) stream: Option<String>,
    /// The key (UTF-8, as the tables API names keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) key: Option<String>,
    /// Every event whose security context names this principal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) principal: Option<String>,
    /// With `principal`: only in this tenant (default: every tenant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) tenant: Option<String>,
}

/// A checked rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Target {
    /// One key of one stream.
    Key { stream: String, key: Vec<u8> },
    /// A principal's events, in one tenant or (empty) all.
    Principal { principal: String, tenant: String },
}

impl Target {
    /// The two text/blob columns the store keeps it as, with its kind.
    pub(crate) fn columns(&self) -> (&'static str, &str, &[u8]) {
        match self {
            Target::Key { stream, key } => ("key", stream, key),
            Target::Principal { principal, tenant } => ("principal", principal, tenant.as_bytes()),
        }
    }

    /// From the store's columns.
    pub(crate) fn from_columns(kind: &str, a: String, b: Vec<u8>) -> Option<Self> {
        match kind {
            "key" => Some(Target::Key { stream: a, key: b }),
            "principal" => Some(Target::Principal {
                principal: a,
                tenant: String::from_utf8(b).ok()?,
            }),
            _ => None,
        }
    }

    /// Whether `event` (with the rule's HLC bound already checked) is covered. System
    /// streams are never erased.
    pub(crate) fn covers(&self, event: &weft_fabric::EventData) -> bool {
        if event.stream().is_system() {
            return false;
        }
        match self {
            Target::Key { stream, key } => {
                event.stream().as_str() == stream && event.key() == Some(key.as_slice())
            }
            Target::Principal { principal, tenant } => {
                let s = event.security();
                s.principal == *principal && (tenant.is_empty() || s.tenant == *tenant)
            }
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Key { stream, key } => {
                write!(f, "key {:?} of {stream}", String::from_utf8_lossy(key))
            }
            Target::Principal { principal, tenant } if tenant.is_empty() => {
                write!(f, "principal {principal}")
            }
            Target::Principal { principal, tenant } => {
                write!(f, "principal {principal} in tenant {tenant}")
            }
        }
    }
}

impl Rule {
    /// Checks a request: exactly one of `stream`+`key` or `principal` (with an optional
    /// `tenant`). The error names the field.
    pub(crate) fn check(&self) -> Result<Target, String> {
        match (&self.stream, &self.key, &self.principal) {
            (Some(stream), Some(key), None) => {
                if self.tenant.is_some() {
                    return Err("tenant: only with principal".into());
                }
                let name = StreamName::new(stream.as_str()).map_err(|e| format!("stream: {e}"))?;
                if name.is_system() {
                    return Err(format!(
                        "stream: {stream} is a system stream; system events are never erased"
                    ));
                }
                if key.is_empty() || key.len() > crate::tables::KEY_LEN_MAX {
                    return Err(format!(
                        "key: {} bytes, must be 1 to {} (tables KEY_LEN_MAX)",
                        key.len(),
                        crate::tables::KEY_LEN_MAX
                    ));
                }
                Ok(Target::Key {
                    stream: stream.clone(),
                    key: key.as_bytes().to_vec(),
                })
            }
            (None, None, Some(principal)) => {
                if principal.is_empty() || principal.len() > NAME_LEN_MAX {
                    return Err(format!(
                        "principal: {} bytes, must be 1 to {NAME_LEN_MAX} (NAME_LEN_MAX)",
                        principal.len()
                    ));
                }
                let tenant = self.tenant.clone().unwrap_or_default();
                if self.tenant.is_some() && (tenant.is_empty() || tenant.len() > NAME_LEN_MAX) {
                    return Err(format!(
                        "tenant: {} bytes, must be 1 to {NAME_LEN_MAX} (NAME_LEN_MAX)",
                        tenant.len()
                    ));
                }
                Ok(Target::Principal {
                    principal: principal.clone(),
                    tenant,
                })
            }
            (Some(_), None, None) => Err("key: missing (stream needs key)".into()),
            (None, Some(_), None) => Err("stream: missing (key needs stream)".into()),
            (None, None, None) => {
                Err("stream and key, or principal: one of them is required".into())
            }
            _ => Err("principal: not together with stream/key (one erase per request)".into()),
        }
    }
}

/// The rule an erase carrier holds and the HLC bound it covers up to (packed), or why it
/// is not one.
pub(crate) fn carried(event: &Event) -> Result<(Target, u64), String> {
    if event.stream().as_str() != ERASE_STREAM {
        return Err("not on the erase stream".into());
    }
    let Payload::Clear(bytes) = event.payload() else {
        return Err("an erase request's payload must be clear".into());
    };
    let rule: Rule = serde_json::from_slice(bytes).map_err(|e| format!("malformed: {e}"))?;
    let target = rule.check()?;
    let hlc = event.hlc();
    let bound = Hlc::new(hlc.physical_ms().saturating_add(COVER_AFTER_MS), u16::MAX)
        .map_or(u64::MAX, Hlc::as_u64);
    Ok((target, bound))
}

/// The derivative numbers a retraction carrier names (1 to `RETRACT_NUMBERS_MAX`, none
/// 0), or why it is not a valid one. `None`: not a retraction (an erase request).
pub(crate) fn retraction(event: &Event) -> Option<Result<Vec<u64>, String>> {
    if event.stream().as_str() != ERASE_STREAM
        || crate::egress::media_essence(event.content_type()) != RETRACT_CONTENT_TYPE
    {
        return None;
    }
    let max = crate::store::RETRACT_NUMBERS_MAX;
    Some((|| {
        let Payload::Clear(bytes) = event.payload() else {
            return Err("a retraction's payload must be clear".to_string());
        };
        let r: Retraction =
            serde_json::from_slice(bytes).map_err(|e| format!("malformed retraction: {e}"))?;
        if r.derivatives.is_empty() || r.derivatives.len() > max {
            return Err(format!(
                "derivatives: {} numbers, must be 1 to {max} (RETRACT_NUMBERS_MAX)",
                r.derivatives.len()
            ));
        }
        if r.derivatives.contains(&0) || r.derivatives.iter().any(|s| *s > i64::MAX as u64) {
            return Err("derivatives: a sequence number is 1 to 2^63 - 1".into());
        }
        Ok(r.derivatives)
    })())
}

/// The retractor task: signs and publishes each batch of this node's derivative numbers
/// (from the driver, `store/derived.rs`) as a retraction on the erase stream. A batch
/// that fails is published again by the driver after [`RETRACT_RESEND`].
pub(crate) async fn run_retractor(
    api: std::sync::Arc<crate::http::Api>,
    mut rx: tokio::sync::mpsc::Receiver<Vec<u64>>,
) {
    while let Some(derivatives) = rx.recv().await {
        let n = derivatives.len();
        let Ok(payload) = serde_json::to_vec(&Retraction { derivatives }) else {
            continue;
        };
        let draft = weft_fabric::EventDraft {
            stream: StreamName::new(ERASE_STREAM)
                .unwrap_or_else(|_| unreachable!("valid constant")),
            key: None,
            seq: 0,
            hlc: Hlc::new(0, 0).unwrap_or_else(|_| unreachable!("zero HLC")),
            security: weft_fabric::SecurityContext {
                // The node's own system event: no tenant's data.
                tenant: crate::policy_push::SYSTEM_CLASSIFICATION.into(),
                principal: crate::egress::DERIVED_PRINCIPAL.into(),
                classification: crate::policy_push::SYSTEM_CLASSIFICATION.into(),
                residency: weft_fabric::Residency::Unrestricted,
                scopes: std::collections::BTreeSet::new(),
                policy_epoch: api.policy.epoch(),
            },
            content_type: RETRACT_CONTENT_TYPE.into(),
            payload: Payload::Clear(payload),
            trace: None,
        };
        match crate::http::sign_and_send(
            &api,
            None,
            vec![draft],
            vec![None],
            None,
            crate::driver::Ack::Local,
            std::time::Instant::now(),
        )
        .await
        {
            Ok(_) => tracing::info!(derivatives = n, "derivatives of erased events retracted"),
            Err(e) => tracing::warn!(
                derivatives = n,
                error = ?e,
                "publishing a retraction failed; the node tries again"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(json: &str) -> Result<Target, String> {
        serde_json::from_str::<Rule>(json)
            .map_err(|e| e.to_string())
            .and_then(|r| r.check())
    }

    #[test]
    fn requests_are_checked_field_by_field() {
        assert_eq!(
            rule(r#"{"stream":"prefs.users","key":"alice"}"#),
            Ok(Target::Key {
                stream: "prefs.users".into(),
                key: b"alice".to_vec()
            })
        );
        assert_eq!(
            rule(r#"{"principal":"alice","tenant":"acme"}"#),
            Ok(Target::Principal {
                principal: "alice".into(),
                tenant: "acme".into()
            })
        );
        for (json, field) in [
            (r#"{"stream":"prefs.users"}"#, "key:"),
            (r#"{"key":"a"}"#, "stream:"),
            (r#"{}"#, "stream and key, or principal"),
            (r#"{"stream":"a","key":"b","principal":"c"}"#, "principal:"),
            (r#"{"stream":"_weft.policy","key":"b"}"#, "stream:"),
            (r#"{"stream":"a..b","key":"b"}"#, "stream:"),
            (r#"{"stream":"a","key":""}"#, "key:"),
            (r#"{"stream":"a","key":"b","tenant":"t"}"#, "tenant:"),
            (r#"{"principal":""}"#, "principal:"),
            (r#"{"principal":"p","tenant":""}"#, "tenant:"),
            (r#"{"principal":"p","extra":1}"#, "unknown field"),
        ] {
            let e = rule(json).expect_err(json);
            assert!(e.contains(field), "{json}: {e}");
        }
    }
}
