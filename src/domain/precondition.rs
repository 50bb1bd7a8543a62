//! Preconditions: `If-Match` (RFC 9110 §13.1.1), compared strongly against a Funko's
//! version, its strong entity tag.

/// Why a precondition was refused; the HTTP layer answers 400 and 412 for them.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PreconditionError {
    /// The header is not `*` or a list of entity tags.
    #[error("{0}")]
    Malformed(String),
    /// The resource is not at a version the header names.
    #[error("{0}")]
    Failed(String),
}

/// An `If-Match` precondition (RFC 9110 §13.1.1), compared strongly against `"<version>"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum IfMatch {
    Any,
    Tags(Vec<String>),
}

/// The `If-Match` values [`IfMatch::parse`] takes: `*`, or a comma-separated list of quoted
/// (possibly weak) entity tags, here without commas inside them.
pub(crate) const IF_MATCH_PATTERN: &str = r#"^\s*(\*|(W/)?"[^",]*"(\s*,\s*(W/)?"[^",]*")*)\s*$"#;

impl IfMatch {
    pub(crate) fn parse(raw: &str) -> Result<Self, PreconditionError> {
        let raw = raw.trim();
        if raw == "*" {
            return Ok(Self::Any);
        }
        let mut tags = Vec::new();
        for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let weak = part.starts_with("W/");
            let tag = part.trim_start_matches("W/");
            let valid = tag.len() >= 2 && tag.starts_with('"') && tag.ends_with('"');
            if !valid {
                return Err(PreconditionError::Malformed(format!(
                    "If-Match must be * or a list of quoted entity tags, not {raw:?}"
                )));
            }
            // Weak tags never match under the strong comparison If-Match uses.
            if !weak {
                tags.push(tag[1..tag.len() - 1].to_owned());
            }
        }
        if tags.is_empty() && !raw.contains('"') {
            return Err(PreconditionError::Malformed("If-Match is empty".to_owned()));
        }
        Ok(Self::Tags(tags))
    }

    /// Fails with 412 unless the resource's current version is named.
    pub(crate) fn check(this: Option<&Self>, version: i64) -> Result<(), PreconditionError> {
        match this {
            None | Some(Self::Any) => Ok(()),
            Some(Self::Tags(tags)) if tags.iter().any(|t| *t == version.to_string()) => Ok(()),
            Some(Self::Tags(_)) => Err(PreconditionError::Failed(format!(
                "the resource is at version {version}, not the one If-Match names"
            ))),
        }
    }

    /// For a resource without entity tags: only `*` (it exists) holds; any tag fails with 412.
    pub(crate) fn check_untagged(this: Option<&Self>) -> Result<(), PreconditionError> {
        match this {
            None | Some(Self::Any) => Ok(()),
            Some(Self::Tags(_)) => Err(PreconditionError::Failed(
                "categories carry no entity tag: If-Match can only be *".to_owned(),
            )),
        }
    }
}

/// The strong ETag of a version.
pub(crate) fn etag(version: i64) -> String {
    format!("\"{version}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match() {
        let tags = IfMatch::parse(r#""3", W/"4""#).unwrap();
        assert!(IfMatch::check(Some(&tags), 3).is_ok());
        assert!(IfMatch::check(Some(&tags), 4).is_err());
        assert!(IfMatch::check(Some(&IfMatch::Any), 9).is_ok());
        assert!(IfMatch::check(None, 9).is_ok());
        assert!(IfMatch::parse("3").is_err());
        assert!(IfMatch::parse("").is_err());
        assert_eq!(etag(7), "\"7\"");
    }

    proptest::proptest! {
        /// Whatever the documented pattern matches parses: no schema-valid header is a 400.
        #[test]
        fn every_value_of_the_pattern_parses(raw in &IF_MATCH_PATTERN[1..IF_MATCH_PATTERN.len() - 1]) {
            proptest::prop_assert!(IfMatch::parse(&raw).is_ok(), "{raw:?}");
        }
    }
}
