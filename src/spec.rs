//! The OpenAPI document: every operation of `api/` and of the HTTP streams, the request
//! bodies' schemas from `domain/`, and the Swagger UI page that shows it.

use poem_openapi::OpenApiService;
use serde_json::Value;

use crate::{
    api::{
        categories::CategoriesApi, funkos::FunkosApi, health::HealthApi, images::ImagesApi,
        page::PageApi,
    },
    stream::{poll::PollApi, sse::SseApi},
};

type Operations = (
    FunkosApi,
    CategoriesApi,
    SseApi,
    PollApi,
    HealthApi,
    ImagesApi,
    PageApi,
);

/// The OpenAPI service with every operation: the REST resources and the two HTTP streams.
pub(crate) fn openapi_service() -> OpenApiService<Operations, ()> {
    OpenApiService::new(
        (
            FunkosApi,
            CategoriesApi,
            SseApi,
            PollApi,
            HealthApi,
            ImagesApi,
            PageApi,
        ),
        "funko-live",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "A Funko store whose clients see every committed change live. Every write appends one \
         event to an ordered, durable change stream, served as Server-Sent Events (`/events`), \
         long-polling (`/events/poll`) and WebSocket (`/ws`) with one cursor. Reads answer a \
         `Stream-Cursor` header: subscribe from it and miss nothing. Errors are \
         `application/problem+json` (RFC 9457).",
    )
}

/// The spec as served at `/openapi.json` and committed as `openapi/openapi.json`: poem-openapi's
/// document with each request body's schema from the domain ([`crate::domain::shapes`]), which
/// states what poem-openapi's model cannot (`additionalProperties: false`, patterns).
pub fn openapi_json() -> String {
    let mut spec: Value =
        serde_json::from_str(&openapi_service().spec()).expect("poem-openapi writes JSON");
    for (name, schema) in crate::domain::shapes() {
        spec["components"]["schemas"][name] = schema;
    }
    serde_json::to_string_pretty(&spec).expect("a JSON value serializes")
}

/// Swagger UI's page, showing [`openapi_json`].
pub(crate) fn swagger_ui_html() -> String {
    let service = openapi_service();
    let page = service.swagger_ui_html();
    let generated = service.spec();
    assert!(
        page.contains(&generated),
        "Swagger UI embeds the spec it shows"
    );
    page.replace(&generated, &openapi_json())
}
