//! The ledger row every SQL table sink writes with a unit's rows, and the fencing token it is
//! checked against: their shape and limits, the same in every database.

use crate::sink::{Failure, Fence};

/// The ledger of applied units: one row per (sink target, unit id), written in the same
/// transaction as the unit's rows.
pub(in crate::sink) const LEDGER: &str = "stevedore_applied";

/// The highest fencing token seen per job, in the ledger's schema.
pub(in crate::sink) const FENCES: &str = "stevedore_fence";

/// The longest unit id the ledger's key holds.
pub(in crate::sink) const MAX_UNIT_ID: usize = 300;

/// The longest job name the fence table holds.
pub(in crate::sink) const MAX_JOB: usize = 128;

/// A fencing token as the fence table holds it: the job, and the token as a `bigint`.
#[derive(Debug, Clone, Copy)]
pub(in crate::sink) struct FenceCheck<'a> {
    /// The job.
    pub job: &'a str,
    /// The token.
    pub token: i64,
}

impl FenceCheck<'_> {
    /// `fence` as the fence table holds it; `Err` says why it cannot be.
    pub(in crate::sink) fn of(fence: &Fence) -> Result<FenceCheck<'_>, String> {
        if fence.job.chars().count() > MAX_JOB {
            return Err(format!(
                "job name `{}` is longer than the fence table's {MAX_JOB} characters",
                fence.job
            ));
        }
        let token = i64::try_from(fence.token).map_err(|_| {
            format!(
                "fencing token {} does not fit the fence table's bigint",
                fence.token
            )
        })?;
        Ok(FenceCheck {
            job: &fence.job,
            token,
        })
    }
}

/// A unit id the ledger can hold; `Err` says why not.
pub(in crate::sink) fn check_unit_id(unit_id: &str) -> Result<(), String> {
    if unit_id.chars().count() > MAX_UNIT_ID {
        return Err(format!(
            "unit id `{unit_id}` is longer than the ledger's {MAX_UNIT_ID} characters"
        ));
    }
    Ok(())
}

/// One ledger row.
pub(in crate::sink) struct LedgerEntry<'a> {
    /// The sink's table, `schema.name`.
    pub target: &'a str,
    /// The unit.
    pub unit_id: &'a str,
    /// Rows landed.
    pub written: u64,
    /// Entries that did not land.
    pub failed: usize,
    /// Those entries, as JSON.
    pub failures: String,
    /// When, `YYYY-MM-DDTHH:MM:SS.fff` UTC.
    pub applied_at: String,
    /// The writer's fencing token, checked before the entry is written.
    pub fence: Option<FenceCheck<'a>>,
}

impl<'a> LedgerEntry<'a> {
    /// The ledger row of a unit with these counts, applied now.
    pub(in crate::sink) fn now(
        target: &'a str,
        unit_id: &'a str,
        fence: Option<FenceCheck<'a>>,
        written: u64,
        failures: &[Failure],
    ) -> LedgerEntry<'a> {
        LedgerEntry {
            target,
            unit_id,
            fence,
            written,
            failed: failures.len(),
            failures: serde_json::to_string(failures).expect("failures serialize"),
            applied_at: chrono::DateTime::from_timestamp_millis(crate::clock::now_ms() as i64)
                .unwrap_or_default()
                .format("%Y-%m-%dT%H:%M:%S%.3f")
                .to_string(),
        }
    }
}
