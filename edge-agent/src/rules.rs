//! Local rules pushed by policy (`devices.<name>.rules`, `weft_fabric::edge::LocalRule`):
//! filter, sample and aggregate, applied to input events before they enter the outbox,
//! so what they drop never gets a sequence number.
//!
//! Rules run in order; each applies to events whose stream matches its pattern. A filter
//! that matches drops the event; a sample keeps the first of every N matching events; an
//! aggregate absorbs the event into its window (per rule and stream) and emits one summary
//! event on the same stream when the window ends. Open windows live in memory: a crash
//! loses the window in progress (at most `window_s` of summarised data), and a profile
//! change flushes them.

use std::collections::BTreeMap;

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

#[derive(Debug, Clone, Default)]
struct Stats {
    count: u64,
    min: f64,
    max: f64,
    sum: f64,
}

#[derive(Debug, Clone)]
struct Window {
    start_ms: u64,
    end_ms: u64,
    count: u64,
    fields: Vec<Stats>,
}

/// The compiled rules and their state.
#[derive(Debug, Default)]
pub(crate) struct Rules {
    rules: Vec<(StreamPattern, LocalRule)>,
    seen: Vec<u64>,
    windows: BTreeMap<(usize, String), Window>,
}

fn lookup<'a>(data: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(data, |v, k| v.as_object()?.get(k))
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
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
    pub(crate) fn new(rules: &[LocalRule]) -> Self {
        let rules: Vec<(StreamPattern, LocalRule)> = rules
            .iter()
            .filter(|r| r.check().is_ok())
            .filter_map(|r| Some((StreamPattern::new(r.stream.clone()).ok()?, r.clone())))
            .collect();
        Self {
            seen: vec![0; rules.len()],
            rules,
            windows: BTreeMap::new(),
        }
    }

    /// Whether these are the same rules as `other` (a new profile with equal rules keeps
    /// the windows open).
    pub(crate) fn same(&self, other: &[LocalRule]) -> bool {
        self.rules.len() == other.len() && self.rules.iter().zip(other).all(|((_, a), b)| a == b)
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

    /// Summaries of the windows that ended by `now_ms` (all of them with `all`), as
    /// (stream, summary JSON).
    pub(crate) fn due(&mut self, now_ms: u64, all: bool) -> Vec<(StreamName, Value)> {
        let ended: Vec<(usize, String)> = self
            .windows
            .iter()
            .filter(|(_, w)| all || w.end_ms <= now_ms)
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = Vec::new();
        for key in ended {
            let Some(w) = self.windows.remove(&key) else {
                continue;
            };
            let Some(a) = self.rules[key.0].1.aggregate.as_ref() else {
                continue;
            };
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
                "window_s": a.window_s,
                "count": w.count,
                "fields": fields,
            });
            if let Ok(stream) = StreamName::new(key.1) {
                out.push((stream, summary));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_fabric::edge::{AggregateRule, FieldPredicate};

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
        let out = rules.due(110_000, false);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1["count"], 3);
        assert_eq!(out[0].1["fields"]["t.c"]["min"], 20.0);
        assert_eq!(out[0].1["fields"]["t.c"]["max"], 27.0);
        assert_eq!(out[0].1["fields"]["t.c"]["avg"], 23.0);
        assert_eq!(out[0].1["window_start_ms"], 100_000);
        // Numbers compare as numbers, text as text.
        assert!(holds(PredicateOp::Gt, Some(&json!(10)), Some("9")));
        assert!(holds(PredicateOp::Lt, Some(&json!("abc")), Some("abd")));
        assert!(!holds(PredicateOp::Eq, None, Some("x")));
    }
}
