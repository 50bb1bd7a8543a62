//! The live page at `/` and the browser client library it is built on, `/client.js` (an ES
//! module, with its TypeScript declarations at `/client.d.ts`). Static files built into the
//! binary (no build step), served by hidden operations, so the API (mounted at the root) keeps
//! the whole path space and the page stays out of the spec.

use poem_openapi::{
    ApiResponse, OpenApi,
    registry::{MetaResponses, Registry},
};

/// A file of `static/` with the media type it is served as.
struct Asset {
    body: &'static str,
    content_type: &'static str,
}

const INDEX: Asset = Asset {
    body: include_str!("../../static/index.html"),
    content_type: "text/html; charset=utf-8",
};
const APP_JS: Asset = Asset {
    body: include_str!("../../static/app.js"),
    content_type: "text/javascript; charset=utf-8",
};
const APP_CSS: Asset = Asset {
    body: include_str!("../../static/app.css"),
    content_type: "text/css; charset=utf-8",
};
const CLIENT_JS: Asset = Asset {
    body: include_str!("../../static/client.js"),
    content_type: "text/javascript; charset=utf-8",
};
const CLIENT_DTS: Asset = Asset {
    body: include_str!("../../static/client.d.ts"),
    content_type: "application/typescript; charset=utf-8",
};

/// An asset as a response: its own media type, revalidated on every load, so a page never
/// runs a stale library against a newer server.
struct AssetResponse(&'static Asset);

impl poem::IntoResponse for AssetResponse {
    fn into_response(self) -> poem::Response {
        poem::Response::builder()
            .content_type(self.0.content_type)
            .header("Cache-Control", "no-cache")
            .body(self.0.body)
    }
}

/// Hidden operations: nothing to document.
impl ApiResponse for AssetResponse {
    fn meta() -> MetaResponses {
        MetaResponses { responses: vec![] }
    }

    fn register(_registry: &mut Registry) {}
}

pub(crate) struct PageApi;

#[OpenApi]
impl PageApi {
    #[oai(path = "/", method = "get", hidden)]
    async fn index(&self) -> AssetResponse {
        AssetResponse(&INDEX)
    }

    #[oai(path = "/app.js", method = "get", hidden)]
    async fn app_js(&self) -> AssetResponse {
        AssetResponse(&APP_JS)
    }

    #[oai(path = "/app.css", method = "get", hidden)]
    async fn app_css(&self) -> AssetResponse {
        AssetResponse(&APP_CSS)
    }

    #[oai(path = "/client.js", method = "get", hidden)]
    async fn client_js(&self) -> AssetResponse {
        AssetResponse(&CLIENT_JS)
    }

    #[oai(path = "/client.d.ts", method = "get", hidden)]
    async fn client_dts(&self) -> AssetResponse {
        AssetResponse(&CLIENT_DTS)
    }
}
