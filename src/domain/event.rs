//! The change stream's vocabulary: which resource an event is about, what happened to it, the
//! cursor, and the reset a subscriber gets when its cursor cannot be served.

use poem_openapi::{Enum, Object};

/// Which resource an event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Enum, serde::Serialize, serde::Deserialize)]
#[oai(rename_all = "SCREAMING_SNAKE_CASE")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub(crate) enum Entity {
    Funkos,
    Categories,
}

impl Entity {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Funkos => "FUNKOS",
            Self::Categories => "CATEGORIES",
        }
    }

    /// Case-insensitive, as filters are typed by hand.
    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_uppercase().as_str() {
            "FUNKOS" => Some(Self::Funkos),
            "CATEGORIES" => Some(Self::Categories),
            _ => None,
        }
    }
}

/// What happened to the resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Enum, serde::Serialize, serde::Deserialize)]
#[oai(rename_all = "SCREAMING_SNAKE_CASE")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub(crate) enum EventKind {
    Create,
    Update,
    /// A soft delete: `data.isDeleted` is true.
    Delete,
}

impl EventKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Create => "CREATE",
            Self::Update => "UPDATE",
            Self::Delete => "DELETE",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_uppercase().as_str() {
            "CREATE" => Some(Self::Create),
            "UPDATE" => Some(Self::Update),
            "DELETE" => Some(Self::Delete),
            _ => None,
        }
    }
}

/// Why a subscriber must reload its state instead of resuming.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Enum, serde::Serialize, serde::Deserialize)]
#[oai(rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub(crate) enum ResetReason {
    /// The cursor is older than the retained log: events after it were pruned.
    Expired,
    /// The cursor was never issued here (ahead of the head, or from another database).
    Unknown,
}

impl ResetReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::Unknown => "unknown",
        }
    }
}

/// A reset: reload (for example `GET /funkos`) and continue from `cursor`.
#[derive(Clone, Debug, PartialEq, Eq, Object, serde::Serialize, serde::Deserialize)]
pub(crate) struct Reset {
    /// The current head: continue from here after reloading.
    pub cursor: String,
    pub reason: ResetReason,
}

/// Parses a client's cursor: a decimal, non-negative integer.
pub(crate) fn parse_cursor(raw: &str) -> Option<i64> {
    let raw = raw.trim();
    if raw.is_empty() || raw.len() > 19 || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    raw.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors() {
        assert_eq!(parse_cursor("1042"), Some(1042));
        assert_eq!(parse_cursor(" 0 "), Some(0));
        for bad in ["", "-1", "1e3", "abc", "12a", "99999999999999999999", "+5"] {
            assert_eq!(parse_cursor(bad), None, "{bad}");
        }
    }

    #[test]
    fn filters_parse_case_insensitively() {
        assert_eq!(Entity::parse("funkos"), Some(Entity::Funkos));
        assert_eq!(EventKind::parse("Delete"), Some(EventKind::Delete));
        assert_eq!(EventKind::parse("PATCH"), None);
    }
}
