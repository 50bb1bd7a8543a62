//! A category as a client may write it: its rules, and the schema that states them.

use serde_json::{Value, json};

use super::{FieldErrors, ObjectReader, Shape, read_only};

pub(crate) const NAME_MIN_CHARS: usize = 3;
pub(crate) const NAME_MAX_CHARS: usize = 50;
/// Categories every new database starts with.
pub(crate) const SEED: &[&str] = &["SERIE", "DISNEY", "SUPERHEROES", "PELICULA", "OTROS"];

pub(crate) const WRITABLE: &[&str] = &["name"];
pub(crate) const READ_ONLY: &[&str] = &["id", "createdAt", "updatedAt", "isDeleted"];

/// A name of 3..=50 characters that trimming leaves as it is: a character that is not white
/// space, 1..=48 characters, and another that is not; none of them NUL. (The server also trims names sent with
/// white space around them; no pattern can count what is left.)
pub(crate) const NAME_PATTERN: &str = r"^[^\s\u0000][^\u0000]{1,48}[^\s\u0000]$";

/// The body of `POST /categories` and `PUT /categories/{id}`.
pub(crate) struct CategoryInput;

impl Shape for CategoryInput {
    const NAME: &'static str = "CategoryInput";

    fn schema() -> Value {
        let mut properties = serde_json::Map::new();
        properties.insert(
            "name".to_owned(),
            json!({
                "type": "string", "pattern": NAME_PATTERN,
                "description": format!(
                    "Trimmed, {NAME_MIN_CHARS} to {NAME_MAX_CHARS} characters; unique among live \
                     categories in any case (a taken one is 409)."
                ),
            }),
        );
        properties.extend(read_only(READ_ONLY));
        json!({
            "title": Self::NAME,
            "type": "object",
            "description": "A category, as a client writes it. Any other field is refused (422); \
                            the fields the server sets are accepted and ignored.",
            "required": ["name"],
            "properties": properties,
            "additionalProperties": false,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CategoryDraft {
    /// Trimmed, 3..=50 chars; unique case-insensitively among live categories.
    pub name: String,
}

impl CategoryDraft {
    pub(crate) fn parse(value: &Value) -> Result<Self, FieldErrors> {
        let mut reader = ObjectReader::new(value, WRITABLE, READ_ONLY)?;
        let name = reader.required_str("name").map(|n| n.trim().to_owned());
        if let Some(name) = &name {
            let chars = name.chars().count();
            if !(NAME_MIN_CHARS..=NAME_MAX_CHARS).contains(&chars) {
                reader.errors.add(
                    "name",
                    format!("must be {NAME_MIN_CHARS} to {NAME_MAX_CHARS} characters"),
                );
            }
        }
        let errors = reader.errors;
        errors.into_result(|| Self {
            name: name.expect("no error means the name was read"),
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Whatever CategoryInput's schema allows, the rules take.
        #[test]
        fn every_documented_name_parses(name in &NAME_PATTERN[1..NAME_PATTERN.len() - 1]) {
            let body = json!({"name": name, "id": 3});
            prop_assert!(CategoryDraft::parse(&body).is_ok(), "{body}");
        }
    }

    #[test]
    fn name_is_trimmed_and_bounded() {
        assert_eq!(
            CategoryDraft::parse(&json!({"name":"  Anime "}))
                .unwrap()
                .name,
            "Anime"
        );
        assert!(CategoryDraft::parse(&json!({"name":"ab"})).is_err());
        assert!(CategoryDraft::parse(&json!({"name":"x".repeat(51)})).is_err());
        assert!(CategoryDraft::parse(&json!({"name":"   abc   "})).is_ok());
        assert!(CategoryDraft::parse(&json!({"name":7})).is_err());
        assert!(CategoryDraft::parse(&json!({})).is_err());
        assert!(CategoryDraft::parse(&json!({"name":"Anime","extra":1})).is_err());
    }
}
