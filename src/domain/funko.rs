//! A Funko as a client may write it: its rules, and the schemas that state them.

use serde_json::{Map, Value, json};

use super::{FieldErrors, ObjectReader, Shape, read_only};

pub(crate) const NAME_MAX_CHARS: usize = 100;
pub(crate) const DESCRIPTION_MAX_CHARS: usize = 500;
pub(crate) const PRICE_MAX: f64 = 1_000_000.0;
pub(crate) const STOCK_MAX: i64 = 1_000_000;
pub(crate) const IMAGE_MAX_CHARS: usize = 2048;
/// Served for a Funko that has no image of its own.
pub(crate) const DEFAULT_IMAGE: &str = "/storage/placeholder.png";
/// Paths under this prefix are served by this server.
pub(crate) const STORAGE_PREFIX: &str = "/storage/";

/// What a name must be besides its length: with a character that is not white space (names
/// are trimmed, and an empty one is refused), and no NUL (no string may hold one).
pub(crate) const NAME_PATTERN: &str = r"^[^\u0000]*\S[^\u0000]*$";
/// Any other text: no NUL.
pub(crate) const TEXT_PATTERN: &str = r"^[^\u0000]*$";
/// The images this server takes, as a pattern: an absolute http(s) URL (whose host's last
/// label starts with a letter, and no label has `--`, so it is never a number or punycode the
/// URL parser would refuse) or one of its own files. Narrower than [`FunkoDraft::parse`]
/// accepts, so that anything it matches is taken.
pub(crate) const IMAGE_PATTERN: &str = concat!("^(", image_pattern!(), ")$");

/// [`IMAGE_PATTERN`] without its anchors (for generators that take none).
macro_rules! image_pattern {
    () => {
        concat!(
            r"https?://([A-Za-z0-9]+(-[A-Za-z0-9]+)*\.)*[A-Za-z][A-Za-z0-9]*(-[A-Za-z0-9]+)*",
            r"(:[0-9]{1,4})?(/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*)?",
            r"|/storage/[A-Za-z0-9_-][A-Za-z0-9._-]*"
        )
    };
}
use image_pattern;

/// The fields a client may write.
pub(crate) const WRITABLE: &[&str] =
    &["name", "description", "price", "stock", "image", "category"];
/// Fields the server sets; sent back by a client they are ignored.
pub(crate) const READ_ONLY: &[&str] = &["id", "createdAt", "updatedAt", "isDeleted", "version"];

/// A Funko that satisfies every rule that needs no database.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct FunkoDraft {
    /// Trimmed, 1..=100 chars.
    pub name: String,
    pub description: Option<String>,
    /// The price in cents: exact, so "at most 2 decimals" holds by construction.
    pub price_cents: i64,
    pub stock: i64,
    pub image: String,
    /// As the client spelled it; the store resolves it to a category's canonical name.
    pub category: String,
}

impl FunkoDraft {
    /// Parses a whole Funko (POST and PUT; PATCH merges first, then parses the result).
    pub(crate) fn parse(value: &Value) -> Result<Self, FieldErrors> {
        let mut reader = ObjectReader::new(value, WRITABLE, READ_ONLY)?;
        let name = reader.required_str("name").and_then(|n| {
            let name = n.trim().to_owned();
            check_name(&name, &mut reader.errors).then_some(name)
        });
        let description = reader.optional_str("description").and_then(|d| match d {
            Some(d) if d.chars().count() > DESCRIPTION_MAX_CHARS => {
                reader.errors.add(
                    "description",
                    format!("must be at most {DESCRIPTION_MAX_CHARS} characters"),
                );
                None
            }
            d => Some(d),
        });
        let price_cents = reader
            .required_f64("price")
            .and_then(|p| match price_to_cents(p) {
                Ok(cents) => Some(cents),
                Err(message) => {
                    reader.errors.add("price", message);
                    None
                }
            });
        let stock = reader.required_i64("stock").and_then(|s| {
            if (0..=STOCK_MAX).contains(&s) {
                Some(s)
            } else {
                reader
                    .errors
                    .add("stock", format!("must be between 0 and {STOCK_MAX}"));
                None
            }
        });
        let image = reader.optional_str("image").and_then(|i| match i {
            None => Some(DEFAULT_IMAGE.to_owned()),
            Some(i) => match check_image(i.trim()) {
                Ok(()) => Some(i.trim().to_owned()),
                Err(message) => {
                    reader.errors.add("image", message);
                    None
                }
            },
        });
        let category = reader.required_str("category").and_then(|c| {
            let c = c.trim().to_owned();
            if c.is_empty() {
                reader.errors.add("category", "must not be empty");
                None
            } else {
                Some(c)
            }
        });
        let errors = reader.errors;
        match (name, description, price_cents, stock, image, category) {
            (
                Some(name),
                Some(description),
                Some(price_cents),
                Some(stock),
                Some(image),
                Some(category),
            ) if errors.is_empty() => Ok(Self {
                name,
                description,
                price_cents,
                stock,
                image,
                category,
            }),
            _ => Err(errors),
        }
    }
}

/// The body of `POST /funkos` and `PUT /funkos/{id}`: a whole Funko.
pub(crate) struct FunkoInput;

/// The body of `PATCH /funkos/{id}`: a JSON merge patch of a Funko.
pub(crate) struct FunkoPatch;

/// The writable fields' schemas; `patch`: as a merge patch may send them (`null` clears the
/// description and restores the placeholder image; the others cannot be cleared).
fn writable_properties(patch: bool) -> Map<String, Value> {
    let properties = json!({
        "name": {
            "type": "string", "minLength": 1, "maxLength": NAME_MAX_CHARS, "pattern": NAME_PATTERN,
            "description": "Trimmed; unique among live Funkos in any case (a taken one is 409).",
        },
        "description": {
            "type": "string", "nullable": true, "maxLength": DESCRIPTION_MAX_CHARS,
            "pattern": TEXT_PATTERN,
            "description": if patch { "`null` clears it." } else { "Absent or `null`: none." },
        },
        "price": {
            "type": "number", "minimum": 0, "maximum": PRICE_MAX, "multipleOf": 0.01,
            "description": "At most 2 decimals.",
        },
        "stock": {
            "type": "integer", "format": "int64", "minimum": 0, "maximum": STOCK_MAX,
        },
        "image": {
            "type": "string", "nullable": true, "maxLength": IMAGE_MAX_CHARS, "pattern": IMAGE_PATTERN,
            "description": format!(
                "An absolute http(s) URL or a path under {STORAGE_PREFIX} on this server; \
                 absent or `null`: the placeholder {DEFAULT_IMAGE}."
            ),
        },
        "category": {
            "type": "string", "minLength": 1, "pattern": NAME_PATTERN,
            "description": "The name of a live category, in any case (answered in its own \
                            spelling). Which ones exist no schema can say: an unknown one is 422.",
        },
    });
    let Value::Object(properties) = properties else {
        unreachable!("an object literal")
    };
    properties
}

fn object_schema(
    name: &str,
    description: &str,
    required: &[&str],
    mut properties: Map<String, Value>,
) -> Value {
    properties.extend(read_only(READ_ONLY));
    let mut schema = json!({
        "title": name,
        "type": "object",
        "description": description,
        "properties": properties,
        "additionalProperties": false,
    });
    // OpenAPI 3.0 allows no empty `required`.
    if !required.is_empty() {
        schema["required"] = json!(required);
    }
    schema
}

impl Shape for FunkoInput {
    const NAME: &'static str = "FunkoInput";

    fn schema() -> Value {
        object_schema(
            Self::NAME,
            "A whole Funko, as a client writes it (POST, PUT). Any other field is refused \
             (422); the fields the server sets are accepted and ignored, so a client may send \
             back what it read.",
            &["name", "price", "stock", "category"],
            writable_properties(false),
        )
    }
}

impl Shape for FunkoPatch {
    const NAME: &'static str = "FunkoPatch";

    fn schema() -> Value {
        object_schema(
            Self::NAME,
            "A JSON merge patch (RFC 7396) of a Funko: any of FunkoInput's fields, applied to \
             the current Funko, whose result must satisfy FunkoInput's rules.",
            &[],
            writable_properties(true),
        )
    }
}

fn check_name(name: &str, errors: &mut FieldErrors) -> bool {
    let chars = name.chars().count();
    if chars == 0 {
        errors.add("name", "must not be empty");
        false
    } else if chars > NAME_MAX_CHARS {
        errors.add(
            "name",
            format!("must be at most {NAME_MAX_CHARS} characters"),
        );
        false
    } else {
        true
    }
}

/// Exact cents for a price of at most two decimals within 0..=1,000,000.
pub(crate) fn price_to_cents(price: f64) -> Result<i64, String> {
    if !price.is_finite() || !(0.0..=PRICE_MAX).contains(&price) {
        return Err(format!("must be between 0 and {PRICE_MAX}"));
    }
    let scaled = price * 100.0;
    let cents = scaled.round();
    // A price of at most 2 decimals lands within float noise of a whole number of cents.
    if (scaled - cents).abs() > 1e-6 {
        return Err("must have at most 2 decimals".to_owned());
    }
    Ok(cents as i64)
}

/// The price as a JSON number (for the API and the event payload).
pub(crate) fn cents_to_price(cents: i64) -> f64 {
    cents as f64 / 100.0
}

/// An image is an absolute http(s) URL or a path this server serves.
fn check_image(image: &str) -> Result<(), String> {
    if image.chars().count() > IMAGE_MAX_CHARS {
        return Err(format!("must be at most {IMAGE_MAX_CHARS} characters"));
    }
    if let Some(file) = image.strip_prefix(STORAGE_PREFIX) {
        let safe = !file.is_empty()
            && file
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
            && !file.starts_with('.');
        return if safe {
            Ok(())
        } else {
            Err("must be a file under /storage/ without path separators".to_owned())
        };
    }
    match url::Url::parse(image) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Ok(()),
        _ => Err("must be an absolute http(s) URL or a /storage/ path".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A Funko's writable fields as the documented schema allows them (`patch`: each field
    /// optional, and `null` where the schema says nullable), with the server-set fields and
    /// any value.
    fn documented(patch: bool) -> impl Strategy<Value = Value> {
        let name = r"\s{0,2}[^\s\u0000][^\u0000\n]{0,97}";
        let optional = |strategy: BoxedStrategy<Value>, nullable: bool| {
            let absent = if patch { 1 } else { 0 };
            prop_oneof![
                absent => Just(None),
                (nullable as u32) => Just(Some(Value::Null)),
                3 => strategy.prop_map(Some),
            ]
        };
        let required = |strategy: BoxedStrategy<Value>| {
            if patch {
                prop_oneof![Just(None), strategy.prop_map(Some)].boxed()
            } else {
                strategy.prop_map(Some).boxed()
            }
        };
        (
            required(name.prop_map(Value::from).boxed()),
            optional(r"[^\u0000]{0,500}".prop_map(Value::from).boxed(), true),
            required(
                (0..=100_000_000i64)
                    .prop_map(|c| json!(c as f64 / 100.0))
                    .boxed(),
            ),
            required((0..=STOCK_MAX).prop_map(Value::from).boxed()),
            optional(
                image_pattern!()
                    .prop_filter("the schema's maxLength", |i: &String| {
                        i.chars().count() <= IMAGE_MAX_CHARS
                    })
                    .prop_map(Value::from)
                    .boxed(),
                true,
            ),
            required(r"[^\s\u0000]{1,20}".prop_map(Value::from).boxed()),
            proptest::option::of(any::<i64>().prop_map(Value::from)),
            proptest::option::of(".*".prop_map(Value::from)),
        )
            .prop_map(
                |(name, description, price, stock, image, category, id, created)| {
                    let fields = [
                        ("name", name),
                        ("description", description),
                        ("price", price),
                        ("stock", stock),
                        ("image", image),
                        ("category", category),
                        ("id", id),
                        ("createdAt", created),
                    ];
                    Value::Object(
                        fields
                            .into_iter()
                            .filter_map(|(k, v)| Some((k.to_owned(), v?)))
                            .collect(),
                    )
                },
            )
    }

    proptest! {
        /// Whatever FunkoInput's schema allows, the rules take: the spec says what is
        /// enforced, so generated valid requests succeed.
        #[test]
        fn every_documented_funko_parses(body in documented(false)) {
            prop_assert!(FunkoDraft::parse(&body).is_ok(), "{body}: {:?}", FunkoDraft::parse(&body));
        }

        /// Likewise for a merge patch of a valid Funko.
        #[test]
        fn every_documented_patch_applies(patch in documented(true)) {
            let mut merged = json!({"name": "Groot", "price": 1, "stock": 1, "category": "DISNEY"});
            crate::domain::merge_patch(&mut merged, &patch);
            prop_assert!(FunkoDraft::parse(&merged).is_ok(), "{patch}: {:?}", FunkoDraft::parse(&merged));
        }
    }

    fn valid() -> Value {
        json!({"name":"  Groot ","description":null,"price":19.99,"stock":3,"category":"disney"})
    }

    #[test]
    fn parses_and_normalises_a_valid_funko() {
        let draft = FunkoDraft::parse(&valid()).unwrap();
        assert_eq!(draft.name, "Groot");
        assert_eq!(draft.price_cents, 1999);
        assert_eq!(draft.image, DEFAULT_IMAGE);
        assert_eq!(draft.category, "disney");
        assert_eq!(draft.description, None);
    }

    #[test]
    fn reports_every_broken_rule_by_field() {
        let errors = FunkoDraft::parse(&json!({
            "name": "", "description": "x".repeat(501), "price": 1.234, "stock": -1,
            "image": "ftp://x/y.png", "category": 5, "colour": "green"
        }))
        .unwrap_err();
        let mut fields: Vec<_> = errors.0.iter().map(|e| e.field.as_str()).collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            [
                "category",
                "colour",
                "description",
                "image",
                "name",
                "price",
                "stock"
            ]
        );
    }

    #[test]
    fn missing_required_fields_are_named() {
        let errors = FunkoDraft::parse(&json!({})).unwrap_err();
        let fields: Vec<_> = errors.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["name", "price", "stock", "category"]);
        assert!(errors.0.iter().all(|e| e.message == "is required"));
    }

    #[test]
    fn price_rules() {
        assert_eq!(price_to_cents(0.0), Ok(0));
        assert_eq!(price_to_cents(1_000_000.0), Ok(100_000_000));
        assert_eq!(price_to_cents(0.1 + 0.2), Ok(30));
        assert_eq!(price_to_cents(999_999.99), Ok(99_999_999));
        assert!(price_to_cents(1_000_000.01).is_err());
        assert!(price_to_cents(-0.01).is_err());
        assert!(price_to_cents(0.001).is_err());
        assert!(price_to_cents(f64::NAN).is_err());
        for cents in (0..100_000_000).step_by(9_973) {
            assert_eq!(price_to_cents(cents_to_price(cents)), Ok(cents));
        }
    }

    #[test]
    fn wrong_types_are_field_errors() {
        let mut body = valid();
        body["price"] = json!("19.99");
        body["stock"] = json!(1.5);
        let errors = FunkoDraft::parse(&body).unwrap_err();
        assert_eq!(errors.0.len(), 2);
        assert_eq!(errors.0[0].message, "must be a number");
        assert_eq!(errors.0[1].message, "must be an integer");
    }

    #[test]
    fn image_rules() {
        assert!(check_image("https://example.com/a.png").is_ok());
        assert!(check_image("/storage/abc-1.png").is_ok());
        assert!(check_image("/storage/../etc/passwd").is_err());
        assert!(check_image("/etc/passwd").is_err());
        assert!(check_image("javascript:alert(1)").is_err());
        assert!(check_image("http://").is_err());
    }

    #[test]
    fn body_must_be_an_object() {
        assert!(FunkoDraft::parse(&json!([1, 2])).is_err());
        assert!(FunkoDraft::parse(&json!("x")).is_err());
    }
}
