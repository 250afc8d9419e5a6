//! Local rules in device enrollments (`devices.<name>.rules`, issue 8): they compile, travel
//! in canonical CBOR, reach `Policy::enrollment`, and a bad rule is refused with its path.

use weft_policy::{Bundle, Policy};

const BUNDLE: &str = r#"
format = 1
epoch = 1
[jurisdictions.EU]
regions = ["aws:eu-west-1"]
[tenants.acme]
[principals.till-7]
tenant = "acme"
device_key = "fd1724385aa0c75b64fb78cd602fa1d991fdebf76b13c58ed702eac835e9f618"
[devices.till-7]
streams = ["telemetry.till-7.>"]
jurisdiction = "EU"
[[devices.till-7.rules]]
stream = "telemetry.till-7.log"
filter = { field = "level", op = "eq", value = "debug" }
[[devices.till-7.rules]]
stream = "telemetry.till-7.hb"
sample = 10
[[devices.till-7.rules]]
stream = "telemetry.till-7.temp"
aggregate = { window_s = 60, fields = ["celsius"] }
"#;

#[test]
fn rules_compile_round_trip_and_reach_the_enrollment() {
    let bundle = Bundle::from_toml(BUNDLE).unwrap();
    let cbor = bundle.to_cbor().unwrap();
    let back = Bundle::from_cbor(&cbor).unwrap();
    assert_eq!(back, bundle);
    let policy = Policy::compile(&back).unwrap();
    let text = "fd1724385aa0c75b64fb78cd602fa1d991fdebf76b13c58ed702eac835e9f618";
    let mut key = [0u8; 32];
    for (i, b) in key.iter_mut().enumerate() {
        *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap();
    }
    let e = policy.enrollment(&key).unwrap();
    assert_eq!(e.rules.len(), 3);
    assert_eq!(e.rules[1].sample, Some(10));
    assert_eq!(
        e.rules[2].aggregate.as_ref().unwrap().fields,
        vec!["celsius".to_string()]
    );
}

#[test]
fn a_bad_rule_is_refused_with_its_path() {
    let cases = [
        (
            BUNDLE.replace("sample = 10", "sample = 0"),
            "devices.till-7.rules[1]",
        ),
        (
            BUNDLE.replace(
                "sample = 10",
                "sample = 10\nfilter = { field = \"x\", op = \"exists\" }",
            ),
            "exactly one",
        ),
        (
            BUNDLE.replace("window_s = 60", "window_s = 0"),
            "AGGREGATE_WINDOW_S_MAX",
        ),
        (BUNDLE.replace("op = \"eq\"", "op = \"like\""), "like"),
    ];
    for (text, want) in cases {
        let err = Bundle::from_toml(&text).unwrap_err().to_string();
        assert!(err.contains(want), "{want}: {err}");
    }
    let many: String = (0..33)
        .map(|_| "[[devices.till-7.rules]]\nstream = \"telemetry.till-7.hb\"\nsample = 2\n")
        .collect();
    let err = Bundle::from_toml(&format!("{BUNDLE}{many}"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("RULES_MAX"), "{err}");
}
