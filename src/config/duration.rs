//! Durations as Istio reads them: Go's `time.ParseDuration` grammar, then Istio's
//! `ValidateDuration` (at least 1ms, whole milliseconds).

use std::time::Duration;

/// Parses Go duration syntax: `[-+]?(\d*\.?\d+(ns|us|µs|μs|ms|s|m|h))+` or `0`.
pub fn parse_go(s: &str) -> Result<Duration, String> {
    let err = || format!("time: invalid duration {s:?}");
    let (neg, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(err());
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let num_len = rest.bytes().take_while(|b| b.is_ascii_digit() || *b == b'.').count();
        if num_len == 0 {
            return Err(err());
        }
        let number: f64 = rest[..num_len].parse().map_err(|_| err())?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let nanos_per_unit = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => return Err(format!("time: missing unit in duration {s:?}")),
            u => return Err(format!("time: unknown unit {u:?} in duration {s:?}")),
        };
        total += number * nanos_per_unit;
        rest = &rest[unit_len..];
    }
    if neg && total > 0.0 {
        return Err("duration must be greater than 1ms".into());
    }
    if total > u64::MAX as f64 {
        return Err(format!("time: invalid duration {s:?}"));
    }
    Ok(Duration::from_nanos(total.round() as u64))
}

/// Istio's `ValidateDuration` on top of Go parsing.
pub fn parse_istio(s: &str) -> Result<Duration, String> {
    let d = parse_go(s)?;
    if d < Duration::from_millis(1) {
        return Err("duration must be greater than 1ms".into());
    }
    if d.subsec_nanos() % 1_000_000 != 0 {
        return Err("only durations to ms precision are supported".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_grammar() {
        assert_eq!(parse_go("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_go("10ms"), Ok(Duration::from_millis(10)));
        assert_eq!(parse_go("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_go("300µs"), Ok(Duration::from_micros(300)));
        assert_eq!(parse_go("0"), Ok(Duration::ZERO));
        assert!(parse_go("1d").is_err());
        assert!(parse_go("10").is_err());
        assert!(parse_go("1h 30m").is_err());
        assert!(parse_go("").is_err());
    }

    #[test]
    fn istio_rules() {
        assert_eq!(parse_istio("1ms"), Ok(Duration::from_millis(1)));
        assert_eq!(parse_istio("0.5s"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_istio("500us"), Err("duration must be greater than 1ms".into()));
        assert_eq!(parse_istio("1500us"), Err("only durations to ms precision are supported".into()));
        assert_eq!(parse_istio("0"), Err("duration must be greater than 1ms".into()));
    }
}
