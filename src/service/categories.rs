//! Category reads and writes.

use serde_json::Value;

use sqlx::AnyConnection;

use super::{Change, Changed, Read, Store, Written, funko_updated, on_unique, write, write_with};
use crate::domain::view::ViewFields;
use crate::{
    db,
    domain::{
        category::CategoryDraft,
        event::{Entity, EventKind},
        precondition::IfMatch,
        resource::{Category, now_rfc3339},
    },
    error::ApiError,
};

const ENTITY: &str = "category";

pub(crate) async fn get(
    store: &Store,
    id: i64,
    include_deleted: bool,
) -> Result<Read<Category>, ApiError> {
    let mut tx = store.db.begin_read().await?;
    let category = db::categories::get(&mut tx, id)
        .await?
        .filter(|c| include_deleted || !c.is_deleted)
        .ok_or_else(|| ApiError::not_found(ENTITY, id))?;
    let (_, cursor) = db::events::bounds(&mut tx).await?;
    tx.commit().await?;
    Ok(Read {
        resource: category,
        cursor,
    })
}

pub(crate) async fn list(
    store: &Store,
    include_deleted: bool,
) -> Result<Read<Vec<Category>>, ApiError> {
    let mut tx = store.db.begin_read().await?;
    let categories = db::categories::list(&mut tx, include_deleted).await?;
    let (_, cursor) = db::events::bounds(&mut tx).await?;
    tx.commit().await?;
    Ok(Read {
        resource: categories,
        cursor,
    })
}

pub(crate) async fn create(store: &Store, body: &Value) -> Result<Written<Category>, ApiError> {
    let draft = CategoryDraft::parse(body).map_err(ApiError::Validation)?;
    let change: Change<Category> = Box::new(move |conn| {
        Box::pin(async move {
            ensure_name_free(conn, &draft.name, None).await?;
            let id = db::categories::insert(conn, &draft.name, &now_rfc3339())
                .await
                .map_err(on_unique(|| name_conflict(&draft.name)))?;
            fetch(conn, id).await
        })
    });
    write(store, Entity::Categories, EventKind::Create, change).await
}

/// Renames a category. Every Funko in it reads differently afterwards, so each gets a new
/// version (its ETag changes with its body) and an UPDATE event after the category's.
pub(crate) async fn update(
    store: &Store,
    id: i64,
    body: &Value,
    if_match: Option<&IfMatch>,
) -> Result<Written<Category>, ApiError> {
    let draft = CategoryDraft::parse(body).map_err(ApiError::Validation)?;
    let if_match = if_match.cloned();
    let change: Change<Changed<Category>> = Box::new(move |conn| {
        Box::pin(async move {
            let old = fetch_live(conn, id).await?;
            IfMatch::check_untagged(if_match.as_ref())?;
            ensure_name_free(conn, &draft.name, Some(id)).await?;
            let now = now_rfc3339();
            db::categories::rename(conn, id, &draft.name, &now)
                .await
                .map_err(on_unique(|| name_conflict(&draft.name)))?;
            let funkos = db::funkos::touch_category(conn, id, &now).await?;
            // Each Funko as views saw it: the same but for its category's old name.
            let also = funkos
                .iter()
                .map(|funko| {
                    let before = ViewFields {
                        category: old.name.clone(),
                        ..ViewFields::of(funko)
                    };
                    funko_updated(funko, &before)
                })
                .collect();
            Ok(Changed {
                resource: fetch(conn, id).await?,
                extra: (),
                before: None,
                also,
            })
        })
    });
    let (written, ()) = write_with(store, Entity::Categories, EventKind::Update, change).await?;
    Ok(written)
}

pub(crate) async fn delete(
    store: &Store,
    id: i64,
    if_match: Option<&IfMatch>,
) -> Result<Written<Category>, ApiError> {
    let if_match = if_match.cloned();
    let change: Change<Category> = Box::new(move |conn| {
        Box::pin(async move {
            let current = fetch_live(conn, id).await?;
            IfMatch::check_untagged(if_match.as_ref())?;
            let in_use = db::funkos::count_live_in_category(conn, id).await?;
            if in_use > 0 {
                return Err(ApiError::Conflict(format!(
                    "category {:?} is used by {in_use} Funko(s); move or delete them first",
                    current.name
                )));
            }
            db::categories::soft_delete(conn, id, &now_rfc3339()).await?;
            fetch(conn, id).await
        })
    });
    write(store, Entity::Categories, EventKind::Delete, change).await
}

async fn ensure_name_free(
    conn: &mut AnyConnection,
    name: &str,
    this: Option<i64>,
) -> Result<(), ApiError> {
    match db::categories::find_live_by_name(conn, name).await? {
        Some(other) if Some(other.id) != this => Err(ApiError::Conflict(name_conflict(name))),
        _ => Ok(()),
    }
}

fn name_conflict(name: &str) -> String {
    format!("a category named {name:?} already exists")
}

async fn fetch(conn: &mut AnyConnection, id: i64) -> Result<Category, ApiError> {
    db::categories::get(conn, id).await?.ok_or_else(|| {
        ApiError::Internal(anyhow::anyhow!("category {id} vanished inside its write"))
    })
}

async fn fetch_live(conn: &mut AnyConnection, id: i64) -> Result<Category, ApiError> {
    db::categories::get(conn, id)
        .await?
        .filter(|c| !c.is_deleted)
        .ok_or_else(|| ApiError::not_found(ENTITY, id))
}
