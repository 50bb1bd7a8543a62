//! Views: a stream subscription with the list filters of `GET /funkos` (`category`, `q`,
//! `minPrice`, `maxPrice`). Each Funko event is decided by whether its Funko matched the
//! filters before the change and whether it matches after: `enter`, `update` or `leave`, or
//! not delivered. "Before" is what the log records beside each Funko UPDATE and DELETE
//! ([`ViewFields`]), so a replay decides exactly as live delivery did.

use serde::{Deserialize, Serialize};

use super::{
    FieldErrors,
    funko::price_to_cents,
    name_key,
    query::{FunkoListQuery, RawListQuery},
    resource::Funko,
};

/// What a Funko event says to a view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ViewChange {
    /// It matches now and did not before: add it.
    Enter,
    /// It matched before and still does: replace it.
    Update,
    /// It matched before and does not now: remove it.
    Leave,
}

impl ViewChange {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Enter => "enter",
            Self::Update => "update",
            Self::Leave => "leave",
        }
    }

    /// From whether the Funko matched before the change and after it.
    pub(crate) fn of(before: bool, after: bool) -> Option<Self> {
        match (before, after) {
            (false, true) => Some(Self::Enter),
            (true, true) => Some(Self::Update),
            (true, false) => Some(Self::Leave),
            (false, false) => None,
        }
    }
}

/// The fields of a Funko the list filters read, as the log records them beside an UPDATE or
/// DELETE (the Funko before the change): `{"name","description","price","category","isDeleted"}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ViewFields {
    pub name: String,
    pub description: Option<String>,
    pub price: f64,
    pub category: String,
    pub is_deleted: bool,
}

impl ViewFields {
    pub(crate) fn of(funko: &Funko) -> Self {
        Self {
            name: funko.name.clone(),
            description: funko.description.clone(),
            price: funko.price,
            category: funko.category.clone(),
            is_deleted: funko.is_deleted,
        }
    }

    /// As the log records it.
    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string(self).expect("view fields serialize")
    }
}

/// [`ViewFields`] ready to be matched: lower-cased as the list's SQL compares them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ViewKeys {
    name: String,
    description: Option<String>,
    price_cents: i64,
    category: String,
    is_deleted: bool,
}

impl From<&ViewFields> for ViewKeys {
    fn from(fields: &ViewFields) -> Self {
        Self {
            name: name_key(&fields.name),
            description: fields.description.as_deref().map(name_key),
            price_cents: price_to_cents(fields.price).unwrap_or(i64::MIN),
            category: name_key(&fields.category),
            is_deleted: fields.is_deleted,
        }
    }
}

/// A view's filters, checked by `GET /funkos`'s rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct View {
    /// Lower-cased, trimmed, non-empty.
    q: Option<String>,
    /// The category's key.
    category: Option<String>,
    min_price_cents: Option<i64>,
    max_price_cents: Option<i64>,
}

impl View {
    /// The view the four filters ask for; `None` when none is set. The errors are those
    /// `GET /funkos` gives for the same values.
    pub(crate) fn parse(
        category: Option<String>,
        q: Option<String>,
        min_price: Option<f64>,
        max_price: Option<f64>,
    ) -> Result<Option<Self>, FieldErrors> {
        let query = FunkoListQuery::parse(RawListQuery {
            category,
            q,
            min_price,
            max_price,
            ..RawListQuery::default()
        })?;
        let view = Self {
            q: query.q,
            category: query.category.as_deref().map(name_key),
            min_price_cents: query.min_price_cents,
            max_price_cents: query.max_price_cents,
        };
        Ok((view != Self::default()).then_some(view))
    }

    /// The list query of every live Funko in `view` (all of them without one), in id order
    /// and on one page: what a snapshot of the view reads.
    pub(crate) fn everything(view: Option<&Self>) -> FunkoListQuery {
        let view = view.cloned().unwrap_or_default();
        FunkoListQuery {
            page: 1,
            limit: i64::MAX,
            sort: super::query::SortField::Id,
            descending: false,
            q: view.q,
            category: view.category,
            min_price_cents: view.min_price_cents,
            max_price_cents: view.max_price_cents,
            include_deleted: false,
        }
    }

    /// Whether a Funko with these fields is in the list `GET /funkos` returns for the view
    /// (the same comparisons as its SQL).
    pub(crate) fn matches(&self, funko: &ViewKeys) -> bool {
        !funko.is_deleted
            && self.q.as_ref().is_none_or(|q| {
                funko.name.contains(q.as_str())
                    || funko
                        .description
                        .as_ref()
                        .is_some_and(|d| d.contains(q.as_str()))
            })
            && self.category.as_ref().is_none_or(|c| *c == funko.category)
            && self
                .min_price_cents
                .is_none_or(|min| funko.price_cents >= min)
            && self
                .max_price_cents
                .is_none_or(|max| funko.price_cents <= max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(name: &str, description: Option<&str>, price: f64, category: &str) -> ViewKeys {
        ViewKeys::from(&ViewFields {
            name: name.into(),
            description: description.map(Into::into),
            price,
            category: category.into(),
            is_deleted: false,
        })
    }

    #[test]
    fn a_view_matches_as_the_list_filters_do() {
        let view = View::parse(
            Some(" disney ".into()),
            Some("GRO".into()),
            Some(5.0),
            Some(20.0),
        )
        .unwrap()
        .unwrap();
        assert!(view.matches(&keys("Groot", None, 5.0, "DISNEY")));
        assert!(view.matches(&keys("Baby", Some("a grown tree"), 20.0, "Disney")));
        assert!(!view.matches(&keys("Groot", None, 20.01, "DISNEY")));
        assert!(!view.matches(&keys("Groot", None, 4.99, "DISNEY")));
        assert!(!view.matches(&keys("Stitch", None, 10.0, "DISNEY")));
        assert!(!view.matches(&keys("Groot", None, 10.0, "MARVEL")));
        let mut deleted = keys("Groot", None, 10.0, "DISNEY");
        deleted.is_deleted = true;
        assert!(!view.matches(&deleted));
    }

    #[test]
    fn no_filter_is_no_view_and_bad_ones_are_refused_as_the_list_refuses_them() {
        assert_eq!(View::parse(None, Some("  ".into()), None, None), Ok(None));
        assert!(View::parse(None, None, Some(1.001), None).is_err());
        assert!(View::parse(None, Some("x".repeat(101)), None, None).is_err());
        assert!(View::parse(Some("a\0".into()), None, None, None).is_err());
    }

    #[test]
    fn enter_update_leave() {
        assert_eq!(ViewChange::of(false, true), Some(ViewChange::Enter));
        assert_eq!(ViewChange::of(true, true), Some(ViewChange::Update));
        assert_eq!(ViewChange::of(true, false), Some(ViewChange::Leave));
        assert_eq!(ViewChange::of(false, false), None);
    }
}
