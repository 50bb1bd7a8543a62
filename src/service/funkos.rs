//! Funko reads and writes.

use bytes::Bytes;
use poem_openapi::types::ToJSON;
use serde_json::Value;

use sqlx::AnyConnection;
use tokio::io::AsyncRead;

use super::{Change, Changed, IfMatch, Read, Written, on_unique, write, write_with};
use crate::{
    db,
    domain::{FieldErrors, funko::FunkoDraft, merge_patch, query::FunkoListQuery},
    error::ApiError,
    events::{ChangeBus, Entity, EventKind, cache::FunkoJson},
    model::{Funko, FunkoPage, PageMeta, now_rfc3339},
    storage::ImageStore,
};

const ENTITY: &str = "funko";

/// One Funko as the JSON to send; a deleted one only when asked for. Answered from the bus's
/// cache when it holds every committed write, else read from the database and offered to it.
pub async fn get(
    bus: &ChangeBus,
    id: i64,
    include_deleted: bool,
) -> Result<Read<FunkoJson>, ApiError> {
    let (funko, cursor) = match bus.cached_funko(id) {
        Some(hit) => hit,
        None => {
            let mut conn = bus.db().reader.acquire().await?;
            let (funko, cursor) = db::funkos::get_with_cursor(&mut conn, id)
                .await?
                .ok_or_else(|| ApiError::not_found(ENTITY, id))?;
            let funko = FunkoJson::from(&funko);
            bus.offer_funko(id, &funko, cursor);
            (funko, cursor)
        }
    };
    if funko.is_deleted && !include_deleted {
        return Err(ApiError::not_found(ENTITY, id));
    }
    Ok(Read {
        resource: funko,
        cursor,
    })
}

/// One page of the list as the JSON to send. Answered from the bus's page cache when no
/// write has committed since the same query was read, else read from the database (one
/// statement) and offered to it.
pub async fn list(bus: &ChangeBus, query: &FunkoListQuery) -> Result<Read<Bytes>, ApiError> {
    if let Some((json, cursor)) = bus.cached_page(query) {
        return Ok(Read {
            resource: json,
            cursor,
        });
    }
    let mut conn = bus.db().reader.acquire().await?;
    let (data, total, cursor) = db::funkos::list(&mut conn, query).await?;
    drop(conn);
    let page = FunkoPage {
        data,
        meta: PageMeta {
            page: query.page,
            limit: query.limit,
            total,
            total_pages: (total + query.limit - 1) / query.limit,
        },
    };
    let json = Bytes::from(page.to_json_string());
    bus.offer_page(query, &json, cursor);
    Ok(Read {
        resource: json,
        cursor,
    })
}

pub async fn create(bus: &ChangeBus, body: &Value) -> Result<Written<Funko>, ApiError> {
    let draft = FunkoDraft::parse(body).map_err(ApiError::Validation)?;
    let change: Change<Funko> = Box::new(move |conn| {
        Box::pin(async move {
            // One statement checks the category (422), the name (409, by the unique index)
            // and inserts.
            db::funkos::insert(conn, &draft, &now_rfc3339())
                .await
                .map_err(on_unique(|| name_conflict(&draft.name)))?
                .ok_or_else(|| unknown_category(&draft.category))
        })
    });
    write(bus, Entity::Funkos, EventKind::Create, change).await
}

/// How an update reads its body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateMode {
    /// PUT: the body is the whole Funko.
    Replace,
    /// PATCH: the body is an RFC 7396 merge patch of the Funko's writable fields.
    Merge,
}

/// Updates a Funko; an image of this server's that it no longer uses is released.
pub async fn update(
    bus: &ChangeBus,
    images: &ImageStore,
    id: i64,
    body: &Value,
    mode: UpdateMode,
    if_match: Option<&IfMatch>,
) -> Result<Written<Funko>, ApiError> {
    if mode == UpdateMode::Merge && !body.is_object() {
        return Err(ApiError::Validation(FieldErrors::single(
            "",
            "a merge patch must be a JSON object",
        )));
    }
    // Body rules that need no row are checked before taking the writer, so bad input is
    // refused (422) whatever the row and before the precondition (412) is evaluated. A merge
    // patch breaks the same rules on any valid Funko: only what it sets or removes can.
    match mode {
        UpdateMode::Replace => FunkoDraft::parse(body),
        UpdateMode::Merge => {
            let mut merged = serde_json::json!({
                "name": "any", "price": 0, "stock": 0, "category": "any",
            });
            merge_patch(&mut merged, body);
            FunkoDraft::parse(&merged)
        }
    }
    .map_err(ApiError::Validation)?;
    let body = body.clone();
    let if_match = if_match.cloned();
    let change: Change<Changed<Funko, String>> = Box::new(move |conn| {
        Box::pin(async move {
            let current = fetch_live(conn, id).await?;
            IfMatch::check(if_match.as_ref(), current.version)?;
            let draft = match mode {
                UpdateMode::Replace => FunkoDraft::parse(&body),
                UpdateMode::Merge => {
                    let mut merged = writable_json(&current);
                    merge_patch(&mut merged, &body);
                    FunkoDraft::parse(&merged)
                }
            }
            .map_err(ApiError::Validation)?;
            // One statement checks the category (422), the name (409, by the unique index)
            // and updates; the row is live (just read, and this write runs alone).
            let funko = db::funkos::update(conn, id, &draft, &now_rfc3339())
                .await
                .map_err(on_unique(|| name_conflict(&draft.name)))?
                .ok_or_else(|| unknown_category(&draft.category))?;
            Ok(Changed {
                resource: funko,
                extra: current.image,
                also: Vec::new(),
            })
        })
    });
    let (written, previous) = write_with(bus, Entity::Funkos, EventKind::Update, change).await?;
    if previous != written.resource.image {
        images.release(bus.db(), &previous).await;
    }
    Ok(written)
}

pub async fn delete(
    bus: &ChangeBus,
    id: i64,
    if_match: Option<&IfMatch>,
) -> Result<Written<Funko>, ApiError> {
    let if_match = if_match.cloned();
    let change: Change<Funko> = Box::new(move |conn| {
        Box::pin(async move {
            let current = fetch_live(conn, id).await?;
            IfMatch::check(if_match.as_ref(), current.version)?;
            let deleted = db::funkos::soft_delete(conn, id, &now_rfc3339()).await?;
            deleted.ok_or_else(|| vanished(id))
        })
    });
    write(bus, Entity::Funkos, EventKind::Delete, change).await
}

/// Stores an uploaded image and makes it a live Funko's: the image it replaced is released,
/// or the new file removed if the write fails.
pub async fn upload_image(
    bus: &ChangeBus,
    images: &ImageStore,
    id: i64,
    image: impl AsyncRead + Unpin,
    timeout: std::time::Duration,
) -> Result<Written<Funko>, ApiError> {
    let path = tokio::time::timeout(timeout, images.save(id, image))
        .await
        .map_err(|_| ApiError::body_timed_out(timeout))??;
    let saved = path.clone();
    let change: Change<Changed<Funko, String>> = Box::new(move |conn| {
        Box::pin(async move {
            let current = fetch_live(conn, id).await?;
            let funko = db::funkos::set_image(conn, id, &saved, &now_rfc3339()).await?;
            Ok(Changed {
                resource: funko.ok_or_else(|| vanished(id))?,
                extra: current.image,
                also: Vec::new(),
            })
        })
    });
    match write_with(bus, Entity::Funkos, EventKind::Update, change).await {
        Ok((written, previous)) => {
            images.release(bus.db(), &previous).await;
            Ok(written)
        }
        Err(err) => {
            images.release(bus.db(), &path).await;
            Err(err)
        }
    }
}

/// Checks a live Funko exists (for uploads, before reading a body).
pub async fn exists_live(bus: &ChangeBus, id: i64) -> Result<(), ApiError> {
    get(bus, id, false).await.map(|_| ())
}

fn unknown_category(name: &str) -> ApiError {
    ApiError::Validation(FieldErrors::single(
        "category",
        format!("no category named {name:?} exists"),
    ))
}

fn name_conflict(name: &str) -> String {
    format!("a Funko named {name:?} already exists")
}

/// A write found the live Funko, then could not change it: it runs alone, so a bug.
fn vanished(id: i64) -> ApiError {
    ApiError::Internal(anyhow::anyhow!("funko {id} vanished inside its write"))
}

async fn fetch_live(conn: &mut AnyConnection, id: i64) -> Result<Funko, ApiError> {
    db::funkos::get(conn, id)
        .await?
        .filter(|f| !f.is_deleted)
        .ok_or_else(|| ApiError::not_found(ENTITY, id))
}

/// The writable fields of a Funko as JSON: what a merge patch applies to.
fn writable_json(funko: &Funko) -> Value {
    serde_json::json!({
        "name": funko.name,
        "description": funko.description,
        "price": funko.price,
        "stock": funko.stock,
        "image": funko.image,
        "category": funko.category,
    })
}
