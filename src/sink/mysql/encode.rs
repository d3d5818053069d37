//! Rows as the server reads them: tab-separated `LOAD DATA` text (the statement's default
//! format: `\N` for NULL; backslash, tab, newline, carriage return, NUL and Ctrl-Z escaped),
//! or, when `local_infile` is off, the tuples of a multi-row `INSERT`. Either way one buffer
//! per unit and where each row ends in it, so any range of rows is a slice.

use base64::Engine;
use serde_json::Value;

use super::schema::{TableColumn, ValueClass};
use super::sql::push_literal;
use crate::mapping::Row;

/// Which of the two forms a buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Form {
    /// `LOAD DATA LOCAL INFILE` text, one line per row.
    LoadData,
    /// `(v1, v2, ...)` tuples, comma-separated when joined.
    Insert,
}

/// One value, prepared for its column: `None` for NULL.
enum Prepared {
    Null,
    Text(String),
    Bytes(Vec<u8>),
}

fn prepare(value: &Value, class: ValueClass) -> Result<Prepared, String> {
    Ok(match (value, class) {
        (Value::Null, _) => Prepared::Null,
        (Value::Bool(flag), ValueClass::Boolean) => {
            Prepared::Text(if *flag { "1" } else { "0" }.to_string())
        }
        (value, ValueClass::Json) => Prepared::Text(value.to_string()),
        (Value::String(text), ValueClass::Bytes) => Prepared::Bytes(
            base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|e| format!("not base64: {e}"))?,
        ),
        (_, ValueClass::Bytes) => return Err("expected base64 text".into()),
        (Value::String(text), ValueClass::DateTime) => {
            match chrono::DateTime::parse_from_rfc3339(text.trim()) {
                Ok(at) => Prepared::Text(at.naive_utc().format("%Y-%m-%d %H:%M:%S%.f").to_string()),
                Err(_) => Prepared::Text(text.clone()),
            }
        }
        (Value::String(text), _) => Prepared::Text(text.clone()),
        (Value::Number(number), _) => Prepared::Text(number.to_string()),
        (Value::Bool(flag), _) => Prepared::Text(flag.to_string()),
        (value @ (Value::Array(_) | Value::Object(_)), _) => Prepared::Text(value.to_string()),
    })
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends `row` in `form` (its values in `columns` order, looked up by the mapped names
/// `names`) to `out`; `Err` says which column's value cannot be written, and `out` is left as
/// it was.
pub(super) fn push_row(
    out: &mut Vec<u8>,
    form: Form,
    row: &Row,
    names: &[String],
    columns: &[TableColumn],
) -> Result<(), String> {
    let start = out.len();
    if form == Form::Insert {
        out.push(b'(');
    }
    for (position, (name, column)) in names.iter().zip(columns).enumerate() {
        if position > 0 {
            out.push(if form == Form::Insert { b',' } else { b'\t' });
        }
        let value = row.get(name).unwrap_or(&Value::Null);
        match prepare(value, column.class) {
            Ok(prepared) => push_prepared(out, form, prepared),
            Err(why) => {
                out.truncate(start);
                return Err(format!("column `{}` ({}): {why}", column.name, column.ty));
            }
        }
    }
    out.push(if form == Form::Insert { b')' } else { b'\n' });
    Ok(())
}

fn push_prepared(out: &mut Vec<u8>, form: Form, value: Prepared) {
    match (form, value) {
        (Form::LoadData, Prepared::Null) => out.extend_from_slice(b"\\N"),
        (Form::Insert, Prepared::Null) => out.extend_from_slice(b"NULL"),
        (Form::LoadData, Prepared::Bytes(bytes)) => push_hex(out, &bytes),
        (Form::Insert, Prepared::Bytes(bytes)) => {
            out.extend_from_slice(b"X'");
            push_hex(out, &bytes);
            out.push(b'\'');
        }
        (Form::LoadData, Prepared::Text(text)) => {
            for byte in text.bytes() {
                match byte {
                    b'\\' => out.extend_from_slice(b"\\\\"),
                    b'\t' => out.extend_from_slice(b"\\t"),
                    b'\n' => out.extend_from_slice(b"\\n"),
                    b'\r' => out.extend_from_slice(b"\\r"),
                    0 => out.extend_from_slice(b"\\0"),
                    0x1a => out.extend_from_slice(b"\\Z"),
                    byte => out.push(byte),
                }
            }
        }
        (Form::Insert, Prepared::Text(text)) => {
            let mut literal = String::with_capacity(text.len() + 2);
            push_literal(&mut literal, &text);
            out.extend_from_slice(literal.as_bytes());
        }
    }
}

fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    for byte in bytes {
        out.push(HEX[usize::from(byte >> 4)]);
        out.push(HEX[usize::from(byte & 0x0f)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn mysql_rows_encode_as_load_data_text_and_insert_tuples() {
        let row = Row::from_object(
            serde_json::from_str(
                r#"{"a":"x\ty\\z","b":null,"c":true,"d":"AAE=","e":"2026-12-07T10:00:00+02:00","f":{"k":1}}"#,
            )
            .unwrap(),
        );
        let names: Vec<String> = ["a", "b", "c", "d", "e", "f"].map(String::from).to_vec();
        let columns = [
            column("a", ValueClass::Text),
            column("b", ValueClass::Text),
            column("c", ValueClass::Boolean),
            column("d", ValueClass::Bytes),
            column("e", ValueClass::DateTime),
            column("f", ValueClass::Json),
        ];
        let mut text = Vec::new();
        push_row(&mut text, Form::LoadData, &row, &names, &columns).unwrap();
        assert_eq!(
            String::from_utf8(text).unwrap(),
            "x\\ty\\\\z\t\\N\t1\t0001\t2026-12-07 08:00:00\t{\"k\":1}\n"
        );
        let mut tuple = Vec::new();
        push_row(&mut tuple, Form::Insert, &row, &names, &columns).unwrap();
        assert_eq!(
            String::from_utf8(tuple).unwrap(),
            "('x\ty\\\\z',NULL,'1',X'0001','2026-12-07 08:00:00','{\"k\":1}')"
        );
        let bad = Row::from_object(serde_json::from_str(r#"{"d":"%%%"}"#).unwrap());
        let mut out = b"kept".to_vec();
        let why = push_row(
            &mut out,
            Form::LoadData,
            &bad,
            &["d".into()],
            &columns[3..4],
        )
        .unwrap_err();
        assert!(why.contains("not base64"), "{why}");
        assert_eq!(out, b"kept");
    }
}
