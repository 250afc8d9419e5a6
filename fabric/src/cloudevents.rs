//! CloudEvents 1.0 input (HTTP protocol binding, JSON event format), parsed and validated
//! into one normalized structured form: shared by the node's HTTP API and the edge agent's
//! local HTTP input, so that an event one accepts the other accepts too.
//!
//! Every input mode (structured, batch, binary) is validated and normalized to the
//! structured-mode JSON object ([`IncomingEvent::structured`]), which the node stores as a
//! Weft event's payload of content type [`CE_JSON`] (the node's `cloudevents` module also
//! renders stored events back for readers).
//!
//! `data` is normalized by the datacontenttype: a JSON value for JSON media types
//! (`application/json`, `*/*+json`, or none in structured mode), a JSON string for `text/*`,
//! else `data_base64`.
//!
//! Weft extension attributes: a publisher may set `weftstream` (the stream, when the HTTP
//! path names none) and `weftkey` (the table key; else `subject` is the key).
//!
//! This module does no I/O: bytes and header pairs in, values out.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value};

use crate::StreamName;
use crate::limits::{KEY_LEN_MAX, PAYLOAD_LEN_MAX};

/// Longest CloudEvent `id` and `source`, in bytes: together they are the node's
/// idempotency key (kept for dedup; the spec sets no limit, real ids are UUIDs and sources
/// short URIs).
pub const CE_FIELD_LEN_MAX: usize = 512;

/// The essence of a media type: `type/subtype`, lower case, without parameters.
pub fn media_essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// Media type of one CloudEvent in structured mode (JSON event format).
pub const CE_JSON: &str = "application/cloudevents+json";

/// Media type of a JSON array of CloudEvents (batched mode).
pub const CE_BATCH_JSON: &str = "application/cloudevents-batch+json";

/// The CloudEvents version this module reads and writes.
pub const SPEC_VERSION: &str = "1.0";

/// Most events in one batch. Each becomes a signed, stored Weft event within one request:
/// the HTTP body limit bounds a request's bytes, this bounds its events (and the work and
/// per-event results one request can cause).
pub const BATCH_LEN_MAX: usize = 1000;

/// Longest attribute name, in bytes. The spec recommends at most 20 so that names fit every
/// protocol binding (some brokers limit header names); Weft enforces it.
pub const ATTRIBUTE_NAME_LEN_MAX: usize = 20;

/// Longest piece of client input (a name or value) echoed in an error message, in chars.
/// Errors end up in logs and HTTP responses; a megabyte attribute name must not.
const ERROR_ECHO_LEN_MAX: usize = 64;

/// The JSON media type; any `type/subtype+json` counts as JSON too.
const JSON_MEDIA_TYPE: &str = "application/json";

/// Prefix of the HTTP headers that carry attributes in binary mode.
const HEADER_PREFIX: &str = "ce-";

const _: () = assert!(BATCH_LEN_MAX > 0);
// check_name()'s message spells the limit out.
const _: () = assert!(ATTRIBUTE_NAME_LEN_MAX == 20);
const _: () = assert!("weftclassification".len() <= ATTRIBUTE_NAME_LEN_MAX);
const _: () = assert!("datacontenttype".len() <= ATTRIBUTE_NAME_LEN_MAX);

/// Why an incoming CloudEvent (or batch) was refused. Parsing has no state, so nothing
/// changes on any error; the caller answers 400 and counts [`CeError::reason`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CeError {
    /// The body is not JSON, or not the JSON shape the mode requires.
    #[error("body is not a valid CloudEvent JSON document: {detail}")]
    BadJson {
        /// What the parser or shape check found.
        detail: String,
    },
    /// A required attribute is absent.
    #[error("required attribute `{name}` is missing")]
    MissingAttribute {
        /// The attribute.
        name: &'static str,
    },
    /// `specversion` is not [`SPEC_VERSION`].
    #[error("attribute `specversion` is {found}; only \"1.0\" is supported")]
    BadSpecversion {
        /// The value found (as JSON, clipped).
        found: String,
    },
    /// An attribute name breaks the grammar (lowercase `a-z0-9`, 1 to
    /// [`ATTRIBUTE_NAME_LEN_MAX`] bytes) or is not allowed where it appeared.
    #[error("attribute name `{name}` is not allowed: {reason}")]
    BadAttributeName {
        /// The name (clipped).
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// An attribute value has the wrong type or shape.
    #[error("attribute `{name}` has an invalid value: {reason}")]
    BadAttributeValue {
        /// The attribute.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A `weft*` extension attribute other than `weftstream` and `weftkey`: those are the
    /// node's own, set from the signed envelope when an event is read, so a publisher
    /// cannot make one look attested.
    #[error(
        "attribute `{name}` is reserved: names beginning with `weft` are set by the node from the signed envelope when the event is read; a publisher may set only `weftstream` and `weftkey`"
    )]
    ReservedAttribute {
        /// The attribute (clipped).
        name: String,
    },
    /// A request read as a binary-mode CloudEvent (its content type is neither
    /// [`CE_JSON`] nor [`CE_BATCH_JSON`]) without a `ce-specversion` header.
    #[error(
        "attribute `specversion` is missing: a body of content type {content_type} is read as a binary-mode CloudEvent, whose attributes come in `ce-*` headers (ce-specversion, ce-id, ce-source, ce-type); send a structured event with Content-Type application/cloudevents+json, a batch with application/cloudevents-batch+json"
    )]
    NotBinaryMode {
        /// The request's content type, or `none` (clipped).
        content_type: String,
    },
    /// The same attribute appears twice (two `ce-` headers of one name).
    #[error("attribute `{name}` appears more than once")]
    DuplicateAttribute {
        /// The attribute.
        name: String,
    },
    /// `time` is not an RFC 3339 timestamp.
    #[error("attribute `time` is {value:?}, not an RFC 3339 timestamp: {reason}")]
    BadTime {
        /// The value found (clipped).
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The event's data does not match its datacontenttype or encoding.
    #[error("event data is invalid: {reason}")]
    BadData {
        /// What is wrong with it.
        reason: String,
    },
    /// A binary-mode body whose content type says text or JSON is not UTF-8.
    #[error("body is not UTF-8 but its content type {content_type:?} requires it")]
    DataNotUtf8 {
        /// The declared content type (clipped).
        content_type: String,
    },
    /// A `ce-` header value is not percent-encoded UTF-8.
    #[error("header `{header}` is not percent-encoded UTF-8: {reason}")]
    BadHeaderEncoding {
        /// The header name (clipped).
        header: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The normalized event is larger than a Weft payload may be.
    #[error("event is {len} bytes as structured JSON, over the limit PAYLOAD_LEN_MAX = {max}")]
    PayloadTooLarge {
        /// Its length in bytes.
        len: usize,
        /// [`PAYLOAD_LEN_MAX`].
        max: usize,
    },
    /// A batch holds no events.
    #[error("batch is an empty array; send at least one event")]
    BatchEmpty,
    /// A batch holds more than [`BATCH_LEN_MAX`] events.
    #[error("batch has {len} events, over the limit BATCH_LEN_MAX = {max}")]
    BatchTooLarge {
        /// Events in the batch.
        len: usize,
        /// [`BATCH_LEN_MAX`].
        max: usize,
    },
    /// One event of a batch is invalid; the whole batch is refused.
    #[error("batch event at index {index}: {source}")]
    InBatch {
        /// Zero-based position in the batch array.
        index: usize,
        /// What is wrong with that event.
        source: Box<CeError>,
    },
}

impl CeError {
    /// A short snake_case code for metrics labels. For [`CeError::InBatch`], the code of the
    /// event's own error.
    pub fn reason(&self) -> &'static str {
        match self {
            CeError::BadJson { .. } => "bad_json",
            CeError::MissingAttribute { .. } => "missing_attribute",
            CeError::BadSpecversion { .. } => "bad_specversion",
            CeError::BadAttributeName { .. } => "bad_attribute_name",
            CeError::ReservedAttribute { .. } => "reserved_attribute",
            CeError::NotBinaryMode { .. } => "missing_attribute",
            CeError::BadAttributeValue { .. } => "bad_attribute_value",
            CeError::DuplicateAttribute { .. } => "duplicate_attribute",
            CeError::BadTime { .. } => "bad_time",
            CeError::BadData { .. } => "bad_data",
            CeError::DataNotUtf8 { .. } => "data_not_utf8",
            CeError::BadHeaderEncoding { .. } => "bad_header_encoding",
            CeError::PayloadTooLarge { .. } => "payload_too_large",
            CeError::BatchEmpty => "batch_empty",
            CeError::BatchTooLarge { .. } => "batch_too_large",
            CeError::InBatch { source, .. } => source.reason(),
        }
    }
}

/// A validated incoming CloudEvent, normalized to structured JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct IncomingEvent {
    /// `id`.
    pub id: String,
    /// `source` (a URI-reference).
    pub source: String,
    /// `type`.
    pub ty: String,
    /// `weftstream`, validated as a stream name: where to publish when the path names no
    /// stream.
    pub stream: Option<StreamName>,
    /// The table key: `weftkey`, else `subject` (1 to [`KEY_LEN_MAX`] bytes).
    pub key: Option<String>,
    /// The full structured form: what gets stored, as the payload with content type
    /// [`CE_JSON`].
    pub structured: Map<String, Value>,
}

impl IncomingEvent {
    /// The Weft payload: compact JSON bytes of [`IncomingEvent::structured`], at most
    /// [`PAYLOAD_LEN_MAX`] bytes (checked by the parsers; re-check if you change
    /// `structured`).
    pub fn to_payload(&self) -> Vec<u8> {
        // Serializing a map of JSON values to memory cannot fail.
        serde_json::to_vec(&self.structured).unwrap_or_default()
    }
}

/// The `source` and `id` of a stored CloudEvent payload (structured JSON), for the
/// node's idempotency record; `None` when they are missing, not strings, or over
/// [`CE_FIELD_LEN_MAX`] (a payload that did not come through the node's parser: a
/// pre-signed event). Reads only those two members; the rest is skipped, not built.
pub fn identity(payload: &[u8]) -> Option<(String, String)> {
    #[derive(serde::Deserialize)]
    struct Identity<'a> {
        #[serde(borrow)]
        source: std::borrow::Cow<'a, str>,
        #[serde(borrow)]
        id: std::borrow::Cow<'a, str>,
    }
    let i: Identity<'_> = serde_json::from_slice(payload).ok()?;
    let fits = |f: &str| !f.is_empty() && f.len() <= CE_FIELD_LEN_MAX;
    (fits(&i.source) && fits(&i.id)).then(|| (i.source.into_owned(), i.id.into_owned()))
}

/// Parses one CloudEvent in structured mode (body of content type [`CE_JSON`]).
pub fn parse_structured(body: &[u8]) -> Result<IncomingEvent, CeError> {
    parse_structured_unbounded(body).and_then(check_size)
}

/// [`parse_structured`] without the size limit: for payloads already stored, whose
/// re-serialized form may differ in length from the stored bytes.
pub fn parse_structured_unbounded(body: &[u8]) -> Result<IncomingEvent, CeError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| CeError::BadJson {
        detail: e.to_string(),
    })?;
    match value {
        Value::Object(map) => from_structured(map),
        other => Err(not_an_object(&other)),
    }
}

/// Parses a batch (body of content type [`CE_BATCH_JSON`]): a JSON array of 1 to
/// [`BATCH_LEN_MAX`] structured CloudEvents. Any invalid event refuses the whole batch, with
/// its index in [`CeError::InBatch`].
pub fn parse_batch(body: &[u8]) -> Result<Vec<IncomingEvent>, CeError> {
    let items = match serde_json::from_slice::<BoundedBatch>(body) {
        Ok(BoundedBatch::Items(items)) => items,
        Ok(BoundedBatch::NotAnArray(value)) => {
            return Err(CeError::BadJson {
                detail: format!("a batch must be a JSON array, found {}", kind(&value)),
            });
        }
        Ok(BoundedBatch::TooLong(len)) => {
            return Err(CeError::BatchTooLarge {
                len,
                max: BATCH_LEN_MAX,
            });
        }
        Err(e) => {
            return Err(CeError::BadJson {
                detail: e.to_string(),
            });
        }
    };
    if items.is_empty() {
        return Err(CeError::BatchEmpty);
    }
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| {
            let event = match item {
                Value::Object(map) => from_structured(map).and_then(check_size),
                other => Err(not_an_object(&other)),
            };
            event.map_err(|source| CeError::InBatch {
                index,
                source: Box::new(source),
            })
        })
        .collect()
}

/// A batch body as parsed: at most [`BATCH_LEN_MAX`] items are built. Past that the rest
/// is only counted, skipped without building a tree (a body of 100,000 tiny objects
/// allocated every one before the length was checked).
enum BoundedBatch {
    Items(Vec<Value>),
    /// The whole array's length, over the limit.
    TooLong(usize),
    NotAnArray(Value),
}

impl<'de> serde::Deserialize<'de> for BoundedBatch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = BoundedBatch;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON array of CloudEvents")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<BoundedBatch, A::Error> {
                let mut items = Vec::new();
                while items.len() < BATCH_LEN_MAX {
                    match seq.next_element::<Value>()? {
                        Some(v) => items.push(v),
                        None => return Ok(BoundedBatch::Items(items)),
                    }
                }
                let mut len = items.len();
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    len += 1;
                }
                Ok(if len > items.len() {
                    BoundedBatch::TooLong(len)
                } else {
                    BoundedBatch::Items(items)
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<BoundedBatch, A::Error> {
                let v = <Value as serde::Deserialize>::deserialize(
                    serde::de::value::MapAccessDeserializer::new(map),
                )?;
                Ok(BoundedBatch::NotAnArray(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<BoundedBatch, E> {
                Ok(BoundedBatch::NotAnArray(Value::String(v.into())))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<BoundedBatch, E> {
                Ok(BoundedBatch::NotAnArray(Value::Bool(v)))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<BoundedBatch, E> {
                Ok(BoundedBatch::NotAnArray(v.into()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<BoundedBatch, E> {
                Ok(BoundedBatch::NotAnArray(v.into()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<BoundedBatch, E> {
                Ok(BoundedBatch::NotAnArray(v.into()))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<BoundedBatch, E> {
                Ok(BoundedBatch::NotAnArray(Value::Null))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Parses one CloudEvent in binary mode. `headers` are the HTTP request's (name, value)
/// pairs; names are matched case-insensitively. Each `ce-<name>` header is attribute
/// `<name>` (a string, percent-decoded per the HTTP binding); `content-type` is the
/// datacontenttype; the body is the data (none if empty). Other headers are ignored.
pub fn parse_binary<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    body: &[u8],
) -> Result<IncomingEvent, CeError> {
    let mut map = Map::new();
    let mut content_type: Option<String> = None;
    for (name, raw) in headers {
        let name = name.to_ascii_lowercase();
        if name == "content-type" {
            if content_type.is_some() {
                return Err(CeError::DuplicateAttribute {
                    name: "datacontenttype".into(),
                });
            }
            // Content-Type is an ordinary HTTP header: not percent-encoded.
            let value = std::str::from_utf8(raw).map_err(|_| CeError::BadHeaderEncoding {
                header: name.clone(),
                reason: "the value is not UTF-8",
            })?;
            content_type = Some(value.to_owned());
            continue;
        }
        let Some(attr) = name.strip_prefix(HEADER_PREFIX) else {
            continue;
        };
        check_name(attr)?;
        if matches!(attr, "datacontenttype" | "data") {
            return Err(CeError::BadAttributeName {
                name: clip(&name),
                reason: "in binary mode the datacontenttype is the Content-Type header and \
                         the data is the body",
            });
        }
        let value = percent_decode(&name, raw)?;
        if map.insert(attr.to_owned(), Value::String(value)).is_some() {
            return Err(CeError::DuplicateAttribute { name: clip(attr) });
        }
    }
    if let Some(ct) = &content_type {
        check_media_type("datacontenttype", ct)?;
        map.insert("datacontenttype".into(), Value::String(ct.clone()));
    }
    if !body.is_empty() {
        let (member, data) = data_from_bytes(content_type.as_deref(), body)?;
        map.insert(member.into(), data);
    }
    validate(map).and_then(check_size)
}

/// Parses an HTTP request in whichever mode its `content-type` selects: [`CE_JSON`]
/// (structured), [`CE_BATCH_JSON`] (batched), anything else (binary).
pub fn parse_http<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    body: &[u8],
) -> Result<Vec<IncomingEvent>, CeError> {
    let headers: Vec<(&'a str, &'a [u8])> = headers.into_iter().collect();
    let essence = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("content-type"))
        .and_then(|(_, value)| std::str::from_utf8(value).ok())
        .map(media_essence);
    let events = match essence.as_deref() {
        Some(CE_JSON) => parse_structured(body).map(|event| vec![event])?,
        Some(CE_BATCH_JSON) => parse_batch(body)?,
        _ => parse_binary(headers, body)
            .map(|event| vec![event])
            .map_err(|e| match e {
                CeError::MissingAttribute {
                    name: "specversion",
                } => CeError::NotBinaryMode {
                    content_type: clip(essence.as_deref().unwrap_or("none")),
                },
                other => other,
            })?,
    };
    for (index, event) in events.iter().enumerate() {
        check_reserved(event).map_err(|source| {
            if essence.as_deref() == Some(CE_BATCH_JSON) {
                CeError::InBatch {
                    index,
                    source: Box::new(source),
                }
            } else {
                source
            }
        })?;
    }
    Ok(events)
}

/// Refuses the `weft*` attributes only the node sets ([`CeError::ReservedAttribute`]).
/// Checked where events come in ([`parse_http`]), not when stored ones are parsed again
/// for reading: those had theirs replaced by the renderer.
pub fn check_reserved(event: &IncomingEvent) -> Result<(), CeError> {
    match event
        .structured
        .keys()
        .find(|n| n.starts_with("weft") && *n != "weftstream" && *n != "weftkey")
    {
        Some(name) => Err(CeError::ReservedAttribute { name: clip(name) }),
        None => Ok(()),
    }
}

// ---------------------------------------------------------------- validation

/// Validates a structured event and normalizes `data_base64` by its datacontenttype.
fn from_structured(mut map: Map<String, Value>) -> Result<IncomingEvent, CeError> {
    if let Some(encoded) = map.remove("data_base64") {
        if map.contains_key("data") {
            return Err(CeError::BadData {
                reason: "`data` and `data_base64` are mutually exclusive".into(),
            });
        }
        let Value::String(encoded) = encoded else {
            return Err(CeError::BadData {
                reason: format!("`data_base64` must be a string, found {}", kind(&encoded)),
            });
        };
        let bytes = BASE64
            .decode(encoded.as_bytes())
            .map_err(|e| CeError::BadData {
                reason: format!("`data_base64` is not base64 (RFC 4648, padded): {e}"),
            })?;
        let content_type = match map.get("datacontenttype") {
            Some(Value::String(ct)) => {
                check_media_type("datacontenttype", ct)?;
                Some(ct.as_str())
            }
            _ => None, // validate() reports a wrong type.
        };
        // Bytes that do not fit a JSON or text form stay base64, exactly as sent.
        let (member, data) = match data_from_bytes(content_type, &bytes) {
            Ok(normalized) => normalized,
            Err(_) => ("data_base64", Value::String(encoded)),
        };
        map.insert(member.into(), data);
    }
    validate(map)
}

/// Checks every attribute of a structured map and extracts the ones the node reads.
fn validate(map: Map<String, Value>) -> Result<IncomingEvent, CeError> {
    match map.get("specversion") {
        None => {
            return Err(CeError::MissingAttribute {
                name: "specversion",
            });
        }
        Some(Value::String(v)) if v == SPEC_VERSION => {}
        Some(other) => {
            return Err(CeError::BadSpecversion {
                found: clip(&other.to_string()),
            });
        }
    }
    for (name, value) in &map {
        if name == "data" || name == "data_base64" {
            continue; // Not attributes; checked where they are built.
        }
        check_name(name)?;
        check_attribute(name, value)?;
    }
    // check_attribute() has made every present required attribute a non-empty string.
    let required = |name: &'static str| match map.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        _ => Err(CeError::MissingAttribute { name }),
    };
    let id = required("id")?;
    let source = required("source")?;
    // (principal, source, id) is the idempotency key the node keeps: a longer field could
    // not be kept, and every retry of the event would be stored again.
    for (name, value) in [("id", &id), ("source", &source)] {
        if value.len() > CE_FIELD_LEN_MAX {
            return Err(CeError::BadAttributeValue {
                name: name.into(),
                reason: format!(
                    "{} bytes, over CE_FIELD_LEN_MAX ({} bytes; the idempotency key must fit)",
                    value.len(),
                    CE_FIELD_LEN_MAX
                ),
            });
        }
    }
    let ty = required("type")?;
    let text = |name: &str| match map.get(name) {
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    };
    let stream = text("weftstream")
        .map(|s| {
            StreamName::new(s).map_err(|e| CeError::BadAttributeValue {
                name: "weftstream".into(),
                reason: e.to_string(),
            })
        })
        .transpose()?;
    let key = text("weftkey").or_else(|| text("subject"));
    if let Some(key) = &key
        && key.len() > KEY_LEN_MAX
    {
        let name = if map.contains_key("weftkey") {
            "weftkey"
        } else {
            "subject"
        };
        return Err(CeError::BadAttributeValue {
            name: name.into(),
            reason: format!(
                "the key is {} bytes, over the limit KEY_LEN_MAX = {KEY_LEN_MAX}",
                key.len()
            ),
        });
    }
    let event = IncomingEvent {
        id,
        source,
        ty,
        stream,
        key,
        structured: map,
    };
    Ok(event)
}

/// Length of a JSON object's compact form, without building it: how big a CloudEvent is as
/// an envelope's payload. Shared by the agent's inputs and the
/// node's CloudEvents checks.
pub fn json_len(map: &serde_json::Map<String, serde_json::Value>) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing JSON values to a sink that never fails cannot fail.
    let _ = serde_json::to_writer(&mut count, map);
    count.0
}

/// Refuses an event whose payload would not fit a Weft event.
fn check_size(event: IncomingEvent) -> Result<IncomingEvent, CeError> {
    let len = json_len(&event.structured);
    if len > PAYLOAD_LEN_MAX {
        return Err(CeError::PayloadTooLarge {
            len,
            max: PAYLOAD_LEN_MAX,
        });
    }
    Ok(event)
}

/// Attribute names: lowercase ASCII letters and digits, 1 to [`ATTRIBUTE_NAME_LEN_MAX`].
fn check_name(name: &str) -> Result<(), CeError> {
    let bad = |reason| {
        Err(CeError::BadAttributeName {
            name: clip(name),
            reason,
        })
    };
    if name.is_empty() {
        return bad("names must not be empty");
    }
    if name.len() > ATTRIBUTE_NAME_LEN_MAX {
        return bad("longer than ATTRIBUTE_NAME_LEN_MAX = 20 bytes");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return bad("names may contain only lowercase ASCII letters a-z and digits 0-9");
    }
    Ok(())
}

/// Checks one attribute's type and, for the context attributes, its format.
fn check_attribute(name: &str, value: &Value) -> Result<(), CeError> {
    let bad = |reason: String| CeError::BadAttributeValue {
        name: name.into(),
        reason,
    };
    let string = || match value {
        Value::String(s) => Ok(s.as_str()),
        other => Err(bad(format!("must be a string, found {}", kind(other)))),
    };
    match name {
        "specversion" => Ok(()), // Checked first, in validate().
        "id" | "type" | "subject" | "weftkey" | "weftstream" => check_string(name, string()?),
        "source" => {
            let s = string()?;
            check_string(name, s)?;
            check_uri_chars(s).map_err(|r| bad(format!("not a URI-reference: {r}")))
        }
        "dataschema" => {
            let s = string()?;
            check_string(name, s)?;
            check_uri_chars(s).map_err(|r| bad(format!("not a URI: {r}")))?;
            if !has_scheme(s) {
                return Err(bad("not an absolute URI: it has no scheme".into()));
            }
            Ok(())
        }
        "datacontenttype" => check_media_type(name, string()?),
        "time" => check_time(string()?),
        _ => match value {
            Value::String(s) => check_string(name, s),
            Value::Number(_) | Value::Bool(_) => Ok(()),
            other => Err(bad(format!(
                "extension values must be a string, number or boolean, found {}",
                kind(other)
            ))),
        },
    }
}

/// A non-empty string without the characters the spec forbids in String values (controls,
/// surrogates cannot occur in a `str`, noncharacters).
pub fn check_string(name: &str, value: &str) -> Result<(), CeError> {
    let bad = |reason: String| CeError::BadAttributeValue {
        name: name.into(),
        reason,
    };
    if value.is_empty() {
        return Err(bad("must not be empty".into()));
    }
    if let Some(c) = value.chars().find(|&c| {
        let u = u32::from(c);
        c.is_control() || (0xfdd0..=0xfdef).contains(&u) || u & 0xfffe == 0xfffe
    }) {
        return Err(bad(format!(
            "character U+{:04X} is not allowed",
            u32::from(c)
        )));
    }
    Ok(())
}

/// RFC 3986 characters (unreserved, reserved, `%XX`); returns what is wrong.
fn check_uri_chars(value: &str) -> Result<(), &'static str> {
    let bytes = value.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let ok = bytes
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
            if !ok {
                return Err("'%' must be followed by two hex digits");
            }
            i += 3;
            continue;
        }
        if !(b.is_ascii_alphanumeric() || b"-._~:/?#[]@!$&'()*+,;=".contains(&b)) {
            return Err("only RFC 3986 characters are allowed (percent-encode others)");
        }
        i += 1;
    }
    Ok(())
}

/// Whether a URI starts with `scheme:` (RFC 3986 section 3.1).
fn has_scheme(value: &str) -> bool {
    match value.split_once(':') {
        Some((scheme, _)) => {
            let mut bytes = scheme.bytes();
            bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
                && bytes.all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        }
        None => false,
    }
}

/// RFC 2046 shape: `type/subtype` then optional `;` parameters, printable ASCII.
pub fn check_media_type(name: &str, value: &str) -> Result<(), CeError> {
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    let ok = value.bytes().all(|b| (0x20..=0x7e).contains(&b))
        && essence
            .split_once('/')
            .is_some_and(|(t, sub)| token(t) && token(sub));
    if !ok {
        return Err(CeError::BadAttributeValue {
            name: name.into(),
            reason: format!(
                "{:?} is not a media type `type/subtype[; parameters]`",
                clip(value)
            ),
        });
    }
    Ok(())
}

/// RFC 3339 `date-time`: `YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM|-HH:MM)`, ranges checked.
fn check_time(value: &str) -> Result<(), CeError> {
    let bad = |reason| CeError::BadTime {
        value: clip(value),
        reason,
    };
    let b = value.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<u32> {
        let digits = b.get(range)?;
        digits
            .iter()
            .all(u8::is_ascii_digit)
            .then(|| digits.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0')))
    };
    let shape = b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && matches!(b[10], b'T' | b't')
        && b[13] == b':'
        && b[16] == b':';
    let fields = (
        num(0..4),
        num(5..7),
        num(8..10),
        num(11..13),
        num(14..16),
        num(17..19),
    );
    let (true, Some(year), Some(month), Some(day), Some(hour), Some(minute), Some(second)) = (
        shape, fields.0, fields.1, fields.2, fields.3, fields.4, fields.5,
    ) else {
        return Err(bad("expected YYYY-MM-DDTHH:MM:SS"));
    };
    if !(1..=12).contains(&month) {
        return Err(bad("month must be 01 to 12"));
    }
    if day == 0 || day > days_in_month(year, month) {
        return Err(bad("day is out of range for the month"));
    }
    if hour > 23 || minute > 59 || second > 60 {
        return Err(bad("hour, minute or second out of range"));
    }
    let mut rest = &b[19..];
    if let Some(frac) = rest.strip_prefix(b".") {
        let digits = frac.iter().take_while(|d| d.is_ascii_digit()).count();
        if digits == 0 {
            return Err(bad("a '.' must be followed by fraction digits"));
        }
        rest = &frac[digits..];
    }
    match rest {
        [b'Z' | b'z'] => Ok(()),
        [b'+' | b'-', h1, h2, b':', m1, m2] => {
            let two = |a: u8, b: u8| {
                (a.is_ascii_digit() && b.is_ascii_digit())
                    .then(|| u32::from(a - b'0') * 10 + u32::from(b - b'0'))
            };
            match (two(*h1, *h2), two(*m1, *m2)) {
                (Some(h), Some(m)) if h <= 23 && m <= 59 => Ok(()),
                _ => Err(bad("offset must be +HH:MM or -HH:MM within range")),
            }
        }
        _ => Err(bad("expected a time zone: Z, +HH:MM or -HH:MM")),
    }
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Milliseconds since the Unix epoch as RFC 3339 UTC with milliseconds; `None` past the
/// year 9999, which RFC 3339 cannot write.
pub fn rfc3339_from_ms(ms: u64) -> Option<String> {
    const MS_PER_DAY: u64 = 86_400_000;
    let days = i64::try_from(ms / MS_PER_DAY).ok()?;
    let in_day = ms % MS_PER_DAY;
    // Days to civil date (H. Hinnant, "chrono-Compatible Low-Level Date Algorithms").
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    if year > 9999 {
        return None;
    }
    let (h, m, s, milli) = (
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1_000 % 60,
        in_day % 1_000,
    );
    Some(format!(
        "{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{milli:03}Z"
    ))
}

// ---------------------------------------------------------------- data

fn is_json(essence: &str) -> bool {
    essence == JSON_MEDIA_TYPE || (essence.contains('/') && essence.ends_with("+json"))
}

/// Whether the content type declares a charset other than UTF-8 (or its subset ASCII).
fn has_other_charset(content_type: &str) -> bool {
    content_type.split(';').skip(1).any(|param| {
        param.split_once('=').is_some_and(|(k, v)| {
            let v = v.trim().trim_matches('"');
            k.trim().eq_ignore_ascii_case("charset")
                && !v.eq_ignore_ascii_case("utf-8")
                && !v.eq_ignore_ascii_case("us-ascii")
        })
    })
}

/// The structured member for data bytes: `data` holding a JSON value (JSON media types) or
/// a string (`text/*`), else `data_base64`. No content type means opaque bytes.
pub fn data_from_bytes(
    content_type: Option<&str>,
    bytes: &[u8],
) -> Result<(&'static str, Value), CeError> {
    let Some(content_type) = content_type else {
        return Ok(("data_base64", Value::String(BASE64.encode(bytes))));
    };
    let essence = media_essence(content_type);
    let json = is_json(&essence);
    if !json && !essence.starts_with("text/") {
        return Ok(("data_base64", Value::String(BASE64.encode(bytes))));
    }
    let Ok(text) = std::str::from_utf8(bytes) else {
        if !json && has_other_charset(content_type) {
            return Ok(("data_base64", Value::String(BASE64.encode(bytes))));
        }
        return Err(CeError::DataNotUtf8 {
            content_type: clip(content_type),
        });
    };
    if json {
        let value = serde_json::from_str(text).map_err(|e| CeError::BadData {
            reason: format!(
                "content type {:?} but the data is not JSON: {e}",
                clip(content_type)
            ),
        })?;
        Ok(("data", value))
    } else {
        Ok(("data", Value::String(text.to_owned())))
    }
}

// ---------------------------------------------------------------- helpers

/// Decodes a binary-mode header value: `%XX` escapes to bytes, then UTF-8.
fn percent_decode(header: &str, raw: &[u8]) -> Result<String, CeError> {
    let bad = |reason| CeError::BadHeaderEncoding {
        header: clip(header),
        reason,
    };
    let hex = |b: u8| char::from(b).to_digit(16);
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let (Some(hi), Some(lo)) = (
                raw.get(i + 1).copied().and_then(hex),
                raw.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(bad("'%' must be followed by two hex digits"));
            };
            // Both digits are below 16, so the byte cannot overflow.
            out.push(u8::try_from(hi * 16 + lo).unwrap_or_default());
            i += 3;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad("the decoded bytes are not UTF-8"))
}

fn not_an_object(value: &Value) -> CeError {
    CeError::BadJson {
        detail: format!("an event must be a JSON object, found {}", kind(value)),
    }
}

/// What a JSON value is, for error messages ("a string", "an array", ...).
pub fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Client input for an error message, cut to [`ERROR_ECHO_LEN_MAX`] chars.
fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(ERROR_ECHO_LEN_MAX).collect();
    if out.len() < s.len() {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {

    /// A batch's length is checked while it is read: past [`BATCH_LEN_MAX`] items nothing
    /// more is built (the rest is only counted); the limit itself parses; anything but an
    /// array, an empty one and bad JSON are refused as before.
    #[test]
    fn a_batch_is_bounded_while_it_is_read() {
        let ce = r#"{"specversion":"1.0","id":"x","source":"s","type":"t"}"#;
        let batch = |n: usize, item: &str| format!("[{}]", vec![item; n].join(","));
        assert_eq!(
            parse_batch(batch(BATCH_LEN_MAX, ce).as_bytes())
                .unwrap()
                .len(),
            BATCH_LEN_MAX
        );
        for n in [BATCH_LEN_MAX + 1, 100_000] {
            match parse_batch(batch(n, "{}").as_bytes()) {
                Err(CeError::BatchTooLarge { len, max }) => {
                    assert_eq!((len, max), (n, BATCH_LEN_MAX));
                }
                other => panic!("{n}: {other:?}"),
            }
        }
        for (body, found) in [
            ("{}", "an object"),
            ("\"x\"", "a string"),
            ("1", "a number"),
            ("-1", "a number"),
            ("1.5", "a number"),
            ("null", "null"),
            ("true", "a boolean"),
        ] {
            match parse_batch(body.as_bytes()) {
                Err(CeError::BadJson { detail }) => assert!(detail.contains(found), "{detail}"),
                other => panic!("{body}: {other:?}"),
            }
        }
        assert!(matches!(parse_batch(b"[]"), Err(CeError::BatchEmpty)));
        // Bad JSON past the limit is still bad JSON.
        let mut bad = batch(BATCH_LEN_MAX + 1, "{}");
        bad.insert(bad.len() - 1, ',');
        assert!(matches!(
            parse_batch(bad.as_bytes()),
            Err(CeError::BadJson { .. })
        ));
    }

    use serde_json::json;

    use super::*;

    fn obj(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    /// An HTTP header as text: (name, value).
    type Header = (&'static str, &'static str);

    fn headers(pairs: &[Header]) -> Vec<(&'static str, &'static [u8])> {
        pairs.iter().map(|(n, v)| (*n, v.as_bytes())).collect()
    }

    fn minimal() -> Value {
        json!({"specversion": "1.0", "id": "1", "source": "/s", "type": "t"})
    }

    fn with(extra: Value) -> Vec<u8> {
        let mut map = obj(minimal());
        map.extend(obj(extra));
        serde_json::to_vec(&map).unwrap()
    }

    // ------------------------------------------------------------ structured

    /// The JSON event format spec's examples (section 3.1 and the appendix).
    #[test]
    fn structured_spec_examples() {
        let binary = br#"{
            "specversion" : "1.0",
            "type" : "com.example.someevent",
            "source" : "/mycontext",
            "id" : "A234-1234-1234",
            "time" : "2018-04-05T17:31:00Z",
            "comexampleextension1" : "value",
            "comexampleothervalue" : 5,
            "datacontenttype" : "application/vnd.apache.thrift.binary",
            "data_base64" : "AAECAwQFBgcICQ=="
        }"#;
        let event = parse_structured(binary).unwrap();
        assert_eq!(event.id, "A234-1234-1234");
        assert_eq!(event.source, "/mycontext");
        assert_eq!(event.ty, "com.example.someevent");
        assert_eq!((event.stream.as_ref(), event.key.as_ref()), (None, None));
        assert_eq!(event.structured["comexampleothervalue"], json!(5));
        assert_eq!(event.structured["data_base64"], json!("AAECAwQFBgcICQ=="));
        assert!(!event.structured.contains_key("data"));

        let xml = br#"{
            "specversion" : "1.0",
            "type" : "com.example.someevent",
            "source" : "/mycontext",
            "subject": null,
            "id" : "C234-1234-1234",
            "time" : "2018-04-05T17:31:00Z",
            "comexampleextension1" : "value",
            "comexampleothervalue" : 5,
            "datacontenttype" : "application/xml",
            "data" : "<much wow=\"xml\"/>"
        }"#;
        // The spec's appendix has `"subject": null`; Weft refuses null attribute values.
        let err = parse_structured(xml).unwrap_err();
        assert_eq!(err.reason(), "bad_attribute_value", "{err}");
        let xml = String::from_utf8(xml.to_vec())
            .unwrap()
            .replace("\"subject\": null,", "");
        let event = parse_structured(xml.as_bytes()).unwrap();
        assert_eq!(event.structured["data"], json!("<much wow=\"xml\"/>"));

        // The HTTP binding's structured example, with JSON data.
        let json_data = br#"{
            "specversion" : "1.0",
            "type" : "com.example.someevent",
            "time" : "2018-04-05T03:56:24Z",
            "id" : "1234-1234-1234",
            "source" : "/mycontext/subcontext",
            "datacontenttype" : "application/json",
            "data" : {"appinfoA" : "abc", "appinfoB" : 123, "appinfoC" : true}
        }"#;
        let event = parse_structured(json_data).unwrap();
        assert_eq!(event.structured["data"]["appinfoB"], json!(123));
        let payload = event.to_payload();
        assert_eq!(
            parse_structured(&payload).unwrap(),
            event,
            "payload reparses"
        );
        assert!(!payload.contains(&b'\n'), "compact");
    }

    #[test]
    fn structured_base64_is_normalized_by_content_type() {
        let b64 = |s: &str| BASE64.encode(s);
        let cases = [
            (
                "application/json",
                b64(r#"{"a":1}"#),
                "data",
                json!({"a": 1}),
            ),
            ("application/foo+json", b64("[1,2]"), "data", json!([1, 2])),
            (
                "text/plain; charset=utf-8",
                b64("héllo"),
                "data",
                json!("héllo"),
            ),
            (
                "application/json",
                b64("not json"),
                "data_base64",
                json!(b64("not json")),
            ),
            (
                "image/png",
                b64("\u{1}PNG"),
                "data_base64",
                json!(b64("\u{1}PNG")),
            ),
        ];
        for (ct, encoded, member, expected) in cases {
            let body = with(json!({"datacontenttype": ct, "data_base64": encoded}));
            let event = parse_structured(&body).unwrap();
            assert_eq!(event.structured.get(member), Some(&expected), "{ct}");
            let other = if member == "data" {
                "data_base64"
            } else {
                "data"
            };
            assert!(!event.structured.contains_key(other), "{ct}");
        }
    }

    #[test]
    fn weft_extensions_select_stream_and_key() {
        let event = parse_structured(&with(json!({"subject": "order-1"}))).unwrap();
        assert_eq!(event.key.as_deref(), Some("order-1"));
        let body = with(json!({"subject": "s", "weftkey": "k", "weftstream": "orders.us"}));
        let event = parse_structured(&body).unwrap();
        assert_eq!(event.key.as_deref(), Some("k"));
        assert_eq!(event.stream.unwrap().as_str(), "orders.us");
    }

    #[test]
    fn time_grammar() {
        for ok in [
            "2018-04-05T17:31:00Z",
            "2018-04-05t17:31:00.123456789z",
            "2020-02-29T23:59:60+01:00",
            "1999-12-31T00:00:00-23:59",
        ] {
            let body = with(json!({ "time": ok }));
            assert!(parse_structured(&body).is_ok(), "{ok}");
        }
        for bad in [
            "2018-04-05",
            "2018-04-05T17:31:00",
            "2018-04-05 17:31:00Z",
            "2018-13-05T17:31:00Z",
            "2019-02-29T17:31:00Z",
            "2018-04-05T24:00:00Z",
            "2018-04-05T17:31:00.Z",
            "2018-04-05T17:31:00+0100",
            "2018-04-05T17:31:00+24:00",
            "18-04-05T17:31:00Z",
            "2018-04-05T17:31:00Zjunk",
        ] {
            let err = parse_structured(&with(json!({ "time": bad }))).unwrap_err();
            assert_eq!(err.reason(), "bad_time", "{bad}: {err}");
        }
    }

    // ------------------------------------------------------------ binary

    /// The HTTP binding spec's binary-mode example (section 3.1.4).
    #[test]
    fn binary_spec_example() {
        let h = headers(&[
            ("host", "webhook.example.com"),
            ("ce-specversion", "1.0"),
            ("ce-type", "com.example.someevent"),
            ("ce-time", "2018-04-05T03:56:24Z"),
            ("ce-id", "1234-1234-1234"),
            ("ce-source", "/mycontext/subcontext"),
            ("content-type", "application/json; charset=utf-8"),
            ("content-length", "33"),
        ]);
        let body = br#"{ "appinfoA" : "abc", "n" : 1 }"#;
        let event = parse_binary(h, body).unwrap();
        assert_eq!(event.id, "1234-1234-1234");
        assert_eq!(
            event.structured,
            obj(json!({
                "specversion": "1.0",
                "type": "com.example.someevent",
                "time": "2018-04-05T03:56:24Z",
                "id": "1234-1234-1234",
                "source": "/mycontext/subcontext",
                "datacontenttype": "application/json; charset=utf-8",
                "data": {"appinfoA": "abc", "n": 1},
            }))
        );
    }

    #[test]
    fn binary_data_by_content_type() {
        let base = [
            ("ce-specversion", "1.0"),
            ("ce-id", "1"),
            ("ce-source", "/s"),
            ("ce-type", "t"),
        ];
        let run = |ct: Option<&'static str>, body: &[u8]| {
            let mut h = headers(&base);
            if let Some(ct) = ct {
                h.push(("content-type", ct.as_bytes()));
            }
            parse_binary(h, body)
        };
        let text = run(Some("text/plain"), b"hello").unwrap();
        assert_eq!(text.structured["data"], json!("hello"));
        let bin = run(Some("application/octet-stream"), &[0, 255]).unwrap();
        assert_eq!(bin.structured["data_base64"], json!("AP8="));
        let untyped = run(None, b"{}").unwrap();
        assert_eq!(untyped.structured["data_base64"], json!("e30="));
        assert!(!untyped.structured.contains_key("datacontenttype"));
        let latin1 = run(Some("text/plain; charset=iso-8859-1"), &[0xe9]).unwrap();
        assert_eq!(latin1.structured["data_base64"], json!("6Q=="));
        let empty = run(Some("application/json"), b"").unwrap();
        assert!(!empty.structured.contains_key("data"));
        assert_eq!(
            run(Some("text/plain"), &[0xff]).unwrap_err().reason(),
            "data_not_utf8"
        );
        assert_eq!(
            run(Some("application/json"), b"{").unwrap_err().reason(),
            "bad_data"
        );
    }

    /// HTTP binding section 3.1.3.2: string values are percent-encoded.
    #[test]
    fn binary_percent_decoding() {
        let h = headers(&[
            ("ce-specversion", "1.0"),
            ("ce-id", "1"),
            ("CE-Source", "/a%2Fb"),
            ("ce-type", "t"),
            ("ce-subject", "Euro%20%E2%82%AC%20%F0%9F%98%80"),
            ("ce-comexample", "100%25%22"),
        ]);
        let event = parse_binary(h, b"").unwrap();
        assert_eq!(event.key.as_deref(), Some("Euro € 😀"));
        assert_eq!(event.structured["subject"], json!("Euro € 😀"));
        assert_eq!(event.structured["comexample"], json!("100%\""));
        assert_eq!(event.source, "/a/b");
        for bad in ["%", "%2", "%zz", "%FF", "%E2%82"] {
            let mut h = headers(&[
                ("ce-specversion", "1.0"),
                ("ce-id", "1"),
                ("ce-source", "/s"),
                ("ce-type", "t"),
            ]);
            h.push(("ce-subject", bad.as_bytes()));
            let err = parse_binary(h, b"").unwrap_err();
            assert_eq!(err.reason(), "bad_header_encoding", "{bad}: {err}");
            assert!(err.to_string().contains("ce-subject"), "{err}");
        }
    }

    #[test]
    fn parse_http_dispatches_on_content_type() {
        let one = serde_json::to_vec(&minimal()).unwrap();
        let ct = |v: &'static str| vec![("content-type", v.as_bytes())];
        let structured = parse_http(ct("application/cloudevents+json; charset=UTF-8"), &one);
        assert_eq!(structured.unwrap().len(), 1);
        let batch = format!("[{0},{0}]", String::from_utf8(one.clone()).unwrap());
        assert_eq!(
            parse_http(ct(CE_BATCH_JSON), batch.as_bytes())
                .unwrap()
                .len(),
            2
        );
        let err = parse_http(ct("application/json"), &one).unwrap_err();
        assert_eq!(err.reason(), "missing_attribute", "binary mode: {err}");
        assert!(
            err.to_string().contains("application/cloudevents+json")
                && err.to_string().contains("content type application/json"),
            "a structured event sent as plain JSON is told which content type to use: {err}"
        );
    }

    /// A publisher may set `weftstream` and `weftkey`; every other `weft*` attribute is the
    /// node's own, refused in every mode (a batch names the event).
    /// A stored payload's identity for the idempotency record: the two strings, whatever
    /// else the event holds; nothing for a payload without both, with one not a string,
    /// empty or over the limit, or that is not JSON.
    #[test]
    fn a_stored_event_gives_its_source_and_id_and_nothing_else() {
        let ce = parse_structured(
            br#"{"specversion":"1.0","id":"a-1","source":"/s","type":"t","data":{"big":[1,2,3]}}"#,
        )
        .unwrap();
        assert_eq!(
            identity(&ce.to_payload()),
            Some(("/s".to_string(), "a-1".to_string()))
        );
        let long = "x".repeat(CE_FIELD_LEN_MAX + 1);
        for bad in [
            r#"{"source":"/s"}"#.to_string(),
            r#"{"source":"/s","id":7}"#.to_string(),
            r#"{"source":"","id":"a"}"#.to_string(),
            format!(r#"{{"source":"/s","id":"{long}"}}"#),
            r#"{"source":"/s","id":"a","id":"b"}"#.to_string(),
            "not json".to_string(),
        ] {
            assert_eq!(identity(bad.as_bytes()), None, "{bad}");
        }
        // Escapes are read as the parser reads them.
        assert_eq!(
            identity(br#"{"source":"/a\/b","id":"\u00e9"}"#),
            Some(("/a/b".to_string(), "\u{e9}".to_string()))
        );
    }

    #[test]
    fn weft_attributes_the_node_sets_are_refused_at_input() {
        let ct = |v: &'static str| vec![("content-type", v.as_bytes())];
        let fine = with(json!({"weftstream": "a.b", "weftkey": "k"}));
        assert!(parse_http(ct(CE_JSON), &fine).is_ok());
        for name in ["weftresidency", "weftprincipal", "weftderived", "weftx"] {
            let body = with(json!({ name: "US" }));
            let err = parse_http(ct(CE_JSON), &body).unwrap_err();
            assert_eq!(err.reason(), "reserved_attribute", "{name}: {err}");
            assert!(err.to_string().contains(name), "{err}");
            let batch = format!(
                "[{},{}]",
                String::from_utf8(fine.clone()).unwrap(),
                String::from_utf8(body).unwrap()
            );
            let err = parse_http(ct(CE_BATCH_JSON), batch.as_bytes()).unwrap_err();
            assert_eq!(err.reason(), "reserved_attribute", "{name}: {err}");
            assert!(err.to_string().contains("index 1"), "{err}");
        }
        let binary = headers(&[
            ("ce-specversion", "1.0"),
            ("ce-id", "1"),
            ("ce-source", "/s"),
            ("ce-type", "t"),
            ("ce-weftresidency", "US"),
        ]);
        let err = parse_http(binary, b"").unwrap_err();
        assert_eq!(err.reason(), "reserved_attribute", "{err}");
        // Stored events are parsed again for reading without the check (the renderer
        // replaces them), so an event stored before it still reads.
        assert!(parse_structured(&with(json!({"weftresidency": "US"}))).is_ok());
    }

    // ------------------------------------------------------------ batch

    /// A batch as in the JSON format spec, section 4.
    #[test]
    fn batch_spec_example() {
        let body = br#"[
            {"specversion": "1.0", "type": "com.example.someevent", "source": "/mycontext",
             "id": "A1", "datacontenttype": "text/plain", "data": "hello"},
            {"specversion": "1.0", "type": "com.example.someevent", "source": "/mycontext",
             "id": "A2", "datacontenttype": "application/octet-stream",
             "data_base64": "AAEC"}
        ]"#;
        let events = parse_batch(body).unwrap();
        let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["A1", "A2"]);
        assert_eq!(events[1].structured["data_base64"], json!("AAEC"));

        let bad = format!("[{}, {{\"specversion\": \"1.0\"}}]", minimal());
        let err = parse_batch(bad.as_bytes()).unwrap_err();
        assert!(matches!(err, CeError::InBatch { index: 1, .. }), "{err:?}");
        assert!(err.to_string().contains("index 1"), "{err}");
        assert_eq!(err.reason(), "missing_attribute");
    }

    #[test]
    fn batch_limits() {
        assert_eq!(parse_batch(b"[]").unwrap_err().reason(), "batch_empty");
        let item = minimal().to_string();
        let full = format!("[{}]", vec![item.as_str(); BATCH_LEN_MAX].join(","));
        assert_eq!(parse_batch(full.as_bytes()).unwrap().len(), BATCH_LEN_MAX);
        let over = format!("[{}]", vec![item.as_str(); BATCH_LEN_MAX + 1].join(","));
        let err = parse_batch(over.as_bytes()).unwrap_err();
        assert_eq!(err.reason(), "batch_too_large");
        assert!(err.to_string().contains("BATCH_LEN_MAX = 1000"), "{err}");
        let err = parse_batch(minimal().to_string().as_bytes()).unwrap_err();
        assert_eq!(err.reason(), "bad_json");
        let err = parse_batch(b"[1]").unwrap_err();
        assert!(matches!(err, CeError::InBatch { index: 0, .. }), "{err:?}");
        assert_eq!(err.reason(), "bad_json");
    }

    // ------------------------------------------------------------ errors

    /// Every reason code, triggered at least once.
    #[test]
    fn each_error_reason() {
        let big = "x".repeat(PAYLOAD_LEN_MAX);
        let structured: Vec<(Vec<u8>, &str)> = vec![
            (b"{".to_vec(), "bad_json"),
            (b"[]".to_vec(), "bad_json"),
            (
                br#"{"id":"1","source":"/s","type":"t"}"#.to_vec(),
                "missing_attribute",
            ),
            (
                br#"{"specversion":"1.0","source":"/s","type":"t"}"#.to_vec(),
                "missing_attribute",
            ),
            (with(json!({"specversion": "0.3"})), "bad_specversion"),
            (with(json!({"specversion": 1.0})), "bad_specversion"),
            (with(json!({"Upper": "x"})), "bad_attribute_name"),
            (with(json!({"with_underscore": "x"})), "bad_attribute_name"),
            (
                with(json!({"abcdefghijklmnopqrstu": "x"})),
                "bad_attribute_name",
            ),
            (with(json!({"": "x"})), "bad_attribute_name"),
            (with(json!({"id": ""})), "bad_attribute_value"),
            (with(json!({"id": 5})), "bad_attribute_value"),
            (with(json!({"source": "has space"})), "bad_attribute_value"),
            (with(json!({"source": "/bad%zz"})), "bad_attribute_value"),
            (with(json!({"type": "a\u{7}b"})), "bad_attribute_value"),
            (
                with(json!({"dataschema": "/relative"})),
                "bad_attribute_value",
            ),
            (
                with(json!({"datacontenttype": "json"})),
                "bad_attribute_value",
            ),
            (with(json!({"ext": {"nested": 1}})), "bad_attribute_value"),
            (with(json!({"ext": [1]})), "bad_attribute_value"),
            (with(json!({"ext": null})), "bad_attribute_value"),
            (
                with(json!({"weftstream": "bad..stream"})),
                "bad_attribute_value",
            ),
            (
                with(json!({"weftkey": "k".repeat(KEY_LEN_MAX + 1)})),
                "bad_attribute_value",
            ),
            (with(json!({"time": "yesterday"})), "bad_time"),
            (with(json!({"data": 1, "data_base64": "AA=="})), "bad_data"),
            (with(json!({"data_base64": "not base64!"})), "bad_data"),
            (with(json!({"data_base64": 7})), "bad_data"),
            (with(json!({ "data": big })), "payload_too_large"),
        ];
        for (body, reason) in structured {
            let err = parse_structured(&body).unwrap_err();
            assert_eq!(
                err.reason(),
                reason,
                "{}: {err}",
                String::from_utf8_lossy(&body)
            );
        }
        let err = parse_structured(&with(json!({ "data": big }))).unwrap_err();
        assert!(err.to_string().contains("PAYLOAD_LEN_MAX"), "{err}");

        let base = [
            ("ce-specversion", "1.0"),
            ("ce-id", "1"),
            ("ce-source", "/s"),
            ("ce-type", "t"),
        ];
        let binary: [(&[Header], &[u8], &str); 6] = [
            (&[("ce-id", "2")], b"", "duplicate_attribute"),
            (
                &[("ce-datacontenttype", "text/plain")],
                b"",
                "bad_attribute_name",
            ),
            (&[("ce-data", "x")], b"", "bad_attribute_name"),
            (&[("ce-bad_name", "x")], b"", "bad_attribute_name"),
            (
                &[("content-type", "text/plain")],
                &[0xc3, 0x28],
                "data_not_utf8",
            ),
            (&[("ce-subject", "%C3%28")], b"", "bad_header_encoding"),
        ];
        for (extra, body, reason) in binary {
            let mut h = headers(&base);
            h.extend(headers(extra));
            let err = parse_binary(h, body).unwrap_err();
            assert_eq!(err.reason(), reason, "{extra:?}: {err}");
        }
        let err = parse_batch(b"[]").unwrap_err();
        assert_eq!(err.reason(), "batch_empty");
    }

    #[test]
    fn errors_clip_echoed_input() {
        let name = "a".repeat(10_000);
        let err = parse_structured(&with(json!({ name: 1 }))).unwrap_err();
        assert_eq!(err.reason(), "bad_attribute_name");
        assert!(err.to_string().len() < 300, "{err}");
    }

    /// `id` and `source` make the idempotency key: over the store's field limit they are
    /// refused up front (a key that cannot be kept would let every retry be stored again).
    #[test]
    fn an_id_or_source_over_the_key_limit_is_refused() {
        let max = CE_FIELD_LEN_MAX;
        for field in ["id", "source"] {
            for (len, ok) in [(max, true), (max + 1, false)] {
                let mut ce = json!({"specversion": "1.0", "id": "1", "source": "s", "type": "t"});
                ce[field] = json!("x".repeat(len));
                let got = parse_structured(&serde_json::to_vec(&ce).unwrap());
                match (ok, got) {
                    (true, Ok(_)) => {}
                    (false, Err(e)) => {
                        assert_eq!(e.reason(), "bad_attribute_value");
                        assert!(e.to_string().contains(&max.to_string()), "{e}");
                        assert!(e.to_string().contains(field), "{e}");
                    }
                    (ok, got) => panic!("{field} of {len} bytes: want ok={ok}, got {got:?}"),
                }
            }
        }
    }
}
