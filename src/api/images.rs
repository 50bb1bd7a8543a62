//! `PUT /funkos/{id}/image` (multipart upload) and `GET /storage/{file}`.

use poem::{Request, RequestBody, web::Data};
use poem_openapi::{
    ApiResponse, OpenApi,
    param::Path,
    payload::{Binary, Json, ParsePayload, Payload},
    registry::{MetaSchema, MetaSchemaRef},
};

use super::{ApiTags, AppState, WriteAccess, check_coding};
use crate::{
    domain::{precondition::etag, resource::Funko},
    error::{ApiError, ApiResult, ReadErrors, UploadErrors},
    service::funkos,
    storage::MAX_IMAGE_BYTES,
};

pub(crate) struct ImagesApi;

/// A `multipart/form-data` body with the image in a part named `file`. The parts are read as
/// they arrive (never buffered whole), and the whole body is bounded ([`UPLOAD_BODY_BYTES`])
/// however many parts come before the file.
pub(crate) struct ImageForm(multer::Multipart<'static>);

/// The most bytes an upload's whole body may have: the image and room for its part's
/// headers and a few small fields.
const UPLOAD_BODY_BYTES: usize = MAX_IMAGE_BYTES + 64 * 1024;

impl Payload for ImageForm {
    const CONTENT_TYPE: &'static str = "multipart/form-data";

    fn check_content_type(content_type: &str) -> bool {
        matches!(content_type.parse::<mime::Mime>(), Ok(mime)
            if mime.essence_str() == "multipart/form-data")
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(MetaSchema {
            required: vec!["file"],
            properties: vec![(
                "file",
                MetaSchemaRef::Inline(Box::new(MetaSchema {
                    description: Some("A PNG, JPEG, GIF or WebP image, at most 2 MiB."),
                    ..MetaSchema::new_with_format("string", "binary")
                })),
            )],
            ..MetaSchema::new("object")
        }))
    }
}

impl ParsePayload for ImageForm {
    const IS_REQUIRED: bool = true;

    async fn from_request(request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
        check_coding(request)?;
        let content_type = request
            .headers()
            .get(poem::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let boundary = multer::parse_boundary(content_type)
            .map_err(|err| ApiError::bad_request(format!("not a multipart body: {err}")))?;
        let declared = request
            .headers()
            .get(poem::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > UPLOAD_BODY_BYTES as u64) {
            return Err(too_large().into());
        }
        let stream = tokio_util::io::ReaderStream::new(body.take()?.into_async_read());
        let limits = multer::Constraints::new()
            .size_limit(multer::SizeLimit::new().whole_stream(UPLOAD_BODY_BYTES as u64));
        Ok(Self(multer::Multipart::with_constraints(
            stream, boundary, limits,
        )))
    }
}

poem_openapi::impl_apirequest_for_payload!(ImageForm,);

fn too_large() -> ApiError {
    ApiError::PayloadTooLarge {
        limit: UPLOAD_BODY_BYTES,
    }
}

#[derive(ApiResponse)]
pub enum UploadResponse {
    /// The Funko with its new image.
    #[oai(status = 200)]
    Ok(
        Json<Funko>,
        #[oai(header = "ETag")] String,
        /// The cursor of this write's event.
        #[oai(header = "Stream-Cursor")]
        String,
    ),
}

/// A stored image, answered with its own content type (the spec says `image/*`).
pub struct ImageBytes {
    bytes: Vec<u8>,
    content_type: &'static str,
}

impl Payload for ImageBytes {
    const CONTENT_TYPE: &'static str = "image/*";

    fn schema_ref() -> MetaSchemaRef {
        Binary::<Vec<u8>>::schema_ref()
    }
}

impl poem::IntoResponse for ImageBytes {
    fn into_response(self) -> poem::Response {
        poem::Response::builder()
            .content_type(self.content_type)
            .body(self.bytes)
    }
}

#[derive(ApiResponse)]
pub enum FileResponse {
    /// The image (PNG, JPEG, GIF or WebP).
    #[oai(status = 200)]
    Ok(
        ImageBytes,
        /// Always `nosniff`: the type is the one the content was checked against.
        #[oai(header = "X-Content-Type-Options")]
        String,
        #[oai(header = "Cache-Control")] String,
    ),
}

#[OpenApi(tag = "ApiTags::Funkos")]
impl ImagesApi {
    /// Upload a Funko's image
    ///
    /// `multipart/form-data` with the image in the part `file`: PNG, JPEG, GIF or WebP,
    /// recognised by its content (not its name or declared type), at most 2 MiB. The image is
    /// served at the Funko's new `image` path; the one it replaces is removed.
    #[oai(
        path = "/funkos/:id/image",
        method = "put",
        operation_id = "uploadFunkoImage"
    )]
    async fn upload(
        &self,
        state: Data<&AppState>,
        _access: WriteAccess,
        id: Path<i64>,
        form: ImageForm,
    ) -> ApiResult<UploadResponse, UploadErrors> {
        funkos::exists_live(&state.store, id.0).await?;
        let mut multipart = form.0;
        let field = loop {
            match multipart.next_field().await {
                Ok(Some(field)) if field.name() == Some("file") => break field,
                Ok(Some(_)) => continue,
                Ok(None) => {
                    return Err(ApiError::Validation(crate::domain::FieldErrors::single(
                        "file",
                        "is required: send the image in a part named file",
                    ))
                    .into());
                }
                Err(multer::Error::StreamSizeExceeded { .. }) => return Err(too_large().into()),
                Err(err) => {
                    return Err(
                        ApiError::bad_request(format!("malformed multipart body: {err}")).into(),
                    );
                }
            }
        };
        let (state, id) = (state.0.clone(), id.0);
        let image = tokio_util::io::StreamReader::new(futures_util::TryStreamExt::map_err(
            field,
            std::io::Error::other,
        ));
        // From here the upload is saved, written and its old file released as one, even if
        // the client hangs up.
        let written = state
            .clone()
            .run_to_end(async move {
                let timeout = state.settings.body_timeout;
                funkos::upload_image(&state.store, id, image, timeout).await
            })
            .await?;
        let tag = etag(written.resource.version);
        Ok(UploadResponse::Ok(
            Json(written.resource),
            tag,
            written.cursor.to_string(),
        ))
    }

    /// Get a stored image
    #[oai(
        path = "/storage/:file",
        method = "get",
        operation_id = "getStoredImage"
    )]
    async fn file(
        &self,
        state: Data<&AppState>,
        file: Path<String>,
    ) -> ApiResult<FileResponse, ReadErrors> {
        let (bytes, content_type) = state
            .store
            .images()
            .read(&file.0)
            .await
            .ok_or_else(|| ApiError::not_found("file", &file.0))?;
        Ok(FileResponse::Ok(
            ImageBytes {
                bytes,
                content_type,
            },
            "nosniff".to_owned(),
            "public, max-age=3600".to_owned(),
        ))
    }
}
