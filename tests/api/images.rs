//! Image uploads: accepted by content, bounded, stored under server-chosen names, served
//! with the right type, the old file removed, an UPDATE event emitted.

use reqwest::{
    StatusCode,
    multipart::{Form, Part},
};
use serde_json::Value;

use crate::helpers::{Backend, TestApp, assert_problem, spawn_app, spawn_app_with};

const PNG: &[u8] = include_bytes!("../../static/placeholder.png");
const GIF: &[u8] = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;";

async fn upload(
    app: &TestApp,
    id: &Value,
    name: &str,
    declared: &str,
    bytes: Vec<u8>,
) -> reqwest::Response {
    let part = Part::bytes(bytes)
        .file_name(name.to_owned())
        .mime_str(declared)
        .unwrap();
    app.client
        .put(app.url(&format!("/funkos/{id}/image")))
        .multipart(Form::new().part("file", part))
        .send()
        .await
        .unwrap()
}

async fn uploads_replace_the_image_and_emit_an_event(backend: Backend) {
    let app = spawn_app(backend).await;
    let funko = app.create_funko("Pictured").await;
    let id = &funko["id"];
    let start = app.head().await;

    // The placeholder is served before any upload.
    let placeholder = app.get("/storage/placeholder.png").await;
    assert_eq!(placeholder.headers()["content-type"], "image/png");

    // Declared type and name do not matter: the content does.
    let response = upload(&app, id, "../../etc/passwd", "text/plain", PNG.to_vec()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let cursor = response.headers()["stream-cursor"]
        .to_str()
        .unwrap()
        .to_owned();
    let after: Value = response.json().await.unwrap();
    let first_image = after["image"].as_str().unwrap().to_owned();
    assert!(
        first_image.starts_with("/storage/") && first_image.ends_with(".png"),
        "{first_image}"
    );
    assert!(!first_image.contains("passwd"));
    assert_eq!(after["version"], 2);

    let served = app.get(&first_image).await;
    assert_eq!(served.status(), StatusCode::OK);
    assert_eq!(served.headers()["content-type"], "image/png");
    assert_eq!(served.headers()["x-content-type-options"], "nosniff");
    assert_eq!(served.bytes().await.unwrap().as_ref(), PNG);

    let events = app.events_after(&start).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["type"], "UPDATE");
    assert_eq!(events[0]["id"], cursor.as_str());
    assert_eq!(events[0]["data"], after);

    // A second upload replaces the file; the old one is gone.
    let response = upload(&app, id, "x.png", "image/png", GIF.to_vec()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let after: Value = response.json().await.unwrap();
    let second_image = after["image"].as_str().unwrap();
    assert!(second_image.ends_with(".gif"));
    assert_eq!(
        app.get(second_image).await.headers()["content-type"],
        "image/gif"
    );
    assert_problem(app.get(&first_image).await, 404).await;
}

async fn bad_uploads_are_refused_and_change_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let funko = app.create_funko("Unpictured").await;
    let id = &funko["id"];
    let start = app.head().await;

    // Not an image, whatever it claims.
    let response = upload(
        &app,
        id,
        "evil.png",
        "image/png",
        b"<svg onload=alert(1)>".to_vec(),
    )
    .await;
    assert_problem(response, 415).await;
    // Too big: 2 MiB and one byte, starting like a PNG.
    let mut big = PNG.to_vec();
    big.resize(2 * 1024 * 1024 + 1, 0);
    assert_problem(upload(&app, id, "big.png", "image/png", big).await, 413).await;
    // No `file` part.
    let response = app
        .client
        .put(app.url(&format!("/funkos/{id}/image")))
        .multipart(Form::new().text("other", "x"))
        .send()
        .await
        .unwrap();
    let problem = assert_problem(response, 422).await;
    assert_eq!(problem["errors"][0]["field"], "file");
    // Not multipart.
    let response = app
        .put(
            &format!("/funkos/{id}/image"),
            serde_json::json!({"file": "x"}),
        )
        .await;
    assert_problem(response, 415).await;
    // Unknown and deleted Funkos, non-numeric ids.
    assert_problem(
        upload(
            &app,
            &Value::from(999_999),
            "a.png",
            "image/png",
            PNG.to_vec(),
        )
        .await,
        404,
    )
    .await;
    assert_problem(
        upload(
            &app,
            &Value::from("abc"),
            "a.png",
            "image/png",
            PNG.to_vec(),
        )
        .await,
        400,
    )
    .await;

    assert!(app.events_after(&start).await.is_empty(), "nothing changed");
    let now: Value = app
        .get(&format!("/funkos/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(now, funko);

    let deleted = app.create_funko("Gone").await;
    assert_eq!(
        app.delete(&format!("/funkos/{}", deleted["id"]))
            .await
            .status(),
        204
    );
    assert_problem(
        upload(&app, &deleted["id"], "a.png", "image/png", PNG.to_vec()).await,
        404,
    )
    .await;

    // Traversal and unknown names never reach the filesystem.
    for path in [
        "/storage/..%2F..%2Fetc%2Fpasswd",
        "/storage/.upload-1-x",
        "/storage/nope.png",
    ] {
        let response = app.get(path).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
    }
    // A dot-dot segment is normalised away before routing: it never names a stored file.
    let response = app.get("/storage/%2e%2e/%2e%2e/etc/passwd").await;
    assert!(response.headers().get("x-content-type-options").is_none());
}

async fn uploads_need_a_token_when_tokens_are_set(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.api_tokens = vec!["s3cret".into()]).await;
    let funko = app
        .client
        .post(app.url("/funkos"))
        .bearer_auth("s3cret")
        .json(&serde_json::json!({"name": "Locked", "price": 1, "stock": 1, "category": "OTROS"}))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_problem(
        upload(&app, &funko["id"], "a.png", "image/png", PNG.to_vec()).await,
        401,
    )
    .await;
}

crate::backend_tests!(
    uploads_replace_the_image_and_emit_an_event,
    bad_uploads_are_refused_and_change_nothing,
    uploads_need_a_token_when_tokens_are_set,
);
