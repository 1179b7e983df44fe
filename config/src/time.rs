//! How Duet prints a point in time, everywhere (HTTP API, CLI, logs): RFC 3339 in UTC with
//! milliseconds, `2026-11-25T10:00:00.000Z`.

/// The latest time Duet accepts anywhere (event times, bucket times, query ranges):
/// 9999-12-31T23:59:59.999Z. Arithmetic on times up to it cannot overflow.
pub const MAX_TIME_MS: i64 = 253_402_300_799_999;

/// Formats epoch milliseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC; proleptic Gregorian, so any
/// `i64` prints, years beyond 9999 with more digits).
pub fn iso(ms: i64) -> String {
    if let Some(b) = iso_bytes(ms) {
        return b.iter().map(|&c| char::from(c)).collect();
    }
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1_000 % 60,
        in_day % 1_000
    )
}

/// [`iso`] of a time in the years 0 to 9999 as its 24 ASCII bytes, without formatting
/// machinery (the JSON answers print a time per row); `None` for other years.
pub fn iso_bytes(ms: i64) -> Option<[u8; 24]> {
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    if !(0..=9999).contains(&y) {
        return None;
    }
    let mut b = *b"0000-00-00T00:00:00.000Z";
    put_digits(&mut b, 0, 4, y);
    put_digits(&mut b, 5, 2, i64::from(m));
    put_digits(&mut b, 8, 2, i64::from(d));
    put_time_of_day(&mut b, in_day);
    Some(b)
}

/// Writes the last `width` decimal digits of `v` (not negative) at `b[at..at + width]`.
fn put_digits(b: &mut [u8; 24], at: usize, width: usize, mut v: i64) {
    for i in (at..at + width).rev() {
        b[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// Writes `HH:MM:SS.mmm` of `in_day` (milliseconds since midnight) into an ISO time's bytes.
fn put_time_of_day(b: &mut [u8; 24], in_day: i64) {
    put_digits(b, 11, 2, in_day / 3_600_000);
    put_digits(b, 14, 2, in_day / 60_000 % 60);
    put_digits(b, 17, 2, in_day / 1_000 % 60);
    put_digits(b, 20, 3, in_day % 1_000);
}

/// [`iso_bytes`] for times that come in runs within a day (the rows of an answer, in bucket
/// order): the date part is computed once per day, only the time of day per call.
#[derive(Debug, Clone, Default)]
pub struct IsoWriter {
    /// The day last written (days since 1970-01-01) and its `YYYY-MM-DD` bytes, or `None`
    /// when its year is out of 0 to 9999.
    day: Option<(i64, Option<[u8; 10]>)>,
}

impl IsoWriter {
    /// The same bytes as [`iso_bytes`]`(ms)`.
    pub fn bytes(&mut self, ms: i64) -> Option<[u8; 24]> {
        let days = ms.div_euclid(86_400_000);
        let date = match self.day {
            Some((d, date)) if d == days => date,
            _ => {
                let date = days.checked_mul(86_400_000).and_then(iso_bytes).map(|b| {
                    let mut date = [0u8; 10];
                    date.copy_from_slice(&b[..10]);
                    date
                });
                self.day = Some((days, date));
                date
            }
        }?;
        let mut b = *b"0000-00-00T00:00:00.000Z";
        b[..10].copy_from_slice(&date);
        put_time_of_day(&mut b, ms.rem_euclid(86_400_000));
        Some(b)
    }
}

/// Year, month, day of a count of days since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_utc_with_milliseconds() {
        assert_eq!(iso(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso(1_796_032_800_000), "2026-11-30T10:00:00.000Z");
        assert_eq!(iso(1_709_164_800_123), "2024-02-29T00:00:00.123Z");
        assert_eq!(iso(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(iso(253_402_300_799_999), "9999-12-31T23:59:59.999Z");
        // no panic at the extremes
        let _ = (iso(i64::MIN), iso(i64::MAX));
        assert_eq!(iso(-62_167_219_200_001), "-001-12-31T23:59:59.999Z");
    }

    proptest::proptest! {
        /// The byte formatter prints what the general one does, for every time it covers.
        #[test]
        fn bytes_and_text_agree(ms in -62_167_219_200_000i64..=MAX_TIME_MS) {
            let days = ms.div_euclid(86_400_000);
            let in_day = ms.rem_euclid(86_400_000);
            let (y, m, d) = civil_from_days(days);
            let text = format!(
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
                in_day / 3_600_000,
                in_day / 60_000 % 60,
                in_day / 1_000 % 60,
                in_day % 1_000
            );
            let bytes = iso_bytes(ms).unwrap();
            proptest::prop_assert_eq!(std::str::from_utf8(&bytes).unwrap(), text.as_str());
            proptest::prop_assert_eq!(iso(ms), text);
        }

        /// The day-caching writer prints what the plain one does, in any order of times.
        #[test]
        fn the_writer_agrees_with_iso_bytes(
            start in proptest::prop_oneof![-62_167_219_200_000i64..=MAX_TIME_MS, proptest::num::i64::ANY],
            steps in proptest::collection::vec(proptest::prop_oneof![0i64..120_000, -86_400_000i64..86_400_000, proptest::num::i64::ANY], 1..40),
        ) {
            let mut w = IsoWriter::default();
            let mut ms = start;
            for step in steps {
                proptest::prop_assert_eq!(w.bytes(ms), iso_bytes(ms));
                ms = ms.saturating_add(step);
            }
        }
    }
}
