//! The operations of the store, shared by REST and WebSocket: each write validates, changes
//! its row, appends its event in the same transaction, commits, then wakes the bus.

pub mod categories;
pub mod funkos;

use futures_util::future::BoxFuture;
use poem_openapi::types::ToJSON;
use sqlx::AnyConnection;

use crate::{
    db::{
        self,
        events::{NewEvent, NewEvents},
    },
    error::ApiError,
    events::{ChangeBus, Entity, EventKind},
};

/// A committed write: the resource after it and the cursor of its event.
#[derive(Debug)]
pub struct Written<T> {
    pub resource: T,
    pub cursor: i64,
}

/// A read and the stream position it saw.
#[derive(Debug)]
pub struct Read<T> {
    pub resource: T,
    pub cursor: i64,
}

/// A write's change: the rows it changes through the connection of its transaction, and what
/// it did (the resource after it, for its event). It may fail with a 4xx only before changing
/// a row or in the one statement that changes it (see [`db::writer`]).
type Change<T> =
    Box<dyn for<'c> FnOnce(&'c mut AnyConnection) -> BoxFuture<'c, Result<T, ApiError>> + Send>;

/// What a change did: the resource after it (its event's data), what else it returns to its
/// caller, and the other resources it changed, which get an UPDATE event each after the
/// resource's own.
struct Changed<T, X = ()> {
    resource: T,
    extra: X,
    also: Vec<NewEvent>,
}

/// The write path: begin, change the row, append the event, commit, then wake the bus.
/// [`db::Db::write`] does the first four (on SQLite in a batch shared with other writes);
/// nothing is announced before the commit, and a failed commit leaves no event.
async fn write<T>(
    bus: &ChangeBus,
    entity: Entity,
    kind: EventKind,
    change: Change<T>,
) -> Result<Written<T>, ApiError>
where
    T: ToJSON + Send + 'static,
{
    let change: Change<Changed<T>> = Box::new(move |conn| {
        Box::pin(async move {
            Ok(Changed {
                resource: change(conn).await?,
                extra: (),
                also: Vec::new(),
            })
        })
    });
    let (written, ()) = write_with(bus, entity, kind, change).await?;
    Ok(written)
}

/// [`write`] for a change that returns something besides the resource, or changes other
/// resources too.
async fn write_with<T, X>(
    bus: &ChangeBus,
    entity: Entity,
    kind: EventKind,
    change: Change<Changed<T, X>>,
) -> Result<(Written<T>, X), ApiError>
where
    T: ToJSON + Send + 'static,
    X: Send + 'static,
{
    let ((resource, extra, appended), cursor) = bus
        .db()
        .write::<_, ApiError>(Box::new(move |conn| {
            Box::pin(async move {
                let changed = change(conn).await?;
                let first = NewEvent {
                    entity,
                    kind,
                    data: changed.resource.to_json_string(),
                };
                let events = NewEvents {
                    first,
                    rest: changed.also,
                };
                let appended = events.len() as u64;
                Ok(((changed.resource, changed.extra, appended), events))
            })
        }))
        .await?;
    bus.committed(cursor);
    crate::metrics::METRICS.events_appended.inc_by(appended);
    Ok((Written { resource, cursor }, extra))
}

/// The UPDATE event of a Funko another write changed.
fn funko_updated(funko: &crate::model::Funko) -> NewEvent {
    NewEvent {
        entity: Entity::Funkos,
        kind: EventKind::Update,
        data: funko.to_json_string(),
    }
}

impl db::writer::WriteError for ApiError {
    /// Every refusal (4xx) is decided before a write changes a row or by the one statement
    /// that changes it; a 5xx may come midway.
    fn changed_nothing(&self) -> bool {
        self.status().is_client_error()
    }

    fn batch_failed() -> Self {
        Self::Unavailable("the write could not be committed and changed nothing; retry".to_owned())
    }
}

/// Turns a unique-index violation (a taken name, where the index is the check or a race a
/// pre-check lost) into 409; other errors stay.
fn on_unique(message: impl FnOnce() -> String) -> impl FnOnce(sqlx::Error) -> ApiError {
    move |err| {
        if db::is_unique_violation(&err) {
            ApiError::Conflict(message())
        } else {
            err.into()
        }
    }
}

/// An `If-Match` precondition (RFC 9110 §13.1.1), compared strongly against `"<version>"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IfMatch {
    Any,
    Tags(Vec<String>),
}

/// The `If-Match` values [`IfMatch::parse`] takes: `*`, or a comma-separated list of quoted
/// (possibly weak) entity tags, here without commas inside them.
pub const IF_MATCH_PATTERN: &str = r#"^\s*(\*|(W/)?"[^",]*"(\s*,\s*(W/)?"[^",]*")*)\s*$"#;

/// The `If-Match` header as received, documented with [`IF_MATCH_PATTERN`] and read with
/// [`IfMatch::parse`] by the operation, so a bad one answers the same 400 everywhere.
pub struct IfMatchHeader(pub String);

impl IfMatchHeader {
    pub fn parse(header: Option<Self>) -> Result<Option<IfMatch>, ApiError> {
        header.map(|h| IfMatch::parse(&h.0)).transpose()
    }
}

impl poem_openapi::types::Type for IfMatchHeader {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> std::borrow::Cow<'static, str> {
        "string(if-match)".into()
    }

    fn schema_ref() -> poem_openapi::registry::MetaSchemaRef {
        poem_openapi::registry::MetaSchemaRef::Inline(Box::new(
            poem_openapi::registry::MetaSchema {
                pattern: Some(IF_MATCH_PATTERN.to_owned()),
                ..poem_openapi::registry::MetaSchema::new("string")
            },
        ))
    }

    fn as_raw_value(&self) -> Option<&Self> {
        Some(self)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self> + 'a> {
        Box::new(std::iter::once(self))
    }
}

impl poem_openapi::types::ParseFromParameter for IfMatchHeader {
    fn parse_from_parameter(value: &str) -> poem_openapi::types::ParseResult<Self> {
        Ok(Self(value.to_owned()))
    }
}

impl IfMatch {
    pub fn parse(raw: &str) -> Result<Self, ApiError> {
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
                return Err(ApiError::bad_request(format!(
                    "If-Match must be * or a list of quoted entity tags, not {raw:?}"
                )));
            }
            // Weak tags never match under the strong comparison If-Match uses.
            if !weak {
                tags.push(tag[1..tag.len() - 1].to_owned());
            }
        }
        if tags.is_empty() && !raw.contains('"') {
            return Err(ApiError::bad_request("If-Match is empty"));
        }
        Ok(Self::Tags(tags))
    }

    /// Fails with 412 unless the resource's current version is named.
    pub fn check(this: Option<&Self>, version: i64) -> Result<(), ApiError> {
        match this {
            None | Some(Self::Any) => Ok(()),
            Some(Self::Tags(tags)) if tags.iter().any(|t| *t == version.to_string()) => Ok(()),
            Some(Self::Tags(_)) => Err(ApiError::PreconditionFailed(format!(
                "the resource is at version {version}, not the one If-Match names"
            ))),
        }
    }

    /// For a resource without entity tags: only `*` (it exists) holds; any tag fails with 412.
    pub fn check_untagged(this: Option<&Self>) -> Result<(), ApiError> {
        match this {
            None | Some(Self::Any) => Ok(()),
            Some(Self::Tags(_)) => Err(ApiError::PreconditionFailed(
                "categories carry no entity tag: If-Match can only be *".to_owned(),
            )),
        }
    }
}

/// The strong ETag of a version.
pub fn etag(version: i64) -> String {
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
