//! What earlier write attempts of a unit landed in this process, so that the consumer's retry
//! of the unit sends only the rest. A retry after throttling then costs no request units for
//! documents already written, and a unit of many requests makes progress however often one of
//! them is throttled (retrying it whole would need every request to pass in the same attempt).
//! Forgetting is always safe: documents have deterministic ids, so a resend lands them once.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use crate::sink::Failure;

/// Units remembered at most; a unit redelivered to another consumer is never asked for here
/// again, so the oldest are dropped.
const KEEP: usize = 256;

/// Per request of a unit (its position in the unit's requests): the documents it refused.
pub(super) type Requests = HashMap<usize, Vec<Failure>>;

/// The requests that landed, per unit id, for units whose last attempt failed.
#[derive(Default)]
pub(super) struct Landed(Mutex<VecDeque<(String, Requests)>>);

impl Landed {
    /// Takes what earlier attempts of `unit` landed (nothing for a first attempt).
    pub(super) fn take(&self, unit: &str) -> Requests {
        let mut units = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match units.iter().position(|(id, _)| id == unit) {
            Some(at) => units
                .remove(at)
                .map(|(_, requests)| requests)
                .unwrap_or_default(),
            None => Requests::new(),
        }
    }

    /// Keeps what a failed attempt of `unit` landed, for its next attempt.
    pub(super) fn keep(&self, unit: &str, requests: Requests) {
        if requests.is_empty() {
            return;
        }
        let mut units = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if units.len() >= KEEP {
            units.pop_front();
        }
        units.push_back((unit.to_string(), requests));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosmos_landed_requests_are_handed_back_once_and_the_oldest_are_dropped() {
        let landed = Landed::default();
        assert!(landed.take("u1").is_empty());
        landed.keep("u1", Requests::from([(3, Vec::new())]));
        assert_eq!(landed.take("u1").len(), 1);
        assert!(landed.take("u1").is_empty(), "taken once");
        for n in 0..=KEEP {
            landed.keep(&format!("u{n}"), Requests::from([(0, Vec::new())]));
        }
        assert!(landed.take("u0").is_empty(), "the oldest was dropped");
        assert_eq!(landed.take(&format!("u{KEEP}")).len(), 1);
    }
}
