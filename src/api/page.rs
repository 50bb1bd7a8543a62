//! The live page at `/`: static HTML, CSS and JS built into the binary (no build step),
//! served as one document. A hidden operation serves it, so the API (mounted at the root)
//! keeps the whole path space and the page stays out of the spec.

use std::sync::LazyLock;

use poem_openapi::{OpenApi, payload::Html};

const INDEX: &str = include_str!("../../static/index.html");
const SCRIPT: &str = include_str!("../../static/app.js");
const STYLE: &str = include_str!("../../static/app.css");

/// The page with its stylesheet and script inlined.
static PAGE: LazyLock<String> = LazyLock::new(|| {
    INDEX
        .replace(
            r#"<link rel="stylesheet" href="app.css">"#,
            &format!("<style>\n{STYLE}</style>"),
        )
        .replace(
            r#"<script src="app.js"></script>"#,
            &format!("<script>\n{SCRIPT}</script>"),
        )
});

pub struct PageApi;

#[OpenApi]
impl PageApi {
    #[oai(path = "/", method = "get", hidden)]
    async fn index(&self) -> Html<&'static str> {
        Html(PAGE.as_str())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn page_inlines_its_assets() {
        assert!(super::PAGE.contains("function switchTo"));
        assert!(super::PAGE.contains("--accent"));
        assert!(!super::PAGE.contains("app.js"));
    }
}
