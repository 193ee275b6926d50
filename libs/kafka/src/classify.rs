//! Which database errors are worth waiting out.
//!
//! A consumer retries a [`HandlerError::Retryable`] without limit (the partition paused,
//! `/readyz` saying why) and dead-letters a [`HandlerError::Permanent`] at once. So the line
//! between them decides whether an outage loses events (transient called permanent) or one bad
//! event blocks its partition for good (permanent called transient).
//!
//! Transient: the connection could not be made or broke (I/O, TLS, pool timeouts, a closed or
//! crashed pool, protocol desyncs after a broken connection), and SQLSTATE classes
//! `08` (connection exception), `53` (insufficient resources: too many connections, disk
//! full), `57` (operator intervention: admin shutdown, cannot connect now, statement timeout),
//! `58` (system error), `40001`/`40P01` (serialization failure, deadlock: retry the
//! transaction), `55P03` (lock not available) and `25006` (read-only transaction: a standby
//! during failover).
//!
//! Permanent: everything else, chiefly class `23` (a constraint refuses this event's data),
//! `22` (data exception: the event's values do not fit), `42` (the statement itself is wrong),
//! decoding errors and `RowNotFound` (the event names something that is not there). Those
//! will fail the same way on every retry; dead-lettered, they can be replayed once the cause
//! is fixed (`POST /v1/admin/dead-letters/{id}/replay`).

use crate::HandlerError;

/// Whether `error` may go away by itself (the database comes back, a lock is released).
pub fn transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| transient_sqlstate(&code)),
        _ => false,
    }
}

/// Whether a SQLSTATE names a condition that passes.
pub fn transient_sqlstate(code: &str) -> bool {
    let class = code.get(..2).unwrap_or_default();
    matches!(class, "08" | "53" | "57" | "58")
        || matches!(code, "40001" | "40P01" | "55P03" | "25006")
}

impl HandlerError {
    /// A database error, classified: retried while it may pass, dead-lettered when it cannot.
    pub fn from_sqlx(error: sqlx::Error) -> Self {
        if transient(&error) {
            HandlerError::Retryable(error.into())
        } else {
            HandlerError::Permanent(error.into())
        }
    }
}

impl From<sqlx::Error> for HandlerError {
    fn from(error: sqlx::Error) -> Self {
        HandlerError::from_sqlx(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_trouble_is_transient() {
        assert!(transient(&sqlx::Error::PoolTimedOut));
        assert!(transient(&sqlx::Error::PoolClosed));
        assert!(transient(&sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused"
        ))));
        for code in [
            "08006", "08001", "57P01", "57P03", "57014", "53300", "40001", "40P01",
        ] {
            assert!(transient_sqlstate(code), "{code}");
        }
    }

    #[test]
    fn refusals_of_the_data_are_permanent() {
        assert!(!transient(&sqlx::Error::RowNotFound));
        assert!(!transient(&sqlx::Error::ColumnNotFound("x".into())));
        // unique, foreign key, check, not null; invalid text, value too long; undefined table
        for code in [
            "23505", "23503", "23514", "23502", "22P02", "22001", "42P01", "XX000",
        ] {
            assert!(!transient_sqlstate(code), "{code}");
        }
        assert!(matches!(
            HandlerError::from_sqlx(sqlx::Error::RowNotFound),
            HandlerError::Permanent(_)
        ));
        assert!(matches!(
            HandlerError::from(sqlx::Error::PoolTimedOut),
            HandlerError::Retryable(_)
        ));
    }
}
