//! A category as a client may write it: DESIGN §2 "Category".

use serde_json::Value;

use super::{FieldErrors, ObjectReader};

pub const NAME_MIN_CHARS: usize = 3;
pub const NAME_MAX_CHARS: usize = 50;
/// Categories every new database starts with.
pub const SEED: &[&str] = &["SERIE", "DISNEY", "SUPERHEROES", "PELICULA", "OTROS"];

pub const WRITABLE: &[&str] = &["name"];
pub const READ_ONLY: &[&str] = &["id", "createdAt", "updatedAt", "isDeleted"];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CategoryDraft {
    /// Trimmed, 3..=50 chars; unique case-insensitively among live categories.
    pub name: String,
}

impl CategoryDraft {
    pub fn parse(value: &Value) -> Result<Self, FieldErrors> {
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
    use super::*;
    use serde_json::json;

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
