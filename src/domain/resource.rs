//! The resources as clients see them: the JSON of `GET`, of write answers and of event `data`.

use poem_openapi::Object;

/// A Funko as `GET /funkos/{id}` returns it.
#[derive(Clone, Debug, PartialEq, Object, serde::Deserialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct Funko {
    pub id: i64,
    pub name: String,
    #[oai(nullable)]
    pub description: Option<String>,
    /// Price with at most 2 decimals, 0..=1,000,000.
    pub price: f64,
    pub stock: i64,
    /// Absolute http(s) URL, or a path under `/storage/` on this server.
    pub image: String,
    /// Canonical name of the Funko's category.
    pub category: String,
    /// RFC 3339 UTC, millisecond precision.
    pub created_at: String,
    pub updated_at: String,
    pub is_deleted: bool,
    /// Starts at 1, +1 on every change; the `ETag` is this number in quotes.
    pub version: i64,
}

/// A category as `GET /categories/{id}` returns it.
#[derive(Clone, Debug, PartialEq, Object, serde::Deserialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct Category {
    pub id: i64,
    pub name: String,
    pub created_at: String,
    pub updated_at: String,
    pub is_deleted: bool,
}

/// Paging facts of a list answer.
#[derive(Clone, Debug, PartialEq, Object, serde::Deserialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct PageMeta {
    pub page: i64,
    pub limit: i64,
    pub total: i64,
    pub total_pages: i64,
}

/// One page of Funkos.
#[derive(Clone, Debug, PartialEq, Object, serde::Deserialize)]
pub struct FunkoPage {
    pub data: Vec<Funko>,
    pub meta: PageMeta,
}

/// The current timestamp as the API writes it: RFC 3339, UTC, milliseconds.
pub(crate) fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
