//! Keyed tables converge: replicas that issue writes from what they have seen, exchange
//! them in any interleaving (each origin's writes in order, as the mesh delivers them),
//! with duplicates, end with byte-identical state (equal digests), and that state is the
//! one each strategy's rule defines, computed independently from the list of writes.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use weft_fabric::table::{
    self, Applied, ConflictStats, Dot, KeyState, Op, Strategy as Kind, Table, Totals, Vv, Write,
    apply_key_with,
};
use weft_fabric::{Hlc, OriginKey};

const REPLICAS: usize = 3;
const KEYS: [&[u8]; 2] = [b"k1", b"k2"];
const ELEMENTS: [&[u8]; 3] = [b"a", b"b", b"c"];

#[derive(Debug, Clone)]
struct Issued {
    dot: Dot,
    hlc: Hlc,
    key: Vec<u8>,
    op: Op,
}

/// One step of a run: replica `who` issues a write (choice `pick`), or receives the next
/// write of origin `from` it has not seen (or, with `dup`, one it has seen again).
#[derive(Debug, Clone)]
enum Step {
    Issue { who: usize, pick: u8, key: usize },
    Deliver { to: usize, from: usize, dup: bool },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..REPLICAS, any::<u8>(), 0..KEYS.len()).prop_map(|(who, pick, key)| Step::Issue {
            who,
            pick,
            key
        }),
        (0..REPLICAS, 0..REPLICAS, prop::bool::weighted(0.2))
            .prop_map(|(to, from, dup)| Step::Deliver { to, from, dup }),
    ]
}

fn origin(i: usize) -> OriginKey {
    OriginKey([i as u8 + 1; 32])
}

/// The write replica `who` makes from its local view of `key`.
fn make_op(strategy: Kind, local: Option<&KeyState>, pick: u8) -> Op {
    let version = local.map(KeyState::version).unwrap_or_default();
    let value = vec![b'v', pick];
    match strategy {
        Kind::Lww => {
            if pick.is_multiple_of(4) {
                Op::Delete {
                    ctx: Vv::default(),
                    totals: BTreeMap::new(),
                }
            } else {
                Op::Put {
                    content_type: "text/plain".into(),
                    value,
                    ctx: Vv::default(),
                }
            }
        }
        Kind::MultiValue => match pick % 4 {
            0 => Op::Delete {
                ctx: version,
                totals: BTreeMap::new(),
            },
            // A blind write: concurrent with everything.
            1 => Op::Put {
                content_type: "text/plain".into(),
                value,
                ctx: Vv::default(),
            },
            _ => Op::Put {
                content_type: "text/plain".into(),
                value,
                ctx: version,
            },
        },
        Kind::Counter => {
            if pick.is_multiple_of(5) {
                let totals = match local {
                    Some(KeyState::Counter { totals, .. }) => totals.clone(),
                    _ => BTreeMap::new(),
                };
                Op::Delete {
                    ctx: Vv::default(),
                    totals,
                }
            } else {
                Op::Add {
                    delta: i64::from(pick % 11) - 5,
                }
            }
        }
        Kind::Set => {
            let e = ELEMENTS[pick as usize % ELEMENTS.len()].to_vec();
            match pick % 5 {
                0 => Op::Delete {
                    ctx: version,
                    totals: BTreeMap::new(),
                },
                1 | 2 => Op::Remove {
                    elements: vec![e],
                    ctx: version,
                },
                // A blind insert, or one superseding what this replica saw (as the node
                // sends: the tags of its elements; the key's whole version here, which
                // supersedes the same tags).
                3 => Op::Insert {
                    elements: vec![e],
                    ctx: Vv::default(),
                },
                _ => Op::Insert {
                    elements: vec![e],
                    ctx: version,
                },
            }
        }
    }
}

struct Run {
    tables: Vec<Table>,
    /// Writes per origin, in sequence order.
    log: Vec<Vec<Issued>>,
    /// Per replica, per origin: how many of that origin's writes it has applied.
    cursor: Vec<Vec<usize>>,
    clocks: Vec<u64>,
    seqs: Vec<u64>,
}

impl Run {
    fn new(strategy: Kind) -> Self {
        Self {
            tables: (0..REPLICAS).map(|_| Table::new(strategy)).collect(),
            log: vec![Vec::new(); REPLICAS],
            cursor: vec![vec![0; REPLICAS]; REPLICAS],
            clocks: vec![0; REPLICAS],
            seqs: vec![0; REPLICAS],
        }
    }

    fn apply(&mut self, to: usize, w: &Issued) -> Applied {
        // HLC receive rule: the local clock moves past what it sees.
        self.clocks[to] = self.clocks[to].max(w.hlc.as_u64());
        self.tables[to].apply(&Write {
            dot: w.dot,
            hlc: w.hlc,
            key: &w.key,
            op: &w.op,
        })
    }

    fn step(&mut self, s: &Step) {
        match *s {
            Step::Issue { who, pick, key } => {
                let key = KEYS[key].to_vec();
                let op = make_op(
                    self.tables[who].strategy(),
                    self.tables[who].get(&key),
                    pick,
                );
                self.clocks[who] += 1;
                // Gaps in the sequence: the origin publishes other streams too.
                self.seqs[who] += 1 + u64::from(pick % 3);
                let w = Issued {
                    dot: Dot {
                        origin: origin(who),
                        seq: self.seqs[who],
                    },
                    hlc: Hlc::from_u64(self.clocks[who] << 16),
                    key,
                    op,
                };
                assert_eq!(self.apply(who, &w), Applied::Applied);
                self.log[who].push(w);
                self.cursor[who][who] = self.log[who].len();
            }
            Step::Deliver { to, from, dup } => {
                let at = self.cursor[to][from];
                if dup && at > 0 {
                    let w = self.log[from][at - 1].clone();
                    assert_eq!(self.apply(to, &w), Applied::Duplicate);
                } else if at < self.log[from].len() {
                    let w = self.log[from][at].clone();
                    self.apply(to, &w);
                    self.cursor[to][from] = at + 1;
                }
            }
        }
    }

    /// Delivers everything still missing, replica by replica in a fixed order.
    fn finish(&mut self) {
        for to in 0..REPLICAS {
            for from in 0..REPLICAS {
                while self.cursor[to][from] < self.log[from].len() {
                    self.step(&Step::Deliver {
                        to,
                        from,
                        dup: false,
                    });
                }
            }
        }
    }

    fn all(&self) -> Vec<&Issued> {
        self.log.iter().flatten().collect()
    }
}

/// Every covering context the writes of `key` carry, for the superseding rules.
fn contexts<'a>(writes: &[&'a Issued], key: &[u8]) -> Vec<&'a Op> {
    writes
        .iter()
        .filter(|w| w.key == key)
        .map(|w| &w.op)
        .collect()
}

fn check_model(strategy: Kind, run: &Run) {
    let writes = run.all();
    let table = &run.tables[0];
    for key in KEYS {
        let state = table.get(key);
        let ops = contexts(&writes, key);
        let on_key: Vec<&&Issued> = writes.iter().filter(|w| w.key == key).collect();
        match strategy {
            Kind::Lww => {
                let winner = on_key.iter().max_by_key(|w| (w.hlc, w.dot));
                let want = winner.and_then(|w| match &w.op {
                    Op::Put { value, .. } => Some(value.clone()),
                    _ => None,
                });
                let got = match state {
                    Some(KeyState::Lww { value, .. }) => value.as_ref().map(|v| v.bytes.clone()),
                    None => None,
                    other => panic!("not lww: {other:?}"),
                };
                assert_eq!(got, want, "lww value of {key:?}");
            }
            Kind::MultiValue => {
                let covered = |d: &Dot| {
                    ops.iter().any(|op| match op {
                        Op::Put { ctx, .. } | Op::Delete { ctx, .. } => ctx.covers(d),
                        _ => false,
                    })
                };
                let want: BTreeSet<Dot> = on_key
                    .iter()
                    .filter(|w| matches!(w.op, Op::Put { .. }) && !covered(&w.dot))
                    .map(|w| w.dot)
                    .collect();
                let got: BTreeSet<Dot> = match state {
                    Some(KeyState::MultiValue { siblings, .. }) => {
                        siblings.keys().copied().collect()
                    }
                    None => BTreeSet::new(),
                    other => panic!("not mv: {other:?}"),
                };
                assert_eq!(got, want, "siblings of {key:?}");
            }
            Kind::Counter => {
                let got = state.map_or(0, KeyState::counter_value);
                assert_eq!(got, counter_rule(&on_key), "counter {key:?}");
            }
            Kind::Set => {
                for e in ELEMENTS {
                    let removed = |d: &Dot| {
                        ops.iter().any(|op| match op {
                            Op::Delete { ctx, .. } => ctx.covers(d),
                            Op::Remove { elements, ctx } | Op::Insert { elements, ctx } => {
                                elements.iter().any(|x| x == e) && ctx.covers(d)
                            }
                            _ => false,
                        })
                    };
                    let want = on_key.iter().any(|w| {
                        matches!(&w.op, Op::Insert { elements, .. } if elements.iter().any(|x| x == e))
                            && !removed(&w.dot)
                    });
                    let got = match state {
                        Some(KeyState::Set { tags, .. }) => tags.contains_key(e),
                        None => false,
                        other => panic!("not a set: {other:?}"),
                    };
                    assert_eq!(got, want, "element {e:?} of {key:?}");
                }
            }
        }
    }
}

/// A counter key's value by its rule, from its writes alone: the increments of each
/// origin numbered above the greatest number a delete names for it.
fn counter_rule(on_key: &[&&Issued]) -> i128 {
    let mut named: BTreeMap<OriginKey, u64> = BTreeMap::new();
    for w in on_key {
        if let Op::Delete { totals, .. } = &w.op {
            for (o, t) in totals {
                let s = named.entry(*o).or_default();
                *s = (*s).max(t.seq);
            }
        }
    }
    on_key
        .iter()
        .filter_map(|w| match w.op {
            Op::Add { delta } if w.dot.seq > named.get(&w.dot.origin).copied().unwrap_or(0) => {
                Some(i128::from(delta))
            }
            _ => None,
        })
        .sum()
}

fn converge(strategy: Kind, steps: &[Step]) {
    let mut run = Run::new(strategy);
    for s in steps {
        run.step(s);
    }
    run.finish();
    let d0 = run.tables[0].digest();
    for (i, t) in run.tables.iter().enumerate() {
        assert_eq!(t.digest(), d0, "replica {i} differs from replica 0");
    }
    check_model(strategy, &run);
    // The stored form reads back to the same state.
    for (_, state) in run.tables[0].iter() {
        assert_eq!(&KeyState::decode(&state.encode()).unwrap(), state);
    }
}

/// Counter writes with some increments erased (taken from every replica, as a principal's
/// erase does; the deletes that counted them still carry their sums), applied on fresh
/// replicas in an interleaving `order` picks (each origin's writes in sequence order) with
/// the replica's own increments as the held sums: every replica ends with the same state,
/// and the value is the rule's over what is left.
fn counter_after_erase(steps: &[Step], erase: &[bool], order: &[usize]) {
    let mut run = Run::new(Kind::Counter);
    for s in steps {
        run.step(s);
    }
    let mut erased = erase.iter().cycle();
    let kept: Vec<Vec<Issued>> = run
        .log
        .iter()
        .map(|writes| {
            writes
                .iter()
                .filter(|w| !(matches!(w.op, Op::Add { .. }) && *erased.next().unwrap_or(&false)))
                .cloned()
                .collect()
        })
        .collect();
    let mut digests = Vec::new();
    for round in 0..2 {
        let mut table: BTreeMap<Vec<u8>, KeyState> = BTreeMap::new();
        let mut at = [0; REPLICAS];
        let mut picks = order.iter().skip(round).cycle();
        let mut applied: Vec<&Issued> = Vec::new();
        while at.iter().zip(&kept).any(|(a, k)| *a < k.len()) {
            let mut from = picks.next().copied().unwrap_or(0) % REPLICAS;
            while at[from] == kept[from].len() {
                from = (from + 1) % REPLICAS;
            }
            let w = &kept[from][at[from]];
            at[from] += 1;
            let mut state = table.remove(&w.key);
            let held_by: Vec<&Issued> = applied.clone();
            let key = w.key.clone();
            apply_key_with(
                Kind::Counter,
                &mut state,
                &Write {
                    dot: w.dot,
                    hlc: w.hlc,
                    key: &w.key,
                    op: &w.op,
                },
                &mut ConflictStats::default(),
                &mut |o, after, upto| {
                    let mut sums = Totals::default();
                    for h in held_by.iter().filter(|h| {
                        h.key == key && h.dot.origin == *o && h.dot.seq > after && h.dot.seq <= upto
                    }) {
                        if let Op::Add { delta } = h.op {
                            sums.add(delta);
                        }
                    }
                    Some((sums.p, sums.n))
                },
            );
            if let Some(state) = state {
                table.insert(w.key.clone(), state);
            }
            applied.push(w);
        }
        let left: Vec<&Issued> = kept.iter().flatten().collect();
        for key in KEYS {
            let on_key: Vec<&&Issued> = left.iter().filter(|w| w.key == key).collect();
            let got = table.get(key).map_or(0, KeyState::counter_value);
            assert_eq!(
                got,
                counter_rule(&on_key),
                "counter {key:?} after the erase"
            );
        }
        digests.push(table::digest(
            Kind::Counter,
            &Vv::default(),
            table.iter().map(|(k, s)| (k.as_slice(), s)),
        ));
    }
    assert_eq!(digests[0], digests[1], "two interleavings differ");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn a_counter_converges_on_what_an_erase_left(
        steps in prop::collection::vec(step(), 0..80),
        erase in prop::collection::vec(prop::bool::weighted(0.3), 1..16),
        order in prop::collection::vec(0..REPLICAS, 1..32),
    ) {
        counter_after_erase(&steps, &erase, &order);
    }

    #[test]
    fn lww_converges(steps in prop::collection::vec(step(), 0..80)) {
        converge(Kind::Lww, &steps);
    }

    #[test]
    fn multi_value_converges(steps in prop::collection::vec(step(), 0..80)) {
        converge(Kind::MultiValue, &steps);
    }

    #[test]
    fn counter_converges(steps in prop::collection::vec(step(), 0..80)) {
        converge(Kind::Counter, &steps);
    }

    #[test]
    fn set_converges(steps in prop::collection::vec(step(), 0..80)) {
        converge(Kind::Set, &steps);
    }

    #[test]
    fn ops_round_trip(pick in any::<u8>(), strategy in prop_oneof![
        Just(Kind::Lww), Just(Kind::MultiValue), Just(Kind::Counter), Just(Kind::Set)
    ]) {
        let op = make_op(strategy, None, pick);
        prop_assert_eq!(Op::decode(&op.encode()).unwrap(), op);
    }
}

#[test]
fn a_late_older_write_never_resurrects_a_deleted_key() {
    let mut t = Table::new(Kind::Lww);
    let (a, b) = (origin(0), origin(1));
    let put = Op::Put {
        content_type: "text/plain".into(),
        value: b"old".to_vec(),
        ctx: Vv::default(),
    };
    let del = Op::Delete {
        ctx: Vv::default(),
        totals: BTreeMap::new(),
    };
    let w = |origin, seq, hlc: u64, op| (Dot { origin, seq }, Hlc::from_u64(hlc << 16), op);
    let (d1, h1, o1) = w(b, 1, 20, del);
    t.apply(&Write {
        dot: d1,
        hlc: h1,
        key: b"k",
        op: &o1,
    });
    let (d2, h2, o2) = w(a, 1, 10, put);
    t.apply(&Write {
        dot: d2,
        hlc: h2,
        key: b"k",
        op: &o2,
    });
    assert!(t.get(b"k").unwrap().is_absent(), "the delete (hlc 20) wins");
    assert_eq!(t.stats().lww_lost, 1);
}

/// A set element inserted again and again with the context of what its writer saw keeps
/// one tag per concurrent inserter, not one per insert; a copy of a superseded insert that
/// arrives late stays out; a blind insert encodes as before (no `ctx` key), one with a
/// context round-trips.
#[test]
fn a_set_insert_supersedes_the_tags_its_writer_saw() {
    let (a, b) = (origin(0), origin(1));
    let mut t = Table::new(Kind::Set);
    let apply = |t: &mut Table, origin, seq: u64, op: &Op| {
        t.apply(&Write {
            dot: Dot { origin, seq },
            hlc: Hlc::from_u64(seq << 16),
            key: b"k",
            op,
        })
    };
    let tags = |t: &Table| match t.get(b"k") {
        Some(KeyState::Set { tags, .. }) => tags.get(b"x".as_slice()).cloned().unwrap_or_default(),
        other => panic!("{other:?}"),
    };
    let seen = |t: &Table| {
        let mut ctx = Vv::default();
        tags(t).iter().for_each(|d| ctx.add(d));
        ctx
    };
    let insert = |ctx: Vv| Op::Insert {
        elements: vec![b"x".to_vec()],
        ctx,
    };
    // Origin b's insert reaches this replica; c's does not yet.
    let c = origin(2);
    apply(&mut t, b, 1, &insert(Vv::default()));
    let mut ops = Vec::new();
    for seq in 1..=100 {
        let op = insert(seen(&t));
        assert_eq!(Op::decode(&op.encode()).unwrap(), op);
        apply(&mut t, a, seq, &op);
        ops.push(op);
    }
    assert_eq!(
        tags(&t),
        BTreeSet::from([Dot {
            origin: a,
            seq: 100
        }]),
        "one tag, not 101"
    );
    // Another replica gets a's inserts first: b's, superseded by a's first, arrives late
    // and stays out; c's, which no context covered, stands beside (add wins); both
    // replicas end equal.
    let mut t2 = Table::new(Kind::Set);
    for (i, op) in ops.iter().enumerate() {
        apply(&mut t2, a, i as u64 + 1, op);
    }
    apply(&mut t2, b, 1, &insert(Vv::default()));
    apply(&mut t2, c, 1, &insert(Vv::default()));
    apply(&mut t, c, 1, &insert(Vv::default()));
    assert_eq!(
        tags(&t2),
        BTreeSet::from([
            Dot {
                origin: a,
                seq: 100
            },
            Dot { origin: c, seq: 1 }
        ])
    );
    assert_eq!(t2.digest(), t.digest());
    // Blind: the old encoding exactly.
    let blind = insert(Vv::default()).encode();
    assert!(!blind.windows(3).any(|w| w == b"ctx"));
    assert_eq!(Op::decode(&blind).unwrap(), insert(Vv::default()));
}

/// A counter delete carries the sums its writer had seen; they must survive the wire (the
/// round-trip property above only makes deletes from an empty view).
#[test]
fn a_counter_delete_with_totals_round_trips() {
    let mut totals = BTreeMap::new();
    totals.insert(
        origin(0),
        Totals {
            seq: 7,
            p: u128::from(u64::MAX) + 5,
            n: 3,
        },
    );
    let op = Op::Delete {
        ctx: Vv::default(),
        totals,
    };
    assert_eq!(Op::decode(&op.encode()).unwrap(), op);
}

/// `Strategy::takes` (what a node checks where a write enters) says exactly which
/// operations a table applies and which every replica ignores; `Op::seen` names every
/// write an operation's context and a counter deletion's sums claim.
#[test]
fn a_strategy_takes_exactly_the_operations_it_applies() {
    let mut totals = BTreeMap::new();
    totals.insert(origin(2), Totals { seq: 9, p: 4, n: 1 });
    let ctx = Vv([(origin(1), 3)].into_iter().collect());
    let ops = [
        Op::Put {
            content_type: "text/plain".into(),
            value: b"v".to_vec(),
            ctx: ctx.clone(),
        },
        Op::Delete {
            ctx: ctx.clone(),
            totals,
        },
        Op::Add { delta: -2 },
        Op::Insert {
            elements: vec![b"a".to_vec()],
            ctx: ctx.clone(),
        },
        Op::Remove {
            elements: vec![b"a".to_vec()],
            ctx: ctx.clone(),
        },
    ];
    let mut taken = 0;
    for strategy in [Kind::Lww, Kind::MultiValue, Kind::Counter, Kind::Set] {
        for op in &ops {
            let mut table = Table::new(strategy);
            let applied = table.apply(&Write {
                dot: Dot {
                    origin: origin(0),
                    seq: 1,
                },
                hlc: Hlc::new(1, 0).unwrap(),
                key: b"k",
                op,
            });
            assert_eq!(
                strategy.takes(op),
                applied == Applied::Applied,
                "{} {}: takes says {}, the table {applied:?}",
                strategy.as_str(),
                op.kind(),
                strategy.takes(op)
            );
            assert!(strategy.ops().contains(op.kind()) == strategy.takes(op));
            taken += usize::from(strategy.takes(op));
        }
    }
    assert_eq!(taken, 2 + 2 + 2 + 3);
    assert_eq!(ops[0].seen(), ctx);
    assert_eq!(ops[2].seen(), Vv::default());
    let mut both = ctx.clone();
    both.0.insert(origin(2), 9);
    assert_eq!(ops[1].seen(), both);
}

#[test]
fn malformed_and_oversize_operations_are_refused_with_the_limit() {
    assert!(matches!(
        Op::decode(b"\xff\x00"),
        Err(weft_fabric::table::OpError::Malformed(_))
    ));
    let big = Op::Insert {
        elements: vec![b"x".to_vec(); weft_fabric::table::SET_ELEMENTS_MAX + 1],
        ctx: Vv::default(),
    };
    assert!(matches!(
        Op::decode(&big.encode()),
        Err(weft_fabric::table::OpError::TooLong {
            field: "elements",
            ..
        })
    ));
    // Anything but the operation content type is a plain put of the payload.
    assert_eq!(
        Op::from_event("application/json", b"{}").unwrap(),
        Op::Put {
            content_type: "application/json".into(),
            value: b"{}".to_vec(),
            ctx: Vv::default()
        }
    );
}

/// Operations are maps with the operation's name under "op": a field the named operation
/// does not take, one it must have and is missing, an unknown name and an unknown field
/// are all refused, naming what was wrong; the fields may come in any order.
#[test]
fn operation_maps_are_checked_field_by_field() {
    #[derive(serde::Serialize)]
    struct PutWithDelta<'a> {
        op: &'a str,
        content_type: &'a str,
        #[serde(with = "serde_bytes")]
        value: &'a [u8],
        delta: i64,
    }
    #[derive(serde::Serialize)]
    struct Bare<'a> {
        op: &'a str,
    }
    #[derive(serde::Serialize)]
    struct ValueFirst<'a> {
        #[serde(with = "serde_bytes")]
        value: &'a [u8],
        content_type: &'a str,
        op: &'a str,
    }
    #[derive(serde::Serialize)]
    struct Coloured<'a> {
        op: &'a str,
        delta: i64,
        colour: &'a str,
    }
    fn cbor<T: serde::Serialize>(v: &T) -> Vec<u8> {
        cbor4ii::serde::to_vec(Vec::new(), v).unwrap()
    }
    let malformed = |bytes: Vec<u8>| match Op::decode(&bytes) {
        Err(weft_fabric::table::OpError::Malformed(text)) => text,
        other => panic!("not refused as malformed: {other:?}"),
    };
    let text = malformed(cbor(&PutWithDelta {
        op: "put",
        content_type: "text/plain",
        value: b"v",
        delta: 1,
    }));
    assert!(
        text.contains("unknown field `delta` for op `put`"),
        "{text}"
    );
    let text = malformed(cbor(&Bare { op: "add" }));
    assert!(
        text.contains("missing field `delta` for op `add`"),
        "{text}"
    );
    let text = malformed(cbor(&Bare { op: "merge" }));
    assert!(text.contains("merge"), "{text}");
    let text = malformed(cbor(&Coloured {
        op: "add",
        delta: 1,
        colour: "red",
    }));
    assert!(text.contains("colour"), "{text}");
    assert_eq!(
        Op::decode(&cbor(&ValueFirst {
            value: b"v",
            content_type: "text/plain",
            op: "put",
        }))
        .unwrap(),
        Op::Put {
            content_type: "text/plain".into(),
            value: b"v".to_vec(),
            ctx: Vv::default(),
        }
    );
    assert_eq!(
        Op::decode(&cbor(&Bare { op: "delete" })).unwrap(),
        Op::Delete {
            ctx: Vv::default(),
            totals: BTreeMap::new(),
        }
    );
}
