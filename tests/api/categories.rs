//! `/categories` over real HTTP: DESIGN §2 "Category", its endpoints and bad input.

use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{
    Backend, TestApp, assert_problem, problem_fields, spawn_app, spawn_app_with, stream_cursor,
};

const SEED: [&str; 5] = ["SERIE", "DISNEY", "SUPERHEROES", "PELICULA", "OTROS"];

fn header(response: &Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("{name} header"))
        .to_str()
        .unwrap()
        .to_owned()
}

async fn list(app: &TestApp, query: &str) -> Vec<Value> {
    let response = app.get(&format!("/categories{query}")).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

fn names(categories: &[Value]) -> Vec<&str> {
    categories
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect()
}

async fn create(app: &TestApp, name: &str) -> Value {
    let response = app.post("/categories", json!({ "name": name })).await;
    assert_eq!(response.status(), StatusCode::CREATED, "creating {name}");
    response.json().await.unwrap()
}

/// The category as `GET /categories/{id}?includeDeleted=true` shows it.
async fn fetch(app: &TestApp, id: i64) -> Value {
    let response = app
        .get(&format!("/categories/{id}?includeDeleted=true"))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

async fn id_of(app: &TestApp, name: &str) -> i64 {
    list(app, "")
        .await
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("category {name}"))["id"]
        .as_i64()
        .unwrap()
}

async fn categories_are_seeded(backend: Backend) {
    let app = spawn_app(backend).await;
    let categories = list(&app, "").await;
    assert_eq!(names(&categories), SEED);
    for category in &categories {
        assert_eq!(category["isDeleted"], false);
        assert!(category["id"].is_i64());
        assert!(category["createdAt"].is_string() && category["updatedAt"].is_string());
        let id = category["id"].as_i64().unwrap();
        let response = app.get(&format!("/categories/{id}")).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(&response.json::<Value>().await.unwrap(), category);
    }
    assert_eq!(list(&app, "?includeDeleted=true").await, categories);
}

async fn create_answers_201_with_location_and_stream_cursor(backend: Backend) {
    let app = spawn_app(backend).await;
    let response = app.post("/categories", json!({"name": "  Anime  "})).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = header(&response, "location");
    let cursor = stream_cursor(&response);
    let created: Value = response.json().await.unwrap();
    let id = created["id"].as_i64().unwrap();
    assert_eq!(location, format!("/categories/{id}"));
    assert_eq!(created["name"], "Anime");
    assert_eq!(created["isDeleted"], false);
    assert_eq!(created["createdAt"], created["updatedAt"]);
    let mut keys: Vec<&str> = created
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["createdAt", "id", "isDeleted", "name", "updatedAt"]);
    assert_eq!(app.head().await, cursor);

    let response = app.get(&location).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(stream_cursor(&response), cursor);
    assert_eq!(response.json::<Value>().await.unwrap(), created);
    let response = app.get("/categories").await;
    assert_eq!(stream_cursor(&response), cursor);
    let all: Vec<Value> = response.json().await.unwrap();
    assert_eq!(
        names(&all),
        [
            "SERIE",
            "DISNEY",
            "SUPERHEROES",
            "PELICULA",
            "OTROS",
            "Anime"
        ]
    );

    // Funkos can be filed under it, by any case.
    let response = app
        .post(
            "/funkos",
            json!({"name": "Goku", "price": 1, "stock": 1, "category": "ANIME"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.json::<Value>().await.unwrap()["category"], "Anime");
}

async fn put_renames_a_category(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = create(&app, "Anime").await;
    let id = created["id"].as_i64().unwrap();
    let response = app
        .put(&format!("/categories/{id}"), json!({"name": " Manga "}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let cursor = stream_cursor(&response);
    let renamed: Value = response.json().await.unwrap();
    assert_eq!(renamed["id"], id);
    assert_eq!(renamed["name"], "Manga");
    assert_eq!(renamed["createdAt"], created["createdAt"]);
    assert!(renamed["updatedAt"].as_str() >= created["updatedAt"].as_str());
    assert_eq!(fetch(&app, id).await, renamed);
    assert_eq!(app.head().await, cursor);
    assert!(!names(&list(&app, "").await).contains(&"Anime"));

    // Its own name in another case is not a conflict.
    let response = app
        .put(&format!("/categories/{id}"), json!({"name": "MANGA"}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.json::<Value>().await.unwrap()["name"], "MANGA");

    // The old name is free; the new one resolves for Funkos.
    create(&app, "anime").await;
    let response = app
        .post(
            "/funkos",
            json!({"name": "Naruto", "price": 1, "stock": 1, "category": "manga"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.json::<Value>().await.unwrap()["category"], "MANGA");

    // Read-only fields sent back are ignored.
    let mut body = fetch(&app, id).await;
    body["name"] = json!("Comics");
    body["id"] = json!(id + 100);
    body["isDeleted"] = json!(true);
    body["createdAt"] = json!("2000-01-01T00:00:00.000Z");
    let response = app.put(&format!("/categories/{id}"), body).await;
    assert_eq!(response.status(), StatusCode::OK);
    let renamed: Value = response.json().await.unwrap();
    assert_eq!(renamed["id"], id);
    assert_eq!(renamed["name"], "Comics");
    assert_eq!(renamed["isDeleted"], false);
    assert_eq!(renamed["createdAt"], created["createdAt"]);
}

/// A rename changes the body of every Funko in the category, so it changes their version
/// (their strong ETag) too, and the stream carries each of them as an UPDATE after the
/// category's: an `If-Match` written against the old body is refused.
async fn a_rename_changes_the_etag_and_the_stream_of_its_funkos(backend: Backend) {
    let app = spawn_app(backend).await;
    let category = create(&app, "Comics").await;
    let id = category["id"].as_i64().unwrap();
    let make = |name: &str| json!({"name": name, "price": 1, "stock": 1, "category": "Comics"});
    let first: Value = app
        .post("/funkos", make("Batman"))
        .await
        .json()
        .await
        .unwrap();
    let second: Value = app
        .post("/funkos", make("Robin"))
        .await
        .json()
        .await
        .unwrap();
    let other = app.create_funko("Elsewhere").await;
    let before = app.get(&format!("/funkos/{}", first["id"])).await;
    let old_tag = header(&before, "etag");
    let start = app.head().await;

    let renamed = app
        .put(
            &format!("/categories/{id}"),
            json!({"name": "Graphic Novels"}),
        )
        .await;
    assert_eq!(renamed.status(), StatusCode::OK);
    let cursor = stream_cursor(&renamed);

    let after = app.get(&format!("/funkos/{}", first["id"])).await;
    let new_tag = header(&after, "etag");
    let body: Value = after.json().await.unwrap();
    assert_eq!(body["category"], "Graphic Novels");
    assert_ne!(new_tag, old_tag, "the body changed, so the ETag does");
    assert_eq!(new_tag, format!("\"{}\"", body["version"]));
    assert_problem(
        app.if_match(
            Method::PATCH,
            &format!("/funkos/{}", first["id"]),
            &old_tag,
            Some(json!({"stock": 9})),
        )
        .await,
        412,
    )
    .await;

    // The category's event, then each of its Funkos as it now reads; the write's cursor is
    // the last of them. Other Funkos are untouched.
    let events = app.events_through(&start, &cursor).await;
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(events[0]["entity"], "CATEGORIES");
    for (event, funko) in events[1..].iter().zip([&first, &second]) {
        assert_eq!(
            (event["entity"].as_str(), event["type"].as_str()),
            (Some("FUNKOS"), Some("UPDATE"))
        );
        let now: Value = app
            .get(&format!("/funkos/{}", funko["id"]))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(event["data"], now);
    }
    assert_eq!(events[2]["id"], cursor);
    let untouched: Value = app
        .get(&format!("/funkos/{}", other["id"]))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(untouched, other);
}

/// Categories carry no entity tag, so an `If-Match` naming one cannot hold (412, nothing
/// changed); `*` holds while the category exists.
async fn if_match_on_a_category_holds_only_for_any(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = create(&app, "Tagless").await["id"].as_i64().unwrap();
    let path = format!("/categories/{id}");
    let rename = json!({"name": "Renamed"});
    app.assert_rejected(
        app.if_match(Method::PUT, &path, "\"1\"", Some(rename.clone())),
        412,
    )
    .await;
    app.assert_rejected(app.if_match(Method::DELETE, &path, "\"1\"", None), 412)
        .await;
    let response = app.if_match(Method::PUT, &path, "*", Some(rename)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_problem(
        app.if_match(Method::PUT, &path, "nope", Some(json!({"name": "X1"})))
            .await,
        400,
    )
    .await;
    let response = app.if_match(Method::DELETE, &path, "*", None).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
}

async fn delete_is_soft(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = create(&app, "Anime").await;
    let id = created["id"].as_i64().unwrap();
    let path = format!("/categories/{id}");
    let response = app.delete(&path).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let cursor = stream_cursor(&response);
    assert_eq!(app.head().await, cursor);

    app.assert_rejected(app.get(&path), 404).await;
    app.assert_rejected(app.put(&path, json!({"name": "Manga"})), 404)
        .await;
    app.assert_rejected(app.delete(&path), 404).await;
    let deleted = fetch(&app, id).await;
    assert_eq!(deleted["isDeleted"], true);
    assert_eq!(deleted["name"], "Anime");
    assert_eq!(deleted["createdAt"], created["createdAt"]);

    assert_eq!(names(&list(&app, "").await), SEED);
    let all = list(&app, "?includeDeleted=true").await;
    assert_eq!(all.last().unwrap(), &deleted);

    // The name is free again.
    let again = create(&app, "ANIME").await;
    assert_ne!(again["id"], id);
    assert_eq!(fetch(&app, id).await, deleted);
}

async fn category_in_use_cannot_be_deleted(backend: Backend) {
    let app = spawn_app(backend).await;
    let category = create(&app, "Anime").await["id"].as_i64().unwrap();
    let path = format!("/categories/{category}");
    let mut funkos = Vec::new();
    for name in ["Goku", "Vegeta"] {
        let response = app
            .post(
                "/funkos",
                json!({"name": name, "price": 1, "stock": 1, "category": "anime"}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        funkos.push(
            response.json::<Value>().await.unwrap()["id"]
                .as_i64()
                .unwrap(),
        );
    }
    let problem = app.assert_rejected(app.delete(&path), 409).await;
    assert!(
        problem["detail"].as_str().unwrap().contains("Anime"),
        "{problem}"
    );
    assert_eq!(fetch(&app, category).await["isDeleted"], false);

    // One Funko moves away, the other is deleted: then the category can go.
    let response = app
        .patch(
            &format!("/funkos/{}", funkos[0]),
            json!({"category": "OTROS"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    app.assert_rejected(app.delete(&path), 409).await;
    let response = app.delete(&format!("/funkos/{}", funkos[1])).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let response = app.delete(&path).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(fetch(&app, category).await["isDeleted"], true);

    // A seeded category in use is protected the same way.
    app.create_funko("Mickey").await;
    let disney = id_of(&app, "DISNEY").await;
    app.assert_rejected(app.delete(&format!("/categories/{disney}")), 409)
        .await;
    let unused = id_of(&app, "PELICULA").await;
    let response = app.delete(&format!("/categories/{unused}")).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
}

async fn names_are_unique_case_insensitively(backend: Backend) {
    let app = spawn_app(backend).await;
    let anime = create(&app, "Anime").await["id"].as_i64().unwrap();
    for name in ["disney", "DISNEY", "  Disney ", "ANIME", "anime"] {
        app.assert_rejected(app.post("/categories", json!({ "name": name })), 409)
            .await;
    }
    for name in ["disney", "Serie"] {
        app.assert_rejected(
            app.put(&format!("/categories/{anime}"), json!({ "name": name })),
            409,
        )
        .await;
    }
}

async fn name_rules_are_422(backend: Backend) {
    let app = spawn_app(backend).await;
    let anime = create(&app, "Anime").await["id"].as_i64().unwrap();
    let paths = [
        (Method::POST, "/categories".to_owned()),
        (Method::PUT, format!("/categories/{anime}")),
    ];
    for (method, path) in &paths {
        for (body, fields) in [
            (json!({"name": "ab"}), vec!["name"]),
            (json!({"name": "  ab  "}), vec!["name"]),
            (json!({"name": ""}), vec!["name"]),
            (json!({"name": "x".repeat(51)}), vec!["name"]),
            (json!({"name": 7}), vec!["name"]),
            (json!({"name": ["Anime"]}), vec!["name"]),
            (json!({"name": null}), vec!["name"]),
            (json!({}), vec!["name"]),
            (json!({"name": "Valid", "colour": "red"}), vec!["colour"]),
            (json!({"name": "ab", "extra": 1}), vec!["extra", "name"]),
        ] {
            let problem = app
                .assert_rejected(app.request(method.clone(), path, Some(body.clone())), 422)
                .await;
            assert_eq!(problem_fields(&problem), fields, "{method} {body}");
        }
        for body in [json!(["Anime"]), json!("Anime"), Value::Null] {
            app.assert_rejected(app.request(method.clone(), path, Some(body)), 422)
                .await;
        }
    }
    // The bounds themselves are fine.
    assert_eq!(create(&app, "abc").await["name"], "abc");
    let long = "y".repeat(50);
    assert_eq!(create(&app, &format!(" {long} ")).await["name"], long);
}

async fn bad_bodies_are_rejected(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.max_body_bytes = 1024).await;
    let anime = create(&app, "Anime").await["id"].as_i64().unwrap();
    for (method, path) in [
        (Method::POST, "/categories".to_owned()),
        (Method::PUT, format!("/categories/{anime}")),
    ] {
        for body in [r#"{"name": "Manga""#, "name=Manga", r#"{"name": "Manga",}"#] {
            app.assert_rejected(
                app.raw(method.clone(), &path, Some("application/json"), body),
                400,
            )
            .await;
        }
        app.assert_rejected(
            app.raw(method.clone(), &path, Some("application/json"), ""),
            400,
        )
        .await;
        for content_type in [Some("text/plain"), None] {
            app.assert_rejected(
                app.raw(method.clone(), &path, content_type, r#"{"name": "Manga"}"#),
                415,
            )
            .await;
        }
        // Over the limit even though the name inside would be checked later.
        let big = json!({"name": "Manga", "padding": "x".repeat(2000)});
        app.assert_rejected(app.request(method.clone(), &path, Some(big)), 413)
            .await;
    }
}

async fn bad_ids_are_400_and_unknown_ids_404(backend: Backend) {
    let app = spawn_app(backend).await;
    for id in ["abc", "1.5", "99999999999999999999"] {
        let path = format!("/categories/{id}");
        let problem = app.assert_rejected(app.get(&path), 400).await;
        assert_eq!(problem_fields(&problem), ["id"]);
        app.assert_rejected(app.put(&path, json!({"name": "Manga"})), 400)
            .await;
        app.assert_rejected(app.delete(&path), 400).await;
    }
    let max = list(&app, "")
        .await
        .iter()
        .map(|c| c["id"].as_i64().unwrap())
        .max()
        .unwrap();
    for id in [max + 1, 0, -5, i64::MAX] {
        let path = format!("/categories/{id}");
        let problem = app.assert_rejected(app.get(&path), 404).await;
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains(&id.to_string())
        );
        app.assert_rejected(app.get(&format!("{path}?includeDeleted=true")), 404)
            .await;
        app.assert_rejected(app.put(&path, json!({"name": "Manga"})), 404)
            .await;
        app.assert_rejected(app.delete(&path), 404).await;
    }
    let problem = app
        .assert_rejected(app.get("/categories?includeDeleted=perhaps"), 400)
        .await;
    assert_eq!(problem_fields(&problem), ["includeDeleted"]);
    assert_problem(app.get("/categories/1?includeDeleted=2").await, 400).await;
}

crate::backend_tests!(
    if_match_on_a_category_holds_only_for_any,
    a_rename_changes_the_etag_and_the_stream_of_its_funkos,
    categories_are_seeded,
    create_answers_201_with_location_and_stream_cursor,
    put_renames_a_category,
    delete_is_soft,
    category_in_use_cannot_be_deleted,
    names_are_unique_case_insensitively,
    name_rules_are_422,
    bad_bodies_are_rejected,
    bad_ids_are_400_and_unknown_ids_404,
);
