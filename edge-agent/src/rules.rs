//! Local rules pushed by policy (`devices.<name>.rules`, `weft_fabric::edge::LocalRule`):
//! filter, sample and aggregate, applied to input events before they enter the outbox,
//! so what they drop never gets a sequence number.
//!
//! Rules run in order; each applies to events whose stream matches its pattern. A filter
//! that matches drops the event; a sample keeps the first of every N matching events; an
//! aggregate absorbs the event into its window (per rule and stream) and emits one summary
//! event on the same stream when the window ends. Open windows are durable: what an
//! input event changed in them ([`Rules::take_changes`]) is written in the outbox
//! transaction that accepts the event, so an event an input was told was taken is in a
//! window that survives a crash ([`Rules::restore`]). A profile with other rules closes the
//! open windows early.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};
use weft_fabric::edge::{LocalRule, PredicateOp};
use weft_fabric::{StreamName, StreamPattern};

/// Most aggregation windows open at once (rule x stream); an event that would open one
/// more passes through unaggregated (counted as kept, nothing is lost).
pub(crate) const WINDOWS_MAX: usize = 256;

/// What the rules did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Goes to the outbox.
    Keep,
    /// Dropped by a filter.
    Filtered,
    /// Dropped by a sample.
    Sampled,
    /// Folded into an aggregate window.
    Aggregated,
}

/// One field's summary in a window.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Stats {
    count: u64,
    min: f64,
    max: f64,
    /// Finite inputs can still add up to infinity, which JSON cannot hold: kept as the
    /// float's bits, so a stored window always reads back.
    #[serde(with = "f64_bits")]
    sum: f64,
}

/// An `f64` as its IEEE 754 bits (every value, infinities included, round-trips).
mod f64_bits {
    pub(super) fn serialize<S: serde::Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(x.to_bits())
    }

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        <u64 as serde::Deserialize>::deserialize(d).map(f64::from_bits)
    }
}

/// An open window: what the outbox keeps of it (its `windows` table).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Window {
    pub(crate) start_ms: u64,
    pub(crate) end_ms: u64,
    pub(crate) count: u64,
    /// One per field of the rule, in its order.
    pub(crate) fields: Vec<Stats>,
}

/// A window's key: the rule's index in the profile's rules, and the stream.
pub(crate) type WindowKey = (usize, String);

/// Open windows as the outbox keeps them.
pub(crate) type KeptWindows = Vec<(WindowKey, Window)>;

/// What changed in the open windows since the last [`Rules::take_changes`], for the outbox
/// to write in the transaction that accepts the events that changed them.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct WindowChanges {
    /// The rules changed: every stored window goes (they were closed, their summaries are
    /// in the same transaction) and these are the rules the windows are kept under.
    pub(crate) reset: Option<Vec<LocalRule>>,
    /// Windows closed (their summary is in the same transaction).
    pub(crate) closed: Vec<WindowKey>,
    /// Windows opened or changed, as they are now.
    pub(crate) open: KeptWindows,
}

impl WindowChanges {
    /// Nothing to write.
    pub(crate) fn is_empty(&self) -> bool {
        self.reset.is_none() && self.closed.is_empty() && self.open.is_empty()
    }
}

/// The compiled rules and their state.
#[derive(Debug, Clone, Default)]
pub(crate) struct Rules {
    /// The profile's rules as given: what [`Rules::same`] compares and the outbox keeps
    /// with the windows (compiled again the same way, the windows' indices hold).
    source: Vec<LocalRule>,
    rules: Vec<(StreamPattern, LocalRule)>,
    seen: Vec<u64>,
    windows: BTreeMap<WindowKey, Window>,
    /// Windows changed since the last `take_changes`.
    changed: BTreeSet<WindowKey>,
    /// Windows closed since the last `take_changes`.
    closed: BTreeSet<WindowKey>,
}

fn lookup<'a>(data: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(data, |v, k| v.as_object()?.get(k))
}

/// A field's number: a JSON number, or text that reads as a finite one ("NaN" and "inf"
/// are not numbers here: a summary of them could not be written as JSON).
fn number(v: &Value) -> Option<f64> {
    let x = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }?;
    x.is_finite().then_some(x)
}

fn holds(op: PredicateOp, field: Option<&Value>, value: Option<&str>) -> bool {
    let Some(field) = field else {
        return false;
    };
    if op == PredicateOp::Exists {
        return true;
    }
    let Some(value) = value else {
        return false;
    };
    let ord = match (number(field), value.trim().parse::<f64>()) {
        (Some(a), Ok(b)) => a.partial_cmp(&b),
        _ => {
            let text = match field {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            Some(text.as_str().cmp(value))
        }
    };
    let Some(ord) = ord else {
        return false;
    };
    use std::cmp::Ordering::*;
    match op {
        PredicateOp::Eq => ord == Equal,
        PredicateOp::Ne => ord != Equal,
        PredicateOp::Lt => ord == Less,
        PredicateOp::Le => ord != Greater,
        PredicateOp::Gt => ord == Greater,
        PredicateOp::Ge => ord != Less,
        PredicateOp::Exists => true,
    }
}

impl Rules {
    /// Rules from a profile (invalid ones, which a node never sends, are skipped).
    pub(crate) fn new(source: &[LocalRule]) -> Self {
        let rules: Vec<(StreamPattern, LocalRule)> = source
            .iter()
            .filter(|r| r.check().is_ok())
            .filter_map(|r| Some((StreamPattern::new(r.stream.clone()).ok()?, r.clone())))
            .collect();
        Self {
            source: source.to_vec(),
            seen: vec![0; rules.len()],
            rules,
            ..Self::default()
        }
    }

    /// Rules with the windows the outbox kept for them (`rules` are the rules the windows
    /// were made under). A window that does not fit them (no such aggregate rule, another
    /// field count: a store written by something else) is left out; returns how many were.
    pub(crate) fn restore(rules: &[LocalRule], windows: KeptWindows) -> (Self, usize) {
        let mut out = Self::new(rules);
        let mut unfit = 0;
        for (key, w) in windows {
            let fits = out
                .rules
                .get(key.0)
                .and_then(|(pattern, rule)| {
                    let stream = StreamName::new(key.1.clone()).ok()?;
                    let a = rule.aggregate.as_ref()?;
                    (pattern.matches(&stream) && a.fields.len() == w.fields.len()).then_some(())
                })
                .is_some();
            if fits && out.windows.len() < WINDOWS_MAX {
                out.windows.insert(key, w);
            } else {
                unfit += 1;
            }
        }
        (out, unfit)
    }

    /// Open windows.
    pub(crate) fn open_windows(&self) -> usize {
        self.windows.len()
    }

    /// What changed in the windows since the last call (`reset` is the caller's to set).
    pub(crate) fn take_changes(&mut self) -> WindowChanges {
        let changed = std::mem::take(&mut self.changed);
        WindowChanges {
            reset: None,
            closed: std::mem::take(&mut self.closed).into_iter().collect(),
            open: changed
                .into_iter()
                .filter_map(|k| {
                    let w = self.windows.get(&k)?.clone();
                    Some((k, w))
                })
                .collect(),
        }
    }

    /// Whether these are the same rules as `other` (a new profile with equal rules keeps
    /// the windows open).
    pub(crate) fn same(&self, other: &[LocalRule]) -> bool {
        self.source == other
    }

    /// Applies the rules to one event whose JSON `data` (if any) predicates look into.
    pub(crate) fn apply(
        &mut self,
        stream: &StreamName,
        data: Option<&Value>,
        now_ms: u64,
    ) -> Verdict {
        for (i, (pattern, rule)) in self.rules.iter().enumerate() {
            if !pattern.matches(stream) {
                continue;
            }
            if let Some(f) = &rule.filter {
                if holds(
                    f.op,
                    data.and_then(|d| lookup(d, &f.field)),
                    f.value.as_deref(),
                ) {
                    return Verdict::Filtered;
                }
            } else if let Some(n) = rule.sample {
                let k = self.seen[i];
                self.seen[i] += 1;
                if !k.is_multiple_of(n) {
                    return Verdict::Sampled;
                }
            } else if let Some(a) = &rule.aggregate {
                let key = (i, stream.as_str().to_string());
                if !self.windows.contains_key(&key) && self.windows.len() >= WINDOWS_MAX {
                    continue;
                }
                let len_ms = a.window_s * 1000;
                self.changed.insert(key.clone());
                let w = self.windows.entry(key).or_insert_with(|| {
                    let start_ms = now_ms - now_ms % len_ms;
                    Window {
                        start_ms,
                        end_ms: start_ms + len_ms,
                        count: 0,
                        fields: vec![Stats::default(); a.fields.len()],
                    }
                });
                w.count += 1;
                for (f, s) in a.fields.iter().zip(&mut w.fields) {
                    if let Some(x) = data.and_then(|d| lookup(d, f)).and_then(number) {
                        if s.count == 0 {
                            s.min = x;
                            s.max = x;
                        } else {
                            s.min = s.min.min(x);
                            s.max = s.max.max(x);
                        }
                        s.sum += x;
                        s.count += 1;
                    }
                }
                return Verdict::Aggregated;
            }
        }
        Verdict::Keep
    }

    /// The windows that ended by `now_ms` (all of them with `all`), earliest end first,
    /// each with its summary. Nothing changes until the caller closes a window
    /// ([`Rules::close`], once the outbox has taken its summary's room) or keeps it open
    /// past its end ([`Rules::extend`]: the outbox had no room for the summary).
    pub(crate) fn due(&self, now_ms: u64, all: bool) -> Vec<Due> {
        let mut out: Vec<Due> = self
            .windows
            .iter()
            .filter(|(_, w)| all || w.end_ms <= now_ms)
            .filter_map(|(key, w)| {
                let a = self.rules.get(key.0)?.1.aggregate.as_ref()?;
                let stream = StreamName::new(key.1.clone()).ok()?;
                let mut fields = Map::new();
                for (f, s) in a.fields.iter().zip(&w.fields) {
                    fields.insert(
                        f.clone(),
                        if s.count == 0 {
                            json!({"count": 0})
                        } else {
                            json!({"count": s.count, "min": s.min, "max": s.max,
                                   "avg": s.sum / s.count as f64})
                        },
                    );
                }
                let summary = json!({
                    "window_start_ms": w.start_ms,
                    // Closed early (new rules): it ends now.
                    "window_end_ms": w.end_ms.min(now_ms.max(w.start_ms)),
                    "window_s": a.window_s,
                    "count": w.count,
                    "fields": fields,
                });
                Some(Due {
                    key: key.clone(),
                    end_ms: w.end_ms,
                    stream,
                    summary,
                })
            })
            .collect();
        out.sort_by(|a, b| (a.end_ms, &a.key).cmp(&(b.end_ms, &b.key)));
        out
    }

    /// Closes a window whose summary the caller is writing (in the transaction that
    /// takes [`Rules::take_changes`]).
    pub(crate) fn close(&mut self, key: &WindowKey) {
        if self.windows.remove(key).is_some() {
            self.changed.remove(key);
            self.closed.insert(key.clone());
        }
    }

    /// Keeps an ended window open past its end, to the end of the rule's window that holds
    /// `now_ms`: its summary found no room in the outbox, so the window goes on folding
    /// events and its summary, when the outbox takes it, spans several of the rule's
    /// windows (`window_end_ms`). Nothing it holds is lost. Returns whether the end moved.
    pub(crate) fn extend(&mut self, key: &WindowKey, now_ms: u64) -> bool {
        let Some(len_ms) = self
            .rules
            .get(key.0)
            .and_then(|(_, r)| r.aggregate.as_ref())
            .map(|a| a.window_s * 1000)
        else {
            return false;
        };
        let Some(w) = self.windows.get_mut(key) else {
            return false;
        };
        let end_ms = now_ms - now_ms % len_ms + len_ms;
        if end_ms <= w.end_ms {
            return false;
        }
        w.end_ms = end_ms;
        self.changed.insert(key.clone());
        true
    }
}

/// An ended window and its summary ([`Rules::due`]).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Due {
    pub(crate) key: WindowKey,
    pub(crate) end_ms: u64,
    pub(crate) stream: StreamName,
    /// The summary event's `data`.
    pub(crate) summary: Value,
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_fabric::edge::{AggregateRule, FieldPredicate};

    /// Closes every window `due` names (an outbox with room for every summary).
    fn close_due(rules: &mut Rules, now_ms: u64, all: bool) -> Vec<Due> {
        let due = rules.due(now_ms, all);
        for d in &due {
            rules.close(&d.key);
        }
        due
    }

    fn rule(stream: &str) -> LocalRule {
        LocalRule {
            stream: stream.into(),
            filter: None,
            sample: None,
            aggregate: None,
        }
    }

    #[test]
    fn filter_sample_and_aggregate() {
        let mut rules = Rules::new(&[
            LocalRule {
                filter: Some(FieldPredicate {
                    field: "level".into(),
                    op: PredicateOp::Eq,
                    value: Some("debug".into()),
                }),
                ..rule("logs.>")
            },
            LocalRule {
                sample: Some(3),
                ..rule("logs.>")
            },
            LocalRule {
                aggregate: Some(AggregateRule {
                    window_s: 10,
                    fields: vec!["t.c".into()],
                }),
                ..rule("temp")
            },
        ]);
        let logs = StreamName::new("logs.app").unwrap();
        let debug = json!({"level": "debug"});
        let info = json!({"level": "info"});
        assert_eq!(rules.apply(&logs, Some(&debug), 0), Verdict::Filtered);
        let kept: Vec<Verdict> = (0..6).map(|_| rules.apply(&logs, Some(&info), 0)).collect();
        assert_eq!(kept.iter().filter(|v| **v == Verdict::Keep).count(), 2);
        assert_eq!(kept[0], Verdict::Keep);
        let temp = StreamName::new("temp").unwrap();
        for (i, c) in [20.0, 22.0, 27.0].iter().enumerate() {
            let v = json!({"t": {"c": c}});
            assert_eq!(
                rules.apply(&temp, Some(&v), 100_000 + i as u64),
                Verdict::Aggregated
            );
        }
        assert!(rules.due(105_000, false).is_empty());
        let out = close_due(&mut rules, 110_000, false);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].summary["count"], 3);
        assert_eq!(out[0].summary["fields"]["t.c"]["min"], 20.0);
        assert_eq!(out[0].summary["fields"]["t.c"]["max"], 27.0);
        assert_eq!(out[0].summary["fields"]["t.c"]["avg"], 23.0);
        assert_eq!(out[0].summary["window_start_ms"], 100_000);
        assert_eq!(out[0].summary["window_end_ms"], 110_000);
        // Numbers compare as numbers, text as text.
        assert!(holds(PredicateOp::Gt, Some(&json!(10)), Some("9")));
        assert!(holds(PredicateOp::Lt, Some(&json!("abc")), Some("abd")));
        assert!(!holds(PredicateOp::Eq, None, Some("x")));
    }

    fn temp_rules(window_s: u64) -> Vec<LocalRule> {
        vec![LocalRule {
            aggregate: Some(AggregateRule {
                window_s,
                fields: vec!["c".into()],
            }),
            ..rule("temp.>")
        }]
    }

    #[test]
    fn changes_name_the_windows_to_store_and_a_restore_resumes_them() {
        let list = temp_rules(10);
        let mut rules = Rules::new(&list);
        let (a, b) = (
            StreamName::new("temp.a").unwrap(),
            StreamName::new("temp.b").unwrap(),
        );
        assert_eq!(
            rules.apply(&a, Some(&json!({"c": 1})), 100_000),
            Verdict::Aggregated
        );
        assert_eq!(
            rules.apply(&b, Some(&json!({"c": 5})), 100_000),
            Verdict::Aggregated
        );
        let changes = rules.take_changes();
        assert!(changes.closed.is_empty() && changes.reset.is_none());
        assert_eq!(
            changes
                .open
                .iter()
                .map(|((_, s), w)| (s.as_str(), w.count))
                .collect::<Vec<_>>(),
            vec![("temp.a", 1), ("temp.b", 1)]
        );
        // Nothing changed since: nothing to write.
        assert!(rules.take_changes().is_empty());

        // A crash here: the store has what the changes said. Restored, the window goes on.
        let (mut back, unfit) = Rules::restore(&list, changes.open.clone());
        assert_eq!(unfit, 0);
        assert_eq!(back.open_windows(), 2);
        assert_eq!(
            back.apply(&a, Some(&json!({"c": 3})), 105_000),
            Verdict::Aggregated
        );
        let changed = back.take_changes();
        assert_eq!(changed.open.len(), 1, "only temp.a changed: {changed:?}");
        assert_eq!(changed.open[0].1.count, 2);
        let out = close_due(&mut back, 110_000, false);
        assert_eq!(out.len(), 2);
        let of_a = out.iter().find(|d| d.stream.as_str() == "temp.a").unwrap();
        assert_eq!(of_a.summary["count"], 2);
        assert_eq!(of_a.summary["fields"]["c"]["min"], 1.0);
        assert_eq!(of_a.summary["fields"]["c"]["max"], 3.0);
        assert_eq!(of_a.summary["window_start_ms"], 100_000);
        let closed = back.take_changes();
        assert_eq!(closed.closed.len(), 2);
        assert!(closed.open.is_empty());

        // A window that fits no rule (another field count, no such rule) is left out.
        let mut odd = changes.open.clone();
        odd[0].1.fields.push(Stats::default());
        odd[1].0.0 = 7;
        let (kept, unfit) = Rules::restore(&list, odd);
        assert_eq!((kept.open_windows(), unfit), (0, 2));
    }

    /// Finite inputs whose sum overflows: the window is still written and read back (JSON
    /// has no infinity), so a restart keeps it.
    #[test]
    fn a_sum_past_the_largest_float_survives_the_store() {
        let mut rules = Rules::new(&temp_rules(10));
        let s = StreamName::new("temp.a").unwrap();
        for _ in 0..2 {
            let _ = rules.apply(&s, Some(&json!({"c": 1e308})), 0);
        }
        let open = rules.take_changes().open;
        let text = serde_json::to_string(&open[0].1.fields).unwrap();
        let back: Vec<Stats> = serde_json::from_str(&text).unwrap();
        assert_eq!(back, open[0].1.fields);
        assert!(back[0].sum.is_infinite());
    }

    /// A profile holding a rule that does not compile is the same as the rules made from
    /// it (which skip that rule): its windows stay open.
    #[test]
    fn an_invalid_rule_does_not_make_the_same_rules_look_new() {
        let mut list = temp_rules(10);
        list.push(rule("bad pattern with spaces"));
        let rules = Rules::new(&list);
        assert_eq!(rules.rules.len(), 1);
        assert!(rules.same(&list));
        assert!(!rules.same(&temp_rules(20)));
    }

    #[test]
    fn text_that_is_not_a_finite_number_is_not_summed() {
        let mut rules = Rules::new(&temp_rules(10));
        let s = StreamName::new("temp.a").unwrap();
        for c in [json!("NaN"), json!("inf"), json!(" 4 "), json!(2)] {
            assert_eq!(
                rules.apply(&s, Some(&json!({ "c": c })), 0),
                Verdict::Aggregated
            );
        }
        let out = close_due(&mut rules, 10_000, false);
        assert_eq!(out[0].summary["count"], 4);
        assert_eq!(out[0].summary["fields"]["c"]["count"], 2);
        assert_eq!(out[0].summary["fields"]["c"]["avg"], 3.0);
    }

    #[test]
    fn a_window_without_room_for_its_summary_stays_open_and_keeps_folding() {
        let mut rules = Rules::new(&temp_rules(10));
        let (a, b) = (
            StreamName::new("temp.a").unwrap(),
            StreamName::new("temp.b").unwrap(),
        );
        rules.apply(&a, Some(&json!({"c": 1})), 101_000);
        rules.apply(&b, Some(&json!({"c": 7})), 103_000);
        rules.take_changes();
        // Both ended at 110 s; the outbox has room for one summary: temp.a's closes, temp.b's
        // window is kept open to the end of the rule's window that holds now.
        let due = rules.due(112_000, false);
        assert_eq!(due.len(), 2);
        assert!(due.iter().all(|d| d.end_ms == 110_000));
        rules.close(&due[0].key);
        assert!(rules.extend(&due[1].key, 112_000));
        assert_eq!(rules.open_windows(), 1);
        let changes = rules.take_changes();
        assert_eq!(changes.closed, vec![due[0].key.clone()]);
        assert_eq!(
            changes.open.len(),
            1,
            "the stretched window is stored: {changes:?}"
        );
        assert_eq!(changes.open[0].1.end_ms, 120_000);
        // Not due before its new end; events of the next window fold into it.
        assert!(rules.due(119_999, false).is_empty());
        assert_eq!(
            rules.apply(&b, Some(&json!({"c": 9})), 115_000),
            Verdict::Aggregated
        );
        let out = close_due(&mut rules, 121_000, false);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].summary["count"], 2);
        assert_eq!(out[0].summary["window_start_ms"], 100_000);
        assert_eq!(out[0].summary["window_end_ms"], 120_000);
        assert_eq!(out[0].summary["window_s"], 10);
        assert_eq!(out[0].summary["fields"]["c"]["max"], 9.0);
        // Extending to an earlier end changes nothing.
        rules.apply(&a, Some(&json!({"c": 1})), 125_000);
        rules.take_changes();
        let key = rules.due(131_000, false)[0].key.clone();
        assert!(!rules.extend(&key, 100_000));
        assert!(rules.take_changes().is_empty());
    }
}
