//! Date parsing for `date` fields (ISO-8601 and epoch formats) and Elasticsearch date math
//! (`now-1d/d`, `2024-01-01||+1M`).

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc};

/// Parses one date value into epoch milliseconds. `format` is the field's `format` string
/// (`strict_date_optional_time||epoch_millis` by default); numbers are epoch millis unless the
/// format names only `epoch_second`.
pub fn parse_date(text: &str, format: &str) -> Option<i64> {
    let trimmed = text.trim();
    let formats: Vec<&str> = format.split("||").map(str::trim).collect();
    let wants_seconds = formats.contains(&"epoch_second") && !formats.contains(&"epoch_millis");
    if let Some(millis) = parse_iso(trimmed) {
        return Some(millis);
    }
    let looks_numeric = !trimmed.is_empty()
        && trimmed
            .trim_start_matches('-')
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.');
    if looks_numeric {
        let number: f64 = trimmed.parse().ok()?;
        return Some(if wants_seconds {
            (number * 1000.0) as i64
        } else {
            number as i64
        });
    }
    None
}

/// Epoch milliseconds from a JSON number in a date field.
pub fn from_number(number: f64, format: &str) -> i64 {
    if format.contains("epoch_second") && !format.contains("epoch_millis") {
        (number * 1000.0) as i64
    } else {
        number as i64
    }
}

/// `strict_date_optional_time`: `yyyy`, `yyyy-MM`, `yyyy-MM-dd`, with optional
/// `THH:mm[:ss[.SSS]]` and zone (`Z`, `+01:00`, `+0100`); no zone means UTC.
pub fn parse_iso(text: &str) -> Option<i64> {
    if text.len() < 4 || !text.as_bytes()[..4].iter().all(u8::is_ascii_digit) {
        return None;
    }
    if let Ok(parsed) = DateTime::parse_from_rfc3339(text) {
        return Some(parsed.timestamp_millis());
    }
    for pattern in [
        "%Y-%m-%dT%H:%M:%S%.f%z",
        "%Y-%m-%dT%H:%M%z",
        "%Y-%m-%d %H:%M:%S%.f%z",
    ] {
        if let Ok(parsed) = DateTime::parse_from_str(text, pattern) {
            return Some(parsed.timestamp_millis());
        }
    }
    for pattern in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H",
    ] {
        if let Ok(parsed) = NaiveDateTime::parse_from_str(text, pattern) {
            return Some(parsed.and_utc().timestamp_millis());
        }
    }
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Some(date.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis());
    }
    if text.len() == 7 {
        let date = NaiveDate::parse_from_str(&format!("{text}-01"), "%Y-%m-%d").ok()?;
        return Some(date.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis());
    }
    if text.len() == 4 {
        let year: i32 = text.parse().ok()?;
        return Some(
            Utc.with_ymd_and_hms(year, 1, 1, 0, 0, 0)
                .single()?
                .timestamp_millis(),
        );
    }
    None
}

/// True when dynamic mapping should map this string as a `date`.
pub fn looks_like_date(text: &str) -> bool {
    // Dynamic date detection only considers full dates, as Elasticsearch's default formats do.
    text.len() >= 10 && text.as_bytes().get(4) == Some(&b'-') && parse_iso(text).is_some()
}

/// Formats epoch millis as Elasticsearch prints dates (`2024-01-02T03:04:05.000Z`).
pub fn format_millis(millis: i64) -> String {
    match Utc.timestamp_millis_opt(millis).single() {
        Some(date) => date.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        None => millis.to_string(),
    }
}

/// Evaluates date math. `round_up` selects the end of a rounded unit, as Elasticsearch does
/// for `lte`/`gt` bounds (so `lte: now/d` includes the whole day).
pub fn parse_date_math(expr: &str, now_millis: i64, round_up: bool, format: &str) -> Option<i64> {
    let (anchor, math) = if let Some(rest) = expr.strip_prefix("now") {
        (now_millis, rest)
    } else if let Some((date, rest)) = expr.split_once("||") {
        (parse_date(date, format)?, rest)
    } else {
        return parse_date(expr, format);
    };
    let mut time = Utc.timestamp_millis_opt(anchor).single()?;
    let mut chars = math.chars().peekable();
    while let Some(op) = chars.next() {
        match op {
            '+' | '-' => {
                let mut digits = String::new();
                while let Some(c) = chars.peek().copied().filter(char::is_ascii_digit) {
                    digits.push(c);
                    chars.next();
                }
                let amount: i64 = if digits.is_empty() {
                    1
                } else {
                    digits.parse().ok()?
                };
                let amount = if op == '-' { -amount } else { amount };
                time = add_unit(time, chars.next()?, amount)?;
            }
            '/' => {
                let unit = chars.next()?;
                let start = round_down(time, unit)?;
                time = if round_up {
                    add_unit(start, unit, 1)? - Duration::milliseconds(1)
                } else {
                    start
                };
            }
            _ => return None,
        }
    }
    Some(time.timestamp_millis())
}

fn add_unit(time: DateTime<Utc>, unit: char, amount: i64) -> Option<DateTime<Utc>> {
    let months = |n: i64| -> Option<DateTime<Utc>> {
        let delta = chrono::Months::new(u32::try_from(n.unsigned_abs()).ok()?);
        if n >= 0 {
            time.checked_add_months(delta)
        } else {
            time.checked_sub_months(delta)
        }
    };
    match unit {
        'y' => months(amount * 12),
        'M' => months(amount),
        'w' => time.checked_add_signed(Duration::weeks(amount)),
        'd' => time.checked_add_signed(Duration::days(amount)),
        'h' | 'H' => time.checked_add_signed(Duration::hours(amount)),
        'm' => time.checked_add_signed(Duration::minutes(amount)),
        's' => time.checked_add_signed(Duration::seconds(amount)),
        _ => None,
    }
}

fn round_down(time: DateTime<Utc>, unit: char) -> Option<DateTime<Utc>> {
    let date = time.date_naive();
    let start_of_day = |d: NaiveDate| d.and_hms_opt(0, 0, 0).map(|t| t.and_utc());
    match unit {
        'y' => start_of_day(NaiveDate::from_ymd_opt(date.year(), 1, 1)?),
        'M' => start_of_day(NaiveDate::from_ymd_opt(date.year(), date.month(), 1)?),
        'w' => {
            start_of_day(date - Duration::days(i64::from(date.weekday().num_days_from_monday())))
        }
        'd' => start_of_day(date),
        'h' | 'H' => date.and_hms_opt(time.hour(), 0, 0).map(|t| t.and_utc()),
        'm' => date
            .and_hms_opt(time.hour(), time.minute(), 0)
            .map(|t| t.and_utc()),
        's' => date
            .and_hms_opt(time.hour(), time.minute(), time.second())
            .map(|t| t.and_utc()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: &str = "strict_date_optional_time||epoch_millis";

    #[test]
    fn iso_variants() {
        assert_eq!(parse_date("1970-01-01T00:00:01Z", DEFAULT), Some(1000));
        assert_eq!(parse_date("1970-01-01T01:00:00+01:00", DEFAULT), Some(0));
        assert_eq!(parse_date("1970-01-02", DEFAULT), Some(86_400_000));
        assert_eq!(parse_date("1970-01-01T00:00:00.250", DEFAULT), Some(250));
        assert_eq!(
            parse_date("15000", DEFAULT),
            Some(15000),
            "numeric strings are epoch millis"
        );
        assert_eq!(parse_date("yesterday", DEFAULT), None);
    }

    #[test]
    fn date_math_rounds_and_offsets() {
        let now = parse_date("2024-03-15T10:30:00Z", DEFAULT).expect("valid");
        let day_start = parse_date("2024-03-14T00:00:00Z", DEFAULT);
        assert_eq!(parse_date_math("now-1d/d", now, false, DEFAULT), day_start);
        let day_end = parse_date("2024-03-14T23:59:59.999Z", DEFAULT);
        assert_eq!(parse_date_math("now-1d/d", now, true, DEFAULT), day_end);
        let next_month = parse_date("2024-02-01T00:00:00Z", DEFAULT);
        assert_eq!(
            parse_date_math("2024-01-01||+1M", now, false, DEFAULT),
            next_month
        );
        assert_eq!(parse_date_math("now+1x", now, false, DEFAULT), None);
    }
}
