//! Pages of one work item: which URL comes next, what a body holds, and the position a
//! resumed reader starts from. Pure: no I/O, so every pagination kind is tested here.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use url::Url;

use super::settings::Pagination;
use crate::mapping::json_type;

/// Where a reader of one item is: the page it asks for next. Stored with the producer's
/// checkpoint (as JSON), so a producer that dies resumes at this page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Position {
    /// Pages already read (the next one is page `pages + 1` in messages).
    pub pages: u64,
    /// The number of the next record in the item, 1-based (dead letters name it as the line).
    pub line: u64,
    /// How to ask for the next page.
    pub next: Next,
    /// The most records any page of the item held so far: a page shorter than `size` is
    /// the last only if it is also shorter than this, so an API that caps the page size
    /// below `size` is read to its end.
    #[serde(default)]
    pub largest: u64,
}

/// How to ask for the next page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Next {
    /// The URL as configured.
    First,
    /// A cursor from the previous body.
    Cursor(String),
    /// A page number or an offset.
    Number(u64),
    /// A URL from the previous response's `Link` header.
    Url(String),
}

impl Position {
    /// The start of an item.
    pub(super) fn start(pagination: &Pagination) -> Position {
        let next = match pagination {
            Pagination::Page { start, .. } | Pagination::Offset { start, .. } => {
                Next::Number(*start)
            }
            _ => Next::First,
        };
        Position {
            pages: 0,
            line: 1,
            next,
            largest: 0,
        }
    }

    /// The position as stored.
    pub(super) fn encode(&self) -> String {
        serde_json::to_string(self).expect("a position always serializes")
    }

    /// A stored position; `None` if it is not one (a checkpoint from another kind of source).
    pub(super) fn decode(text: &str) -> Option<Position> {
        serde_json::from_str(text).ok()
    }
}

/// The URL of the page at `next`, from the item's `base` URL.
pub(super) fn page_url(base: &Url, pagination: &Pagination, next: &Next) -> Result<Url, String> {
    let mut url = base.clone();
    match (pagination, next) {
        (_, Next::Url(link)) => {
            // The link itself is not shown: APIs echo query parameters (keys) into it.
            return base
                .join(link)
                .map_err(|error| format!("the next page's link is not a URL: {error}"));
        }
        (_, Next::First) => {}
        (Pagination::Cursor { param, .. }, Next::Cursor(cursor)) => {
            url.query_pairs_mut().append_pair(param, cursor);
        }
        (
            Pagination::Page {
                param,
                size_param,
                size,
                ..
            }
            | Pagination::Offset {
                param,
                size_param,
                size,
                ..
            },
            Next::Number(number),
        ) => {
            url.query_pairs_mut()
                .append_pair(param, &number.to_string())
                .append_pair(size_param, &size.to_string());
        }
        _ => return Err("the stored position does not fit this pagination".into()),
    }
    Ok(url)
}

/// What one page held.
#[derive(Debug)]
pub(super) struct Page {
    /// Its records: any JSON values (the reader dead-letters those that are not objects).
    pub records: Vec<Value>,
    /// How to ask for the next page; `None` after the last.
    pub next: Option<Next>,
}

/// Reads the body of the page asked for at `position`. `link` is the response's `Link`
/// header, if any. Errors name the pointer and what was found instead.
pub(super) fn read_page(
    body: &[u8],
    link: Option<&str>,
    records_pointer: &str,
    pagination: &Pagination,
    position: &Position,
) -> Result<Page, String> {
    let current = &position.next;
    let mut body: Value = serde_json::from_slice(body).map_err(|error| {
        format!(
            "the body is not JSON ({error}); it starts with {}",
            start_of(body)
        )
    })?;
    let records = match body.pointer_mut(records_pointer).map(Value::take) {
        Some(Value::Array(records)) => records,
        Some(other) => {
            return Err(format!(
                "`{records_pointer}` in the body is {}, not an array of records",
                json_type(&other)
            ));
        }
        None => {
            return Err(format!(
                "the body has nothing at `{records_pointer}` (the `records` pointer)"
            ));
        }
    };
    let count = records.len() as u64;
    let next = match pagination {
        Pagination::None => None,
        Pagination::Page { size, .. } | Pagination::Offset { size, .. }
            if count == 0 || (count < *size && count < position.largest) =>
        {
            None
        }
        Pagination::Page { .. } => match current {
            Next::Number(page) => Some(Next::Number(page + 1)),
            _ => None,
        },
        Pagination::Offset { .. } => match current {
            Next::Number(offset) => Some(Next::Number(offset + count)),
            _ => None,
        },
        Pagination::Cursor { next, .. } => match body.pointer(next) {
            None | Some(Value::Null) => None,
            Some(Value::String(cursor)) if cursor.is_empty() => None,
            Some(Value::String(cursor)) => Some(Next::Cursor(cursor.clone())),
            Some(Value::Number(cursor)) => Some(Next::Cursor(cursor.to_string())),
            Some(other) => {
                return Err(format!(
                    "the next cursor at `{next}` is {}, not a string or a number",
                    json_type(other)
                ));
            }
        },
        Pagination::Link => link.and_then(next_link).map(Next::Url),
    };
    if next.as_ref() == Some(current) {
        return Err(
            "the API named the page just read as the next one: reading on would never end".into(),
        );
    }
    Ok(Page { records, next })
}

/// The target of `rel="next"` in an RFC 8288 `Link` header value.
pub(super) fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|link| {
        let (target, params) = link.trim().split_once('>')?;
        let target = target.trim().strip_prefix('<')?;
        params
            .split(';')
            .filter_map(|param| param.trim().split_once('='))
            .any(|(name, value)| {
                name.trim().eq_ignore_ascii_case("rel")
                    && value
                        .trim()
                        .trim_matches('"')
                        .split_whitespace()
                        .any(|rel| rel.eq_ignore_ascii_case("next"))
            })
            .then(|| target.to_string())
    })
}

/// The first bytes of a body, for messages.
pub(super) fn start_of(body: &[u8]) -> String {
    const SHOWN: usize = 120;
    let text = String::from_utf8_lossy(&body[..body.len().min(SHOWN)]);
    let more = if body.len() > SHOWN { "..." } else { "" };
    format!("`{}{more}`", text.replace(['\n', '\r'], " "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cursor() -> Pagination {
        Pagination::Cursor {
            param: "cursor".into(),
            next: "/meta/next_cursor".into(),
        }
    }

    fn page() -> Pagination {
        Pagination::Page {
            param: "page".into(),
            size_param: "per_page".into(),
            size: 2,
            start: 1,
        }
    }

    fn body(value: Value) -> Vec<u8> {
        value.to_string().into_bytes()
    }

    fn at(next: Next, largest: u64) -> Position {
        Position {
            pages: 1,
            line: 1,
            next,
            largest,
        }
    }

    #[test]
    fn http_pages_follow_a_cursor_until_it_is_null() {
        let base = Url::parse("https://api.test/v1/users?active=true").unwrap();
        let first = Position::start(&cursor());
        assert_eq!(
            page_url(&base, &cursor(), &first.next).unwrap().as_str(),
            "https://api.test/v1/users?active=true"
        );
        let one = read_page(
            &body(json!({"data": [{"id": 1}], "meta": {"next_cursor": "a b"}})),
            None,
            "/data",
            &cursor(),
            &at(Next::First, 0),
        )
        .unwrap();
        assert_eq!(one.records.len(), 1);
        let next = one.next.unwrap();
        assert_eq!(
            page_url(&base, &cursor(), &next).unwrap().as_str(),
            "https://api.test/v1/users?active=true&cursor=a+b"
        );
        let last = read_page(
            &body(json!({"data": [], "meta": {"next_cursor": null}})),
            None,
            "/data",
            &cursor(),
            &at(next.clone(), 1),
        )
        .unwrap();
        assert!(last.next.is_none());
        let numeric = read_page(
            &body(json!({"data": [], "meta": {"next_cursor": 7}})),
            None,
            "/data",
            &cursor(),
            &at(next, 1),
        )
        .unwrap();
        assert_eq!(numeric.next, Some(Next::Cursor("7".into())));
    }

    #[test]
    fn http_pages_by_number_and_offset_end_on_a_short_page() {
        let base = Url::parse("https://api.test/users").unwrap();
        let start = Position::start(&page());
        assert_eq!(start.next, Next::Number(1));
        assert_eq!(
            page_url(&base, &page(), &start.next).unwrap().as_str(),
            "https://api.test/users?page=1&per_page=2"
        );
        let full = read_page(&body(json!([1, 2])), None, "", &page(), &start).unwrap();
        assert_eq!(full.next, Some(Next::Number(2)));
        let short = read_page(
            &body(json!([3])),
            None,
            "",
            &page(),
            &at(Next::Number(2), 2),
        )
        .unwrap();
        assert_eq!(short.next, None);
        // An API that caps the page size below `size` serves short pages throughout: they are
        // followed until one is shorter than the others, or empty.
        let capped = read_page(&body(json!([1])), None, "", &page(), &start).unwrap();
        assert_eq!(capped.next, Some(Next::Number(2)));
        let capped = read_page(
            &body(json!([2])),
            None,
            "",
            &page(),
            &at(Next::Number(2), 1),
        )
        .unwrap();
        assert_eq!(capped.next, Some(Next::Number(3)));
        let empty =
            read_page(&body(json!([])), None, "", &page(), &at(Next::Number(3), 1)).unwrap();
        assert_eq!(empty.next, None);

        let offset = Pagination::Offset {
            param: "offset".into(),
            size_param: "limit".into(),
            size: 2,
            start: 0,
        };
        let full = read_page(
            &body(json!([1, 2])),
            None,
            "",
            &offset,
            &at(Next::Number(4), 2),
        )
        .unwrap();
        assert_eq!(full.next, Some(Next::Number(6)));
        assert_eq!(
            page_url(&base, &offset, &Next::Number(6)).unwrap().as_str(),
            "https://api.test/users?offset=6&limit=2"
        );
    }

    #[test]
    fn http_pages_follow_a_link_header_relative_or_absolute() {
        let header =
            r#"<https://api.test/users?cursor=2>; rel="prev", </users?cursor=9>; rel="next last""#;
        assert_eq!(next_link(header).as_deref(), Some("/users?cursor=9"));
        assert_eq!(next_link(r#"<https://x/a>; rel="prev""#), None);
        let page = read_page(
            &body(json!({"data": []})),
            Some(header),
            "/data",
            &Pagination::Link,
            &at(Next::First, 0),
        )
        .unwrap();
        let base = Url::parse("https://api.test/users").unwrap();
        assert_eq!(
            page_url(&base, &Pagination::Link, &page.next.unwrap())
                .unwrap()
                .as_str(),
            "https://api.test/users?cursor=9"
        );
    }

    #[test]
    fn http_pages_refuse_bodies_that_do_not_fit_and_endless_cursors() {
        let not_json = read_page(
            b"<html>down</html>",
            None,
            "/data",
            &cursor(),
            &at(Next::First, 0),
        )
        .unwrap_err();
        assert!(
            not_json.contains("not JSON") && not_json.contains("<html>"),
            "{not_json}"
        );
        let missing = read_page(
            &body(json!({"items": []})),
            None,
            "/data",
            &cursor(),
            &at(Next::First, 0),
        )
        .unwrap_err();
        assert!(missing.contains("nothing at `/data`"), "{missing}");
        let object = read_page(
            &body(json!({"data": {}})),
            None,
            "/data",
            &cursor(),
            &at(Next::First, 0),
        )
        .unwrap_err();
        assert!(object.contains("an object, not an array"), "{object}");
        let endless = read_page(
            &body(json!({"data": [], "meta": {"next_cursor": "c"}})),
            None,
            "/data",
            &cursor(),
            &at(Next::Cursor("c".into()), 0),
        )
        .unwrap_err();
        assert!(endless.contains("never end"), "{endless}");
    }

    #[test]
    fn http_position_round_trips_as_text() {
        let position = Position {
            pages: 3,
            line: 301,
            next: Next::Cursor("abc".into()),
            largest: 100,
        };
        assert_eq!(Position::decode(&position.encode()), Some(position));
        assert_eq!(Position::decode("7"), None);
    }
}
