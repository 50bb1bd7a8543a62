//! Funko reads and writes.

use bytes::Bytes;
use poem_openapi::types::ToJSON;
use serde_json::Value;

use sqlx::AnyConnection;
use tokio::io::AsyncRead;

use super::{
    Change, Changed, Read, Store, Written, cache::FunkoJson, on_unique, write, write_with,
};
use crate::{
    db,
    domain::{
        FieldErrors,
        event::{Entity, EventKind},
        funko::FunkoDraft,
        merge_patch,
        precondition::IfMatch,
        query::FunkoListQuery,
        resource::{Funko, FunkoPage, PageMeta, now_rfc3339},
        view::ViewFields,
    },
    error::ApiError,
};

const ENTITY: &str = "funko";

/// One Funko as the JSON to send; a deleted one only when asked for. Answered from the
/// cache when it holds every committed write, else read from the database and offered to it.
pub(crate) async fn get(
    store: &Store,
    id: i64,
    include_deleted: bool,
) -> Result<Read<FunkoJson>, ApiError> {
    let cached = store
        .tail
        .local_bounds()
        .and_then(|(_, committed)| store.funkos.as_ref()?.get(id, committed, &store.tail));
    let (funko, cursor) = match cached {
        Some(hit) => hit,
        None => {
            let mut conn = store.db.reader.acquire().await?;
            let (funko, cursor) = db::funkos::get_with_cursor(&mut conn, id)
                .await?
                .ok_or_else(|| ApiError::not_found(ENTITY, id))?;
            let funko = FunkoJson::from(&funko);
            if let Some(funkos) = &store.funkos {
                funkos.fill(id, &funko, cursor);
            }
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

/// One page of the list as the JSON to send. Answered from the page cache when no write has
/// committed since the same query was read, else read from the database (one statement) and
/// offered to it.
pub(crate) async fn list(store: &Store, query: &FunkoListQuery) -> Result<Read<Bytes>, ApiError> {
    let cached = store.tail.local_bounds().and_then(|(_, committed)| {
        let json = store.pages.as_ref()?.get(query, committed)?;
        Some((json, committed))
    });
    if let Some((json, cursor)) = cached {
        return Ok(Read {
            resource: json,
            cursor,
        });
    }
    let mut conn = store.db.reader.acquire().await?;
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
    if let Some(pages) = &store.pages {
        pages.fill(query, &json, cursor);
    }
    Ok(Read {
        resource: json,
        cursor,
    })
}

pub(crate) async fn create(store: &Store, body: &Value) -> Result<Written<Funko>, ApiError> {
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
    write(store, Entity::Funkos, EventKind::Create, change).await
}

/// How an update reads its body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum UpdateMode {
    /// PUT: the body is the whole Funko.
    Replace,
    /// PATCH: the body is an RFC 7396 merge patch of the Funko's writable fields.
    Merge,
}

/// Updates a Funko; an image of this server's that it no longer uses is released.
pub(crate) async fn update(
    store: &Store,
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
                before: Some(ViewFields::of(&current).to_json()),
                resource: funko,
                extra: current.image,
                also: Vec::new(),
            })
        })
    });
    let (written, previous) = write_with(store, Entity::Funkos, EventKind::Update, change).await?;
    if previous != written.resource.image {
        store.images.release(&store.db, &previous).await;
    }
    Ok(written)
}

pub(crate) async fn delete(
    store: &Store,
    id: i64,
    if_match: Option<&IfMatch>,
) -> Result<Written<Funko>, ApiError> {
    let if_match = if_match.cloned();
    let change: Change<Changed<Funko>> = Box::new(move |conn| {
        Box::pin(async move {
            let current = fetch_live(conn, id).await?;
            IfMatch::check(if_match.as_ref(), current.version)?;
            let deleted = db::funkos::soft_delete(conn, id, &now_rfc3339()).await?;
            Ok(Changed {
                resource: deleted.ok_or_else(|| vanished(id))?,
                extra: (),
                before: Some(ViewFields::of(&current).to_json()),
                also: Vec::new(),
            })
        })
    });
    let (written, ()) = write_with(store, Entity::Funkos, EventKind::Delete, change).await?;
    Ok(written)
}

/// Stores an uploaded image and makes it a live Funko's: the image it replaced is released,
/// or the new file removed if the write fails.
pub(crate) async fn upload_image(
    store: &Store,
    id: i64,
    image: impl AsyncRead + Unpin,
    timeout: std::time::Duration,
) -> Result<Written<Funko>, ApiError> {
    let path = tokio::time::timeout(timeout, store.images.save(id, image))
        .await
        .map_err(|_| ApiError::body_timed_out(timeout))??;
    let saved = path.clone();
    let change: Change<Changed<Funko, String>> = Box::new(move |conn| {
        Box::pin(async move {
            let current = fetch_live(conn, id).await?;
            let funko = db::funkos::set_image(conn, id, &saved, &now_rfc3339()).await?;
            Ok(Changed {
                resource: funko.ok_or_else(|| vanished(id))?,
                before: Some(ViewFields::of(&current).to_json()),
                extra: current.image,
                also: Vec::new(),
            })
        })
    });
    match write_with(store, Entity::Funkos, EventKind::Update, change).await {
        Ok((written, previous)) => {
            store.images.release(&store.db, &previous).await;
            Ok(written)
        }
        Err(err) => {
            store.images.release(&store.db, &path).await;
            Err(err)
        }
    }
}

/// Checks a live Funko exists (for uploads, before reading a body).
pub(crate) async fn exists_live(store: &Store, id: i64) -> Result<(), ApiError> {
    get(store, id, false).await.map(|_| ())
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
