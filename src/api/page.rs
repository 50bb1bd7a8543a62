//! The live page at `/`: static HTML, CSS and JS built into the binary (no build step).

use poem::{
    IntoResponse, Response, handler,
    http::StatusCode,
    web::{Html, Path},
};

const INDEX: &str = include_str!("../../static/index.html");
const SCRIPT: &str = include_str!("../../static/app.js");
const STYLE: &str = include_str!("../../static/app.css");

#[handler]
pub fn index() -> Html<&'static str> {
    Html(INDEX)
}

#[handler]
pub fn asset(Path(file): Path<String>) -> Response {
    let (body, content_type) = match file.as_str() {
        "app.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "app.css" => (STYLE, "text/css; charset=utf-8"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    Response::builder()
        .content_type(content_type)
        .header("Cache-Control", "no-cache")
        .body(body)
}
