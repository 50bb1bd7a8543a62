//! The writes the sockets carry (`/ws` frames, Socket.IO events), routed to the very service
//! functions their REST twins call, so each answers REST's status and body.

use poem_openapi::types::ToJSON;
use serde_json::Value;

use super::{Store, Written, categories, funkos};
use crate::{
    domain::{event::Entity, precondition::IfMatch},
    error::ApiError,
};

/// A write, checked for shape; its body is checked by the service, as on REST.
#[derive(Debug)]
pub(crate) struct Write {
    pub entity: Entity,
    pub action: Action,
}

#[derive(Debug)]
pub(crate) enum Action {
    /// REST `POST`.
    Create { data: Value },
    /// For Funkos a JSON merge patch (REST `PATCH`), for categories a rename (REST `PUT`).
    Update {
        id: i64,
        data: Value,
        if_match: Option<IfMatch>,
    },
    /// REST `DELETE`.
    Delete { id: i64, if_match: Option<IfMatch> },
}

/// What a successful write answers: REST's status and body, and its event's cursor (REST's
/// `Stream-Cursor`).
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: u16,
    /// The resource; `null` for a delete, whose REST answer is `204 No Content`.
    pub body: Value,
    pub cursor: i64,
}

impl Answer {
    fn written<T: ToJSON>(status: u16, written: Written<T>) -> Self {
        Self {
            status,
            body: written.resource.to_json().unwrap_or(Value::Null),
            cursor: written.cursor,
        }
    }

    fn deleted<T>(written: Written<T>) -> Self {
        Self {
            status: 204,
            body: Value::Null,
            cursor: written.cursor,
        }
    }
}

/// Performs a write with the service function REST calls for the same request.
pub(crate) async fn perform(store: &Store, write: Write) -> Result<Answer, ApiError> {
    use funkos::UpdateMode::Merge;
    Ok(match (write.entity, write.action) {
        (Entity::Funkos, Action::Create { data }) => {
            Answer::written(201, funkos::create(store, &data).await?)
        }
        (Entity::Funkos, Action::Update { id, data, if_match }) => Answer::written(
            200,
            funkos::update(store, id, &data, Merge, if_match.as_ref()).await?,
        ),
        (Entity::Funkos, Action::Delete { id, if_match }) => {
            Answer::deleted(funkos::delete(store, id, if_match.as_ref()).await?)
        }
        (Entity::Categories, Action::Create { data }) => {
            Answer::written(201, categories::create(store, &data).await?)
        }
        (Entity::Categories, Action::Update { id, data, if_match }) => Answer::written(
            200,
            categories::update(store, id, &data, if_match.as_ref()).await?,
        ),
        (Entity::Categories, Action::Delete { id, if_match }) => {
            Answer::deleted(categories::delete(store, id, if_match.as_ref()).await?)
        }
    })
}
