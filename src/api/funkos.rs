//! `/funkos`: the store's products.

use poem::web::Data;
use poem_openapi::{
    ApiResponse, OpenApi,
    param::{Header, Path, Query},
    payload::Json,
};

use super::{ApiTags, AppState, IfMatchHeader, JsonBody, RawJson, WriteAccess};
use crate::{
    domain::{
        funko::{FunkoInput, FunkoPatch},
        precondition::{IfMatch, etag},
        query::{FunkoListQuery, RawListQuery},
        resource::{Funko, FunkoPage},
    },
    error::{
        ApiError, ApiResult, CreateErrors, DeleteErrors, ListErrors, ReadErrors, UpdateErrors,
    },
    service::funkos::{self, UpdateMode},
};

pub(crate) struct FunkosApi;

#[derive(ApiResponse)]
pub enum ListResponse {
    /// One page of Funkos.
    #[oai(status = 200)]
    Ok(
        RawJson<FunkoPage>,
        /// The stream position this read saw: subscribe from it to miss nothing.
        #[oai(header = "Stream-Cursor")]
        String,
    ),
}

#[derive(ApiResponse)]
pub enum GetResponse {
    /// The Funko.
    #[oai(status = 200)]
    Ok(
        RawJson<Funko>,
        /// The Funko's version, quoted.
        #[oai(header = "ETag")]
        String,
        /// The stream position this read saw.
        #[oai(header = "Stream-Cursor")]
        String,
    ),
}

#[derive(ApiResponse)]
pub enum CreateResponse {
    /// Created.
    #[oai(status = 201)]
    Created(
        Json<Funko>,
        /// Where the new Funko lives.
        #[oai(header = "Location")]
        String,
        #[oai(header = "ETag")] String,
        /// The cursor of this write's event.
        #[oai(header = "Stream-Cursor")]
        String,
    ),
}

#[derive(ApiResponse)]
pub enum UpdateResponse {
    /// The Funko after the change.
    #[oai(status = 200)]
    Ok(
        Json<Funko>,
        #[oai(header = "ETag")] String,
        /// The cursor of this write's event.
        #[oai(header = "Stream-Cursor")]
        String,
    ),
}

#[derive(ApiResponse)]
pub enum DeleteResponse {
    /// Deleted (soft: `GET ?includeDeleted=true` still shows it).
    #[oai(status = 204)]
    NoContent(
        /// The cursor of this write's event.
        #[oai(header = "Stream-Cursor")]
        String,
    ),
}

#[OpenApi(tag = "ApiTags::Funkos")]
impl FunkosApi {
    /// List Funkos
    ///
    /// Paged, sorted and filtered. Deleted Funkos are hidden unless `includeDeleted=true`.
    #[oai(path = "/funkos", method = "get", operation_id = "listFunkos")]
    #[allow(
        clippy::too_many_arguments,
        reason = "one argument per documented parameter"
    )]
    async fn list(
        &self,
        state: Data<&AppState>,
        /// Page number, from 1.
        page: Query<Option<i64>>,
        /// Page size, 1..=100 (default 20).
        limit: Query<Option<i64>>,
        /// `field` or `-field` (descending), over name, price, stock, createdAt, updatedAt, id.
        sort: Query<Option<String>>,
        /// Substring of the name or description, any case.
        q: Query<Option<String>>,
        /// Category name, any case.
        category: Query<Option<String>>,
        #[oai(name = "minPrice")] min_price: Query<Option<f64>>,
        #[oai(name = "maxPrice")] max_price: Query<Option<f64>>,
        #[oai(name = "includeDeleted")] include_deleted: Query<Option<bool>>,
    ) -> ApiResult<ListResponse, ListErrors> {
        let query = FunkoListQuery::parse(RawListQuery {
            page: page.0,
            limit: limit.0,
            sort: sort.0,
            q: q.0,
            category: category.0,
            min_price: min_price.0,
            max_price: max_price.0,
            include_deleted: include_deleted.0,
        })
        .map_err(|errors| ApiError::BadRequest {
            detail: "invalid query parameters".to_owned(),
            errors,
        })?;
        let read = funkos::list(&state.store, &query).await?;
        Ok(ListResponse::Ok(
            RawJson::new(read.resource),
            read.cursor.to_string(),
        ))
    }

    /// Get a Funko
    #[oai(path = "/funkos/:id", method = "get", operation_id = "getFunko")]
    async fn get(
        &self,
        state: Data<&AppState>,
        id: Path<i64>,
        /// Also find a soft-deleted Funko.
        #[oai(name = "includeDeleted")]
        include_deleted: Query<Option<bool>>,
    ) -> ApiResult<GetResponse, ReadErrors> {
        let read = funkos::get(&state.store, id.0, include_deleted.0.unwrap_or(false)).await?;
        let tag = etag(read.resource.version);
        Ok(GetResponse::Ok(
            RawJson::new(read.resource.json),
            tag,
            read.cursor.to_string(),
        ))
    }

    /// Create a Funko
    #[oai(path = "/funkos", method = "post", operation_id = "createFunko")]
    async fn create(
        &self,
        state: Data<&AppState>,
        _access: WriteAccess,
        body: JsonBody<FunkoInput>,
    ) -> ApiResult<CreateResponse, CreateErrors> {
        let written = funkos::create(&state.store, &body.0).await?;
        let funko = written.resource;
        let (location, tag) = (format!("/funkos/{}", funko.id), etag(funko.version));
        Ok(CreateResponse::Created(
            Json(funko),
            location,
            tag,
            written.cursor.to_string(),
        ))
    }

    /// Replace a Funko
    ///
    /// The body is the whole Funko. With `If-Match`, a stale version answers 412.
    #[oai(path = "/funkos/:id", method = "put", operation_id = "replaceFunko")]
    async fn replace(
        &self,
        state: Data<&AppState>,
        _access: WriteAccess,
        id: Path<i64>,
        #[oai(name = "If-Match")] if_match: Header<Option<IfMatchHeader>>,
        body: JsonBody<FunkoInput>,
    ) -> ApiResult<UpdateResponse, UpdateErrors> {
        let precondition = IfMatchHeader::parse(if_match.0)?;
        let written = update(&state, id.0, body.0, UpdateMode::Replace, precondition).await?;
        Ok(updated(written.resource, written.cursor))
    }

    /// Patch a Funko
    ///
    /// A JSON merge patch (RFC 7396): send the fields to change; `null` clears
    /// `description` and restores the placeholder `image`.
    #[oai(path = "/funkos/:id", method = "patch", operation_id = "patchFunko")]
    async fn patch(
        &self,
        state: Data<&AppState>,
        _access: WriteAccess,
        id: Path<i64>,
        #[oai(name = "If-Match")] if_match: Header<Option<IfMatchHeader>>,
        body: JsonBody<FunkoPatch>,
    ) -> ApiResult<UpdateResponse, UpdateErrors> {
        let precondition = IfMatchHeader::parse(if_match.0)?;
        let written = update(&state, id.0, body.0, UpdateMode::Merge, precondition).await?;
        Ok(updated(written.resource, written.cursor))
    }

    /// Delete a Funko
    ///
    /// A soft delete: the Funko disappears from reads but stays in the database.
    #[oai(path = "/funkos/:id", method = "delete", operation_id = "deleteFunko")]
    async fn delete(
        &self,
        state: Data<&AppState>,
        _access: WriteAccess,
        id: Path<i64>,
        #[oai(name = "If-Match")] if_match: Header<Option<IfMatchHeader>>,
    ) -> ApiResult<DeleteResponse, DeleteErrors> {
        let precondition = IfMatchHeader::parse(if_match.0)?;
        let written = funkos::delete(&state.store, id.0, precondition.as_ref()).await?;
        Ok(DeleteResponse::NoContent(written.cursor.to_string()))
    }
}

/// A PUT or PATCH, run to its end even if the client hangs up: the image it replaces, if
/// any, is released after the commit.
async fn update(
    state: &AppState,
    id: i64,
    body: serde_json::Value,
    mode: UpdateMode,
    precondition: Option<IfMatch>,
) -> Result<crate::service::Written<Funko>, ApiError> {
    let task = state.clone();
    state
        .run_to_end(async move {
            funkos::update(&task.store, id, &body, mode, precondition.as_ref()).await
        })
        .await
}

fn updated(funko: Funko, cursor: i64) -> UpdateResponse {
    let tag = etag(funko.version);
    UpdateResponse::Ok(Json(funko), tag, cursor.to_string())
}
