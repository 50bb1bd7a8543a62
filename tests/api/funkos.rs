//! `/funkos` over real HTTP: DESIGN §2 "Funko", its endpoints and every kind of bad input.

use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{
    Backend, SseClient, TestApp, assert_problem, problem_fields, spawn_app, spawn_app_with,
    stream_cursor,
};

const PLACEHOLDER: &str = "/storage/placeholder.png";

fn header(response: &Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("{name} header"))
        .to_str()
        .unwrap()
        .to_owned()
}

fn etag(response: &Response) -> String {
    header(response, "etag")
}

fn valid_body(name: &str) -> Value {
    json!({
        "name": name,
        "description": "a valid Funko",
        "price": 19.99,
        "stock": 3,
        "image": "https://example.com/funko.png",
        "category": "DISNEY"
    })
}

fn ids(list: &Value) -> Vec<i64> {
    list["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|f| f["id"].as_i64().unwrap())
        .collect()
}

async fn create(app: &TestApp, body: Value) -> Value {
    let response = app.post("/funkos", body.clone()).await;
    assert_eq!(response.status(), StatusCode::CREATED, "creating {body}");
    response.json().await.unwrap()
}

/// The Funko as `GET /funkos/{id}?includeDeleted=true` shows it.
async fn fetch(app: &TestApp, id: i64) -> Value {
    let response = app.get(&format!("/funkos/{id}?includeDeleted=true")).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

async fn list(app: &TestApp, query: &str) -> Value {
    let response = app.get(&format!("/funkos?{query}")).await;
    assert_eq!(response.status(), StatusCode::OK, "GET /funkos?{query}");
    response.json().await.unwrap()
}

fn is_rfc3339_utc(value: &Value) -> bool {
    value.as_str().is_some_and(|s| {
        s.ends_with('Z')
            && chrono::DateTime::parse_from_rfc3339(s)
                .is_ok_and(|t| t.offset().local_minus_utc() == 0)
    })
}

async fn create_answers_201_with_location_etag_and_stream_cursor(backend: Backend) {
    let app = spawn_app(backend).await;
    let before = app.head().await;
    let response = app.post("/funkos", valid_body("Groot")).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert!(
        header(&response, "content-type").starts_with("application/json"),
        "JSON body"
    );
    let location = header(&response, "location");
    let tag = etag(&response);
    let cursor = stream_cursor(&response);
    let created: Value = response.json().await.unwrap();
    let id = created["id"].as_i64().expect("numeric id");
    assert_eq!(location, format!("/funkos/{id}"));
    assert_eq!(tag, "\"1\"");
    assert!(
        cursor.parse::<i64>().unwrap() > before.parse::<i64>().unwrap(),
        "the write's cursor is past the head before it"
    );
    assert_eq!(app.head().await, cursor);

    let response = app.get(&location).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(etag(&response), "\"1\"");
    let got: Value = response.json().await.unwrap();
    assert_eq!(got, created);
    assert_eq!(got["name"], "Groot");
    assert_eq!(got["description"], "a valid Funko");
    assert_eq!(got["price"], 19.99);
    assert_eq!(got["stock"], 3);
    assert_eq!(got["image"], "https://example.com/funko.png");
    assert_eq!(got["category"], "DISNEY");
    assert_eq!(got["isDeleted"], false);
    assert_eq!(got["version"], 1);
    assert!(is_rfc3339_utc(&got["createdAt"]), "{got}");
    assert!(is_rfc3339_utc(&got["updatedAt"]), "{got}");
    let mut keys: Vec<&str> = got
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "category",
            "createdAt",
            "description",
            "id",
            "image",
            "isDeleted",
            "name",
            "price",
            "stock",
            "updatedAt",
            "version"
        ]
    );
}

async fn create_normalises_name_category_and_defaults(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = create(
        &app,
        json!({"name": "  Baby Yoda  ", "price": 10, "stock": 0, "category": "  disney "}),
    )
    .await;
    assert_eq!(created["name"], "Baby Yoda");
    assert_eq!(created["category"], "DISNEY");
    assert_eq!(created["description"], Value::Null);
    assert_eq!(created["image"], PLACEHOLDER);
    assert_eq!(created["price"], 10.0);
    assert_eq!(created["stock"], 0);
    let other = create(
        &app,
        json!({"name": "Hulk", "price": 1, "stock": 1, "category": "SuperHeroes", "description": null, "image": null}),
    )
    .await;
    assert_eq!(other["category"], "SUPERHEROES");
    assert_eq!(other["image"], PLACEHOLDER);
    assert_eq!(fetch(&app, created["id"].as_i64().unwrap()).await, created);
}

async fn get_answers_etag_and_the_cursor_it_saw(backend: Backend) {
    let app = spawn_app(backend).await;
    let first = app.post("/funkos", valid_body("Groot")).await;
    let id = first.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    let second = app.post("/funkos", valid_body("Rocket")).await;
    let write_cursor = stream_cursor(&second);

    let response = app.get(&format!("/funkos/{id}")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(etag(&response), "\"1\"");
    assert_eq!(stream_cursor(&response), write_cursor);

    let response = app.get("/funkos").await;
    assert_eq!(stream_cursor(&response), write_cursor);

    let patched = app
        .patch(&format!("/funkos/{id}"), json!({"stock": 9}))
        .await;
    assert_eq!(patched.status(), StatusCode::OK);
    let patch_cursor = stream_cursor(&patched);
    assert_ne!(patch_cursor, write_cursor);
    let response = app.get(&format!("/funkos/{id}")).await;
    assert_eq!(etag(&response), "\"2\"");
    assert_eq!(stream_cursor(&response), patch_cursor);
    let response = app.get("/funkos?limit=1").await;
    assert_eq!(stream_cursor(&response), patch_cursor);
    // An empty page (past the last one, or nothing matches) still answers the cursor.
    for query in ["page=9", "q=nothing-matches"] {
        let response = app.get(&format!("/funkos?{query}")).await;
        assert_eq!(stream_cursor(&response), patch_cursor, "{query}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["data"], json!([]), "{query}");
    }
}

async fn list_pages_with_meta(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut created = Vec::new();
    for name in ["a1", "a2", "a3", "a4", "a5"] {
        created.push(app.create_funko(name).await["id"].as_i64().unwrap());
    }
    let all = list(&app, "").await;
    assert_eq!(
        all["meta"],
        json!({"page": 1, "limit": 20, "total": 5, "totalPages": 1})
    );
    let mut all_ids = ids(&all);
    all_ids.sort_unstable();
    assert_eq!(all_ids, created);

    let mut seen = Vec::new();
    for (page, len) in [(1, 2), (2, 2), (3, 1), (4, 0)] {
        let body = list(&app, &format!("limit=2&page={page}&sort=id")).await;
        assert_eq!(
            body["meta"],
            json!({"page": page, "limit": 2, "total": 5, "totalPages": 3}),
            "page {page}"
        );
        assert_eq!(ids(&body).len(), len, "page {page}");
        seen.extend(ids(&body));
    }
    assert_eq!(seen, created, "pages in id order, each Funko once");

    let body = list(&app, "limit=100").await;
    assert_eq!(body["meta"]["totalPages"], 1);
    assert_eq!(body["meta"]["limit"], 100);
    let body = list(&app, "limit=1&page=5").await;
    assert_eq!(ids(&body), [created[4]]);
    assert_eq!(body["meta"]["totalPages"], 5);
}

async fn list_sorts_by_every_field_both_ways(backend: Backend) {
    let app = spawn_app(backend).await;
    // Each column's order differs from id order (and price/stock from text order).
    let rows = [
        ("delta", 30.0, 2),
        ("alpha", 9.5, 10),
        ("charlie", 100.25, 1),
        ("bravo", 20.0, 3),
    ];
    let mut created = Vec::new();
    for (name, price, stock) in rows {
        let funko = create(
            &app,
            json!({"name": name, "price": price, "stock": stock, "category": "SERIE"}),
        )
        .await;
        created.push(funko["id"].as_i64().unwrap());
    }
    // Touch them in an order unlike id order, each strictly after the one before (a Funko
    // patched within the same millisecond is patched again), so updatedAt order is known.
    let mut last = String::new();
    for index in [2, 0, 3, 1] {
        for attempt in 0.. {
            assert!(attempt < 10_000, "the clock does not advance");
            let response = app
                .patch(
                    &format!("/funkos/{}", created[index]),
                    json!({"description": format!("touched {attempt}")}),
                )
                .await;
            assert_eq!(response.status(), StatusCode::OK);
            let updated = response.json::<Value>().await.unwrap()["updatedAt"]
                .as_str()
                .unwrap()
                .to_owned();
            if updated > last {
                last = updated;
                break;
            }
        }
    }
    let everything = list(&app, "limit=100").await;
    let funkos = everything["data"].as_array().unwrap().clone();
    assert_eq!(funkos.len(), 4);

    let key = |field: &str, f: &Value| -> (String, f64, i64) {
        let id = f["id"].as_i64().unwrap();
        match field {
            "name" => (f["name"].as_str().unwrap().to_lowercase(), 0.0, id),
            "price" => (String::new(), f["price"].as_f64().unwrap(), id),
            "stock" => (String::new(), f["stock"].as_i64().unwrap() as f64, id),
            "createdAt" | "updatedAt" => (f[field].as_str().unwrap().to_owned(), 0.0, id),
            "id" => (String::new(), 0.0, id),
            _ => unreachable!(),
        }
    };
    let by_updated: Vec<i64> = [2, 0, 3, 1].iter().map(|&i| created[i]).collect();
    assert_eq!(ids(&list(&app, "sort=updatedAt").await), by_updated);
    for field in ["name", "price", "stock", "createdAt", "updatedAt", "id"] {
        let mut expected = funkos.clone();
        expected.sort_by(|a, b| key(field, a).partial_cmp(&key(field, b)).unwrap());
        let expected: Vec<i64> = expected.iter().map(|f| f["id"].as_i64().unwrap()).collect();
        if matches!(field, "name" | "price" | "stock" | "updatedAt") {
            assert_ne!(
                expected, created,
                "{field}: the data must tell orders apart"
            );
        }
        let ascending = list(&app, &format!("sort={field}")).await;
        assert_eq!(ids(&ascending), expected, "sort={field}");
        let descending = list(&app, &format!("sort=-{field}")).await;
        let mut reversed = expected.clone();
        reversed.reverse();
        assert_eq!(ids(&descending), reversed, "sort=-{field}");
        let paged = list(&app, &format!("sort=-{field}&limit=3&page=2")).await;
        assert_eq!(ids(&paged), reversed[3..], "sort=-{field}, page 2");
    }
    // The concrete orders, so a wrong comparison above cannot hide a wrong server.
    let by_price = list(&app, "sort=price").await;
    let prices: Vec<f64> = by_price["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["price"].as_f64().unwrap())
        .collect();
    assert_eq!(prices, [9.5, 20.0, 30.0, 100.25]);
    let by_stock = list(&app, "sort=-stock").await;
    let stocks: Vec<i64> = by_stock["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["stock"].as_i64().unwrap())
        .collect();
    assert_eq!(stocks, [10, 3, 2, 1]);
    let by_name = list(&app, "sort=name").await;
    let names: Vec<&str> = by_name["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alpha", "bravo", "charlie", "delta"]);
}

async fn list_searches_name_and_description_case_insensitively(backend: Backend) {
    let app = spawn_app(backend).await;
    let funko = |name: &str, description: Value| json!({"name": name, "description": description, "price": 5, "stock": 1, "category": "SUPERHEROES"});
    let iron = create(&app, funko("Iron Man", json!("Genius, BILLIONAIRE"))).await["id"]
        .as_i64()
        .unwrap();
    let groot = create(&app, funko("Groot", json!("i am groot"))).await["id"]
        .as_i64()
        .unwrap();
    let thanos = create(&app, funko("Thanos", Value::Null)).await["id"]
        .as_i64()
        .unwrap();

    for (q, expected) in [
        ("iron", vec![iron]),
        ("IRON", vec![iron]),
        ("iRoN%20mAn", vec![iron]),
        ("billionaire", vec![iron]),
        ("Billionaire", vec![iron]),
        ("GROOT", vec![groot]),
        ("i%20am", vec![groot]),
        ("tHaNoS", vec![thanos]),
        ("an", vec![iron, thanos]),
        ("nobody", vec![]),
    ] {
        let body = list(&app, &format!("q={q}&sort=id")).await;
        assert_eq!(ids(&body), expected, "q={q}");
        assert_eq!(body["meta"]["total"], expected.len(), "q={q}");
    }
    let body = list(&app, "q=").await;
    assert_eq!(body["meta"]["total"], 3, "an empty q filters nothing");
}

async fn list_search_treats_percent_and_underscore_literally(backend: Backend) {
    let app = spawn_app(backend).await;
    let funko = |name: &str, description: &str| json!({"name": name, "description": description, "price": 5, "stock": 1, "category": "SERIE"});
    let underscore = create(&app, funko("Spider_Man", "web head")).await["id"]
        .as_i64()
        .unwrap();
    let percent = create(&app, funko("Spider Man", "100% friendly")).await["id"]
        .as_i64()
        .unwrap();
    let plain = create(&app, funko("Venom", "a backslash \\ here")).await["id"]
        .as_i64()
        .unwrap();

    for (q, expected) in [
        ("_", vec![underscore]),
        ("r_m", vec![underscore]),
        ("%25", vec![percent]),
        ("0%25%20f", vec![percent]),
        ("100%25", vec![percent]),
        ("%25%25", vec![]),
        ("%5C", vec![plain]),
        ("spider", vec![underscore, percent]),
    ] {
        let body = list(&app, &format!("q={q}&sort=id")).await;
        assert_eq!(ids(&body), expected, "q={q}");
    }
}

async fn list_filters_by_category_and_price(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut by_price = Vec::new();
    for (name, price, category) in [
        ("p5", 5.0, "DISNEY"),
        ("p10", 10.0, "SUPERHEROES"),
        ("p15", 15.0, "DISNEY"),
        ("p20", 20.0, "SUPERHEROES"),
    ] {
        let f = create(
            &app,
            json!({"name": name, "price": price, "stock": 1, "category": category}),
        )
        .await;
        by_price.push(f["id"].as_i64().unwrap());
    }
    let [p5, p10, p15, p20] = by_price[..] else {
        unreachable!()
    };
    for (query, expected) in [
        ("category=DISNEY", vec![p5, p15]),
        ("category=disney", vec![p5, p15]),
        ("category=SuperHeroes", vec![p10, p20]),
        ("category=OTROS", vec![]),
        ("minPrice=10", vec![p10, p15, p20]),
        ("maxPrice=15", vec![p5, p10, p15]),
        ("minPrice=10&maxPrice=15", vec![p10, p15]),
        ("minPrice=10.01&maxPrice=14.99", vec![]),
        ("minPrice=0&maxPrice=1000000", vec![p5, p10, p15, p20]),
        ("category=disney&minPrice=6", vec![p15]),
        ("category=superheroes&maxPrice=19.99&q=p1", vec![p10]),
    ] {
        let body = list(&app, &format!("{query}&sort=id")).await;
        assert_eq!(ids(&body), expected, "{query}");
        assert_eq!(body["meta"]["total"], expected.len(), "{query}");
    }
}

async fn list_hides_deleted_unless_asked(backend: Backend) {
    let app = spawn_app(backend).await;
    let kept = app.create_funko("Kept").await["id"].as_i64().unwrap();
    let gone = app.create_funko("Gone").await["id"].as_i64().unwrap();
    let response = app.delete(&format!("/funkos/{gone}")).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);

    let body = list(&app, "sort=id").await;
    assert_eq!(ids(&body), [kept]);
    assert_eq!(body["meta"]["total"], 1);
    let body = list(&app, "sort=id&includeDeleted=false").await;
    assert_eq!(ids(&body), [kept]);
    let body = list(&app, "sort=id&includeDeleted=true").await;
    assert_eq!(ids(&body), [kept, gone]);
    assert_eq!(body["meta"]["total"], 2);
    assert_eq!(body["data"][0]["isDeleted"], false);
    assert_eq!(body["data"][1]["isDeleted"], true);
    let body = list(&app, "q=gone").await;
    assert_eq!(ids(&body), Vec::<i64>::new());
}

async fn put_replaces_the_whole_funko(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = create(&app, valid_body("Groot")).await;
    let id = created["id"].as_i64().unwrap();
    let response = app
        .put(
            &format!("/funkos/{id}"),
            json!({"name": " Baby Groot ", "price": 25.5, "stock": 7, "category": "pelicula"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(etag(&response), "\"2\"");
    let cursor = stream_cursor(&response);
    let replaced: Value = response.json().await.unwrap();
    assert_eq!(replaced["id"], id);
    assert_eq!(replaced["name"], "Baby Groot");
    assert_eq!(replaced["description"], Value::Null, "absent: cleared");
    assert_eq!(replaced["image"], PLACEHOLDER, "absent: the placeholder");
    assert_eq!(replaced["price"], 25.5);
    assert_eq!(replaced["stock"], 7);
    assert_eq!(replaced["category"], "PELICULA");
    assert_eq!(replaced["version"], 2);
    assert_eq!(replaced["createdAt"], created["createdAt"]);
    assert!(replaced["updatedAt"].as_str() >= created["updatedAt"].as_str());
    assert!(is_rfc3339_utc(&replaced["updatedAt"]));
    assert_eq!(fetch(&app, id).await, replaced);
    assert_eq!(app.head().await, cursor);
}

async fn put_ignores_read_only_fields_sent_back(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = create(&app, valid_body("Groot")).await;
    let id = created["id"].as_i64().unwrap();
    let mut body = created.clone();
    body["stock"] = json!(42);
    body["id"] = json!(id + 1000);
    body["version"] = json!(99);
    body["createdAt"] = json!("2000-01-01T00:00:00.000Z");
    body["updatedAt"] = json!("2000-01-01T00:00:00.000Z");
    body["isDeleted"] = json!(true);
    let response = app.put(&format!("/funkos/{id}"), body).await;
    assert_eq!(response.status(), StatusCode::OK);
    let replaced: Value = response.json().await.unwrap();
    assert_eq!(replaced["id"], id);
    assert_eq!(replaced["stock"], 42);
    assert_eq!(replaced["version"], 2);
    assert_eq!(replaced["createdAt"], created["createdAt"]);
    assert_ne!(replaced["updatedAt"], "2000-01-01T00:00:00.000Z");
    assert_eq!(replaced["isDeleted"], false);
    assert_eq!(
        app.get(&format!("/funkos/{}", id + 1000)).await.status(),
        StatusCode::NOT_FOUND
    );

    // The same through PATCH and POST.
    let response = app
        .patch(
            &format!("/funkos/{id}"),
            json!({"stock": 43, "id": 7, "version": 1, "isDeleted": true, "createdAt": "x"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let patched: Value = response.json().await.unwrap();
    assert_eq!(patched["stock"], 43);
    assert_eq!(patched["version"], 3);
    assert_eq!(patched["isDeleted"], false);
    assert_eq!(patched["createdAt"], created["createdAt"]);

    let mut copy = patched.clone();
    copy["name"] = json!("Groot copy");
    let copied = create(&app, copy).await;
    assert_ne!(copied["id"], id);
    assert_eq!(copied["version"], 1);
    assert_eq!(copied["isDeleted"], false);
    assert_eq!(copied["stock"], 43);
}

async fn patch_changes_only_the_given_fields(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = create(&app, valid_body("Groot")).await;
    let id = created["id"].as_i64().unwrap();
    let response = app
        .patch(
            &format!("/funkos/{id}"),
            json!({"price": 5.25, "category": "otros"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(etag(&response), "\"2\"");
    let patched: Value = response.json().await.unwrap();
    let mut expected = created.clone();
    expected["price"] = json!(5.25);
    expected["category"] = json!("OTROS");
    expected["version"] = json!(2);
    expected["updatedAt"] = patched["updatedAt"].clone();
    assert_eq!(patched, expected);
    assert_eq!(fetch(&app, id).await, patched);

    // The RFC 7396 media type is accepted too.
    let response = app
        .raw(
            Method::PATCH,
            &format!("/funkos/{id}"),
            Some("application/merge-patch+json"),
            r#"{"name":"  Groot II "}"#,
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let patched: Value = response.json().await.unwrap();
    assert_eq!(patched["name"], "Groot II");
    assert_eq!(patched["price"], 5.25);
    assert_eq!(patched["description"], created["description"]);
    assert_eq!(patched["version"], 3);
}

async fn patch_null_clears_description_and_restores_placeholder(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = create(&app, valid_body("Groot")).await;
    let id = created["id"].as_i64().unwrap();
    assert_ne!(created["image"], PLACEHOLDER);
    let response = app
        .patch(
            &format!("/funkos/{id}"),
            json!({"description": null, "image": null}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let patched: Value = response.json().await.unwrap();
    assert_eq!(patched["description"], Value::Null);
    assert_eq!(patched["image"], PLACEHOLDER);
    assert_eq!(patched["name"], created["name"]);
    assert_eq!(patched["version"], 2);
    assert_eq!(fetch(&app, id).await, patched);

    // A required field cannot be cleared.
    for field in ["name", "price", "stock", "category"] {
        let problem = app
            .assert_rejected(
                app.patch(&format!("/funkos/{id}"), json!({ field: null })),
                422,
            )
            .await;
        assert_eq!(problem_fields(&problem), [field], "{problem}");
    }
}

async fn delete_is_soft_and_hides_the_funko(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = create(&app, valid_body("Groot")).await;
    let id = created["id"].as_i64().unwrap();
    let path = format!("/funkos/{id}");
    let response = app.delete(&path).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let cursor = stream_cursor(&response);
    assert_eq!(response.bytes().await.unwrap().len(), 0);
    assert_eq!(app.head().await, cursor);

    let gone = assert_problem(app.get(&path).await, 404).await;
    assert!(gone["detail"].as_str().unwrap().contains(&id.to_string()));
    assert_problem(app.get(&format!("{path}?includeDeleted=false")).await, 404).await;
    app.assert_rejected(app.put(&path, valid_body("Groot")), 404)
        .await;
    app.assert_rejected(app.patch(&path, json!({"stock": 1})), 404)
        .await;
    app.assert_rejected(app.delete(&path), 404).await;
    app.assert_rejected(app.if_match(Method::DELETE, &path, "*", None), 404)
        .await;

    let response = app.get(&format!("{path}?includeDeleted=true")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let deleted: Value = response.json().await.unwrap();
    assert_eq!(deleted["isDeleted"], true);
    assert_eq!(deleted["version"], 2);
    assert_eq!(deleted["name"], created["name"]);
    assert_eq!(deleted["createdAt"], created["createdAt"]);

    // The name is free again, in any case.
    let again = create(&app, valid_body("GROOT")).await;
    assert_ne!(again["id"], id);
    assert_eq!(again["name"], "GROOT");
    // And the deleted one stays deleted.
    assert_eq!(fetch(&app, id).await, deleted);
}

async fn version_and_etag_follow_every_change(backend: Backend) {
    let app = spawn_app(backend).await;
    let response = app.post("/funkos", valid_body("Groot")).await;
    assert_eq!(etag(&response), "\"1\"");
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();
    let path = format!("/funkos/{id}");
    let mut version = 1;
    for step in 0..3 {
        let response = if step % 2 == 0 {
            app.put(&path, valid_body(&format!("Groot {step}"))).await
        } else {
            app.patch(&path, json!({"stock": step})).await
        };
        assert_eq!(response.status(), StatusCode::OK);
        version += 1;
        assert_eq!(etag(&response), format!("\"{version}\""));
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["version"], version);
        let response = app.get(&path).await;
        assert_eq!(etag(&response), format!("\"{version}\""));
        assert_eq!(response.json::<Value>().await.unwrap()["version"], version);
    }
    let response = app.delete(&path).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(fetch(&app, id).await["version"], version + 1);
}

/// PUT, PATCH and DELETE of `path` with this `If-Match` each answer `status` and change
/// nothing.
async fn assert_conditional_writes_rejected(
    app: &TestApp,
    path: &str,
    if_match: &str,
    status: u16,
) {
    app.assert_rejected(
        app.if_match(Method::PUT, path, if_match, Some(valid_body("Other"))),
        status,
    )
    .await;
    app.assert_rejected(
        app.if_match(Method::PATCH, path, if_match, Some(json!({"stock": 1}))),
        status,
    )
    .await;
    app.assert_rejected(app.if_match(Method::DELETE, path, if_match, None), status)
        .await;
}

async fn stale_if_match_is_412_and_changes_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.create_funko("Groot").await["id"].as_i64().unwrap();
    let path = format!("/funkos/{id}");
    let response = app.patch(&path, json!({"stock": 8})).await;
    assert_eq!(etag(&response), "\"2\"");

    for stale in ["\"1\"", "\"3\"", "\"1\", \"3\"", "W/\"2\""] {
        assert_conditional_writes_rejected(&app, &path, stale, 412).await;
    }
    let current = fetch(&app, id).await;
    assert_eq!(current["version"], 2);
    assert_eq!(current["stock"], 8);
    assert_eq!(current["isDeleted"], false);
}

async fn current_or_star_if_match_succeeds(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.create_funko("Groot").await["id"].as_i64().unwrap();
    let path = format!("/funkos/{id}");

    let response = app
        .if_match(Method::PUT, &path, "\"1\"", Some(valid_body("Groot")))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(etag(&response), "\"2\"");
    let response = app
        .if_match(
            Method::PATCH,
            &path,
            "\"9\", \"2\"",
            Some(json!({"stock": 1})),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(etag(&response), "\"3\"");
    let response = app
        .if_match(Method::PATCH, &path, "*", Some(json!({"stock": 2})))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(etag(&response), "\"4\"");
    let response = app
        .if_match(Method::PUT, &path, "*", Some(valid_body("Groot")))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(etag(&response), "\"5\"");
    let response = app.if_match(Method::DELETE, &path, "\"5\"", None).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);

    let other = app.create_funko("Rocket").await["id"].as_i64().unwrap();
    let response = app
        .if_match(Method::DELETE, &format!("/funkos/{other}"), "*", None)
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
}

async fn malformed_if_match_is_400(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.create_funko("Groot").await["id"].as_i64().unwrap();
    let path = format!("/funkos/{id}");
    for bad in ["1", "\"1", "1\"", "abc", "", "\"1\", 2"] {
        assert_conditional_writes_rejected(&app, &path, bad, 400).await;
    }
    assert_eq!(fetch(&app, id).await["version"], 1);
}

async fn names_are_unique_case_insensitively(backend: Backend) {
    let app = spawn_app(backend).await;
    let groot = app.create_funko("Groot").await["id"].as_i64().unwrap();
    let rocket = app.create_funko("Rocket").await["id"].as_i64().unwrap();

    for name in ["Groot", "GROOT", "groot", "  gRoOt  "] {
        let problem = app
            .assert_rejected(app.post("/funkos", valid_body(name)), 409)
            .await;
        assert!(problem["detail"].is_string());
        app.assert_rejected(app.put(&format!("/funkos/{rocket}"), valid_body(name)), 409)
            .await;
        app.assert_rejected(
            app.patch(&format!("/funkos/{rocket}"), json!({"name": name})),
            409,
        )
        .await;
    }
    // Beyond ASCII too.
    app.create_funko("Élan").await;
    app.assert_rejected(app.post("/funkos", valid_body("éLAN")), 409)
        .await;

    // A Funko may change the case of its own name.
    let response = app
        .patch(&format!("/funkos/{groot}"), json!({"name": "GROOT"}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.json::<Value>().await.unwrap()["name"], "GROOT");
    let response = app
        .put(&format!("/funkos/{groot}"), valid_body("groot"))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(fetch(&app, rocket).await["name"], "Rocket");
}

async fn unknown_or_deleted_category_is_422(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.create_funko("Groot").await["id"].as_i64().unwrap();
    let mut body = valid_body("Other");
    body["category"] = json!("NOPE");
    let problem = app
        .assert_rejected(app.post("/funkos", body.clone()), 422)
        .await;
    assert_eq!(problem_fields(&problem), ["category"]);
    let problem = app
        .assert_rejected(app.put(&format!("/funkos/{id}"), body), 422)
        .await;
    assert_eq!(problem_fields(&problem), ["category"]);
    let problem = app
        .assert_rejected(
            app.patch(&format!("/funkos/{id}"), json!({"category": "nope"})),
            422,
        )
        .await;
    assert_eq!(problem_fields(&problem), ["category"]);

    let response = app.post("/categories", json!({"name": "Anime"})).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let category = response.json::<Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();
    let response = app
        .patch(&format!("/funkos/{id}"), json!({"category": "anime"}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.json::<Value>().await.unwrap()["category"], "Anime");
    let response = app
        .patch(&format!("/funkos/{id}"), json!({"category": "DISNEY"}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let response = app.delete(&format!("/categories/{category}")).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let mut body = valid_body("Other");
    body["category"] = json!("Anime");
    let problem = app.assert_rejected(app.post("/funkos", body), 422).await;
    assert_eq!(problem_fields(&problem), ["category"]);
    let problem = app
        .assert_rejected(
            app.patch(&format!("/funkos/{id}"), json!({"category": "anime"})),
            422,
        )
        .await;
    assert_eq!(problem_fields(&problem), ["category"]);
}

/// The write requests of the API that take a Funko body, against a live Funko `id`.
fn body_paths(id: i64) -> [(Method, String); 3] {
    [
        (Method::POST, "/funkos".to_owned()),
        (Method::PUT, format!("/funkos/{id}")),
        (Method::PATCH, format!("/funkos/{id}")),
    ]
}

async fn malformed_or_empty_json_is_400(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.create_funko("Groot").await["id"].as_i64().unwrap();
    for (method, path) in body_paths(id) {
        for body in [
            r#"{"name": "Groot""#,
            r#"{name: "Groot"}"#,
            "not json",
            r#"{"name": "x",}"#,
            r#"{"price": 1} trailing"#,
        ] {
            let problem = app
                .assert_rejected(
                    app.raw(method.clone(), &path, Some("application/json"), body),
                    400,
                )
                .await;
            assert!(
                problem["detail"].as_str().unwrap().contains("JSON"),
                "{problem}"
            );
        }
        for body in ["", "   \n"] {
            app.assert_rejected(
                app.raw(method.clone(), &path, Some("application/json"), body),
                400,
            )
            .await;
        }
    }
}

async fn wrong_or_missing_content_type_is_415(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.create_funko("Groot").await["id"].as_i64().unwrap();
    let body = valid_body("Rocket").to_string();
    for (method, path) in body_paths(id) {
        for content_type in [
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            Some("application/xml"),
            None,
        ] {
            app.assert_rejected(
                app.raw(method.clone(), &path, content_type, body.clone()),
                415,
            )
            .await;
        }
        // A charset parameter is fine.
        let mut accepted = valid_body(&format!("{method} charset"));
        if method == Method::PATCH {
            accepted = json!({"stock": 77});
        }
        let response = app
            .raw(
                method.clone(),
                &path,
                Some("application/json; charset=utf-8"),
                accepted.to_string(),
            )
            .await;
        assert!(response.status().is_success(), "{method} {path}");
    }
}

/// A valid Funko whose JSON is `bytes` long or more (the image URL takes the bulk).
fn big_valid_body(name: &str, bytes: usize) -> Value {
    let mut body = valid_body(name);
    let url = format!("https://example.com/{}.png", "a".repeat(bytes.min(2000)));
    body["image"] = json!(url);
    body
}

async fn body_over_the_limit_is_413(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.max_body_bytes = 1024).await;
    let id = app.create_funko("Groot").await["id"].as_i64().unwrap();
    let big = big_valid_body("Big", 1500);
    assert!(big.to_string().len() > 1024);
    for (method, path) in body_paths(id) {
        // With a Content-Length.
        let problem = app
            .assert_rejected(app.request(method.clone(), &path, Some(big.clone())), 413)
            .await;
        assert!(problem["detail"].as_str().unwrap().contains("1024"));
        // Chunked, without one.
        let chunks: Vec<Result<String, std::io::Error>> = big
            .to_string()
            .as_bytes()
            .chunks(100)
            .map(|c| Ok(String::from_utf8(c.to_vec()).unwrap()))
            .collect();
        let stream = futures_util::stream::iter(chunks);
        app.assert_rejected(
            app.raw(
                method.clone(),
                &path,
                Some("application/json"),
                reqwest::Body::wrap_stream(stream),
            ),
            413,
        )
        .await;
    }
    // The rest of an oversized body is never read, so the server closes the connection and
    // must say so, or a client reuses it and its next request fails mid-flight.
    let response = app
        .request(Method::POST, "/funkos", Some(big.clone()))
        .await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(header(&response, "connection"), "close");

    // A body within the limit is fine.
    let small = big_valid_body("Small", 800);
    assert!(small.to_string().len() <= 1024);
    let response = app.post("/funkos", small).await;
    assert_eq!(response.status(), StatusCode::CREATED);

    // The very same big body is valid under the default limit.
    let roomy = spawn_app(backend).await;
    let response = roomy.post("/funkos", big).await;
    assert_eq!(response.status(), StatusCode::CREATED);
}

async fn default_body_limit_is_1_mib(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut body = valid_body("Huge");
    body["description"] = json!("x".repeat(1024 * 1024));
    app.assert_rejected(app.post("/funkos", body), 413).await;
}

async fn wrong_types_are_422_naming_each_field(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.create_funko("Groot").await["id"].as_i64().unwrap();
    let wrong = json!({
        "name": 5, "description": 7, "price": "9.99", "stock": "5", "image": 3, "category": true
    });
    let all = ["category", "description", "image", "name", "price", "stock"];
    for (method, path) in body_paths(id) {
        let problem = app
            .assert_rejected(app.request(method.clone(), &path, Some(wrong.clone())), 422)
            .await;
        assert_eq!(problem_fields(&problem), all, "{method} {problem}");
        for (field, value) in [
            ("name", json!(["Groot"])),
            ("name", json!({"first": "Groot"})),
            ("name", json!(true)),
            ("description", json!(1.5)),
            ("price", json!(true)),
            ("price", json!("1")),
            ("stock", json!("1")),
            ("stock", json!(false)),
            ("image", json!({})),
            ("category", json!(1)),
        ] {
            let mut body = if method == Method::PATCH {
                json!({})
            } else {
                valid_body("Rocket")
            };
            body[field] = value.clone();
            let problem = app
                .assert_rejected(app.request(method.clone(), &path, Some(body)), 422)
                .await;
            assert_eq!(
                problem_fields(&problem),
                [field],
                "{method} {field}={value}"
            );
        }
    }
}

async fn missing_required_fields_are_422(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.create_funko("Groot").await["id"].as_i64().unwrap();
    for (method, path) in [
        (Method::POST, "/funkos".to_owned()),
        (Method::PUT, format!("/funkos/{id}")),
    ] {
        let problem = app
            .assert_rejected(app.request(method.clone(), &path, Some(json!({}))), 422)
            .await;
        assert_eq!(
            problem_fields(&problem),
            ["category", "name", "price", "stock"]
        );
        for field in ["name", "price", "stock", "category"] {
            let mut body = valid_body("Rocket");
            body.as_object_mut().unwrap().remove(field);
            let problem = app
                .assert_rejected(app.request(method.clone(), &path, Some(body)), 422)
                .await;
            assert_eq!(
                problem_fields(&problem),
                [field],
                "{method} without {field}"
            );
        }
    }
    // Not an object at all.
    for (method, path) in body_paths(id) {
        for body in [json!([1, 2]), json!("Groot"), json!(7), Value::Null] {
            app.assert_rejected(app.request(method.clone(), &path, Some(body)), 422)
                .await;
        }
    }
}

async fn rule_violations_are_422(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.create_funko("Groot").await["id"].as_i64().unwrap();
    let cases = [
        ("name", json!("")),
        ("name", json!("   \t ")),
        ("name", json!("x".repeat(101))),
        ("name", json!(format!("  {}  ", "é".repeat(101)))),
        ("description", json!("x".repeat(501))),
        ("price", json!(-0.01)),
        ("price", json!(-1)),
        ("price", json!(1_000_000.01)),
        ("price", json!(2_000_000)),
        ("price", json!(1.234)),
        ("price", json!(0.001)),
        ("stock", json!(-1)),
        ("stock", json!(1_000_001)),
        ("stock", json!(1.5)),
        ("stock", json!(u64::MAX)),
        ("image", json!("ftp://example.com/a.png")),
        ("image", json!("/etc/passwd")),
        ("image", json!("not a url")),
        ("image", json!("javascript:alert(1)")),
        ("image", json!("/storage/../secret.png")),
        ("image", json!("/storage/")),
        ("image", json!("")),
        ("category", json!("NOPE")),
        ("category", json!("")),
    ];
    for (method, path) in body_paths(id) {
        for (field, value) in &cases {
            let mut body = if method == Method::PATCH {
                json!({})
            } else {
                valid_body("Rocket")
            };
            body[*field] = value.clone();
            let problem = app
                .assert_rejected(app.request(method.clone(), &path, Some(body)), 422)
                .await;
            assert_eq!(
                problem_fields(&problem),
                [*field],
                "{method} {field}={value}: {problem}"
            );
        }
    }
    // Several at once are all listed.
    let problem = app
        .assert_rejected(
            app.post(
                "/funkos",
                json!({"name": "", "description": "x".repeat(501), "price": -1, "stock": -1,
                       "image": "ftp://x", "category": "NOPE"}),
            ),
            422,
        )
        .await;
    assert_eq!(
        problem_fields(&problem),
        ["description", "image", "name", "price", "stock"],
        "field rules come before the category lookup"
    );
}

async fn boundary_values_are_accepted(backend: Backend) {
    let app = spawn_app(backend).await;
    let name = format!("  {}  ", "n".repeat(100));
    let created = create(
        &app,
        json!({"name": name, "description": "d".repeat(500), "price": 0, "stock": 0,
               "image": "http://example.com/a.png", "category": "OTROS"}),
    )
    .await;
    assert_eq!(created["name"], "n".repeat(100));
    assert_eq!(created["description"], "d".repeat(500));
    assert_eq!(created["price"], 0.0);
    assert_eq!(created["stock"], 0);
    assert_eq!(created["image"], "http://example.com/a.png");
    let id = created["id"].as_i64().unwrap();
    for (field, value) in [
        ("price", json!(1_000_000)),
        ("price", json!(999_999.99)),
        ("price", json!(0.1)),
        ("price", json!(12.3)),
        ("stock", json!(1_000_000)),
        ("name", json!("é".repeat(100))),
        ("description", json!("ñ".repeat(500))),
        ("description", json!("")),
        ("image", json!("https://cdn.example.com/x/y.webp?size=2")),
        ("image", json!("/storage/abc-1_2.png")),
    ] {
        let response = app
            .patch(&format!("/funkos/{id}"), json!({ field: value }))
            .await;
        assert_eq!(response.status(), StatusCode::OK, "{field}={value}");
        let patched: Value = response.json().await.unwrap();
        // Numbers compare by value (1000000 and 1000000.0 are the same price).
        let same = |got: &Value| match (got.as_f64(), value.as_f64()) {
            (Some(got), Some(want)) => got == want,
            _ => *got == value,
        };
        assert!(same(&patched[field]), "{field}: {}", patched[field]);
        let stored = fetch(&app, id).await;
        assert!(same(&stored[field]), "{field} stored: {}", stored[field]);
    }
}

async fn unknown_fields_are_422(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.create_funko("Groot").await["id"].as_i64().unwrap();
    for (method, path) in body_paths(id) {
        let mut body = if method == Method::PATCH {
            json!({"stock": 1})
        } else {
            valid_body("Rocket")
        };
        body["colour"] = json!("green");
        body["Name"] = json!("case matters");
        let problem = app
            .assert_rejected(app.request(method.clone(), &path, Some(body)), 422)
            .await;
        assert_eq!(problem_fields(&problem), ["Name", "colour"]);
        let messages: Vec<&str> = problem["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["message"].as_str().unwrap())
            .collect();
        assert!(
            messages.iter().all(|m| m.contains("unknown field")),
            "{problem}"
        );
    }
}

async fn non_numeric_id_is_400(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_funko("Groot").await;
    for id in ["abc", "1.5", "1e3", "99999999999999999999", "%20"] {
        let path = format!("/funkos/{id}");
        let problem = app.assert_rejected(app.get(&path), 400).await;
        assert_eq!(problem_fields(&problem), ["id"], "{problem}");
        app.assert_rejected(app.put(&path, valid_body("Rocket")), 400)
            .await;
        app.assert_rejected(app.patch(&path, json!({"stock": 1})), 400)
            .await;
        app.assert_rejected(app.delete(&path), 400).await;
    }
}

async fn unknown_id_is_404(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.create_funko("Groot").await["id"].as_i64().unwrap();
    for unknown in [id + 1, 0, -1, i64::MAX] {
        let path = format!("/funkos/{unknown}");
        app.assert_rejected(app.get(&path), 404).await;
        app.assert_rejected(app.get(&format!("{path}?includeDeleted=true")), 404)
            .await;
        app.assert_rejected(app.put(&path, valid_body("Rocket")), 404)
            .await;
        app.assert_rejected(app.patch(&path, json!({"stock": 1})), 404)
            .await;
        app.assert_rejected(app.delete(&path), 404).await;
        app.assert_rejected(app.if_match(Method::DELETE, &path, "\"1\"", None), 404)
            .await;
    }
}

async fn bad_list_query_is_400(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_funko("Groot").await;
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=-1", "limit"),
        ("limit=abc", "limit"),
        ("limit=2.5", "limit"),
        ("page=0", "page"),
        ("page=-3", "page"),
        ("page=x", "page"),
        ("sort=colour", "sort"),
        ("sort=--name", "sort"),
        ("minPrice=abc", "minPrice"),
        ("minPrice=-1", "minPrice"),
        ("maxPrice=1.234", "maxPrice"),
        ("maxPrice=1000001", "maxPrice"),
        ("includeDeleted=maybe", "includeDeleted"),
    ] {
        let problem = app
            .assert_rejected(app.get(&format!("/funkos?{query}")), 400)
            .await;
        assert_eq!(problem_fields(&problem), [field], "{query}: {problem}");
    }
    let problem = app
        .assert_rejected(app.get("/funkos?limit=0&page=0&sort=colour"), 400)
        .await;
    assert_eq!(problem_fields(&problem), ["limit", "page", "sort"]);
}

/// Waits until `stream` has delivered the event with this cursor.
async fn settled(stream: &mut SseClient, cursor: &str) {
    while stream.next_event().await["id"] != cursor {}
}

/// `GET /funkos/{id}` may be answered from the cache the change stream keeps (SQLite): a read
/// that starts after a write has answered sees it, and sees a category rename (which has no
/// Funko event) at once.
/// `GET /funkos`'s Funkos, checking that the page saw at least `cursor`.
async fn listed(app: &TestApp, cursor: &str) -> Vec<Value> {
    let response = app.get("/funkos").await;
    assert_eq!(response.status(), StatusCode::OK);
    let seen: i64 = stream_cursor(&response).parse().unwrap();
    assert!(seen >= cursor.parse().unwrap(), "{seen} is before {cursor}");
    let body: Value = response.json().await.unwrap();
    body["data"].as_array().unwrap().clone()
}

async fn a_read_sees_every_write_that_answered_before_it(backend: Backend) {
    let app = spawn_app(backend).await;
    // Reads are checked twice: right after the write answers (the stream may not have the
    // event yet, so the database answers) and once the stream has delivered it (so the
    // stream's cache may answer).
    let mut stream = app.sse("/events", None).await;
    let response = app.post("/funkos", valid_body("Cached")).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let cursor = stream_cursor(&response);
    let funko: Value = response.json().await.unwrap();
    let id = funko["id"].as_i64().unwrap();
    settled(&mut stream, &cursor).await;
    assert_eq!(fetch(&app, id).await, funko);
    for stock in 1..=20 {
        let response = app
            .patch(&format!("/funkos/{id}"), json!({ "stock": stock }))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        let cursor = stream_cursor(&response);
        let written: Value = response.json().await.unwrap();
        for settle in [true, false] {
            let read = app.get(&format!("/funkos/{id}")).await;
            assert_eq!(read.status(), StatusCode::OK);
            assert_eq!(etag(&read), format!("\"{}\"", written["version"]));
            let read_cursor: i64 = stream_cursor(&read).parse().unwrap();
            assert!(read_cursor >= cursor.parse().unwrap());
            assert_eq!(read.json::<Value>().await.unwrap(), written);
            // The same list query every time, so the page cache may answer it.
            assert_eq!(listed(&app, &cursor).await, std::slice::from_ref(&written));
            if settle {
                settled(&mut stream, &cursor).await;
            }
        }
    }

    let categories: Value = app.get("/categories").await.json().await.unwrap();
    let disney = categories
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "DISNEY")
        .expect("seeded category")["id"]
        .as_i64()
        .unwrap();
    let response = app
        .put(&format!("/categories/{disney}"), json!({ "name": "Pixar" }))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let rename_cursor = stream_cursor(&response);
    assert_eq!(fetch(&app, id).await["category"], "Pixar");
    assert_eq!(listed(&app, &rename_cursor).await[0]["category"], "Pixar");
    settled(&mut stream, &rename_cursor).await;
    assert_eq!(fetch(&app, id).await["category"], "Pixar");

    let response = app.delete(&format!("/funkos/{id}")).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    settled(&mut stream, &stream_cursor(&response)).await;
    assert_problem(app.get(&format!("/funkos/{id}")).await, 404).await;
    assert!(listed(&app, &stream_cursor(&response)).await.is_empty());
    let deleted = fetch(&app, id).await;
    assert_eq!(deleted["isDeleted"], true);
    drop(stream);

    // A new process starts with an empty cache: the database answers, the same.
    let app = app.restart().await;
    assert_eq!(fetch(&app, id).await, deleted);
    assert_eq!(fetch(&app, id).await, deleted);
    assert_problem(app.get(&format!("/funkos/{id}")).await, 404).await;
}

/// Concurrent writers, each reading its Funko back after every write: no read ever sees a
/// version older than the write that answered before it (whether the stream's cache or the
/// database answers).
async fn reads_never_go_back_under_concurrent_writes(backend: Backend) {
    let app = std::sync::Arc::new(spawn_app(backend).await);
    let mut writers = Vec::new();
    for w in 0..4 {
        let app = app.clone();
        writers.push(tokio::spawn(async move {
            let id = create(&app, valid_body(&format!("Racer {w}"))).await["id"]
                .as_i64()
                .unwrap();
            for stock in 1..=25 {
                let response = app
                    .patch(&format!("/funkos/{id}"), json!({ "stock": stock }))
                    .await;
                assert_eq!(response.status(), StatusCode::OK);
                let version = response.json::<Value>().await.unwrap()["version"]
                    .as_i64()
                    .unwrap();
                let read: Value = app
                    .get(&format!("/funkos/{id}"))
                    .await
                    .json()
                    .await
                    .unwrap();
                assert!(read["version"].as_i64().unwrap() >= version, "{read}");
                assert!(read["stock"].as_i64().unwrap() >= stock, "{read}");
            }
        }));
    }
    for writer in writers {
        writer.await.expect("writer");
    }
}

crate::backend_tests!(
    a_read_sees_every_write_that_answered_before_it,
    reads_never_go_back_under_concurrent_writes,
    create_answers_201_with_location_etag_and_stream_cursor,
    create_normalises_name_category_and_defaults,
    get_answers_etag_and_the_cursor_it_saw,
    list_pages_with_meta,
    list_sorts_by_every_field_both_ways,
    list_searches_name_and_description_case_insensitively,
    list_search_treats_percent_and_underscore_literally,
    list_filters_by_category_and_price,
    list_hides_deleted_unless_asked,
    put_replaces_the_whole_funko,
    put_ignores_read_only_fields_sent_back,
    patch_changes_only_the_given_fields,
    patch_null_clears_description_and_restores_placeholder,
    delete_is_soft_and_hides_the_funko,
    version_and_etag_follow_every_change,
    stale_if_match_is_412_and_changes_nothing,
    current_or_star_if_match_succeeds,
    malformed_if_match_is_400,
    names_are_unique_case_insensitively,
    unknown_or_deleted_category_is_422,
    malformed_or_empty_json_is_400,
    wrong_or_missing_content_type_is_415,
    body_over_the_limit_is_413,
    default_body_limit_is_1_mib,
    wrong_types_are_422_naming_each_field,
    missing_required_fields_are_422,
    rule_violations_are_422,
    boundary_values_are_accepted,
    unknown_fields_are_422,
    non_numeric_id_is_400,
    unknown_id_is_404,
    bad_list_query_is_400,
);
