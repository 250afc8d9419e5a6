//! `weft policy sign` and `weft policy verify` on the example bundle: k-of-n signatures,
//! and each refusal a node would make, with its reason.

use std::path::Path;
use std::process::{Command, Output};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");
const EXAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../policy/examples/eu-retail.toml"
);

fn weft(dir: &Path, args: &[&str]) -> Output {
    Command::new(WEFT)
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run weft")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Writes an operator key and returns its public key.
fn operator(dir: &Path, name: &str) -> String {
    let o = weft(dir, &["keygen", "--out", name]);
    assert!(o.status.success(), "{}", text(&o));
    text(&o)
        .lines()
        .find_map(|l| l.strip_prefix("public key: "))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn bundles_are_signed_k_of_n_and_verified_as_a_node_would() {
    let dir = std::env::temp_dir().join(format!("weft-policy-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (a, b, c) = (
        operator(&dir, "a.key"),
        operator(&dir, "b.key"),
        operator(&dir, "c.key"),
    );

    // One signature, then a second operator adds theirs to the same bytes.
    let o = weft(
        &dir,
        &[
            "policy", "sign", "--key", "a.key", "--out", "p.cbor", EXAMPLE,
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("1 signature(s)"), "{}", text(&o));
    // The example's masked-orders transform is a deny list: named, with the remedy.
    assert!(
        text(&o).contains(
            "warning: transform orders-masked copies to orders.global.masked (class public) every field of orders.eu.> it does not drop"
        ) && !text(&o).contains("transform orders-per-country copies")
            && text(&o).contains(
                "warning: transform orders-per-country publishes groups of any size"
            )
            && text(&o).contains(
                "note: transform orders-masked hashes under the node-local key orders-2025: give it to every node that takes orders.eu.> in"
            )
            && !text(&o).contains("hashes with a salt")
            && !text(&o).contains("transform orders-per-country hashes")
            && !text(&o).contains("derives into"),
        "{}",
        text(&o)
    );
    // The same transform with a salt instead: warned, with the remedy. Its target's stream
    // kept to one region: warned, as a node elsewhere would derive nothing.
    let salted = std::fs::read_to_string(EXAMPLE)
        .unwrap()
        .replacen("hash_key = \"orders-2025\"", "salt = \"acme-2025\"", 1)
        .replacen(
            "pattern = \"orders.global.>\"\nclassification = \"public\"\nreplication = \"all\"",
            "pattern = \"orders.global.>\"\nclassification = \"public\"\nreplication = \"regions\"\nregions = [\"aws:us-east-1\"]",
            1,
        );
    std::fs::write(dir.join("salted.toml"), salted).unwrap();
    let o = weft(
        &dir,
        &[
            "policy",
            "sign",
            "--key",
            "a.key",
            "--out",
            "s.cbor",
            "salted.toml",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o)
            .contains("warning: transform orders-masked hashes with a salt carried in the bundle")
            && !text(&o).contains("note: transform orders-masked hashes under")
            && text(&o).contains(
                "warning: transform orders-masked derives into orders.global.masked, which stream rule streams[2] keeps to regions aws:us-east-1"
            ),
        "{}",
        text(&o)
    );
    let one = std::fs::read(dir.join("p.cbor")).unwrap();
    // The second operator co-signs what they reviewed: the signed bundle must carry exactly
    // that TOML's bundle (another is refused, nothing written), and what is signed is shown.
    let other = std::fs::read_to_string(EXAMPLE)
        .unwrap()
        .replacen("epoch = 7", "epoch = 8", 1);
    std::fs::write(dir.join("other.toml"), other).unwrap();
    let o = weft(
        &dir,
        &[
            "policy",
            "sign",
            "--key",
            "b.key",
            "--add-to",
            "p.cbor",
            "--out",
            "p.cbor",
            "other.toml",
        ],
    );
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("does not carry the bundle of other.toml")
            && text(&o).contains("epoch 7, the TOML's 8"),
        "{}",
        text(&o)
    );
    assert_eq!(std::fs::read(dir.join("p.cbor")).unwrap(), one, "unchanged");
    let o = weft(
        &dir,
        &[
            "policy", "sign", "--key", "b.key", "--add-to", "p.cbor", "--out", "p.cbor", EXAMPLE,
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("signing epoch 7"), "{}", text(&o));
    assert!(text(&o).contains("3 jurisdictions"), "{}", text(&o));
    assert!(text(&o).contains("2 signature(s)"), "{}", text(&o));
    std::fs::write(dir.join("one.cbor"), &one).unwrap();

    let verify = |file: &str, ops: &[&str], threshold: &str, epoch: &str| {
        let mut args = vec![
            "policy",
            "verify",
            "--threshold",
            threshold,
            "--epoch",
            epoch,
        ];
        for op in ops {
            args.extend(["--operator", op]);
        }
        args.push(file);
        weft(&dir, &args)
    };
    // 2 of 3 trusted operators signed: valid.
    let o = verify("p.cbor", &[&a, &b, &c], "2", "0");
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("valid: epoch 7"), "{}", text(&o));
    assert!(text(&o).contains("3 jurisdictions"), "{}", text(&o));

    // Each refusal, with its reason.
    let refused = |o: Output, why: &str| {
        assert!(!o.status.success(), "accepted: {}", text(&o));
        assert!(text(&o).contains(why), "expected {why:?} in: {}", text(&o));
    };
    refused(
        verify("one.cbor", &[&a, &b, &c], "2", "0"),
        "threshold is 2",
    );
    refused(
        verify("p.cbor", &[&a, &b, &c], "2", "7"),
        "rollback refused",
    );
    refused(verify("p.cbor", &[&a, &c], "1", "0"), "unknown key");
    let mut tampered = std::fs::read(dir.join("p.cbor")).unwrap();
    tampered[40] ^= 1;
    std::fs::write(dir.join("bad.cbor"), &tampered).unwrap();
    refused(verify("bad.cbor", &[&a, &b, &c], "2", "0"), "bad signature");
    std::fs::write(dir.join("junk.cbor"), b"not a bundle").unwrap();
    refused(verify("junk.cbor", &[&a, &b, &c], "1", "0"), "refused");
    // A bundle with an unknown field is refused at signing, naming the field.
    let toml = std::fs::read_to_string(EXAMPLE).unwrap();
    std::fs::write(dir.join("typo.toml"), format!("colour = \"blue\"\n{toml}")).unwrap();
    let o = weft(
        &dir,
        &[
            "policy",
            "sign",
            "--key",
            "a.key",
            "--out",
            "t.cbor",
            "typo.toml",
        ],
    );
    refused(o, "colour");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `weft policy where` answers where a stream's events may be held, from the TOML bundle
/// and from its signed form alike: the rule, the class, and the regions (residency narrowed
/// by a `replication = "regions"` scope), or every node; a stream no rule classifies is an
/// error naming it.
#[test]
fn policy_where_names_the_regions_a_stream_may_be_held_in() {
    let dir = std::env::temp_dir().join(format!("weft-policy-where-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    operator(&dir, "a.key");
    let o = weft(
        &dir,
        &[
            "policy", "sign", "--key", "a.key", "--out", "p.cbor", EXAMPLE,
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    // A scope narrower than residency would be: US residency for the payments class,
    // kept to one EU region by the rule.
    let scoped = std::fs::read_to_string(EXAMPLE).unwrap().replacen(
        "pattern = \"payments.>\"\nclassification = \"payment\"\nreplication = \"all\"",
        "pattern = \"payments.>\"\nclassification = \"payment\"\nreplication = \"regions\"\nregions = [\"aws:eu-west-1\"]",
        1,
    );
    std::fs::write(dir.join("scoped.toml"), scoped).unwrap();
    for bundle in [EXAMPLE, "p.cbor"] {
        let o = weft(
            &dir,
            &["policy", "where", "--bundle", bundle, "orders.eu.ie"],
        );
        assert!(o.status.success(), "{}", text(&o));
        assert!(
            text(&o).contains("stream rule streams[0] (orders.eu.>): class eu-personal, replication regions")
                && text(&o).contains(
                    "held in clear only in 2 region(s): aws:eu-central-1, aws:eu-west-1 (ack=regions:2 at most)"
                ),
            "{bundle}: {}",
            text(&o)
        );
    }
    let o = weft(
        &dir,
        &[
            "policy",
            "where",
            "--bundle",
            "scoped.toml",
            "payments.card",
        ],
    );
    assert!(
        o.status.success()
            && text(&o).contains("residency EU, US")
            && text(&o).contains("held in clear only in 1 region(s): aws:eu-west-1"),
        "{}",
        text(&o)
    );
    let o = weft(
        &dir,
        &["policy", "where", "--bundle", EXAMPLE, "orders.global.x"],
    );
    assert!(
        text(&o).contains("held in clear by every node"),
        "{}",
        text(&o)
    );
    let o = weft(&dir, &["policy", "where", "--bundle", EXAMPLE, "misc"]);
    assert!(
        !o.status.success() && text(&o).contains("stream misc: no classification given"),
        "{}",
        text(&o)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
