//! Reading TOML into serde types with errors that name the field path and the line.
//!
//! Shared by the region catalog and the scenario parser: both want the dotted path of the
//! offending key (`fault[2].duration_s`, `regions."aws:us-east-1".lat_deg`) and a line and
//! column in the text, for syntax errors, wrong types, unknown keys and missing fields alike.

use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;

/// Why a TOML text did not deserialize. Nothing is kept from a failed parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TomlFailure {
    /// Dotted path of the key the error is about (`scenario` root as an empty string).
    pub(crate) path: String,
    /// What the TOML reader or serde said.
    pub(crate) message: String,
    /// 1-based line and column in the text, when the reader knows where.
    pub(crate) position: Option<(usize, usize)>,
}

/// Deserializes `text` into `T`, tracking the path to the failing key.
pub(crate) fn from_toml<T: DeserializeOwned>(text: &str) -> Result<T, TomlFailure> {
    let deserializer = toml::Deserializer::parse(text).map_err(|e| TomlFailure {
        path: String::new(),
        message: e.message().trim().to_owned(),
        position: e.span().map(|span| line_column(text, span.start)),
    })?;
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let path = render_path(e.path());
        let inner = e.into_inner();
        TomlFailure {
            path,
            message: inner.message().trim().to_owned(),
            position: inner.span().map(|span| line_column(text, span.start)),
        }
    })
}

/// 1-based line and column (in characters) of byte `offset` in `text`. An offset past the
/// end or inside a character is clamped to the nearest earlier character boundary.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// Renders a key as TOML would need it written in a dotted path: bare when it is a bare
/// key, quoted otherwise (`regions."aws:us-east-1"`).
pub(crate) fn render_key(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

/// Renders a serde path as `a.b[2].c`, leaving out the private keys `toml::Spanned` uses.
fn render_path(path: &serde_path_to_error::Path) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } if key.starts_with("$__") => {}
            Segment::Map { key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&render_key(key));
            }
            Segment::Enum { variant } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(variant);
            }
            Segment::Unknown => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push('?');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_column_counts_from_one() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 6), (2, 1));
        assert_eq!(line_column(text, 9), (2, 3)); // after the two-byte 'é'
        assert_eq!(line_column(text, 8), (2, 2)); // inside 'é': clamped back
        assert_eq!(line_column(text, 1000), (3, 1));
    }

    #[test]
    fn keys_are_quoted_when_not_bare() {
        assert_eq!(render_key("duration_s"), "duration_s");
        assert_eq!(render_key("random-gossip"), "random-gossip");
        assert_eq!(render_key("aws:us-east-1"), "\"aws:us-east-1\"");
        assert_eq!(render_key(""), "\"\"");
    }
}
