//! The OpenAPI document: every operation of `api/` and of the HTTP streams, the request
//! bodies' schemas from `domain/`, and the Swagger UI page that shows it.

use poem_openapi::OpenApiService;
use serde_json::{Value, json};

use crate::{
    api::{
        categories::CategoriesApi, funkos::FunkosApi, health::HealthApi, images::ImagesApi,
        page::PageApi,
    },
    stream::{durable::DurableApi, poll::PollApi, sse::SseApi},
};

type Operations = (
    FunkosApi,
    CategoriesApi,
    SseApi,
    PollApi,
    DurableApi,
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
            DurableApi,
            HealthApi,
            ImagesApi,
            PageApi,
        ),
        "funko-live",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "A Funko store whose clients see every committed change live. Every write appends its \
         events to an ordered, durable change stream, served as Server-Sent Events (`/events`), \
         long-polling (`/events/poll`), WebSocket (`/ws`) and Socket.IO with one cursor, and as \
         Durable Streams with State Protocol messages (`/streams/funkos`, `/streams/categories`). Reads answer a \
         `Stream-Cursor` header: subscribe from it and miss nothing. Errors are \
         `application/problem+json` (RFC 9457).",
    )
}

/// The spec as served at `/openapi.json` and committed as `openapi/openapi.json`: poem-openapi's
/// document with what its model cannot state: each request body's schema from the domain
/// ([`crate::domain::shapes`]: `additionalProperties: false`, patterns), the schema of what an
/// SSE event's `data` carries, and the values Swagger UI's "Try it out" starts `/events` with.
pub fn openapi_json() -> String {
    let mut spec: Value =
        serde_json::from_str(&openapi_service().spec()).expect("poem-openapi writes JSON");
    for (name, schema) in crate::domain::shapes() {
        spec["components"]["schemas"][name] = schema;
    }
    // Each `data` is JSON: a change event, or a reset's body. JSON Schema's content keywords
    // say so, and tools that read the stream (schemathesis) check each event against them.
    spec["components"]["schemas"]["ServerSentEvent"]["properties"]["data"]
        .as_object_mut()
        .expect("ServerSentEvent has data")
        .extend([
            ("contentMediaType".to_owned(), json!("application/json")),
            (
                "contentSchema".to_owned(),
                json!({"oneOf": [
                    {"$ref": "#/components/schemas/ChangeEvent"},
                    {"$ref": "#/components/schemas/Reset"},
                ]}),
            ),
        ]);
    // "Try it out" fills a parameter in from its example: a stream that ends after the next
    // event, so the response panel shows it.
    let parameters = spec["paths"]["/events"]["get"]["parameters"]
        .as_array_mut()
        .expect("/events has parameters");
    for parameter in parameters {
        let example = match parameter["name"].as_str() {
            Some("maxEvents") => json!(1),
            Some("timeout") => json!(60),
            _ => continue,
        };
        parameter["example"] = example;
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
