//! The store's vocabulary, with no I/O: the resources as clients see them ([`resource`]), the
//! change stream's terms ([`event`]) and its views ([`view`]), preconditions ([`precondition`]), and the validated
//! input of writes and lists, which turns client JSON into values that satisfy the rules, or
//! into a list of field errors. Each request body's JSON
//! Schema ([`Shape`]) is written here too, from the same constants, so the spec states the
//! rules the checks enforce.

pub(crate) mod category;
pub(crate) mod event;
pub(crate) mod funko;
pub(crate) mod precondition;
pub(crate) mod query;
pub(crate) mod resource;
pub(crate) mod view;

use serde::Serialize;
use serde_json::{Map, Value};

/// A request body whose rules this module checks, described for the OpenAPI document from
/// the same constants and patterns. Some rules no schema can state (a category that exists,
/// a name nobody else uses); the descriptions say so.
pub(crate) trait Shape {
    /// Its name among the spec's schemas.
    const NAME: &'static str;
    /// Its JSON Schema, in OpenAPI 3.0's dialect.
    fn schema() -> Value;
}

/// The spec's component schemas for every request body.
pub(crate) fn shapes() -> [(&'static str, Value); 3] {
    [
        (funko::FunkoInput::NAME, funko::FunkoInput::schema()),
        (funko::FunkoPatch::NAME, funko::FunkoPatch::schema()),
        (
            category::CategoryInput::NAME,
            category::CategoryInput::schema(),
        ),
    ]
}

/// A schema for fields the server sets: accepted with any value and ignored, so a client may
/// send back what it read.
fn read_only(fields: &[&str]) -> impl Iterator<Item = (String, Value)> {
    fields.iter().map(|field| {
        let schema = serde_json::json!({
            "description": "Set by the server: accepted and ignored when sent."
        });
        ((*field).to_owned(), schema)
    })
}

/// One rule a field broke.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// JSON name of the field (`price`, `category`, ...).
    pub field: String,
    pub message: String,
}

/// Every rule the input broke, reported together so a client fixes them in one go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldErrors(pub Vec<FieldError>);

impl FieldErrors {
    pub fn add(&mut self, field: &str, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.to_owned(),
            message: message.into(),
        });
    }

    pub fn single(field: &str, message: impl Into<String>) -> Self {
        let mut errors = Self::default();
        errors.add(field, message);
        errors
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(value)` when no error was recorded.
    pub fn into_result<T>(self, value: impl FnOnce() -> T) -> Result<T, Self> {
        if self.is_empty() {
            Ok(value())
        } else {
            Err(self)
        }
    }
}

/// Reads the fields of one JSON object, recording a field error for each wrong type and
/// for each field that is neither known nor one of the resource's read-only fields.
pub(crate) struct ObjectReader<'a> {
    object: &'a Map<String, Value>,
    pub errors: FieldErrors,
}

impl<'a> ObjectReader<'a> {
    /// Checks that `value` is an object whose keys are all in `writable` or `read_only`
    /// (read-only fields are accepted and ignored, so a client may send back what it read).
    pub(crate) fn new(
        value: &'a Value,
        writable: &[&str],
        read_only: &[&str],
    ) -> Result<Self, FieldErrors> {
        let Some(object) = value.as_object() else {
            return Err(FieldErrors::single("", "the body must be a JSON object"));
        };
        let mut errors = FieldErrors::default();
        for key in object.keys() {
            if !writable.contains(&key.as_str()) && !read_only.contains(&key.as_str()) {
                errors.add(key, "unknown field");
            }
        }
        Ok(Self { object, errors })
    }

    fn present(&self, field: &str) -> Option<&'a Value> {
        self.object.get(field).filter(|v| !v.is_null())
    }

    /// A required string, trimmed.
    pub(crate) fn required_str(&mut self, field: &str) -> Option<String> {
        match self.present(field) {
            None => {
                self.errors.add(field, "is required");
                None
            }
            Some(value) => self.str_value(field, value),
        }
    }

    /// An optional string (absent or null is `None`), not trimmed.
    pub(crate) fn optional_str(&mut self, field: &str) -> Option<Option<String>> {
        match self.present(field) {
            None => Some(None),
            Some(value) => self.str_value(field, value).map(Some),
        }
    }

    /// A string; NUL characters are refused, as PostgreSQL cannot store them.
    fn str_value(&mut self, field: &str, value: &Value) -> Option<String> {
        match value.as_str() {
            Some(s) if s.contains('\0') => {
                self.errors.add(field, "must not contain NUL characters");
                None
            }
            Some(s) => Some(s.to_owned()),
            None => {
                self.errors.add(field, "must be a string");
                None
            }
        }
    }

    /// A required JSON number.
    pub(crate) fn required_f64(&mut self, field: &str) -> Option<f64> {
        match self.present(field) {
            None => {
                self.errors.add(field, "is required");
                None
            }
            Some(value) => match value.as_f64() {
                Some(n) if value.is_number() => Some(n),
                _ => {
                    self.errors.add(field, "must be a number");
                    None
                }
            },
        }
    }

    /// A required JSON integer (`3`, not `3.0` nor `"3"`).
    pub(crate) fn required_i64(&mut self, field: &str) -> Option<i64> {
        match self.present(field) {
            None => {
                self.errors.add(field, "is required");
                None
            }
            Some(value) => match value.as_i64() {
                Some(n) => Some(n),
                None if value.is_u64() => {
                    self.errors.add(field, "is out of range");
                    None
                }
                None => {
                    self.errors.add(field, "must be an integer");
                    None
                }
            },
        }
    }
}

/// Parses a JSON document, refusing an object with a key twice: parsers disagree on which one
/// counts (the first, the last), so such a body means different things to different readers.
/// serde_json's recursion limit bounds nesting.
pub(crate) fn parse_json_strictly(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    use serde::de::{DeserializeSeed, Deserializer, Error, MapAccess, SeqAccess, Visitor};

    struct Strict;

    impl<'de> DeserializeSeed<'de> for Strict {
        type Value = Value;
        fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
            deserializer.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Strict {
        type Value = Value;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON value")
        }

        fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
            Ok(Value::Bool(v))
        }
        fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
            Ok(Value::from(v))
        }
        fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
            Ok(Value::from(v))
        }
        fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
            Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
        }
        fn visit_str<E>(self, v: &str) -> Result<Value, E> {
            Ok(Value::String(v.to_owned()))
        }
        fn visit_string<E>(self, v: String) -> Result<Value, E> {
            Ok(Value::String(v))
        }
        fn visit_unit<E>(self) -> Result<Value, E> {
            Ok(Value::Null)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element_seed(Strict)? {
                items.push(item);
            }
            Ok(Value::Array(items))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
            let mut object = Map::new();
            while let Some(key) = map.next_key::<String>()? {
                if object.contains_key(&key) {
                    return Err(A::Error::custom(format!("the key {key:?} appears twice")));
                }
                let value = map.next_value_seed(Strict)?;
                object.insert(key, value);
            }
            Ok(Value::Object(object))
        }
    }

    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = Strict.deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(value)
}

/// The key under which a name is unique: case-insensitive, Unicode-aware.
pub(crate) fn name_key(name: &str) -> String {
    name.to_lowercase()
}

/// Applies an RFC 7396 JSON merge patch to `target`.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(patch) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let target = target.as_object_mut().expect("made an object above");
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(key);
                } else {
                    merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        other => *target = other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc7396_examples() {
        let cases = [
            (json!({"a":"b"}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"b"}), json!({"b":"c"}), json!({"a":"b","b":"c"})),
            (json!({"a":"b"}), json!({"a":null}), json!({})),
            (
                json!({"a":{"b":"c"}}),
                json!({"a":{"b":"d","c":null}}),
                json!({"a":{"b":"d"}}),
            ),
            (json!({"a":[1]}), json!({"a":[2]}), json!({"a":[2]})),
            (json!(["a"]), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"e":null}), json!({"a":1}), json!({"e":null,"a":1})),
        ];
        for (mut target, patch, expected) in cases {
            merge_patch(&mut target, &patch);
            assert_eq!(target, expected);
        }
    }

    #[test]
    fn name_key_is_case_insensitive_beyond_ascii() {
        assert_eq!(name_key("GROOT"), name_key("groot"));
        assert_eq!(name_key("ÉLAN"), name_key("élan"));
    }

    #[test]
    fn a_key_twice_is_refused_at_any_depth() {
        assert!(parse_json_strictly(br#"{"a":1,"b":{"c":[{"d":2}]}}"#).is_ok());
        for twice in [
            r#"{"a":1,"a":2}"#,
            r#"{"x":{"k":1,"k":1}}"#,
            r#"[{"k":1,"k":2}]"#,
        ] {
            let err = parse_json_strictly(twice.as_bytes()).unwrap_err();
            assert!(err.to_string().contains("appears twice"), "{twice}: {err}");
        }
        assert!(parse_json_strictly(b"{} trailing").is_err());
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(
            parse_json_strictly(deep.as_bytes()).is_err(),
            "nesting is bounded"
        );
    }

    #[test]
    fn unknown_fields_are_reported_read_only_ignored() {
        let value = json!({"name":"x","id":3,"bogus":1});
        let reader = ObjectReader::new(&value, &["name"], &["id"]).unwrap();
        assert_eq!(reader.errors, FieldErrors::single("bogus", "unknown field"));
    }
}
