//! The wait before a transport tries a transiently failed message again: exponential, capped.

use std::time::Duration;

/// The wait before attempt `attempt + 1` after attempt `attempt` (1-based) failed: `first`,
/// doubled for each further attempt, at most `max`.
pub fn after(first: Duration, max: Duration, attempt: u32) -> Duration {
    let factor = 1u32
        .checked_shl(attempt.saturating_sub(1))
        .unwrap_or(u32::MAX);
    first.saturating_mul(factor).min(max)
}
