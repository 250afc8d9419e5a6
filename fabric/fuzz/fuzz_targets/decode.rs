//! Fuzzes `weft_fabric::decode`: any accepted input must be the one canonical encoding of its event (re-encodes byte for byte), must decode again to the same event and id, and must survive `verify()` without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_fabric::codec::SIGNING_CONTEXT;

fuzz_target!(|data: &[u8]| {
    let Ok(event) = weft_fabric::decode(data) else {
        return;
    };

    // Canonical: exactly one accepted encoding, so re-encoding gives back the input.
    let encoded = event.encode();
    assert_eq!(
        encoded, data,
        "accepted input is not the canonical encoding"
    );

    // Round trip: the re-encoding decodes to the same event and the same id.
    let again = weft_fabric::decode(&encoded)
        .expect("the re-encoding of an accepted event does not decode");
    assert_eq!(again.id(), event.id(), "id changed across a round trip");
    assert_eq!(again, event, "event changed across a round trip");

    // The signed bytes are the signing context followed by the body, and the decoded
    // fields pass the same checks the encoder runs.
    let signed = event.signed_bytes();
    assert!(
        signed.starts_with(SIGNING_CONTEXT),
        "signed bytes lack the signing context"
    );
    assert_eq!(&signed[SIGNING_CONTEXT.len()..], event.body_bytes());
    assert!(
        event.claimed().check().is_ok(),
        "decoded draft fails EventDraft::check"
    );

    // Verification must not panic; it almost always fails on fuzzed input. If it
    // succeeds, the verified event is still the same bytes.
    if let Ok(verified) = event.verify() {
        assert_eq!(
            verified.encode(),
            data,
            "verified event re-encodes differently"
        );
        assert_eq!(verified.id(), again.id());
    }
});
