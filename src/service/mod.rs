//! The operations of the store, shared by REST and WebSocket: each write validates, changes
//! its row, appends its event in the same transaction, commits, then wakes the bus.

pub mod categories;
pub mod funkos;

use poem_openapi::types::ToJSON;

use crate::{
    db::{self, Tx},
    error::ApiError,
    events::{ChangeBus, Entity, EventKind, StoredEvent},
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

/// Appends the event for `resource`, commits, and wakes the bus. Nothing is announced
/// before the commit, and a failed commit leaves no event.
async fn commit_with_event<T: ToJSON>(
    mut tx: Tx,
    bus: &ChangeBus,
    entity: Entity,
    kind: EventKind,
    resource: T,
) -> Result<Written<T>, ApiError> {
    let data = resource.to_json_string();
    let event: StoredEvent =
        db::events::append(&mut tx, bus.db().backend, entity, kind, &data).await?;
    tx.commit().await?;
    bus.committed(event.id);
    crate::metrics::METRICS.events_appended.inc();
    Ok(Written {
        resource,
        cursor: event.id,
    })
}

/// Turns a unique-index violation (a race the pre-check lost) into 409; other errors stay.
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
            Some(Self::Tags(_)) => Err(ApiError::PreconditionFailed { current: version }),
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
}
