//! The caching policy: `max-age` bounded by the schedule and spread, ETags, `If-None-Match`.

use super::*;

/// `max-age` in seconds: at most `prePublish`, and never past the planner's next transition
/// (publication of the next key, activation, removal of a retired key).
pub fn max_age(state: &SetState, s: &plan::Settings, now: DateTime<Utc>) -> i64 {
    let pre = s.pre_publish.num_seconds();
    let until_change = plan::next_transition(state, s, now).map(|t| (t - now).num_seconds());
    pre.min(until_change.unwrap_or(pre)).max(0)
}

/// `max-age` with a spread: up to a tenth of `bound` taken off at random (`random`), so the
/// caches of verifiers that fetched in the same second do not all expire in the same second.
/// Never longer than `bound`, so never past the next change.
pub fn spread_max_age(bound: i64, random: u32) -> i64 {
    bound - i64::from(random) % (bound / 10 + 1)
}

pub(super) fn etag(bytes: &[u8]) -> String {
    format!(
        "\"{}\"",
        URL_SAFE_NO_PAD.encode(&Sha256::digest(bytes)[..18])
    )
}

pub(super) fn if_none_match(headers: &HeaderMap, tag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().trim_start_matches("W/"))
        .any(|v| v == tag || v == "*")
}

pub(super) fn cache_control(max_age: i64) -> HeaderValue {
    HeaderValue::from_str(&format!("public, max-age={max_age}")).expect("ascii")
}
