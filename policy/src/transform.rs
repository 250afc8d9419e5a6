//! Egress transforms (`docs/policy.md` §7): pure functions from a source event's JSON
//! payload to a derived payload for another stream, with fields dropped, hashed or masked,
//! or aggregated over a window, always carrying lineage back to the source event ids.
//!
//! The node decides when to run them (on events that may not leave their residency set)
//! and publishes the derived payload as a new event it signs; nothing here does I/O or
//! reads a clock (an aggregation window is closed by the caller, with its start time).

use std::collections::BTreeMap;
use std::sync::Arc;

use hmac::{KeyInit, Mac};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use weft_fabric::{EventId, StreamName, StreamPattern};

use crate::bundle::TransformSpec;
use crate::error::{BundleError, TransformError};
use crate::limits::*;
use crate::sign::hex;

/// A derived payload, ready to publish on `stream` with `classification`.
#[derive(Debug, Clone, PartialEq)]
pub struct Derived {
    /// Target stream.
    pub stream: StreamName,
    /// Classification of the derived event.
    pub classification: String,
    /// JSON: `{"data": ..., "lineage": {...}}`.
    pub payload: Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Mask {
    path: Vec<String>,
    keep_last: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Ops {
    Fields {
        /// Non-empty: the allow list (the derived payload carries these, and the hashed
        /// and masked fields, only).
        keep: Vec<Vec<String>>,
        drop: Vec<Vec<String>>,
        hash: Vec<Vec<String>>,
        hashing: Hashing,
        mask: Vec<Mask>,
    },
    Aggregate {
        window_s: u64,
        group_by: Vec<Vec<String>>,
        sum: Vec<Vec<String>>,
        /// The fewest events a published group holds (1: every group).
        min_count: u64,
    },
}

/// How a field transform hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Hashing {
    /// SHA-256 over a domain separator, this salt (from the bundle) and the value.
    Salted(String),
    /// HMAC-SHA256 under the node-local key of this name.
    Keyed(String),
}

/// Node-local secret keys for transforms that hash under one (`hash_key`), by name: read
/// from each node's own configuration, never from a bundle, so a node that holds the
/// bundle and the derived data (anywhere the target class may go) cannot test guesses
/// against the hashes. `Debug` shows the names only.
#[derive(Clone, Default)]
pub struct HashKeys(BTreeMap<String, Arc<[u8]>>);

impl HashKeys {
    /// No keys.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the key `name`; refuses a name that is not 1 to [`HASH_KEY_NAME_LEN_MAX`]
    /// letters, digits, `-`, `_` or `.`, and a key shorter than [`HASH_KEY_LEN_MIN`] or
    /// longer than [`HASH_KEY_LEN_MAX`] bytes, saying which.
    pub fn insert(&mut self, name: &str, key: Vec<u8>) -> Result<(), String> {
        check_hash_key_name(name)?;
        if !(HASH_KEY_LEN_MIN..=HASH_KEY_LEN_MAX).contains(&key.len()) {
            return Err(format!(
                "hash key `{name}` is {} bytes: it must be {HASH_KEY_LEN_MIN} (HASH_KEY_LEN_MIN) to {HASH_KEY_LEN_MAX} (HASH_KEY_LEN_MAX)",
                key.len()
            ));
        }
        self.0.insert(name.into(), key.into());
        Ok(())
    }

    /// The names of the keys held.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
}

impl std::fmt::Debug for HashKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.names()).finish()
    }
}

fn check_hash_key_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= HASH_KEY_NAME_LEN_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "hash key name `{}` must be 1 to {HASH_KEY_NAME_LEN_MAX} (HASH_KEY_NAME_LEN_MAX) letters, digits, `-`, `_` or `.`",
            name.chars().take(80).collect::<String>()
        ))
    }
}

/// A compiled egress transform.
#[derive(Debug, Clone)]
pub struct Transform {
    name: String,
    source: StreamPattern,
    target: StreamName,
    classification: String,
    epoch: u64,
    ops: Ops,
}

fn field_path(field: &str, path: &str) -> Result<Vec<String>, BundleError> {
    if path.len() > FIELD_PATH_LEN_MAX {
        return Err(BundleError::TooLong {
            field: field.into(),
            len: path.len(),
            limit: "FIELD_PATH_LEN_MAX",
            max: FIELD_PATH_LEN_MAX,
        });
    }
    let segments: Vec<String> = path.split('.').map(str::to_owned).collect();
    if segments.len() > FIELD_PATH_DEPTH_MAX {
        return Err(BundleError::TooMany {
            field: field.into(),
            len: segments.len(),
            limit: "FIELD_PATH_DEPTH_MAX",
            max: FIELD_PATH_DEPTH_MAX,
        });
    }
    if segments.iter().any(String::is_empty) {
        return Err(BundleError::Invalid {
            field: field.into(),
            reason: format!("`{path}` has an empty segment"),
        });
    }
    Ok(segments)
}

fn paths(field: &str, list: &[String]) -> Result<Vec<Vec<String>>, BundleError> {
    list.iter()
        .enumerate()
        .map(|(i, p)| field_path(&format!("{field}[{i}]"), p))
        .collect()
}

impl Transform {
    pub(crate) fn compile(
        field: &str,
        name: &str,
        spec: &TransformSpec,
        epoch: u64,
    ) -> Result<Transform, BundleError> {
        let invalid = |f: String, reason: &str| BundleError::Invalid {
            field: f,
            reason: reason.into(),
        };
        let source = StreamPattern::new(spec.source.clone())
            .map_err(|e| invalid(format!("{field}.source"), &e.to_string()))?;
        let target = StreamName::new(spec.target.clone())
            .map_err(|e| invalid(format!("{field}.target"), &e.to_string()))?;
        if source.matches(&target) {
            return Err(invalid(
                format!("{field}.target"),
                "matches the source pattern: the transform would feed itself",
            ));
        }
        if target.is_system() {
            return Err(invalid(
                format!("{field}.target"),
                "is a system stream (_weft.*): only the fabric writes those",
            ));
        }
        let fields = spec.drop.len()
            + spec.keep.len()
            + spec.hash.len()
            + spec.mask.len()
            + spec
                .aggregate
                .as_ref()
                .map_or(0, |a| a.group_by.len() + a.sum.len());
        if fields > TRANSFORM_FIELDS_MAX {
            return Err(BundleError::TooMany {
                field: field.into(),
                len: fields,
                limit: "TRANSFORM_FIELDS_MAX",
                max: TRANSFORM_FIELDS_MAX,
            });
        }
        if spec
            .salt
            .as_ref()
            .is_some_and(|s| s.len() > FIELD_PATH_LEN_MAX)
        {
            return Err(BundleError::TooLong {
                field: format!("{field}.salt"),
                len: spec.salt.as_ref().map_or(0, String::len),
                limit: "FIELD_PATH_LEN_MAX",
                max: FIELD_PATH_LEN_MAX,
            });
        }
        if let Some(name) = &spec.hash_key {
            check_hash_key_name(name).map_err(|r| invalid(format!("{field}.hash_key"), &r))?;
            if spec.salt.is_some() {
                return Err(invalid(
                    format!("{field}.salt"),
                    "excludes hash_key (hashes under a node-local key need no salt in the bundle)",
                ));
            }
            if spec.hash.is_empty() {
                return Err(invalid(
                    format!("{field}.hash_key"),
                    "needs hash (the fields hashed under the key)",
                ));
            }
        }
        let ops = match &spec.aggregate {
            Some(agg) => {
                if !spec.drop.is_empty()
                    || !spec.keep.is_empty()
                    || !spec.hash.is_empty()
                    || !spec.mask.is_empty()
                {
                    return Err(invalid(
                        format!("{field}.aggregate"),
                        "excludes keep, drop, hash and mask (an aggregate keeps only its groups and sums)",
                    ));
                }
                if agg.window_s == 0 {
                    return Err(invalid(
                        format!("{field}.aggregate.window_s"),
                        "must be at least 1",
                    ));
                }
                let min_count = agg.min_count.unwrap_or(1);
                if !(1..=AGGREGATE_MIN_COUNT_MAX).contains(&min_count) {
                    return Err(invalid(
                        format!("{field}.aggregate.min_count"),
                        &format!(
                            "must be 1 to {AGGREGATE_MIN_COUNT_MAX} (AGGREGATE_MIN_COUNT_MAX), got {min_count}"
                        ),
                    ));
                }
                Ops::Aggregate {
                    window_s: agg.window_s,
                    group_by: paths(&format!("{field}.aggregate.group_by"), &agg.group_by)?,
                    sum: paths(&format!("{field}.aggregate.sum"), &agg.sum)?,
                    min_count,
                }
            }
            None => {
                if spec.drop.is_empty()
                    && spec.keep.is_empty()
                    && spec.hash.is_empty()
                    && spec.mask.is_empty()
                {
                    return Err(invalid(
                        field.into(),
                        "set keep, drop, hash, mask or aggregate (a transform that changes nothing would copy the data out)",
                    ));
                }
                if !spec.keep.is_empty() && !spec.drop.is_empty() {
                    return Err(invalid(
                        format!("{field}.drop"),
                        "excludes keep (with keep, every field not kept, hashed or masked is left out)",
                    ));
                }
                Ops::Fields {
                    keep: paths(&format!("{field}.keep"), &spec.keep)?,
                    drop: paths(&format!("{field}.drop"), &spec.drop)?,
                    hash: paths(&format!("{field}.hash"), &spec.hash)?,
                    hashing: match &spec.hash_key {
                        Some(name) => Hashing::Keyed(name.clone()),
                        None => Hashing::Salted(spec.salt.clone().unwrap_or_default()),
                    },
                    mask: spec
                        .mask
                        .iter()
                        .enumerate()
                        .map(|(i, m)| {
                            Ok(Mask {
                                path: field_path(&format!("{field}.mask[{i}].field"), &m.field)?,
                                keep_last: usize::from(m.keep_last),
                            })
                        })
                        .collect::<Result<_, BundleError>>()?,
                }
            }
        };
        Ok(Transform {
            name: name.into(),
            source,
            target,
            classification: spec.classification.clone(),
            epoch,
            ops,
        })
    }

    /// The transform's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether `other` derives exactly what this one does (source, target, class and
    /// operations; the epoch aside): an aggregate window folded under one can be published
    /// under the other.
    pub fn same_derivation(&self, other: &Transform) -> bool {
        self.name == other.name
            && self.source == other.source
            && self.target == other.target
            && self.classification == other.classification
            && self.ops == other.ops
    }

    /// The source pattern.
    pub fn source(&self) -> &StreamPattern {
        &self.source
    }

    /// The target stream.
    pub fn target(&self) -> &StreamName {
        &self.target
    }

    /// Whether this transform aggregates (use [`Transform::window`]) rather than mapping
    /// one event to one (use [`Transform::apply`]).
    pub fn is_aggregate(&self) -> bool {
        matches!(self.ops, Ops::Aggregate { .. })
    }

    /// The aggregation window length, seconds, for an aggregating transform.
    pub fn window_s(&self) -> Option<u64> {
        match self.ops {
            Ops::Aggregate { window_s, .. } => Some(window_s),
            Ops::Fields { .. } => None,
        }
    }

    /// The name of the node-local key this transform hashes under (`hash_key`), if any.
    pub fn hash_key(&self) -> Option<&str> {
        match &self.ops {
            Ops::Fields {
                hashing: Hashing::Keyed(name),
                ..
            } => Some(name),
            _ => None,
        }
    }

    /// Derives one payload from one source event's JSON payload: with an allow list
    /// (`keep`), only the fields it names and those hashed or masked, every other one left
    /// out; otherwise fields dropped. Then fields hashed and masked (all but the last
    /// `keep_last` characters, and at most half, replaced by `*`; non-strings masked as
    /// their JSON text). Fields that are absent are skipped. A hash is `hmac-sha256:` +
    /// hex of HMAC-SHA256 under the node-local key `hash_key` (from `keys`; a key this
    /// node lacks derives nothing) over a domain separator and the value's JSON, or, with
    /// a salt from the bundle, `sha256:` + hex of SHA-256 over the separator, the salt and
    /// the value's JSON.
    pub fn apply(
        &self,
        source: &EventId,
        payload: &[u8],
        keys: &HashKeys,
    ) -> Result<Derived, TransformError> {
        let Ops::Fields {
            keep,
            drop,
            hash,
            hashing,
            mask,
        } = &self.ops
        else {
            return Err(TransformError::WrongKind {
                name: self.name.clone(),
                reason: "aggregates: use window() and add()",
            });
        };
        // The key is looked up before anything else: a node without it derives nothing.
        let hasher: Box<dyn Fn(&Value) -> String + '_> = match hashing {
            Hashing::Keyed(name) => {
                let key = keys
                    .0
                    .get(name)
                    .ok_or_else(|| TransformError::HashKeyMissing { name: name.clone() })?;
                Box::new(move |v| keyed_hash(key, v))
            }
            Hashing::Salted(salt) => Box::new(move |v| hash_value(salt, v)),
        };
        let mut data = parse_object(payload)?;
        // Fail closed: a field transforms cannot reach (under an array or a scalar, or
        // behind a dotted key) must not go out untouched.
        check_keys(&data)?;
        for path in keep
            .iter()
            .chain(drop)
            .chain(hash)
            .chain(mask.iter().map(|m| &m.path))
        {
            check_path(&data, path)?;
        }
        if !keep.is_empty() {
            let mut kept = Map::new();
            for path in keep.iter().chain(hash).chain(mask.iter().map(|m| &m.path)) {
                if let Some(v) = get(&data, path) {
                    put(&mut kept, path, v.clone());
                }
            }
            data = kept;
        }
        for path in drop {
            take(&mut data, path);
        }
        for path in hash {
            if let Some(v) = get_mut(&mut data, path) {
                *v = Value::String(hasher(v));
            }
        }
        for m in mask {
            if let Some(v) = get_mut(&mut data, &m.path) {
                let text = match &*v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                *v = Value::String(mask_text(&text, m.keep_last));
            }
        }
        Ok(Derived {
            stream: self.target.clone(),
            classification: self.classification.clone(),
            payload: json!({
                "data": Value::Object(data),
                "lineage": {
                    "transform": self.name,
                    "policy_epoch": self.epoch,
                    "sources": [hex(&source.0)],
                },
            }),
        })
    }

    /// A new, empty aggregation window for an aggregating transform.
    pub fn window(&self) -> Result<AggregateWindow, TransformError> {
        match &self.ops {
            Ops::Aggregate { .. } => Ok(AggregateWindow {
                groups: BTreeMap::new(),
            }),
            Ops::Fields { .. } => Err(TransformError::WrongKind {
                name: self.name.clone(),
                reason: "maps one event to one: use apply()",
            }),
        }
    }
}

/// One window of an aggregating transform: groups with their counts and sums, and the
/// source ids for lineage. The caller closes it with [`AggregateWindow::finish`].
#[derive(Debug, Clone, Default)]
pub struct AggregateWindow {
    groups: BTreeMap<String, Group>,
}

#[derive(Debug, Clone)]
struct Group {
    key: Map<String, Value>,
    count: u64,
    sums: Vec<f64>,
    ids: Vec<String>,
    digest: Sha256,
}

impl AggregateWindow {
    /// Adds one source event. Refuses a payload that is not a JSON object, a summed field
    /// that is not a number, and a new group once [`AGGREGATE_GROUPS_MAX`] are held; the
    /// window is unchanged on error.
    pub fn add(
        &mut self,
        transform: &Transform,
        source: &EventId,
        payload: &[u8],
    ) -> Result<(), TransformError> {
        let Ops::Aggregate { group_by, sum, .. } = &transform.ops else {
            return Err(TransformError::WrongKind {
                name: transform.name.clone(),
                reason: "maps one event to one: use apply()",
            });
        };
        let mut data = parse_object(payload)?;
        let mut key = Map::new();
        for path in group_by {
            let v = get_mut(&mut data, path).map_or(Value::Null, |v| v.clone());
            key.insert(path.join("."), v);
        }
        let mut values = Vec::with_capacity(sum.len());
        for path in sum {
            let v = match get_mut(&mut data, path) {
                None => 0.0,
                Some(v) => v.as_f64().ok_or_else(|| TransformError::NotNumber {
                    field: path.join("."),
                })?,
            };
            values.push(v);
        }
        let group_id = Value::Object(key.clone()).to_string();
        if !self.groups.contains_key(&group_id) && self.groups.len() >= AGGREGATE_GROUPS_MAX {
            return Err(TransformError::GroupsFull {
                max: AGGREGATE_GROUPS_MAX,
            });
        }
        let group = self.groups.entry(group_id).or_insert_with(|| Group {
            key,
            count: 0,
            sums: vec![0.0; sum.len()],
            ids: Vec::new(),
            digest: Sha256::new(),
        });
        group.count += 1;
        for (s, v) in group.sums.iter_mut().zip(values) {
            *s += v;
        }
        if group.ids.len() < AGGREGATE_LINEAGE_IDS_MAX {
            group.ids.push(hex(&source.0));
        }
        group.digest.update(source.0);
        Ok(())
    }

    /// Events added so far, all groups together.
    pub fn len(&self) -> u64 {
        self.groups.values().map(|g| g.count).sum()
    }

    /// Groups held (at most [`AGGREGATE_GROUPS_MAX`]): what a caller bounding its memory
    /// counts, since each group keeps its key and up to [`AGGREGATE_LINEAGE_IDS_MAX`] ids.
    pub fn groups_len(&self) -> usize {
        self.groups.len()
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Closes the window that started at `window_start_ms`: one derived payload per group
    /// of at least `min_count` events, in group order, each with the group's fields,
    /// `count`, the sums, and lineage (the first [`AGGREGATE_LINEAGE_IDS_MAX`] source ids,
    /// and the SHA-256 of all of them in the order added). Groups under `min_count` are
    /// folded into one rest group (its group fields `null`, `"rest": true`, `rest_groups`:
    /// how many; lineage `sources_sha256` over the folded groups' own, in group order),
    /// published last, and only if it holds `min_count` events itself: no published figure
    /// is about fewer.
    pub fn finish(self, transform: &Transform, window_start_ms: u64) -> Vec<Derived> {
        let (window_s, sum, min_count) = match &transform.ops {
            Ops::Aggregate {
                window_s,
                sum,
                min_count,
                ..
            } => (*window_s, sum, *min_count),
            Ops::Fields { .. } => return Vec::new(),
        };
        let (mut groups, small): (Vec<Group>, Vec<Group>) = self
            .groups
            .into_values()
            .partition(|g| g.count >= min_count);
        let mut rest_groups = 0usize;
        let rest = small.into_iter().fold(None::<Group>, |rest, g| {
            rest_groups += 1;
            let own = hex(&g.digest.finalize());
            Some(match rest {
                None => {
                    let mut digest = Sha256::new();
                    digest.update(own.as_bytes());
                    Group {
                        key: g.key.keys().map(|k| (k.clone(), Value::Null)).collect(),
                        count: g.count,
                        sums: g.sums,
                        ids: g.ids,
                        digest,
                    }
                }
                Some(mut r) => {
                    r.count += g.count;
                    for (s, v) in r.sums.iter_mut().zip(g.sums) {
                        *s += v;
                    }
                    let room = AGGREGATE_LINEAGE_IDS_MAX.saturating_sub(r.ids.len());
                    r.ids.extend(g.ids.into_iter().take(room));
                    r.digest.update(own.as_bytes());
                    r
                }
            })
        });
        let rest = rest.filter(|r| r.count >= min_count).map(|mut r| {
            r.key.insert("rest".into(), Value::Bool(true));
            r.key.insert("rest_groups".into(), json!(rest_groups));
            r
        });
        groups.extend(rest);
        groups
            .into_iter()
            .map(|g| {
                let mut data = g.key;
                data.insert("count".into(), json!(g.count));
                for (path, total) in sum.iter().zip(&g.sums) {
                    data.insert(format!("sum.{}", path.join(".")), json!(total));
                }
                Derived {
                    stream: transform.target.clone(),
                    classification: transform.classification.clone(),
                    payload: json!({
                        "data": Value::Object(data),
                        "lineage": {
                            "transform": transform.name,
                            "policy_epoch": transform.epoch,
                            "window_start_ms": window_start_ms,
                            "window_s": window_s,
                            "source_count": g.count,
                            "sources": g.ids,
                            "sources_sha256": hex(&g.digest.finalize()),
                        },
                    }),
                }
            })
            .collect()
    }
}

fn parse_object(payload: &[u8]) -> Result<Map<String, Value>, TransformError> {
    match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(TransformError::NotJson("expected an object".into())),
        Err(e) => Err(TransformError::NotJson(e.to_string())),
    }
}

/// Every object key in `map` (at any depth, arrays included) is nameable by a path: no
/// `.` in it.
fn check_keys(map: &Map<String, Value>) -> Result<(), TransformError> {
    fn value(v: &Value) -> Result<(), TransformError> {
        match v {
            Value::Object(map) => check_keys(map),
            Value::Array(items) => items.iter().try_for_each(value),
            _ => Ok(()),
        }
    }
    for (k, child) in map {
        if k.contains('.') {
            return Err(TransformError::DottedKey {
                key: k.chars().take(64).collect(),
            });
        }
        value(child)?;
    }
    Ok(())
}

/// `path` is absent from `data` or can be followed to its end: every value on the way
/// that is present is an object.
fn check_path(data: &Map<String, Value>, path: &[String]) -> Result<(), TransformError> {
    let Some((first, rest)) = path.split_first() else {
        return Ok(());
    };
    let mut v = match data.get(first) {
        Some(v) => v,
        None => return Ok(()),
    };
    for (i, seg) in rest.iter().enumerate() {
        match v {
            Value::Object(map) => match map.get(seg) {
                Some(next) => v = next,
                None => return Ok(()),
            },
            // `null` holds nothing under it.
            Value::Null => return Ok(()),
            _ => {
                return Err(TransformError::Unresolved {
                    path: path.join("."),
                    at: path[..=i].join("."),
                });
            }
        }
    }
    Ok(())
}

fn get_mut<'a>(data: &'a mut Map<String, Value>, path: &[String]) -> Option<&'a mut Value> {
    let (first, rest) = path.split_first()?;
    let mut v = data.get_mut(first)?;
    for seg in rest {
        v = v.as_object_mut()?.get_mut(seg)?;
    }
    Some(v)
}

fn get<'a>(data: &'a Map<String, Value>, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let mut v = data.get(first)?;
    for seg in rest {
        v = v.as_object()?.get(seg)?;
    }
    Some(v)
}

/// Sets `path` in `data` to `value`, making the objects on the way. A path under one
/// already set whole (a kept object) is in it already: left as it is.
fn put(data: &mut Map<String, Value>, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut map = data;
    for seg in parents {
        let next = map
            .entry(seg.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        match next {
            Value::Object(m) => map = m,
            _ => return,
        }
    }
    map.insert(last.clone(), value);
}

fn take(data: &mut Map<String, Value>, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    if parents.is_empty() {
        data.remove(last);
    } else if let Some(Value::Object(parent)) = get_mut(data, parents) {
        parent.remove(last);
    }
}

fn hash_value(salt: &str, v: &Value) -> String {
    let mut h = Sha256::new();
    h.update(b"weft/transform-hash\0");
    h.update(salt.as_bytes());
    h.update([0]);
    h.update(v.to_string().as_bytes());
    format!("sha256:{}", hex(&h.finalize()))
}

/// `hmac-sha256:` + hex of HMAC-SHA256 under `key` of the domain separator and the value's
/// JSON text.
fn keyed_hash(key: &[u8], v: &Value) -> String {
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(b"weft/transform-hash\0");
    mac.update(v.to_string().as_bytes());
    format!("hmac-sha256:{}", hex(&mac.finalize().into_bytes()))
}

/// `text` with all but its last `keep_last` characters replaced by `*`, and never more
/// than half of them kept: a value no longer than `keep_last` (a short id, a two-letter
/// code) would otherwise pass in full.
fn mask_text(text: &str, keep_last: usize) -> String {
    let n = text.chars().count();
    let keep = keep_last.min(n / 2);
    let mut out: String = "*".repeat(n - keep);
    out.extend(text.chars().skip(n - keep));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mask_never_shows_more_than_half_of_a_value() {
        assert_eq!(mask_text("4111111111111111", 4), "************1111");
        assert_eq!(mask_text("abcd", 4), "**cd", "not the whole value");
        assert_eq!(mask_text("ab", 4), "*b");
        assert_eq!(mask_text("a", 4), "*");
        assert_eq!(mask_text("", 4), "");
        assert_eq!(mask_text("héllo", 0), "*****");
    }
}
