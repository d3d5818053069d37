//! What a Cosmos DB status means for a document or a unit: retry, refuse the document alone,
//! or stop.

use azure_data_cosmos::CosmosError;

/// How the sink reacts to an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Class {
    /// 429: too many requests; slow down and retry after the time the server gave.
    Throttled,
    /// 408, 410, 449, 5xx, and the SDK's own transport failures and timeouts: retry.
    Transient,
    /// 400, 409, 413: the document itself is refused; it fails alone.
    Document,
    /// 401, 403, 404 and the rest: a wrong key, a missing container; retrying cannot help.
    Fatal,
}

/// The class of `error` by its HTTP status.
pub(super) fn classify(error: &CosmosError) -> Class {
    class_of(u16::from(error.status().status_code()))
}

fn class_of(status: u16) -> Class {
    match status {
        429 => Class::Throttled,
        408 | 410 | 449 | 500..=599 => Class::Transient,
        400 | 409 | 413 => Class::Document,
        _ => Class::Fatal,
    }
}

/// `status/substatus: message` from the service, without the SDK's diagnostics dump.
pub(super) fn describe(error: &CosmosError) -> String {
    let text = error.to_string();
    let first_line = text.lines().next().unwrap_or_default();
    let mut short: String = first_line.chars().take(300).collect();
    if short.len() < first_line.len() {
        short.push('…');
    }
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosmos_statuses_are_classified_as_documented() {
        assert_eq!(class_of(429), Class::Throttled);
        for status in [408, 410, 449, 503, 500] {
            assert_eq!(class_of(status), Class::Transient, "{status}");
        }
        for status in [400, 409, 413] {
            assert_eq!(class_of(status), Class::Document, "{status}");
        }
        for status in [401, 403, 404] {
            assert_eq!(class_of(status), Class::Fatal, "{status}");
        }
    }
}
