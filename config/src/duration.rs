//! Human durations in config files: `500ms`, `30s`, `1m`, `1h`, `1d`.

use crate::error::{Error, Result};

/// The longest duration accepted: 100 years.
pub const MAX_MS: i64 = 100 * 366 * 86_400_000;

/// Parses a duration such as `1m` into milliseconds (positive, at most [`MAX_MS`]).
pub fn parse_millis(text: &str) -> Result<i64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: i64 = num
        .parse()
        .map_err(|_| Error::Duration { text: text.into() })?;
    let factor = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(Error::Duration { text: text.into() }),
    };
    n.checked_mul(factor)
        .filter(|v| *v > 0 && *v <= MAX_MS)
        .ok_or_else(|| Error::Duration { text: text.into() })
}

/// Renders milliseconds in the largest unit that divides them exactly.
pub fn format_millis(ms: i64) -> String {
    for (unit, f) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms % f == 0 {
            return format!("{}{unit}", ms / f);
        }
    }
    format!("{ms}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_millis("500ms").unwrap(), 500);
        assert_eq!(parse_millis("30s").unwrap(), 30_000);
        assert_eq!(parse_millis("1m").unwrap(), 60_000);
        assert_eq!(parse_millis("2h").unwrap(), 7_200_000);
        assert_eq!(parse_millis("1d").unwrap(), 86_400_000);
        assert_eq!(format_millis(3_600_000), "1h");
        assert_eq!(format_millis(1500), "1500ms");
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "m",
            "10",
            "1w",
            "-1s",
            "0s",
            "1.5m",
            "99999999999d",
            "٣s",
        ] {
            assert!(parse_millis(bad).is_err(), "{bad}");
        }
    }
}
