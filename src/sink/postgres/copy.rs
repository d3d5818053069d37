//! Rows as `COPY ... FROM STDIN` text: one line per row, fields separated by tabs, `\N` for
//! NULL, and backslash, tab, newline and carriage return escaped. The server parses each
//! field for its column's type, so its own rules (and messages) judge dates, numbers and
//! lengths; the client only prepares what JSON cannot say directly (see [`ValueClass`]).

use base64::Engine;
use serde_json::Value;

use super::schema::{TableColumn, ValueClass};
use crate::mapping::Row;

/// Appends `row` as one `COPY` text line (its values in `columns` order, looked up by the
/// mapped names `names`) to `out`; `Err` says which column's value cannot be written, and
/// `out` is left as it was.
pub(super) fn push_row(
    out: &mut Vec<u8>,
    row: &Row,
    names: &[String],
    columns: &[TableColumn],
) -> Result<(), String> {
    let start = out.len();
    for (position, (name, column)) in names.iter().zip(columns).enumerate() {
        if position > 0 {
            out.push(b'\t');
        }
        let value = row.get(name).unwrap_or(&Value::Null);
        if let Err(why) = push_value(out, value, column.class) {
            out.truncate(start);
            return Err(format!("column `{}` ({}): {why}", column.name, column.ty));
        }
    }
    out.push(b'\n');
    Ok(())
}

fn push_value(out: &mut Vec<u8>, value: &Value, class: ValueClass) -> Result<(), String> {
    match (value, class) {
        (Value::Null, _) => out.extend_from_slice(b"\\N"),
        (Value::Bool(true), ValueClass::Boolean) => out.push(b't'),
        (Value::Bool(false), ValueClass::Boolean) => out.push(b'f'),
        (value, ValueClass::Json) => {
            let text = serde_json::to_string(value).expect("a JSON value serializes");
            push_text(out, &text)?;
        }
        (Value::String(text), ValueClass::Bytes) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|e| format!("not base64: {e}"))?;
            // `\x` in bytea's hex form; its backslash doubled for COPY text.
            out.extend_from_slice(b"\\\\x");
            const HEX: &[u8; 16] = b"0123456789abcdef";
            for byte in bytes {
                out.push(HEX[usize::from(byte >> 4)]);
                out.push(HEX[usize::from(byte & 0x0f)]);
            }
        }
        (_, ValueClass::Bytes) => return Err("expected base64 text".into()),
        (Value::String(text), _) => push_text(out, text)?,
        (Value::Number(number), _) => out.extend_from_slice(number.to_string().as_bytes()),
        (Value::Bool(flag), _) => out.extend_from_slice(if *flag { b"true" } else { b"false" }),
        (value @ (Value::Array(_) | Value::Object(_)), _) => {
            let text = serde_json::to_string(value).expect("a JSON value serializes");
            push_text(out, &text)?;
        }
    }
    Ok(())
}

/// `text` with COPY's escapes. PostgreSQL text cannot hold NUL, so a value with one fails
/// here, alone.
fn push_text(out: &mut Vec<u8>, text: &str) -> Result<(), String> {
    if text.contains('\0') {
        return Err("the value contains a NUL character, which PostgreSQL text cannot hold".into());
    }
    let bytes = text.as_bytes();
    let mut plain = 0;
    for (at, byte) in bytes.iter().enumerate() {
        let escaped: &[u8] = match byte {
            b'\\' => b"\\\\",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            _ => continue,
        };
        out.extend_from_slice(&bytes[plain..at]);
        out.extend_from_slice(escaped);
        plain = at + 1;
    }
    out.extend_from_slice(&bytes[plain..]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn column(name: &str, class: ValueClass) -> TableColumn {
        TableColumn {
            name: name.into(),
            ty: "t".into(),
            class,
            not_null: false,
            has_default: false,
            generated: false,
        }
    }

    #[test]
    fn postgres_copy_text_escapes_and_prepares_by_column_type() {
        let row = Row::from_object(
            json!({"s": "a\tb\\c\nd", "n": 12.5, "j": "quoted", "b": "AAH/", "f": false, "x": null})
                .as_object()
                .cloned()
                .unwrap(),
        );
        let names: Vec<String> = ["s", "n", "j", "b", "f", "x"].map(String::from).to_vec();
        let columns = [
            column("s", ValueClass::Text),
            column("n", ValueClass::Text),
            column("j", ValueClass::Json),
            column("b", ValueClass::Bytes),
            column("f", ValueClass::Boolean),
            column("x", ValueClass::Text),
        ];
        let mut out = Vec::new();
        push_row(&mut out, &row, &names, &columns).expect("encodes");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "a\\tb\\\\c\\nd\t12.5\t\"quoted\"\t\\\\x0001ff\tf\t\\N\n"
        );
    }

    #[test]
    fn postgres_copy_value_that_cannot_be_written_fails_alone_naming_its_column() {
        let row = Row::from_object(json!({"s": "nul\u{0}"}).as_object().cloned().unwrap());
        let mut out = b"earlier\n".to_vec();
        let why = push_row(
            &mut out,
            &row,
            &["s".to_string()],
            &[column("s", ValueClass::Text)],
        )
        .unwrap_err();
        assert!(
            why.starts_with("column `s` (t): the value contains a NUL"),
            "{why}"
        );
        assert_eq!(out, b"earlier\n", "nothing of the row is left behind");
    }
}
