//! The store's operations, shared by REST, `/ws` and Socket.IO: each read and write of Funkos
//! ([`funkos`]) and categories ([`categories`]), the router the sockets' writes go through
//! ([`writes`]), and the read caches ([`cache`]). A write validates, changes its row, appends
//! its event in the same transaction, commits, then tells the tail.

pub(crate) mod cache;
pub(crate) mod categories;
pub(crate) mod funkos;
pub(crate) mod writes;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use poem_openapi::types::ToJSON;
use sqlx::AnyConnection;

use crate::{
    db::{
        self, Backend, Db,
        events::{NewEvent, NewEvents},
    },
    domain::{
        event::{Entity, EventKind},
        resource::Funko,
        view::ViewFields,
    },
    error::ApiError,
    events::Tail,
    storage::ImageStore,
};

/// Everything the store's operations need: the database, the log's tail (which each write
/// tells of its commit), the images on disk and the read caches.
pub(crate) struct Store {
    db: Db,
    tail: Arc<Tail>,
    images: ImageStore,
    /// Funkos by id, kept current from the tail; SQLite only (see [`cache::FunkoCache`]).
    funkos: Option<cache::FunkoCache>,
    /// Pages of the Funko list until the next write; SQLite only.
    pages: Option<cache::PageCache>,
}

impl Store {
    pub(crate) fn new(tail: Arc<Tail>, images: ImageStore) -> Self {
        let db = tail.db().clone();
        let local = db.backend == Backend::Sqlite;
        Self {
            funkos: local.then(|| cache::FunkoCache::new(tail.head())),
            pages: local.then(cache::PageCache::default),
            db,
            tail,
            images,
        }
    }

    /// Whether the database answers (for `/health/ready`).
    pub(crate) async fn ping(&self) -> Result<(), sqlx::Error> {
        self.db.ping().await
    }

    /// The log's floor (the cursor below its oldest event), as the database holds it.
    pub(crate) async fn log_floor(&self) -> anyhow::Result<i64> {
        let mut conn = self.db.reader.acquire().await?;
        Ok(db::events::bounds(&mut conn).await?.0)
    }

    /// The database's pools (for their metrics).
    pub(crate) fn db(&self) -> &Db {
        &self.db
    }

    /// The uploaded images (for `GET /storage/{file}`).
    pub(crate) fn images(&self) -> &ImageStore {
        &self.images
    }
}

/// A committed write: the resource after it and the cursor of its event.
#[derive(Debug)]
pub(crate) struct Written<T> {
    pub resource: T,
    pub cursor: i64,
}

/// A read and the stream position it saw.
#[derive(Debug)]
pub(crate) struct Read<T> {
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
    /// A Funko's [`ViewFields`](crate::domain::view::ViewFields) before the change, for views.
    before: Option<String>,
    also: Vec<NewEvent>,
}

/// The write path: begin, change the row, append the event, commit, then tell the tail.
/// [`db::Db::write`] does the first four (in a batch shared with other writes);
/// nothing is announced before the commit, and a failed commit leaves no event.
async fn write<T>(
    store: &Store,
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
                before: None,
                also: Vec::new(),
            })
        })
    });
    let (written, ()) = write_with(store, entity, kind, change).await?;
    Ok(written)
}

/// [`write`] for a change that returns something besides the resource, or changes other
/// resources too.
async fn write_with<T, X>(
    store: &Store,
    entity: Entity,
    kind: EventKind,
    change: Change<Changed<T, X>>,
) -> Result<(Written<T>, X), ApiError>
where
    T: ToJSON + Send + 'static,
    X: Send + 'static,
{
    let ((resource, extra, appended), cursor) = store
        .db
        .write::<_, ApiError>(Box::new(move |conn| {
            Box::pin(async move {
                let changed = change(conn).await?;
                let first = NewEvent {
                    entity,
                    kind,
                    data: changed.resource.to_json_string(),
                    before: changed.before,
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
    store.tail.committed(cursor);
    crate::metrics::METRICS.events_appended.inc_by(appended);
    Ok((Written { resource, cursor }, extra))
}

/// The UPDATE event of a Funko another write changed, with the Funko as views saw it before.
fn funko_updated(funko: &Funko, before: &ViewFields) -> NewEvent {
    NewEvent {
        entity: Entity::Funkos,
        kind: EventKind::Update,
        data: funko.to_json_string(),
        before: Some(before.to_json()),
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
