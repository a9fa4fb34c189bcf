//! Field mapping: from a decoded row to the destination's fields, and the consent decision.
//!
//! Only mapped fields ever leave. Transforms run in the order written; NULL stays NULL through
//! every transform, and a value a transform leaves empty (`normalize_phone` of "n/a",
//! `normalize_email` or `trim` of a blank, `sha256` of nothing) becomes NULL: a value that
//! normalises to nothing is *missing*, never an identifier and never hashed into the hash of
//! the empty string. Each such field is reported ([`Mapped::missing`]) so the sink counts it
//! (`sluice_destination_identifiers_missing_total`).

use serde_json::Value as Json;
use sluice_avro::DecodedEvent;
use sluice_core::config::{Coerce, ConsentRule, FieldSource, TemplateText, Transform, TransformedColumn};
use sluice_core::Row;
use sluice_destinations::identifiers::{canonical_email, canonical_phone, sha256_hex};

/// A row image with its column names, as mapping reads it.
pub(crate) struct Image<'a> {
    pub columns: &'a [String],
    pub row: &'a Row,
}

impl Image<'_> {
    /// A column's value; NULL when the image has no such column.
    pub(crate) fn get(&self, column: &str) -> Json {
        self.columns.iter().position(|c| c == column).map_or(Json::Null, |i| self.row[i].to_json())
    }

    /// The named columns as a JSON object, or `None` when one is not in the image.
    pub(crate) fn pick(&self, names: &[String]) -> Option<serde_json::Map<String, Json>> {
        names
            .iter()
            .map(|name| self.columns.iter().position(|c| c == name).map(|i| (name.clone(), self.row[i].to_json())))
            .collect()
    }
}

/// The current image (after, or before for deletes) of an event.
pub(crate) fn current(decoded: &DecodedEvent) -> Option<Image<'_>> {
    decoded.event.current_image().map(|row| Image { columns: &decoded.columns, row })
}

/// The before image, when the event carries one.
pub(crate) fn before(decoded: &DecodedEvent) -> Option<Image<'_>> {
    decoded.event.before.as_ref().map(|row| Image { columns: &decoded.columns, row })
}

/// An image's mapped fields, and the fields whose value its transforms left empty.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Mapped {
    /// Destination field → value.
    pub fields: serde_json::Map<String, Json>,
    /// Fields whose column held a value that normalised to nothing (now NULL), by name.
    pub missing: Vec<String>,
}

/// The mapped fields of an image.
pub(crate) fn map_fields<'a>(fields: impl IntoIterator<Item = (&'a String, &'a FieldSource)>, image: &Image<'_>) -> Mapped {
    let mut mapped = Mapped::default();
    for (name, source) in fields {
        let (value, emptied) = field_value(source, image);
        if emptied {
            mapped.missing.push(name.clone());
        }
        mapped.fields.insert(name.clone(), value);
    }
    mapped
}

/// A field's value, and whether its transforms turned a value into nothing (NULL).
fn field_value(source: &FieldSource, image: &Image<'_>) -> (Json, bool) {
    match source {
        FieldSource::Column(column) => (image.get(column), false),
        FieldSource::Transformed(TransformedColumn { column, transforms, coerce }) => {
            let raw = image.get(column);
            let had_value = !raw.is_null();
            let value = transforms.iter().fold(raw, |value, t| apply(*t, value));
            let emptied = had_value && value.is_null();
            (coerce.map_or(value.clone(), |c| coerce_to(c, value)), emptied)
        }
        FieldSource::Value(constant) => (serde_json::to_value(&constant.value).unwrap_or(Json::Null), false),
        FieldSource::Template(TemplateText { template }) => (Json::String(render(template, image)), false),
    }
}

fn render(template: &str, image: &Image<'_>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let Some(len) = rest[start..].find('}') else { break };
        out.push_str(&rest[..start]);
        out.push_str(&text(&image.get(&rest[start + 1..start + len])).unwrap_or_default());
        rest = &rest[start + len + 1..];
    }
    out.push_str(rest);
    out
}

fn text(value: &Json) -> Option<String> {
    match value {
        Json::Null => None,
        Json::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// Apply one transform; NULL stays NULL, and a result that is empty is NULL (missing).
pub(crate) fn apply(transform: Transform, value: Json) -> Json {
    let Some(s) = text(&value) else { return Json::Null };
    let out = match transform {
        Transform::Trim => Some(s.trim().to_string()),
        Transform::Lowercase => Some(s.to_lowercase()),
        Transform::Uppercase => Some(s.to_uppercase()),
        Transform::DigitsOnly => Some(s.chars().filter(char::is_ascii_digit).collect()),
        // The same normal forms and hash the destinations use, from one place.
        Transform::NormalizeEmail => canonical_email(&s),
        Transform::NormalizePhone => canonical_phone(&s),
        // Hashing nothing would invent an identifier: the hash of the empty string.
        Transform::Sha256 => (!s.trim().is_empty()).then(|| sha256_hex(&s)),
    };
    out.filter(|v| !v.is_empty()).map_or(Json::Null, Json::String)
}

fn coerce_to(target: Coerce, value: Json) -> Json {
    match (target, &value) {
        (_, Json::Null) => Json::Null,
        (Coerce::String, _) => text(&value).map_or(Json::Null, Json::String),
        (Coerce::Integer, Json::Number(n)) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)).map_or(Json::Null, Json::from),
        (Coerce::Integer, Json::String(s)) => s.trim().parse::<f64>().ok().map_or(Json::Null, |f| Json::from(f as i64)),
        (Coerce::Float, Json::Number(n)) => n.as_f64().map_or(Json::Null, Json::from),
        (Coerce::Float, Json::String(s)) => s.trim().parse::<f64>().ok().map_or(Json::Null, Json::from),
        (Coerce::Boolean, Json::Bool(_)) => value,
        (Coerce::Boolean, Json::Number(n)) => Json::Bool(n.as_f64() != Some(0.0)),
        (Coerce::Boolean, Json::String(s)) => Json::Bool(matches!(s.trim().to_lowercase().as_str(), "true" | "t" | "yes" | "y" | "1")),
        _ => Json::Null,
    }
}

/// Whether an image passes a consent rule. A missing or NULL consent value is *no* consent.
pub(crate) fn consents(rule: Option<&ConsentRule>, image: &Image<'_>) -> bool {
    let Some(rule) = rule else { return true };
    let expected = serde_json::to_value(&rule.equals).unwrap_or(Json::Null);
    let actual = image.get(&rule.column);
    actual == expected || text(&actual).is_some_and(|a| Some(a) == text(&expected))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sluice_core::Value;

    fn image_fields() -> (Vec<String>, Row) {
        (
            vec!["email".into(), "phone".into(), "first".into(), "ltv".into(), "opt_in".into()],
            vec![
                Value::String("  Ada@Example.COM ".into()),
                Value::String("+44 (0)20 7946 0958".into()),
                Value::Null,
                Value::DecimalText("12.50".into()),
                Value::Boolean(false),
            ],
        )
    }

    #[test]
    fn transforms_apply_in_order_and_null_stays_null() {
        let (columns, row) = image_fields();
        let image = Image { columns: &columns, row: &row };
        let source: FieldSource = toml::from_str::<toml::Table>("f = { column = \"email\", transforms = [\"normalize_email\", \"sha256\"] }")
            .unwrap()["f"]
            .clone()
            .try_into()
            .unwrap();
        assert_eq!(field_value(&source, &image), (json!(sha256_hex("ada@example.com")), false), "trimmed, lowercased, hashed");
        assert_eq!(apply(Transform::Sha256, Json::Null), Json::Null);
        assert_eq!(apply(Transform::NormalizePhone, json!("0044 20 7946 0958")), json!("442079460958"));
        assert_eq!(apply(Transform::NormalizeEmail, json!("  Ada@Example.COM ")), json!("ada@example.com"));
    }

    /// The case: a phone of "n/a" normalised and hashed must not become the hash of "".
    #[test]
    fn a_value_that_normalises_to_nothing_is_missing_and_reported() {
        for (transform, value) in [
            (Transform::NormalizePhone, "n/a"),
            (Transform::NormalizePhone, "000"),
            (Transform::NormalizeEmail, "   "),
            (Transform::Trim, " \t "),
            (Transform::DigitsOnly, "none"),
            (Transform::Sha256, ""),
            (Transform::Sha256, "  "),
            (Transform::Lowercase, ""),
        ] {
            assert_eq!(apply(transform, json!(value)), Json::Null, "{transform:?} of {value:?}");
        }
        let columns = vec!["phone".to_string(), "email".to_string()];
        let row = vec![Value::String("n/a".into()), Value::Null];
        let image = Image { columns: &columns, row: &row };
        let hashed = |column: &str| FieldSource::Transformed(TransformedColumn { column: column.into(), transforms: vec![Transform::NormalizePhone, Transform::Sha256], coerce: None });
        let fields: std::collections::BTreeMap<String, FieldSource> =
            [("phone_sha256".to_string(), hashed("phone")), ("email_sha256".to_string(), hashed("email")), ("raw".to_string(), FieldSource::Column("phone".into()))].into();
        let mapped = map_fields(&fields, &image);
        assert_eq!(mapped.fields["phone_sha256"], Json::Null, "never sha256(\"\") = {}", sha256_hex(""));
        assert_eq!(mapped.fields["email_sha256"], Json::Null);
        assert_eq!(mapped.fields["raw"], json!("n/a"), "a column mapped as it is stays as it is");
        assert_eq!(mapped.missing, ["phone_sha256"], "only the value that normalised to nothing is reported; a NULL was missing already");
    }

    #[test]
    fn templates_constants_and_coercion() {
        let (columns, row) = image_fields();
        let image = Image { columns: &columns, row: &row };
        let template = FieldSource::Template(TemplateText { template: "{email}/{first}!".into() });
        assert_eq!(field_value(&template, &image).0, json!("  Ada@Example.COM /!"));
        let ltv = FieldSource::Transformed(TransformedColumn { column: "ltv".into(), transforms: vec![], coerce: Some(Coerce::Float) });
        assert_eq!(field_value(&ltv, &image).0, json!(12.5));
        assert_eq!(coerce_to(Coerce::Integer, json!("12.9")), json!(12));
        assert_eq!(coerce_to(Coerce::Boolean, json!("yes")), json!(true));
    }

    #[test]
    fn consent_is_explicit() {
        let (columns, mut row) = image_fields();
        let rule = ConsentRule { column: "opt_in".into(), equals: toml::Value::Boolean(true) };
        assert!(!consents(Some(&rule), &Image { columns: &columns, row: &row }));
        row[4] = Value::Boolean(true);
        assert!(consents(Some(&rule), &Image { columns: &columns, row: &row }));
        row[4] = Value::Null;
        assert!(!consents(Some(&rule), &Image { columns: &columns, row: &row }), "NULL is not consent");
        assert!(consents(None, &Image { columns: &columns, row: &row }));
    }
}
