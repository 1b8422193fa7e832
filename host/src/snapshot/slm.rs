//! Snapshot lifecycle management: policies live in the cluster state; the master runs each on
//! its cron schedule (Quartz syntax with seconds, as Elasticsearch's), names the snapshot with
//! date math, and applies the policy's retention afterwards. A run missed while no master was
//! up runs once when one is, never once per missed slot.

use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A policy as `PUT /_slm/policy/{id}` defines it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlmPolicy {
    /// Snapshot name template, e.g. `<nightly-{now/d}>`.
    pub name: String,
    pub schedule: String,
    pub repository: String,
    /// `indices`, `partial`, `metadata`, as for a snapshot request.
    #[serde(default)]
    pub config: Value,
    #[serde(default)]
    pub retention: Option<Retention>,
    /// When the policy was (re)defined: the schedule counts from here until the first run.
    pub modified_date_millis: i64,
}

/// Which of a policy's successful snapshots to keep.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// A time value such as `30d`.
    #[serde(default)]
    pub expire_after: Option<String>,
    #[serde(default)]
    pub min_count: Option<usize>,
    #[serde(default)]
    pub max_count: Option<usize>,
}

/// One run of a policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlmRun {
    pub snapshot_name: Option<String>,
    pub time_millis: i64,
    pub failure: Option<String>,
}

/// Per-policy counters, kept in the cluster state beside the policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlmStats {
    pub last_success: Option<SlmRun>,
    pub last_failure: Option<SlmRun>,
    pub snapshots_taken: u64,
    pub snapshots_failed: u64,
    pub snapshots_deleted: u64,
}

impl SlmStats {
    /// When the policy last ran, successfully or not.
    pub fn last_run_millis(&self) -> Option<i64> {
        let success = self.last_success.as_ref().map(|run| run.time_millis);
        let failure = self.last_failure.as_ref().map(|run| run.time_millis);
        success.max(failure)
    }
}

/// Parses a schedule: Quartz cron with seconds (`0 30 1 * * ?`), or five-field cron.
pub fn parse_schedule(text: &str) -> Result<cron::Schedule, String> {
    let fields = text.split_whitespace().count();
    let normalized = if fields == 5 {
        format!("0 {text}")
    } else {
        text.to_string()
    };
    cron::Schedule::from_str(&normalized).map_err(|err| format!("invalid schedule [{text}]: {err}"))
}

/// Whether a scheduled time falls in `(since, now]`: at most one run however many were missed.
pub fn is_due(schedule: &cron::Schedule, since_millis: i64, now_millis: i64) -> bool {
    let Some(since) = chrono::DateTime::from_timestamp_millis(since_millis) else {
        return false;
    };
    schedule
        .after(&since)
        .next()
        .is_some_and(|next| next.timestamp_millis() <= now_millis)
}

/// Resolves `<prefix-{now/d}>` style names (Elasticsearch date math, default format
/// `yyyy.MM.dd`) and appends a unique suffix, as Elasticsearch does for policy snapshots.
pub fn snapshot_name(template: &str, now_millis: i64, suffix: &str) -> Result<String, String> {
    let now = chrono::DateTime::from_timestamp_millis(now_millis).ok_or("invalid clock")?;
    let base = match template.strip_prefix('<').and_then(|t| t.strip_suffix('>')) {
        None => template.to_string(),
        Some(inner) => {
            let mut out = String::new();
            let mut rest = inner;
            while let Some(start) = rest.find('{') {
                out.push_str(&rest[..start]);
                let Some(end) = rest[start..].find('}') else {
                    return Err(format!("unclosed date math in [{template}]"));
                };
                let expression = &rest[start + 1..start + end];
                let format = match expression {
                    "now" | "now/d" => "%Y.%m.%d",
                    "now/M" => "%Y.%m",
                    "now/y" => "%Y",
                    "now/h" => "%Y.%m.%d.%H",
                    other => {
                        return Err(format!("unsupported date math [{other}] in [{template}]"));
                    }
                };
                out.push_str(&now.format(format).to_string());
                rest = &rest[start + end + 1..];
            }
            out.push_str(rest);
            out
        }
    };
    Ok(format!("{}-{suffix}", base.to_lowercase()))
}

/// A successful snapshot a policy took, for retention.
#[derive(Debug, Clone)]
pub struct Taken {
    pub name: String,
    pub start_millis: i64,
}

/// The snapshots retention deletes, oldest first: expired ones beyond `min_count`, and the
/// oldest beyond `max_count`.
pub fn retention_victims(
    mut taken: Vec<Taken>,
    retention: &Retention,
    now_millis: i64,
) -> Result<Vec<String>, String> {
    taken.sort_by_key(|snapshot| snapshot.start_millis);
    let expire_after = match &retention.expire_after {
        Some(text) => Some(
            crate::units::parse_time_value(text)
                .map_err(|err| err.to_string())?
                .ok_or_else(|| format!("invalid expire_after [{text}]"))?,
        ),
        None => None,
    };
    let min_count = retention.min_count.unwrap_or(0);
    let mut remaining = taken.len();
    let mut victims = Vec::new();
    for snapshot in &taken {
        let expired = expire_after.is_some_and(|age| {
            now_millis - snapshot.start_millis > i64::try_from(age.as_millis()).unwrap_or(i64::MAX)
        });
        let over_max = retention.max_count.is_some_and(|max| remaining > max);
        if over_max || (expired && remaining > min_count) {
            victims.push(snapshot.name.clone());
            remaining -= 1;
        }
    }
    Ok(victims)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOV_22_2026: i64 = 1_795_305_600_000; // 2026-11-22T00:00:00Z

    #[test]
    fn schedules_parse_and_missed_runs_run_once() {
        let every_minute = parse_schedule("0 * * * * ?").expect("quartz");
        assert!(parse_schedule("*/5 * * * *").is_ok(), "five fields");
        assert!(parse_schedule("every day").is_err());
        assert!(is_due(&every_minute, NOV_22_2026, NOV_22_2026 + 60_000));
        assert!(!is_due(&every_minute, NOV_22_2026, NOV_22_2026 + 59_000));
        // Ten minutes of downtime: due (once; the caller records one run).
        assert!(is_due(&every_minute, NOV_22_2026, NOV_22_2026 + 600_000));
        let nightly = parse_schedule("0 30 1 * * ?").expect("nightly");
        assert!(!is_due(
            &nightly,
            NOV_22_2026 + 2 * 3_600_000,
            NOV_22_2026 + 20 * 3_600_000
        ));
        assert!(is_due(&nightly, NOV_22_2026, NOV_22_2026 + 2 * 3_600_000));
    }

    #[test]
    fn names_use_date_math_and_a_suffix() {
        assert_eq!(
            snapshot_name("<nightly-{now/d}>", NOV_22_2026, "abc").expect("name"),
            "nightly-2026.11.22-abc"
        );
        assert_eq!(
            snapshot_name("<m-{now/M}>", NOV_22_2026, "x").expect("name"),
            "m-2026.11-x"
        );
        assert_eq!(
            snapshot_name("Plain", NOV_22_2026, "x").expect("name"),
            "plain-x"
        );
        assert!(snapshot_name("<bad-{now-1d}>", NOV_22_2026, "x").is_err());
    }

    #[test]
    fn retention_keeps_min_count_and_caps_at_max_count() {
        let day = 86_400_000;
        let taken: Vec<Taken> = (0..5)
            .map(|i| Taken {
                name: format!("s{i}"),
                start_millis: NOV_22_2026 - (5 - i) * day,
            })
            .collect();
        let expire = Retention {
            expire_after: Some("2d".into()),
            min_count: Some(4),
            max_count: None,
        };
        assert_eq!(
            retention_victims(taken.clone(), &expire, NOV_22_2026).expect("ok"),
            vec!["s0"]
        );
        let cap = Retention {
            max_count: Some(2),
            ..Retention::default()
        };
        assert_eq!(
            retention_victims(taken.clone(), &cap, NOV_22_2026).expect("ok"),
            vec!["s0", "s1", "s2"]
        );
        let bad = Retention {
            expire_after: Some("soon".into()),
            ..Retention::default()
        };
        assert!(retention_victims(taken, &bad, NOV_22_2026).is_err());
    }
}
