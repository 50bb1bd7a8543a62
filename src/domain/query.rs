//! The query of `GET /funkos`: paging, sorting, filtering, search.

use super::{FieldErrors, funko::price_to_cents};

pub(crate) const DEFAULT_LIMIT: i64 = 20;
pub(crate) const MAX_LIMIT: i64 = 100;

/// A sortable column, by its API name; the mapping to SQL lives in `db/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum SortField {
    Name,
    Price,
    Stock,
    CreatedAt,
    UpdatedAt,
    Id,
}

/// Equal queries answer equal pages (the page cache's key).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct FunkoListQuery {
    pub page: i64,
    pub limit: i64,
    pub sort: SortField,
    pub descending: bool,
    /// Lower-cased substring of name or description.
    pub q: Option<String>,
    pub category: Option<String>,
    pub min_price_cents: Option<i64>,
    pub max_price_cents: Option<i64>,
    pub include_deleted: bool,
}

/// The raw query parameters, as typed by the transport.
#[derive(Clone, Debug, Default)]
pub(crate) struct RawListQuery {
    pub page: Option<i64>,
    pub limit: Option<i64>,
    pub sort: Option<String>,
    pub q: Option<String>,
    pub category: Option<String>,
    pub min_price: Option<f64>,
    pub max_price: Option<f64>,
    pub include_deleted: Option<bool>,
}

impl FunkoListQuery {
    pub(crate) fn parse(raw: RawListQuery) -> Result<Self, FieldErrors> {
        let mut errors = FieldErrors::default();
        let page = raw.page.unwrap_or(1);
        if !(1..=1_000_000_000).contains(&page) {
            errors.add("page", "must be between 1 and 1000000000");
        }
        let limit = raw.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            errors.add("limit", format!("must be between 1 and {MAX_LIMIT}"));
        }
        let (sort, descending) = match raw.sort.as_deref().map(str::trim) {
            None | Some("") => (SortField::Id, false),
            Some(spec) => {
                let (descending, name) = match spec.strip_prefix('-') {
                    Some(name) => (true, name),
                    None => (false, spec.strip_prefix('+').unwrap_or(spec)),
                };
                let field = match name {
                    "name" => Some(SortField::Name),
                    "price" => Some(SortField::Price),
                    "stock" => Some(SortField::Stock),
                    "createdAt" => Some(SortField::CreatedAt),
                    "updatedAt" => Some(SortField::UpdatedAt),
                    "id" => Some(SortField::Id),
                    _ => None,
                };
                match field {
                    Some(field) => (field, descending),
                    None => {
                        errors.add(
                            "sort",
                            "must be one of name, price, stock, createdAt, updatedAt, id, optionally prefixed by -",
                        );
                        (SortField::Id, false)
                    }
                }
            }
        };
        let mut price = |field: &str, value: Option<f64>| {
            value.and_then(|p| match price_to_cents(p) {
                Ok(cents) => Some(cents),
                Err(message) => {
                    errors.add(field, message);
                    None
                }
            })
        };
        let min_price_cents = price("minPrice", raw.min_price);
        let max_price_cents = price("maxPrice", raw.max_price);
        // Counted as sent: lower-casing may lengthen a string ('İ' becomes two characters).
        if raw
            .q
            .as_ref()
            .is_some_and(|q| q.trim().chars().count() > 100)
        {
            errors.add("q", "must be at most 100 characters");
        }
        for (field, value) in [
            ("q", &raw.q),
            ("category", &raw.category),
            ("sort", &raw.sort),
        ] {
            if value.as_ref().is_some_and(|v| v.contains('\0')) {
                errors.add(field, "must not contain NUL characters");
            }
        }
        let q = raw
            .q
            .map(|q| q.trim().to_lowercase())
            .filter(|q| !q.is_empty());
        let category = raw
            .category
            .map(|c| c.trim().to_owned())
            .filter(|c| !c.is_empty());
        errors.into_result(|| Self {
            page,
            limit,
            sort,
            descending,
            q,
            category,
            min_price_cents,
            max_price_cents,
            include_deleted: raw.include_deleted.unwrap_or(false),
        })
    }

    pub(crate) fn offset(&self) -> i64 {
        (self.page - 1) * self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let q = FunkoListQuery::parse(RawListQuery::default()).unwrap();
        assert_eq!(
            (q.page, q.limit, q.sort, q.descending),
            (1, 20, SortField::Id, false)
        );
        assert_eq!(q.offset(), 0);
    }

    #[test]
    fn sort_spec() {
        let raw = RawListQuery {
            sort: Some("-price".into()),
            page: Some(3),
            limit: Some(10),
            ..Default::default()
        };
        let q = FunkoListQuery::parse(raw).unwrap();
        assert_eq!(
            (q.sort, q.descending, q.offset()),
            (SortField::Price, true, 20)
        );
    }

    #[test]
    fn rejects_out_of_range_and_unknown() {
        let raw = RawListQuery {
            page: Some(0),
            limit: Some(101),
            sort: Some("colour".into()),
            min_price: Some(-1.0),
            ..Default::default()
        };
        let errors = FunkoListQuery::parse(raw).unwrap_err();
        let fields: Vec<_> = errors.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["page", "limit", "sort", "minPrice"]);
    }

    #[test]
    fn q_is_limited_as_sent_not_as_lower_cased() {
        let query = |q: String| {
            FunkoListQuery::parse(RawListQuery {
                q: Some(q),
                ..Default::default()
            })
        };
        // 'İ' lower-cases to two characters; 100 of them are still 100 characters.
        assert!(query("İ".repeat(100)).is_ok());
        assert!(query(format!(" {} ", "a".repeat(100))).is_ok());
        assert!(query("a".repeat(101)).is_err());
    }
}
