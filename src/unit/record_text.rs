//! A record that arrived as JSON text (a JSONL line), checked once and then carried as the
//! text it was: a producer that parsed it into a value only to write the value out again
//! spent most of its time on allocation (issue 16).

use std::borrow::Cow;
use std::collections::HashSet;

use serde::de::{DeserializeSeed, Deserializer as _, Error as _, MapAccess, SeqAccess, Visitor};

/// Objects with more fields than this are checked for a repeated name with a hash set rather
/// than by comparing each name with the ones before it.
const FIELDS_COMPARED_ONE_BY_ONE: usize = 16;

/// A JSON object as text, checked to be what a parsed record would be: valid JSON, an object,
/// no field named twice in any object of it, and numbers in range. Only
/// [`RecordText::check`] makes one, so a unit built from them always decodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordText(String);

impl RecordText {
    /// Checks `text` (one trimmed line) and keeps it; the error is the reason the line is
    /// refused, worded as a dead letter shows it.
    pub fn check(text: &[u8]) -> Result<RecordText, String> {
        let error = match std::str::from_utf8(text) {
            Ok(json) => match check_object(&mut serde_json::Deserializer::from_str(json)) {
                Ok(()) => return Ok(RecordText(json.to_owned())),
                Err(error) => error,
            },
            // Not UTF-8: let the parser say where (inside a string, or as a syntax error).
            Err(_) => match check_object(&mut serde_json::Deserializer::from_slice(text)) {
                Ok(()) => serde_json::Error::custom("invalid UTF-8"),
                Err(error) => error,
            },
        };
        Err(reason(text, error))
    }

    /// The record's JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Reads one object and then the end of the input.
fn check_object<'de, R: serde_json::de::Read<'de>>(
    parser: &mut serde_json::Deserializer<R>,
) -> Result<(), serde_json::Error> {
    let mut names = Vec::new();
    parser.deserialize_map(CheckValue { names: &mut names })?;
    parser.end()
}

/// The reason for refusing `text`, from the parser's error.
fn reason(text: &[u8], error: serde_json::Error) -> String {
    let message = error.to_string();
    if message.starts_with("invalid type") {
        // Not an object: say whether it is JSON at all.
        match serde_json::from_slice::<serde::de::IgnoredAny>(text) {
            Ok(_) => "line is valid JSON but not an object".to_string(),
            Err(error) => format!("invalid JSON: {error}"),
        }
    } else if message.starts_with("field `") {
        message
            .split(" at line ")
            .next()
            .unwrap_or(&message)
            .to_string()
    } else {
        format!("invalid JSON: {error}")
    }
}

/// Reads any JSON value and keeps nothing of it but the field names of the objects being
/// read, on one stack shared by the whole record: a plain parse would keep the last value of
/// a field named twice and silently drop the other.
struct CheckValue<'a, 'de> {
    names: &'a mut Vec<Cow<'de, str>>,
}

impl<'de> DeserializeSeed<'de> for CheckValue<'_, 'de> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for CheckValue<'_, 'de> {
    type Value = ();

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq
            .next_element_seed(CheckValue {
                names: &mut *self.names,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // This object's names are `names[base..]` while it is read; a nested object pushes
        // its own above them and takes them off again when it ends.
        let base = self.names.len();
        let mut many: Option<HashSet<Cow<'de, str>>> = None;
        while let Some(name) = map.next_key_seed(FieldName)? {
            let repeated = match &mut many {
                Some(seen) => !seen.insert(name.clone()),
                None => self.names[base..].contains(&name),
            };
            if repeated {
                return Err(A::Error::custom(format!(
                    "field `{name}` appears twice; the record is refused rather than keeping \
                     one of its values"
                )));
            }
            if many.is_none() {
                self.names.push(name);
                if self.names.len() - base > FIELDS_COMPARED_ONE_BY_ONE {
                    many = Some(self.names.drain(base..).collect());
                }
            }
            map.next_value_seed(CheckValue {
                names: &mut *self.names,
            })?;
        }
        self.names.truncate(base);
        Ok(())
    }
}

/// A field name, borrowed from the text unless it holds escapes.
struct FieldName;

impl<'de> DeserializeSeed<'de> for FieldName {
    type Value = Cow<'de, str>;

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for FieldName {
    type Value = Cow<'de, str>;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a field name")
    }

    fn visit_borrowed_str<E>(self, name: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(name))
    }

    fn visit_str<E>(self, name: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn refused(text: &str) -> String {
        RecordText::check(text.as_bytes()).expect_err(text)
    }

    #[test]
    fn unit_record_text_keeps_a_valid_object_as_written() {
        let text = r#"{"id": 1, "name":"a\"b", "n":{"x":[1,{"y":null}]}, "big":123456789012345678901234567890}"#;
        let record = RecordText::check(text.as_bytes()).unwrap();
        assert_eq!(record.as_str(), text);
        assert!(serde_json::from_str::<Value>(record.as_str()).is_ok());
    }

    #[test]
    fn unit_record_text_refuses_what_a_parse_would_refuse_with_its_reason() {
        assert_eq!(refused("[1,2]"), "line is valid JSON but not an object");
        assert_eq!(refused("7"), "line is valid JSON but not an object");
        assert!(refused("{broken").starts_with("invalid JSON"));
        assert!(refused("{} {}").starts_with("invalid JSON: trailing characters"));
        assert!(refused(r#"{"n":1e999}"#).contains("number out of range"));
        // A lone surrogate escape spells no character.
        assert!(
            refused(r#"{"s":"\ud800"}"#).starts_with("invalid JSON: unexpected end of hex escape")
        );
        let mut invalid = br#"{"s":""#.to_vec();
        invalid.extend_from_slice(&[0xff, b'"', b'}']);
        assert!(
            RecordText::check(&invalid)
                .unwrap_err()
                .starts_with("invalid JSON")
        );
    }

    #[test]
    fn unit_record_text_refuses_a_field_named_twice_at_any_depth() {
        let expected = "field `a` appears twice; the record is refused rather than keeping one \
                        of its values";
        assert_eq!(refused(r#"{"a":1,"a":2}"#), expected);
        assert_eq!(refused(r#"{"x":[{"a":1,"b":{},"a":2}]}"#), expected);
        // An escape spells the same name.
        assert_eq!(refused(r#"{"a":1,"\u0061":2}"#), expected);
        // The same name in sibling and nested objects is no repetition.
        assert!(
            RecordText::check(br#"{"a":{"a":{"a":1}},"b":{"a":2},"c":[{"a":1},{"a":2}]}"#).is_ok()
        );
    }

    #[test]
    fn unit_record_text_finds_a_repeated_name_among_many_fields() {
        let fields: Vec<String> = (0..200).map(|n| format!("\"f{n}\":{n}")).collect();
        let many = format!("{{{}}}", fields.join(","));
        assert!(RecordText::check(many.as_bytes()).is_ok());
        let repeated = format!("{{{},\"f3\":0}}", fields.join(","));
        assert!(refused(&repeated).starts_with("field `f3` appears twice"));
        // A nested object with many fields leaves its parent's names as they were.
        let nested = format!("{{\"a\":1,\"inner\":{{{}}},\"a\":2}}", fields.join(","));
        assert!(refused(&nested).starts_with("field `a` appears twice"));
    }
}
