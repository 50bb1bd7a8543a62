//! `/categories`: what Funkos are filed under.

use poem::web::Data;
use poem_openapi::{
    ApiResponse, OpenApi,
    param::{Header, Path, Query},
    payload::Json,
};

use super::{ApiTags, AppState, IfMatchHeader, JsonBody, WriteAccess};
use crate::{
    domain::category::CategoryInput,
    domain::resource::Category,
    error::{ApiResult, CreateErrors, DeleteErrors, ListErrors, ReadErrors, UpdateErrors},
    service::categories,
};

pub(crate) struct CategoriesApi;

#[derive(ApiResponse)]
pub enum ListResponse {
    /// Every category, by id.
    #[oai(status = 200)]
    Ok(
        Json<Vec<Category>>,
        /// The stream position this read saw.
        #[oai(header = "Stream-Cursor")]
        String,
    ),
}

#[derive(ApiResponse)]
pub enum GetResponse {
    #[oai(status = 200)]
    Ok(
        Json<Category>,
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
        Json<Category>,
        #[oai(header = "Location")] String,
        /// The cursor of this write's event.
        #[oai(header = "Stream-Cursor")]
        String,
    ),
}

#[derive(ApiResponse)]
pub enum UpdateResponse {
    /// The category after the change.
    #[oai(status = 200)]
    Ok(
        Json<Category>,
        /// The cursor of this write's event.
        #[oai(header = "Stream-Cursor")]
        String,
    ),
}

#[derive(ApiResponse)]
pub enum DeleteResponse {
    /// Deleted (soft).
    #[oai(status = 204)]
    NoContent(
        /// The cursor of this write's event.
        #[oai(header = "Stream-Cursor")]
        String,
    ),
}

#[OpenApi(tag = "ApiTags::Categories")]
impl CategoriesApi {
    /// List categories
    #[oai(path = "/categories", method = "get", operation_id = "listCategories")]
    async fn list(
        &self,
        state: Data<&AppState>,
        #[oai(name = "includeDeleted")] include_deleted: Query<Option<bool>>,
    ) -> ApiResult<ListResponse, ListErrors> {
        let read = categories::list(&state.store, include_deleted.0.unwrap_or(false)).await?;
        Ok(ListResponse::Ok(
            Json(read.resource),
            read.cursor.to_string(),
        ))
    }

    /// Get a category
    #[oai(path = "/categories/:id", method = "get", operation_id = "getCategory")]
    async fn get(
        &self,
        state: Data<&AppState>,
        id: Path<i64>,
        #[oai(name = "includeDeleted")] include_deleted: Query<Option<bool>>,
    ) -> ApiResult<GetResponse, ReadErrors> {
        let read = categories::get(&state.store, id.0, include_deleted.0.unwrap_or(false)).await?;
        Ok(GetResponse::Ok(
            Json(read.resource),
            read.cursor.to_string(),
        ))
    }

    /// Create a category
    #[oai(path = "/categories", method = "post", operation_id = "createCategory")]
    async fn create(
        &self,
        state: Data<&AppState>,
        _access: WriteAccess,
        body: JsonBody<CategoryInput>,
    ) -> ApiResult<CreateResponse, CreateErrors> {
        let written = categories::create(&state.store, &body.0).await?;
        let location = format!("/categories/{}", written.resource.id);
        Ok(CreateResponse::Created(
            Json(written.resource),
            location,
            written.cursor.to_string(),
        ))
    }

    /// Rename a category
    #[oai(
        path = "/categories/:id",
        method = "put",
        operation_id = "renameCategory"
    )]
    async fn update(
        &self,
        state: Data<&AppState>,
        _access: WriteAccess,
        id: Path<i64>,
        /// Categories carry no entity tag: only `*` (it exists) can hold; any tag is 412.
        #[oai(name = "If-Match")]
        if_match: Header<Option<IfMatchHeader>>,
        body: JsonBody<CategoryInput>,
    ) -> ApiResult<UpdateResponse, UpdateErrors> {
        let precondition = IfMatchHeader::parse(if_match.0)?;
        let written =
            categories::update(&state.store, id.0, &body.0, precondition.as_ref()).await?;
        Ok(UpdateResponse::Ok(
            Json(written.resource),
            written.cursor.to_string(),
        ))
    }

    /// Delete a category
    ///
    /// Refused with 409 while live Funkos use it.
    #[oai(
        path = "/categories/:id",
        method = "delete",
        operation_id = "deleteCategory"
    )]
    async fn delete(
        &self,
        state: Data<&AppState>,
        _access: WriteAccess,
        id: Path<i64>,
        /// Categories carry no entity tag: only `*` (it exists) can hold; any tag is 412.
        #[oai(name = "If-Match")]
        if_match: Header<Option<IfMatchHeader>>,
    ) -> ApiResult<DeleteResponse, DeleteErrors> {
        let precondition = IfMatchHeader::parse(if_match.0)?;
        let written = categories::delete(&state.store, id.0, precondition.as_ref()).await?;
        Ok(DeleteResponse::NoContent(written.cursor.to_string()))
    }
}
