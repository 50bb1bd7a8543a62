//! The served OpenAPI document is the committed one, so a contract change shows in review.
//! Regenerate the committed file with `cargo run --bin openapi > openapi/openapi.json`.

use crate::helpers::{Backend, spawn_app};

#[tokio::test]
async fn served_spec_matches_the_committed_file() {
    let app = spawn_app(Backend::Sqlite).await;
    let served: serde_json::Value = app.get("/openapi.json").await.json().await.unwrap();
    let committed: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json"))
            .expect("openapi/openapi.json is committed"),
    )
    .unwrap();
    assert!(
        served == committed,
        "the served spec differs from openapi/openapi.json; regenerate it with \
         `cargo run --bin openapi > openapi/openapi.json`"
    );
}

#[tokio::test]
async fn swagger_ui_is_served() {
    let app = spawn_app(Backend::Sqlite).await;
    let response = app.get("/docs").await;
    assert_eq!(response.status(), 200);
    let html = response.text().await.unwrap();
    assert!(html.contains("swagger"), "Swagger UI page");
}

#[tokio::test]
async fn every_operation_documents_its_error_statuses() {
    let spec: serde_json::Value = serde_json::from_str(&funko_live::openapi_json()).unwrap();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let responses = operation["responses"].as_object().unwrap();
            let has_params = operation["parameters"]
                .as_array()
                .is_some_and(|p| !p.is_empty());
            if has_params || operation.get("requestBody").is_some() {
                assert!(
                    responses.contains_key("400"),
                    "{method} {path} takes input but does not document 400"
                );
            }
            if operation.get("requestBody").is_some() {
                for status in ["413", "415", "422"] {
                    assert!(
                        responses.contains_key(status),
                        "{method} {path} takes a body but does not document {status}"
                    );
                }
            }
        }
    }
}
