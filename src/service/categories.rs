//! Category reads and writes.

use serde_json::Value;

use super::{Read, Written, commit_with_event, on_unique};
use crate::{
    db::{self, Tx},
    domain::category::CategoryDraft,
    error::ApiError,
    events::{ChangeBus, Entity, EventKind},
    model::{Category, now_rfc3339},
};

const ENTITY: &str = "category";

pub async fn get(
    bus: &ChangeBus,
    id: i64,
    include_deleted: bool,
) -> Result<Read<Category>, ApiError> {
    let mut tx = bus.db().begin_read().await?;
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

pub async fn list(bus: &ChangeBus, include_deleted: bool) -> Result<Read<Vec<Category>>, ApiError> {
    let mut tx = bus.db().begin_read().await?;
    let categories = db::categories::list(&mut tx, include_deleted).await?;
    let (_, cursor) = db::events::bounds(&mut tx).await?;
    tx.commit().await?;
    Ok(Read {
        resource: categories,
        cursor,
    })
}

pub async fn create(bus: &ChangeBus, body: &Value) -> Result<Written<Category>, ApiError> {
    let draft = CategoryDraft::parse(body).map_err(ApiError::Validation)?;
    let mut tx = bus.db().begin_write().await?;
    ensure_name_free(&mut tx, &draft.name, None).await?;
    let id = db::categories::insert(&mut tx, &draft.name, &now_rfc3339())
        .await
        .map_err(on_unique(|| name_conflict(&draft.name)))?;
    let category = fetch(&mut tx, id).await?;
    commit_with_event(tx, bus, Entity::Categories, EventKind::Create, category).await
}

pub async fn update(bus: &ChangeBus, id: i64, body: &Value) -> Result<Written<Category>, ApiError> {
    let draft = CategoryDraft::parse(body).map_err(ApiError::Validation)?;
    let mut tx = bus.db().begin_write().await?;
    fetch_live(&mut tx, id).await?;
    ensure_name_free(&mut tx, &draft.name, Some(id)).await?;
    db::categories::rename(&mut tx, id, &draft.name, &now_rfc3339())
        .await
        .map_err(on_unique(|| name_conflict(&draft.name)))?;
    let category = fetch(&mut tx, id).await?;
    commit_with_event(tx, bus, Entity::Categories, EventKind::Update, category).await
}

pub async fn delete(bus: &ChangeBus, id: i64) -> Result<Written<Category>, ApiError> {
    let mut tx = bus.db().begin_write().await?;
    let current = fetch_live(&mut tx, id).await?;
    let in_use = db::funkos::count_live_in_category(&mut tx, id).await?;
    if in_use > 0 {
        return Err(ApiError::Conflict(format!(
            "category {:?} is used by {in_use} Funko(s); move or delete them first",
            current.name
        )));
    }
    db::categories::soft_delete(&mut tx, id, &now_rfc3339()).await?;
    let category = fetch(&mut tx, id).await?;
    commit_with_event(tx, bus, Entity::Categories, EventKind::Delete, category).await
}

async fn ensure_name_free(tx: &mut Tx, name: &str, this: Option<i64>) -> Result<(), ApiError> {
    match db::categories::find_live_by_name(tx, name).await? {
        Some(other) if Some(other.id) != this => Err(ApiError::Conflict(name_conflict(name))),
        _ => Ok(()),
    }
}

fn name_conflict(name: &str) -> String {
    format!("a category named {name:?} already exists")
}

async fn fetch(tx: &mut Tx, id: i64) -> Result<Category, ApiError> {
    db::categories::get(tx, id).await?.ok_or_else(|| {
        ApiError::Internal(anyhow::anyhow!("category {id} vanished inside its write"))
    })
}

async fn fetch_live(tx: &mut Tx, id: i64) -> Result<Category, ApiError> {
    db::categories::get(tx, id)
        .await?
        .filter(|c| !c.is_deleted)
        .ok_or_else(|| ApiError::not_found(ENTITY, id))
}
