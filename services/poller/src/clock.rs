//! The poller's clock: wall-clock milliseconds since the Unix epoch, as written into events
//! (`ts_ms`) and state records (`committed_at_ms`). Informational only: no decision about what
//! to emit depends on it (positions are warehouse values, not poller time).

/// Now, in milliseconds since the Unix epoch (UTC).
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
