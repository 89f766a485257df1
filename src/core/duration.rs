//! Go/Kubernetes duration strings (`90s`, `15m`, `1h30m`, `720h`), as the CRD's CEL rules
//! read them with `duration()`.

use chrono::Duration;

/// Why a duration string was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration {input:?}: {why}")]
pub struct DurationError {
    /// The rejected text.
    pub input: String,
    /// What is wrong with it.
    pub why: &'static str,
}

/// Writes a duration the way [`parse`] reads it, shortest first: `1h30m`, `90s` as `1m30s`,
/// `250ms`, `0s`.
pub fn format(d: Duration) -> String {
    let ms = d.num_milliseconds().max(0);
    if ms == 0 {
        return "0s".into();
    }
    let (h, m, s, rest) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    let mut out = String::new();
    for (n, unit) in [(h, "h"), (m, "m"), (s, "s")] {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    if rest > 0 {
        out.push_str(&format!("{rest}ms"));
    }
    out
}

/// Parses a Go duration string (`"1h30m"`, `"1.5s"`, `"250ms"`). Negative and sign-prefixed
/// durations are rejected: keyturn has no use for them.
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let err = |why| DurationError {
        input: input.to_string(),
        why,
    };
    if input.is_empty() {
        return Err(err("empty"));
    }
    let mut total_ns: i128 = 0;
    let mut rest = input;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| err("missing unit"))?;
        if num_end == 0 {
            return Err(err("expected a number"));
        }
        let (num, after) = rest.split_at(num_end);
        let unit_end = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_end);
        let unit_ns: i128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            "" => return Err(err("missing unit")),
            _ => return Err(err("unknown unit")),
        };
        let (int_part, frac_part) = match num.split_once('.') {
            Some((i, f)) => (i, f),
            None => (num, ""),
        };
        if int_part.is_empty() && frac_part.is_empty() || frac_part.contains('.') {
            return Err(err("malformed number"));
        }
        let int: i128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| err("number too large"))?
        };
        let mut value = int
            .checked_mul(unit_ns)
            .ok_or_else(|| err("number too large"))?;
        let mut scale = unit_ns;
        for d in frac_part.bytes().take(18) {
            scale /= 10;
            value += i128::from(d - b'0') * scale;
        }
        total_ns = total_ns
            .checked_add(value)
            .ok_or_else(|| err("number too large"))?;
        if total_ns > i128::from(i64::MAX) {
            return Err(err("number too large"));
        }
        rest = next;
    }
    Ok(Duration::nanoseconds(total_ns as i64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_what_it_parses() {
        for (text, d) in [
            ("1h30m", Duration::minutes(90)),
            ("1m30s", Duration::seconds(90)),
            ("250ms", Duration::milliseconds(250)),
            ("720h", Duration::hours(720)),
            (
                "2h45m30s500ms",
                Duration::milliseconds((2 * 3600 + 45 * 60 + 30) * 1000 + 500),
            ),
            ("0s", Duration::zero()),
        ] {
            assert_eq!(format(d), text);
            assert_eq!(parse(text).unwrap(), d);
        }
    }

    #[test]
    fn parses_go_forms() {
        assert_eq!(parse("90s").unwrap(), Duration::seconds(90));
        assert_eq!(parse("15m").unwrap(), Duration::minutes(15));
        assert_eq!(parse("1h30m").unwrap(), Duration::minutes(90));
        assert_eq!(parse("720h").unwrap(), Duration::hours(720));
        assert_eq!(parse("1.5s").unwrap(), Duration::milliseconds(1500));
        assert_eq!(parse("250ms").unwrap(), Duration::milliseconds(250));
        assert_eq!(
            parse("2h45m30.5s").unwrap(),
            Duration::milliseconds((2 * 3600 + 45 * 60 + 30) * 1000 + 500)
        );
        assert_eq!(parse("0s").unwrap(), Duration::zero());
        assert_eq!(parse("1us").unwrap(), Duration::microseconds(1));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "1",
            "h",
            "1x",
            "-1s",
            "1.2.3s",
            "1h 30m",
            "99999999999999999999h",
            ".s",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
