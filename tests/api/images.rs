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

/// The files under the data directory's `storage/`, sorted.
fn stored_files(app: &TestApp) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(app.config.data_dir.join("storage"))
        .map(|dir| {
            dir.filter_map(|entry| entry.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// The stored files some Funko (deleted ones included) names as its image, sorted.
async fn referenced_files(app: &TestApp) -> Vec<String> {
    let snapshot = app.snapshot().await;
    let mut files: Vec<String> = snapshot["funkos"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| {
            f["image"]
                .as_str()?
                .strip_prefix("/storage/")
                .map(str::to_owned)
        })
        .filter(|name| name != "placeholder.png")
        .collect();
    files.sort();
    files.dedup();
    files
}

/// Waits until the stored files are exactly the referenced ones.
async fn assert_no_orphans(app: &TestApp, what: &str) {
    let deadline = tokio::time::Instant::now() + crate::helpers::WAIT;
    loop {
        let (stored, referenced) = (stored_files(app), referenced_files(app).await);
        if stored == referenced {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: stored {stored:?}, referenced {referenced:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A file is removed only when nothing references it any more: a Funko that copied another's
/// image keeps it alive through the other's next upload, and replacing an uploaded image
/// through PUT or PATCH removes the file it no longer uses.
async fn an_image_is_removed_only_when_nothing_references_it(backend: Backend) {
    let app = spawn_app(backend).await;
    let a = app.create_funko("Copier").await;
    let b = app.create_funko("Original").await;
    let uploaded: Value = upload(&app, &b["id"], "b.png", "image/png", PNG.to_vec())
        .await
        .json()
        .await
        .unwrap();
    let shared = uploaded["image"].as_str().unwrap().to_owned();
    let copied = app
        .patch(
            &format!("/funkos/{}", a["id"]),
            serde_json::json!({"image": shared}),
        )
        .await;
    assert_eq!(copied.status(), StatusCode::OK);
    // A's own upload replaces A's image, which B still uses.
    assert_eq!(
        upload(&app, &a["id"], "a.gif", "image/gif", GIF.to_vec())
            .await
            .status(),
        200
    );
    assert_eq!(
        app.get(&shared).await.status(),
        StatusCode::OK,
        "B's image is still served"
    );
    assert_no_orphans(&app, "after A's upload").await;

    // B moves to an external image: its file has no user left and goes.
    let replaced = app
        .patch(
            &format!("/funkos/{}", b["id"]),
            serde_json::json!({"image": "https://example.com/b.png"}),
        )
        .await;
    assert_eq!(replaced.status(), StatusCode::OK);
    assert_eq!(app.get(&shared).await.status(), StatusCode::NOT_FOUND);
    assert_no_orphans(&app, "after B's PATCH").await;

    // PUT too.
    let mut whole: Value = app
        .get(&format!("/funkos/{}", a["id"]))
        .await
        .json()
        .await
        .unwrap();
    let own = whole["image"].as_str().unwrap().to_owned();
    whole["image"] = Value::Null;
    assert_eq!(
        app.put(&format!("/funkos/{}", a["id"]), whole)
            .await
            .status(),
        200
    );
    assert_eq!(app.get(&own).await.status(), StatusCode::NOT_FOUND);
    assert_no_orphans(&app, "after A's PUT").await;
}

/// An upload the client abandons halfway leaves no temporary file behind.
async fn an_upload_aborted_midway_leaves_no_file(backend: Backend) {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app(backend).await;
    let funko = app.create_funko("Half sent").await;
    let mut conn = tokio::net::TcpStream::connect(app.address).await.unwrap();
    let head = format!(
        "PUT /funkos/{}/image HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n\
         Content-Length: 1000000\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.png\"\r\n\r\n",
        funko["id"]
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(PNG).await.unwrap();
    conn.write_all(&[0u8; 200_000]).await.unwrap();
    // The upload is being written to disk...
    let deadline = tokio::time::Instant::now() + crate::helpers::WAIT;
    while stored_files(&app).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the upload never reached the disk"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // ...when the client goes away.
    drop(conn);
    assert_no_orphans(&app, "after the abort").await;
    let unchanged: Value = app
        .get(&format!("/funkos/{}", funko["id"]))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(unchanged, funko);
}

/// A client that hangs up after its upload reached the disk, while the write waits for the
/// database, leaves the store consistent: the write commits and the replaced file goes, or
/// neither happens and the new file goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cancelled_after_the_save_leaves_no_orphan() {
    use sqlx::Connection;
    let app = spawn_app(Backend::Sqlite).await;
    let funko = app.create_funko("Hung up").await;
    assert_eq!(
        upload(&app, &funko["id"], "a.png", "image/png", PNG.to_vec())
            .await
            .status(),
        200
    );
    let before = stored_files(&app);
    // Another process holds SQLite's write lock: the upload's write waits for it.
    let mut blocker = sqlx::SqliteConnection::connect(&app.database_url)
        .await
        .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut blocker)
        .await
        .unwrap();
    let request = app
        .client
        .put(app.url(&format!("/funkos/{}/image", funko["id"])))
        .multipart(Form::new().part("file", Part::bytes(GIF.to_vec()).file_name("b.gif")))
        .send();
    let pending = tokio::spawn(request);
    let deadline = tokio::time::Instant::now() + crate::helpers::WAIT;
    while stored_files(&app).len() == before.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the upload never reached the disk"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The client hangs up while the write waits; then the database is free again.
    pending.abort();
    let _ = pending.await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();
    assert_no_orphans(&app, "after the hang-up").await;
}

crate::backend_tests!(
    an_image_is_removed_only_when_nothing_references_it,
    an_upload_aborted_midway_leaves_no_file,
    uploads_replace_the_image_and_emit_an_event,
    bad_uploads_are_refused_and_change_nothing,
    uploads_need_a_token_when_tokens_are_set,
);
