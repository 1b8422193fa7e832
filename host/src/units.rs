//! Elasticsearch-style unit strings: byte sizes (`100mb`) and time values (`1s`, `500ms`, `-1`).

use std::time::Duration;

use crate::error::{Error, illegal};

/// Parses `512`, `10kb`, `100mb`, `1gb` (binary multiples, as Elasticsearch does).
pub fn parse_byte_size(text: &str) -> Result<u64, Error> {
    let lower = text.trim().to_ascii_lowercase();
    let split = lower
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(split);
    let multiplier: u64 = match unit.trim() {
        "" | "b" => 1,
        "k" | "kb" => 1 << 10,
        "m" | "mb" => 1 << 20,
        "g" | "gb" => 1 << 30,
        "t" | "tb" => 1 << 40,
        other => {
            return Err(illegal(format!(
                "failed to parse byte size [{text}]: unknown unit [{other}]"
            )));
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| illegal(format!("failed to parse byte size [{text}]")))?;
    if value < 0.0 {
        return Err(illegal(format!("byte size [{text}] must not be negative")));
    }
    Ok((value * multiplier as f64) as u64)
}

/// Parses `1s`, `500ms`, `2m`, `1h`, `1d`; `-1` means "disabled" and gives `None`.
pub fn parse_time_value(text: &str) -> Result<Option<Duration>, Error> {
    let trimmed = text.trim();
    if trimmed == "-1" {
        return Ok(None);
    }
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| illegal(format!("failed to parse time value [{text}]")))?;
    let seconds = match unit {
        "nanos" => value / 1e9,
        "micros" => value / 1e6,
        "ms" => value / 1e3,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86400.0,
        _ => {
            return Err(illegal(format!(
                "failed to parse setting [{text}] as a time value: unit is missing or unrecognized"
            )));
        }
    };
    Ok(Some(Duration::from_secs_f64(seconds)))
}

/// Renders a duration the way Elasticsearch echoes settings back (`1s`, `250ms`).
pub fn format_time_value(value: Option<Duration>) -> String {
    match value {
        None => "-1".to_string(),
        Some(d) if d.subsec_millis() == 0 && d.as_secs() > 0 => format!("{}s", d.as_secs()),
        Some(d) => format!("{}ms", d.as_millis()),
    }
}

/// Human-readable size for `_cat` output (`1.2mb`).
pub fn format_byte_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["b", "kb", "mb", "gb", "tb"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}b")
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_byte_size("100mb").ok(), Some(100 << 20));
        assert_eq!(parse_byte_size("512").ok(), Some(512));
        assert!(parse_byte_size("12parsecs").is_err());
    }

    #[test]
    fn time_values() {
        assert_eq!(
            parse_time_value("1s").ok(),
            Some(Some(Duration::from_secs(1)))
        );
        assert_eq!(
            parse_time_value("250ms").ok(),
            Some(Some(Duration::from_millis(250)))
        );
        assert_eq!(parse_time_value("-1").ok(), Some(None));
        assert!(parse_time_value("5").is_err());
        assert_eq!(format_time_value(Some(Duration::from_millis(250))), "250ms");
    }
}
