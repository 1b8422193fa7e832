//! The counters and gauges a plugin reports through `host.counter-add` and `host.gauge-set`,
//! shown by `GET /_plugins/{name}`. A plugin picks its metric names, so their number is
//! capped: a plugin inventing names without end cannot grow the node's memory.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Distinct names kept per plugin (counters and gauges each); later names are dropped.
const MAX_NAMES: usize = 64;
/// Longest metric name kept.
const MAX_NAME_BYTES: usize = 64;

#[derive(Debug, Default)]
pub struct PluginMetrics {
    counters: Mutex<BTreeMap<String, u64>>,
    gauges: Mutex<BTreeMap<String, f64>>,
}

fn admit<V>(map: &BTreeMap<String, V>, name: &str) -> bool {
    name.len() <= MAX_NAME_BYTES && (map.contains_key(name) || map.len() < MAX_NAMES)
}

impl PluginMetrics {
    pub fn add(&self, name: &str, delta: u64) {
        let mut counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        if admit(&counters, name) {
            let value = counters.entry(name.to_string()).or_default();
            *value = value.saturating_add(delta);
        }
    }

    pub fn set(&self, name: &str, value: f64) {
        let mut gauges = self.gauges.lock().unwrap_or_else(|p| p.into_inner());
        if admit(&gauges, name) && value.is_finite() {
            gauges.insert(name.to_string(), value);
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        let counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        let gauges = self.gauges.lock().unwrap_or_else(|p| p.into_inner());
        serde_json::json!({ "counters": *counters, "gauges": *gauges })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_capped_and_values_kept() {
        let metrics = PluginMetrics::default();
        metrics.add("retries", 2);
        metrics.add("retries", 3);
        metrics.set("queue", 1.5);
        metrics.set("nan", f64::NAN);
        for i in 0..200 {
            metrics.add(&format!("name-{i}"), 1);
        }
        metrics.add(&"x".repeat(100), 1);
        let json = metrics.to_json();
        assert_eq!(json["counters"]["retries"], 5);
        assert_eq!(json["gauges"]["queue"], 1.5);
        assert!(json["gauges"].get("nan").is_none());
        let names = json["counters"].as_object().expect("object").len();
        assert_eq!(names, MAX_NAMES);
    }
}
