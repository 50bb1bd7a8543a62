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

/// What a client writes for a Funko (POST, PUT; PATCH sends any subset as a JSON merge patch).
/// Read-only fields of [`Funko`] are accepted and ignored; any other field is rejected.
#[derive(Clone, Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct FunkoInput {
    /// Trimmed; 1..=100 characters; unique among live Funkos, case-insensitively.
    #[oai(validator(min_length = 1, max_length = 100))]
    pub name: String,
    /// At most 500 characters.
    #[oai(validator(max_length = 500), nullable)]
    pub description: Option<String>,
    /// 0..=1,000,000 with at most 2 decimals.
    #[oai(validator(minimum(value = "0"), maximum(value = "1000000"), multiple_of = "0.01"))]
    pub price: f64,
    /// 0..=1,000,000.
    #[oai(validator(minimum(value = "0"), maximum(value = "1000000")))]
    pub stock: i64,
    /// Absolute http(s) URL or a `/storage/` path; a placeholder when absent or null.
    #[oai(validator(max_length = 2048), nullable)]
    pub image: Option<String>,
    /// Name of a live category (any case).
    #[oai(validator(min_length = 1))]
    pub category: String,
}

/// A JSON merge patch (RFC 7396) of a Funko: any subset of [`FunkoInput`]'s fields.
#[derive(Clone, Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct FunkoPatch {
    #[oai(validator(min_length = 1, max_length = 100))]
    pub name: Option<String>,
    /// `null` clears it.
    #[oai(validator(max_length = 500), nullable)]
    pub description: Option<String>,
    #[oai(validator(minimum(value = "0"), maximum(value = "1000000"), multiple_of = "0.01"))]
    pub price: Option<f64>,
    #[oai(validator(minimum(value = "0"), maximum(value = "1000000")))]
    pub stock: Option<i64>,
    /// `null` restores the placeholder.
    #[oai(validator(max_length = 2048), nullable)]
    pub image: Option<String>,
    #[oai(validator(min_length = 1))]
    pub category: Option<String>,
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

/// What a client writes for a category.
#[derive(Clone, Debug, Object)]
pub struct CategoryInput {
    /// Trimmed; 3..=50 characters; unique among live categories, case-insensitively.
    #[oai(validator(min_length = 3, max_length = 50))]
    pub name: String,
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
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
