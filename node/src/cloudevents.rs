//! CloudEvents 1.0 (HTTP protocol binding, JSON event format) to and from Weft events.
//!
//! The signed envelope has no CloudEvents attributes of its own, so a CloudEvent published
//! over HTTP is stored as a Weft event whose payload is the event's structured-mode JSON
//! object ([`CE_JSON`]). Every input mode (structured, batch, binary) is validated and
//! normalized to that one form ([`IncomingEvent::structured`]); [`render`] turns any stored
//! Weft event, CloudEvent or not, back into a structured CloudEvent for readers.
//!
//! `data` is normalized by the datacontenttype: a JSON value for JSON media types
//! (`application/json`, `*/*+json`, or none in structured mode), a JSON string for `text/*`,
//! else `data_base64`.
//!
//! Weft extension attributes: a publisher may set `weftstream` (the stream, when the HTTP
//! path names none) and `weftkey` (the table key; else `subject` is the key). [`render`]
//! always sets `weftstream`, `weftid`, `weftorigin`, `weftseq`, `wefthlc`, `weftprincipal`,
//! `wefttenant`, `weftclassification` (and `weftsealed` for sealed payloads) from the signed
//! envelope, and removes any other `weft*` attribute but `weftkey` (input refuses them:
//! `reserved_attribute`); for an event an egress transform
//! derived (`egress::DERIVED_CONTENT_TYPE`) also `weftlineage`, the lineage as JSON text.
//!
//! This module does no I/O: bytes and header pairs in, values out.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value};
pub(crate) use weft_fabric::cloudevents::{
    CE_BATCH_JSON, CE_JSON, IncomingEvent, SPEC_VERSION, parse_http, rfc3339_from_ms,
};
use weft_fabric::cloudevents::{
    check_media_type, check_string, data_from_bytes, media_essence, parse_structured_unbounded,
};
use weft_fabric::{EventData, Payload};

/// Source of events synthesized from non-CloudEvents payloads: this, then the hex origin.
const SYNTH_SOURCE_PREFIX: &str = "weft:origin/";

/// Type of events synthesized from non-CloudEvents payloads.
const SYNTH_TYPE: &str = "weft.event";

/// Renders a stored Weft event as a structured CloudEvent JSON object for readers.
///
/// A clear payload of content type [`CE_JSON`] that is a valid CloudEvent is returned as
/// is; any other event is synthesized: `id` = hex event id, `source` =
/// `weft:origin/<hex origin>`, `type` = `weft.event`, `datacontenttype` = the content type
/// (when it is a `type/subtype` media type), `time` from the HLC's physical part, `subject`
/// = the key if UTF-8, and `data` by the normalization rules. Both get the Weft extension
/// attributes; a sealed payload gets `weftsealed: true` and no data (it is never opened).
pub(crate) fn render(event: &EventData) -> Map<String, Value> {
    let mut lineage = None;
    let stored = match event.payload() {
        Payload::Clear(bytes) if media_essence(event.content_type()) == CE_JSON => {
            parse_structured_unbounded(bytes)
                .ok()
                .map(|incoming| incoming.structured)
        }
        Payload::Clear(bytes)
            if media_essence(event.content_type()) == crate::egress::DERIVED_CONTENT_TYPE =>
        {
            crate::egress::render_derived(event, bytes).map(|(map, l)| {
                lineage = Some(l);
                map
            })
        }
        _ => None,
    };
    let mut map = stored.unwrap_or_else(|| synthesize(event));
    // Every `weft*` attribute but the key is the node's to set, from the envelope: one a
    // publisher put there (refused at input since 2026-12-06, but stored before, or in a
    // pre-signed envelope's payload) never shows, so readers can trust every one they see.
    map.retain(|name, _| !name.starts_with("weft") || name == "weftkey");
    let security = event.security();
    let extensions = [
        ("weftstream", Value::from(event.stream().as_str())),
        ("weftid", Value::from(event.id().to_string())),
        ("weftorigin", Value::from(event.origin().to_string())),
        ("weftseq", Value::from(event.seq())),
        ("wefthlc", Value::from(event.hlc().to_string())),
        ("weftprincipal", Value::from(security.principal.as_str())),
        ("wefttenant", Value::from(security.tenant.as_str())),
        (
            "weftclassification",
            Value::from(security.classification.as_str()),
        ),
    ];
    for (name, value) in extensions {
        map.insert(name.into(), value);
    }
    if matches!(event.payload(), Payload::Sealed(_)) {
        map.insert("weftsealed".into(), Value::Bool(true));
    }
    if let Some(lineage) = lineage {
        map.insert("weftlineage".into(), Value::String(lineage));
    }
    map
}

/// The CloudEvent for a Weft event that is not one (or whose payload is sealed).
fn synthesize(event: &EventData) -> Map<String, Value> {
    let mut map = Map::new();
    map.insert("specversion".into(), SPEC_VERSION.into());
    map.insert("id".into(), event.id().to_string().into());
    map.insert(
        "source".into(),
        format!("{SYNTH_SOURCE_PREFIX}{}", event.origin()).into(),
    );
    map.insert("type".into(), SYNTH_TYPE.into());
    let content_type = event.content_type();
    let media_type_ok = check_media_type("datacontenttype", content_type).is_ok();
    if media_type_ok {
        map.insert("datacontenttype".into(), content_type.into());
    }
    if let Some(time) = rfc3339_from_ms(event.hlc().physical_ms()) {
        map.insert("time".into(), time.into());
    }
    if let Some(subject) = event
        .key()
        .and_then(|key| std::str::from_utf8(key).ok())
        .filter(|key| check_string("subject", key).is_ok())
    {
        map.insert("subject".into(), subject.into());
    }
    if let Payload::Clear(bytes) = event.payload()
        && !bytes.is_empty()
    {
        let declared = media_type_ok.then_some(content_type);
        let (member, data) = data_from_bytes(declared, bytes)
            .unwrap_or_else(|_| ("data_base64", Value::String(BASE64.encode(bytes))));
        map.insert(member.into(), data);
    }
    map
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;
    use serde_json::json;
    use weft_fabric::cloudevents::{parse_binary, parse_structured};
    use weft_fabric::envelope::NONCE_LEN;
    use weft_fabric::{
        Event, EventDraft, Hlc, KeyId, Residency, SealedPayload, SecurityContext, Signer,
        StreamName,
    };

    use super::*;

    /// 2025-11-28T18:40:00.123Z.
    const HLC_MS: u64 = 1_764_355_200_123;

    fn sign(content_type: &str, payload: Payload, key: Option<&[u8]>) -> Event {
        Signer::from_secret(&[7u8; 32])
            .sign(EventDraft {
                stream: StreamName::new("orders.eu").unwrap(),
                key: key.map(<[u8]>::to_vec),
                seq: 42,
                hlc: Hlc::new(HLC_MS, 3).unwrap(),
                security: SecurityContext {
                    tenant: "acme".into(),
                    principal: "svc-orders".into(),
                    classification: "internal".into(),
                    residency: Residency::Unrestricted,
                    scopes: BTreeSet::new(),
                    policy_epoch: 1,
                },
                content_type: content_type.into(),
                payload,
                trace: None,
            })
            .unwrap()
    }

    fn stored(incoming: &IncomingEvent) -> Event {
        let key = incoming.key.as_deref().map(str::as_bytes);
        sign(CE_JSON, Payload::Clear(incoming.to_payload()), key)
    }

    fn obj(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static [u8])> {
        pairs.iter().map(|(n, v)| (*n, v.as_bytes())).collect()
    }

    fn with(extra: Value) -> Vec<u8> {
        let mut map = obj(json!({"specversion": "1.0", "id": "1", "source": "/s", "type": "t"}));
        map.extend(obj(extra));
        serde_json::to_vec(&map).unwrap()
    }

    #[test]
    fn render_round_trips_structured_and_binary() {
        let body = with(json!({
            "subject": "order-1",
            "time": "2018-04-05T17:31:00Z",
            "dataschema": "https://example.com/schema.json",
            "comexampleothervalue": 5,
            "comexampleflag": true,
            "weftstream": "orders.eu",
            "datacontenttype": "application/json",
            "data": {"total": 12.5},
        }));
        let incoming = parse_structured(&body).unwrap();
        let event = stored(&incoming);
        let rendered = render(&event);
        for (name, value) in &incoming.structured {
            assert_eq!(rendered.get(name), Some(value), "{name}");
        }
        let expected = [
            ("weftstream", json!("orders.eu")),
            ("weftid", json!(event.id().to_string())),
            ("weftorigin", json!(event.origin().to_string())),
            ("weftseq", json!(42)),
            ("wefthlc", json!(event.hlc().to_string())),
            ("weftprincipal", json!("svc-orders")),
            ("wefttenant", json!("acme")),
            ("weftclassification", json!("internal")),
        ];
        for (name, value) in expected {
            assert_eq!(rendered.get(name), Some(&value), "{name}");
        }
        assert!(!rendered.contains_key("weftsealed"));
        for name in ["weftresidency", "weftderived"] {
            assert!(
                !rendered.contains_key(name),
                "{name}: a weft attribute the node does not set never shows"
            );
        }
        // What readers get is itself a valid CloudEvent with the same attributes.
        let again = parse_structured(&serde_json::to_vec(&rendered).unwrap()).unwrap();
        assert_eq!(
            (again.id, again.source, again.ty),
            (incoming.id, incoming.source, incoming.ty)
        );
        assert_eq!(again.key, incoming.key);

        let h = headers(&[
            ("ce-specversion", "1.0"),
            ("ce-id", "b1"),
            ("ce-source", "urn:example:b"),
            ("ce-type", "com.example.b"),
            ("ce-weftkey", "k%201"),
            ("content-type", "text/plain"),
        ]);
        let incoming = parse_binary(h, b"hi").unwrap();
        let rendered = render(&stored(&incoming));
        for (name, value) in &incoming.structured {
            assert_eq!(rendered.get(name), Some(value), "{name}");
        }
        assert_eq!(rendered["weftkey"], json!("k 1"));
        assert_eq!(rendered["data"], json!("hi"));
    }

    #[test]
    fn render_overwrites_spoofed_weft_attributes() {
        let body = with(json!({
            "weftprincipal": "root", "weftsealed": true, "weftseq": 1, "weftstream": "x.y",
            "weftlineage": "{\"sources\":[]}", "weftcursor": "999999",
            "weftresidency": "US", "weftderived": "true",
        }));
        let rendered = render(&stored(&parse_structured(&body).unwrap()));
        assert!(
            !rendered.contains_key("weftlineage"),
            "only derived events carry lineage"
        );
        assert_eq!(rendered["weftprincipal"], json!("svc-orders"));
        assert_eq!(rendered["weftseq"], json!(42));
        assert_eq!(rendered["weftstream"], json!("orders.eu"));
        assert!(!rendered.contains_key("weftsealed"));
        assert!(
            !rendered.contains_key("weftcursor"),
            "a cursor is a read's, never the publisher's"
        );
    }

    #[test]
    fn render_gives_a_derived_event_its_data_and_lineage() {
        let payload = json!({"data": {"email": "sha256:00"},
            "lineage": {"transform": "masked", "policy_epoch": 3, "sources": ["ab"]}});
        let event = sign(
            crate::egress::DERIVED_CONTENT_TYPE,
            Payload::Clear(payload.to_string().into_bytes()),
            None,
        );
        let r = render(&event);
        assert_eq!(r["data"], json!({"email": "sha256:00"}));
        assert_eq!(r["source"], json!("weft:transform/masked"));
        assert_eq!(r["id"], json!(event.id().to_string()));
        let lineage: Value = serde_json::from_str(r["weftlineage"].as_str().unwrap()).unwrap();
        assert_eq!(lineage, payload["lineage"]);
        assert_eq!(r["weftid"], json!(event.id().to_string()));
        // A derived content type whose payload is not a derived payload: synthesized, no
        // lineage.
        let odd = sign(
            crate::egress::DERIVED_CONTENT_TYPE,
            Payload::Clear(b"[1]".to_vec()),
            None,
        );
        assert!(!render(&odd).contains_key("weftlineage"));
    }

    #[test]
    fn render_synthesizes_non_cloudevents() {
        let event = sign(
            "application/json",
            Payload::Clear(br#"{"a":1}"#.to_vec()),
            Some(b"k1"),
        );
        let r = render(&event);
        assert_eq!(r["specversion"], json!("1.0"));
        assert_eq!(r["id"], json!(event.id().to_string()));
        assert_eq!(
            r["source"],
            json!(format!("weft:origin/{}", event.origin()))
        );
        assert_eq!(r["type"], json!("weft.event"));
        assert_eq!(r["datacontenttype"], json!("application/json"));
        assert_eq!(r["subject"], json!("k1"));
        assert_eq!(r["time"], json!("2025-11-28T18:40:00.123Z"));
        assert_eq!(r["data"], json!({"a": 1}));
        assert_eq!(r["wefthlc"], json!(format!("{HLC_MS}.00003")));

        let text = render(&sign(
            "text/plain",
            Payload::Clear(b"hi".to_vec()),
            Some(&[0xff]),
        ));
        assert_eq!(text["data"], json!("hi"));
        assert!(!text.contains_key("subject"), "non-UTF-8 key");

        let bad_json = render(&sign(
            "application/json",
            Payload::Clear(b"{".to_vec()),
            None,
        ));
        assert_eq!(bad_json["data_base64"], json!("ew=="));

        let odd = render(&sign("not a media type", Payload::Clear(vec![1]), None));
        assert!(!odd.contains_key("datacontenttype"));
        assert_eq!(odd["data_base64"], json!("AQ=="));

        // A CE_JSON payload that is not a valid CloudEvent is shown as opaque JSON data.
        let broken = render(&sign(
            CE_JSON,
            Payload::Clear(br#"{"id":1}"#.to_vec()),
            None,
        ));
        assert_eq!(broken["type"], json!("weft.event"));
        assert_eq!(broken["data"], json!({"id": 1}));

        let sealed = Payload::Sealed(SealedPayload {
            key_id: KeyId::new("tenant-a/1").unwrap(),
            nonce: [9; NONCE_LEN],
            ciphertext: vec![1; 40],
        });
        let r = render(&sign(CE_JSON, sealed, None));
        assert_eq!(r["weftsealed"], json!(true));
        assert_eq!(r["datacontenttype"], json!(CE_JSON));
        assert!(!r.contains_key("data") && !r.contains_key("data_base64"));
    }

    #[test]
    fn rfc3339_from_ms_matches_known_dates() {
        assert_eq!(
            rfc3339_from_ms(0).as_deref(),
            Some("1970-01-01T00:00:00.000Z")
        );
        assert_eq!(
            rfc3339_from_ms(951_782_400_000).as_deref(),
            Some("2000-02-29T00:00:00.000Z")
        );
        assert_eq!(
            rfc3339_from_ms(253_402_300_799_999).as_deref(),
            Some("9999-12-31T23:59:59.999Z")
        );
        assert_eq!(rfc3339_from_ms(253_402_300_800_000), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Whatever a non-CloudEvents producer publishes renders as a valid CloudEvent.
        #[test]
        fn render_of_any_event_is_a_valid_cloudevent(
            content_type in prop_oneof![
                Just("application/json".to_owned()),
                Just("text/plain; charset=utf-8".to_owned()),
                Just(CE_JSON.to_owned()),
                "[a-z]{1,8}/[a-z+.-]{1,12}",
                "[ -~]{1,40}",
            ],
            payload in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..64),
                "\\PC{0,32}".prop_map(String::into_bytes),
                any::<i64>().prop_map(|n| json!({"n": n}).to_string().into_bytes()),
            ],
            key in proptest::option::of(proptest::collection::vec(any::<u8>(), 1..16)),
            ms in 0u64..=weft_fabric::hlc::HLC_PHYSICAL_MS_MAX,
            sealed in any::<bool>(),
        ) {
            let payload = if sealed {
                Payload::Sealed(SealedPayload {
                    key_id: KeyId::new("k").unwrap(),
                    nonce: [0; NONCE_LEN],
                    ciphertext: payload.iter().copied().chain([0; 16]).collect(),
                })
            } else {
                Payload::Clear(payload)
            };
            let mut draft = sign(&content_type, payload, key.as_deref()).draft().clone();
            draft.hlc = Hlc::new(ms, 0).unwrap();
            let event = Signer::from_secret(&[7u8; 32]).sign(draft).unwrap();
            let rendered = render(&event);
            let bytes = serde_json::to_vec(&rendered).unwrap();
            let parsed = parse_structured(&bytes);
            prop_assert!(parsed.is_ok(), "{:?}: {}", parsed, String::from_utf8_lossy(&bytes));
            let parsed = parsed.unwrap();
            prop_assert_eq!(&parsed.structured, &rendered);
            prop_assert_eq!(parsed.stream.map(|s| s.as_str().to_owned()), Some("orders.eu".to_owned()));
            prop_assert_eq!(rendered["weftid"].clone(), json!(event.id().to_string()));
            prop_assert_eq!(rendered.contains_key("weftsealed"), sealed);
        }
    }
}
