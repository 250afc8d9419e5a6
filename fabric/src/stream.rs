//! Stream names and subscription patterns: the grammar, validation and matching.
//!
//! ```text
//! name     = token *( "." token )            ; 1..=STREAM_TOKENS_MAX tokens, <= STREAM_LEN_MAX bytes
//! token    = 1*( ALPHA / DIGIT / "_" / "-" ) ; <= STREAM_TOKEN_LEN_MAX bytes
//! pattern  = ptoken *( "." ptoken ) [ "." ">" ] / ">"
//! ptoken   = token / "*"
//! ```
//!
//! `*` matches exactly one token, `>` matches one or more trailing tokens and may only be
//! the last token. Names starting with the token `_weft` are reserved for system streams
//! (policy bundles, membership announcements); the grammar accepts them, policy decides who
//! may publish there.

use std::fmt;

use crate::limits::{STREAM_LEN_MAX, STREAM_TOKEN_LEN_MAX, STREAM_TOKENS_MAX};

/// The first token of every system stream.
pub const SYSTEM_STREAM_PREFIX: &str = "_weft";

/// Why a stream name or pattern was rejected. Positions are byte offsets into the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamNameError {
    /// The name is the empty string.
    #[error("stream name is empty")]
    Empty,
    /// The name is longer than [`STREAM_LEN_MAX`].
    #[error("stream name is {len} bytes, over the limit STREAM_LEN_MAX = {max}")]
    TooLong {
        /// Length of the input in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The name has more tokens than [`STREAM_TOKENS_MAX`].
    #[error("stream name has {count} tokens, over the limit STREAM_TOKENS_MAX = {max}")]
    TooManyTokens {
        /// Number of tokens.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// Two dots in a row, or a dot at either end.
    #[error("stream name has an empty token at byte {at} (leading, trailing or doubled '.')")]
    EmptyToken {
        /// Byte offset of the empty token.
        at: usize,
    },
    /// A token longer than [`STREAM_TOKEN_LEN_MAX`].
    #[error(
        "stream token at byte {at} is {len} bytes, over the limit STREAM_TOKEN_LEN_MAX = {max}"
    )]
    TokenTooLong {
        /// Byte offset of the token.
        at: usize,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A character outside `[A-Za-z0-9_-]` (and the wildcards, in patterns).
    #[error("stream name has {found:?} at byte {at}; tokens allow only A-Z a-z 0-9 _ -")]
    InvalidChar {
        /// Byte offset of the character.
        at: usize,
        /// The character.
        found: char,
    },
    /// A wildcard in a name that must be concrete (a publish target).
    #[error(
        "stream name has wildcard {found:?} at byte {at}; wildcards are only for patterns (reads and subscriptions, a node's `streams`, policy rules): an event is published to one stream"
    )]
    WildcardInName {
        /// Byte offset of the wildcard.
        at: usize,
        /// `*` or `>`.
        found: char,
    },
    /// A wildcard that is part of a longer token (`a*`, `>b`).
    #[error("wildcard at byte {at} must be a whole token")]
    WildcardNotWhole {
        /// Byte offset of the wildcard.
        at: usize,
    },
    /// `>` followed by more tokens.
    #[error("'>' at byte {at} must be the last token")]
    TailNotLast {
        /// Byte offset of the `>`.
        at: usize,
    },
}

/// A concrete stream name (no wildcards), validated against the grammar in the module docs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamName(String);

impl StreamName {
    /// Validates `name` as a concrete stream name.
    pub fn new(name: impl Into<String>) -> Result<Self, StreamNameError> {
        let name = name.into();
        validate(&name, false)?;
        Ok(Self(name))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is a reserved system stream (first token `_weft`).
    pub fn is_system(&self) -> bool {
        self.0.split('.').next() == Some(SYSTEM_STREAM_PREFIX)
    }
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for StreamName {
    type Err = StreamNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A subscription pattern: a stream name whose tokens may be `*`, and whose last token may
/// be `>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamPattern(String);

impl StreamPattern {
    /// Validates `pattern` against the pattern grammar.
    pub fn new(pattern: impl Into<String>) -> Result<Self, StreamNameError> {
        let pattern = pattern.into();
        validate(&pattern, true)?;
        Ok(Self(pattern))
    }

    /// The pattern as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `name` is matched by this pattern.
    pub fn matches(&self, name: &StreamName) -> bool {
        // The usual patterns first, without splitting: everything (a node's default
        // interest, asked for every event it receives) and a concrete name.
        if self.0 == ">" {
            return true;
        }
        if !self.0.contains(['*', '>']) {
            return self.0 == name.0;
        }
        let mut pattern = self.0.split('.');
        let mut tokens = name.0.split('.');
        loop {
            match (pattern.next(), tokens.next()) {
                (Some(">"), Some(_)) => return true,
                (Some("*"), Some(_)) => {}
                (Some(p), Some(t)) if p == t => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }
}

impl StreamPattern {
    /// Whether some stream name matches both patterns: token by token, `*` matches any
    /// token and `>` one token or more, so patterns overlap when each token pair can be the
    /// same token until one of them ends in `>`, or both end together. (Lengths are not
    /// counted: two long patterns may be said to overlap through a name longer than
    /// [`STREAM_LEN_MAX`], which no stream can have.)
    pub fn overlaps(&self, other: &StreamPattern) -> bool {
        let mut a = self.0.split('.');
        let mut b = other.0.split('.');
        loop {
            match (a.next(), b.next()) {
                (Some(">"), Some(_)) | (Some(_), Some(">")) | (None, None) => return true,
                (Some(x), Some(y)) if x == "*" || y == "*" || x == y => {}
                _ => return false,
            }
        }
    }
}

impl fmt::Display for StreamPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for StreamPattern {
    type Err = StreamNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl From<StreamName> for StreamPattern {
    /// A concrete name is a pattern that matches exactly itself.
    fn from(name: StreamName) -> Self {
        Self(name.0)
    }
}

fn validate(input: &str, wildcards: bool) -> Result<(), StreamNameError> {
    if input.is_empty() {
        return Err(StreamNameError::Empty);
    }
    if input.len() > STREAM_LEN_MAX {
        return Err(StreamNameError::TooLong {
            len: input.len(),
            max: STREAM_LEN_MAX,
        });
    }
    let mut count = 0usize;
    let mut at = 0usize;
    let mut tail_seen: Option<usize> = None;
    for token in input.split('.') {
        count += 1;
        if count > STREAM_TOKENS_MAX {
            return Err(StreamNameError::TooManyTokens {
                count: input.split('.').count(),
                max: STREAM_TOKENS_MAX,
            });
        }
        if let Some(tail_at) = tail_seen {
            return Err(StreamNameError::TailNotLast { at: tail_at });
        }
        if token.is_empty() {
            return Err(StreamNameError::EmptyToken { at });
        }
        if token.len() > STREAM_TOKEN_LEN_MAX {
            return Err(StreamNameError::TokenTooLong {
                at,
                len: token.len(),
                max: STREAM_TOKEN_LEN_MAX,
            });
        }
        for (offset, ch) in token.char_indices() {
            let pos = at + offset;
            match ch {
                'A'..='Z' | 'a'..='z' | '0'..='9' | '_' | '-' => {}
                '*' | '>' if !wildcards => {
                    return Err(StreamNameError::WildcardInName { at: pos, found: ch });
                }
                '*' | '>' if token.len() != 1 => {
                    return Err(StreamNameError::WildcardNotWhole { at: pos });
                }
                '*' => {}
                '>' => tail_seen = Some(pos),
                _ => return Err(StreamNameError::InvalidChar { at: pos, found: ch }),
            }
        }
        at += token.len() + 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> StreamName {
        StreamName::new(s).unwrap()
    }

    /// Every pair of patterns of up to three tokens over `x`, `y`, `*` and a last `>`:
    /// `overlaps` says whether some name of up to four tokens over `x`, `y`, `z` matches
    /// both (four tokens and a third letter are enough for a witness: a `>` needs one token
    /// past the longer pattern's fixed ones, a `*` one neither literal names).
    #[test]
    fn overlaps_is_whether_some_name_matches_both() {
        fn words(alphabet: &[&str], len: usize) -> Vec<Vec<String>> {
            (1..=len)
                .flat_map(|n| {
                    (0..alphabet.len().pow(n as u32)).map(move |mut k| {
                        (0..n)
                            .map(|_| {
                                let t = alphabet[k % alphabet.len()].to_string();
                                k /= alphabet.len();
                                t
                            })
                            .collect()
                    })
                })
                .collect()
        }
        let patterns: Vec<StreamPattern> = words(&["x", "y", "*", ">"], 3)
            .into_iter()
            .filter_map(|w| StreamPattern::new(w.join(".")).ok())
            .collect();
        let names: Vec<StreamName> = words(&["x", "y", "z"], 4)
            .into_iter()
            .map(|w| name(&w.join(".")))
            .collect();
        assert!(patterns.len() > 50, "{}", patterns.len());
        for a in &patterns {
            for b in &patterns {
                let witness = names.iter().any(|n| a.matches(n) && b.matches(n));
                assert_eq!(a.overlaps(b), witness, "{a} and {b}");
            }
        }
    }

    #[test]
    fn accepts_valid_names() {
        for ok in ["orders", "orders.eu.created", "a-b_c.D9", "_weft.policy"] {
            assert!(StreamName::new(ok).is_ok(), "{ok}");
        }
        assert!(name("_weft.policy").is_system());
        assert!(!name("weft.policy").is_system());
    }

    #[test]
    fn rejects_invalid_names_with_position() {
        assert_eq!(StreamName::new(""), Err(StreamNameError::Empty));
        assert_eq!(
            StreamName::new("a..b"),
            Err(StreamNameError::EmptyToken { at: 2 })
        );
        assert_eq!(
            StreamName::new(".a"),
            Err(StreamNameError::EmptyToken { at: 0 })
        );
        assert_eq!(
            StreamName::new("a."),
            Err(StreamNameError::EmptyToken { at: 2 })
        );
        assert_eq!(
            StreamName::new("a.b c"),
            Err(StreamNameError::InvalidChar { at: 3, found: ' ' })
        );
        assert_eq!(
            StreamName::new("a.*"),
            Err(StreamNameError::WildcardInName { at: 2, found: '*' })
        );
        assert_eq!(
            StreamName::new("a.é"),
            Err(StreamNameError::InvalidChar { at: 2, found: 'é' })
        );
        let long = "a".repeat(STREAM_LEN_MAX + 1);
        assert_eq!(
            StreamName::new(long),
            Err(StreamNameError::TooLong {
                len: STREAM_LEN_MAX + 1,
                max: STREAM_LEN_MAX
            })
        );
        let token = "a".repeat(STREAM_TOKEN_LEN_MAX + 1);
        assert_eq!(
            StreamName::new(format!("x.{token}")),
            Err(StreamNameError::TokenTooLong {
                at: 2,
                len: STREAM_TOKEN_LEN_MAX + 1,
                max: STREAM_TOKEN_LEN_MAX
            })
        );
        let many = vec!["a"; STREAM_TOKENS_MAX + 1].join(".");
        assert_eq!(
            StreamName::new(many),
            Err(StreamNameError::TooManyTokens {
                count: STREAM_TOKENS_MAX + 1,
                max: STREAM_TOKENS_MAX
            })
        );
    }

    #[test]
    fn pattern_grammar() {
        for ok in [">", "*", "a.*", "a.>", "*.b.>", "a.b"] {
            assert!(StreamPattern::new(ok).is_ok(), "{ok}");
        }
        assert_eq!(
            StreamPattern::new("a.>.b"),
            Err(StreamNameError::TailNotLast { at: 2 })
        );
        assert_eq!(
            StreamPattern::new("a*"),
            Err(StreamNameError::WildcardNotWhole { at: 1 })
        );
        assert_eq!(
            StreamPattern::new("a.b>"),
            Err(StreamNameError::WildcardNotWhole { at: 3 })
        );
    }

    #[test]
    fn pattern_matching() {
        let p = |s: &str| StreamPattern::new(s).unwrap();
        assert!(p(">").matches(&name("a")));
        assert!(p(">").matches(&name("a.b.c")));
        assert!(p("a.>").matches(&name("a.b")));
        assert!(p("a.>").matches(&name("a.b.c")));
        assert!(!p("a.>").matches(&name("a")), "> needs at least one token");
        assert!(p("a.*").matches(&name("a.b")));
        assert!(!p("a.*").matches(&name("a.b.c")));
        assert!(!p("a.*").matches(&name("a")));
        assert!(p("*.b").matches(&name("x.b")));
        assert!(!p("*.b").matches(&name("x.c")));
        assert!(p("a.b").matches(&name("a.b")));
        assert!(!p("a.b").matches(&name("a.bc")));
        assert!(StreamPattern::from(name("a.b")).matches(&name("a.b")));
    }

    proptest::proptest! {
        /// The shortcuts (">" and concrete names) agree with the token-by-token rule.
        #[test]
        fn matching_agrees_with_the_token_rule(
            name_tokens in proptest::collection::vec(proptest::sample::select(vec!["a", "b", "c"]), 1..4),
            pattern_tokens in proptest::collection::vec(proptest::sample::select(vec!["a", "b", "*"]), 0..4),
            tail in proptest::bool::ANY,
        ) {
            let mut tokens: Vec<&str> = pattern_tokens.clone();
            if tail || tokens.is_empty() {
                tokens.push(">");
            }
            let pattern = StreamPattern::new(tokens.join(".")).unwrap();
            let n = name(&name_tokens.join("."));
            let by_rule = {
                let mut i = 0;
                loop {
                    match (tokens.get(i), name_tokens.get(i)) {
                        (Some(&">"), Some(_)) => break true,
                        (Some(&"*"), Some(_)) => {}
                        (Some(p), Some(t)) if p == t => {}
                        (None, None) => break true,
                        _ => break false,
                    }
                    i += 1;
                }
            };
            proptest::prop_assert_eq!(pattern.matches(&n), by_rule, "{} {}", pattern, n);
        }
    }
}
