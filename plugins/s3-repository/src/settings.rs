//! The repository's settings, read once per instance from `host.config()`.
//!
//! - `endpoint` (required): `http://host:port` or `https://host`; requests use path-style
//!   addressing (`endpoint/bucket/key`), which every S3-compatible service accepts.
//! - `bucket` (required), `base_path` (prefix of every blob, default none),
//!   `region` (default `us-east-1`).
//! - `buffer_size`: blobs above it are sent as multipart uploads with parts of this size
//!   (bytes or `"16mb"`; default 16 MiB; at least 5 MiB, S3's smallest part).
//! - `max_retries`: retries of a throttled or failed request (default 3).
//! - `access_key`, `secret_key`, `session_token`: put there by the host from the node's secure
//!   settings (`s3.client.<client>.*`), never from the repository's own settings. Without
//!   them requests go unsigned, which only public buckets accept.

use std::sync::OnceLock;

use serde_json::Value;
use shoal_plugin_sdk::repository::RepositoryError;

const MIB: u64 = 1 << 20;
pub const MIN_PART_BYTES: u64 = 5 * MIB;
const DEFAULT_PART_BYTES: u64 = 16 * MIB;
/// Parts travel whole through plugin memory, so they stay well below its limit.
const MAX_PART_BYTES: u64 = 32 * MIB;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

#[derive(Debug, Clone)]
pub struct Credentials {
    pub access_key: String,
    pub secret_key: String,
    pub session_token: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub scheme: Scheme,
    /// `host[:port]` of the endpoint.
    pub authority: String,
    pub bucket: String,
    /// Prefix of every object key, without leading or trailing `/`.
    pub base_path: String,
    pub region: String,
    pub credentials: Option<Credentials>,
    pub part_bytes: u64,
    pub max_retries: u32,
}

impl Settings {
    /// The object key of blob `name`.
    pub fn key(&self, name: &str) -> String {
        if self.base_path.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", self.base_path)
        }
    }

    /// The blob name of object `key` (the inverse of [`Settings::key`]).
    pub fn blob_name<'a>(&self, key: &'a str) -> &'a str {
        if self.base_path.is_empty() {
            key
        } else {
            key.strip_prefix(&self.base_path)
                .and_then(|rest| rest.strip_prefix('/'))
                .unwrap_or(key)
        }
    }
}

static SETTINGS: OnceLock<Result<Settings, String>> = OnceLock::new();

/// This instance's settings; an invalid configuration fails every call with the same reason.
pub fn current() -> Result<&'static Settings, RepositoryError> {
    SETTINGS
        .get_or_init(|| parse(&shoal_plugin_sdk::host::config()))
        .as_ref()
        .map_err(|reason| RepositoryError::Invalid(reason.clone()))
}

fn text(config: &Value, key: &str) -> Result<Option<String>, String> {
    match config.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if text.trim().is_empty() => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.trim().to_string())),
        Some(other) => Err(format!("setting [{key}] must be a string, got {other}")),
    }
}

fn required(config: &Value, key: &str) -> Result<String, String> {
    text(config, key)?.ok_or_else(|| format!("setting [{key}] is required"))
}

/// Parses `"16mb"`, `"5MiB"`, `"1gb"` or a plain number of bytes.
fn byte_size(value: &Value) -> Result<u64, String> {
    let parse = |text: &str| -> Option<u64> {
        let lower = text.trim().to_ascii_lowercase();
        let digits_end = lower
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(lower.len());
        let number: u64 = lower[..digits_end].parse().ok()?;
        let factor = match lower[digits_end..].trim() {
            "" | "b" => 1,
            "kb" | "kib" | "k" => 1 << 10,
            "mb" | "mib" | "m" => 1 << 20,
            "gb" | "gib" | "g" => 1 << 30,
            _ => return None,
        };
        number.checked_mul(factor)
    };
    match value {
        Value::Number(number) => number.as_u64(),
        Value::String(text) => parse(text),
        _ => None,
    }
    .ok_or_else(|| format!("[buffer_size] must be a byte size like \"16mb\", got {value}"))
}

pub fn parse(config: &str) -> Result<Settings, String> {
    let config: Value = serde_json::from_str(config)
        .map_err(|err| format!("the repository settings are not JSON: {err}"))?;
    let endpoint = required(&config, "endpoint")?;
    let (scheme, rest) = if let Some(rest) = endpoint.strip_prefix("https://") {
        (Scheme::Https, rest)
    } else if let Some(rest) = endpoint.strip_prefix("http://") {
        (Scheme::Http, rest)
    } else {
        return Err(format!(
            "[endpoint] must start with http:// or https://, got [{endpoint}]"
        ));
    };
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        return Err(format!(
            "[endpoint] must be a scheme and host only (path-style addressing puts the bucket in the path), got [{endpoint}]"
        ));
    }
    let bucket = required(&config, "bucket")?;
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.'));
    if !bucket_ok {
        return Err(format!(
            "[bucket] must be 3 to 63 lowercase letters, digits, '-' or '.', got [{bucket}]"
        ));
    }
    let base_path = text(&config, "base_path")?
        .unwrap_or_default()
        .trim_matches('/')
        .to_string();
    let region = text(&config, "region")?.unwrap_or_else(|| "us-east-1".to_string());
    let credentials = match (text(&config, "access_key")?, text(&config, "secret_key")?) {
        (Some(access_key), Some(secret_key)) => Some(Credentials {
            access_key,
            secret_key,
            session_token: text(&config, "session_token")?,
        }),
        (None, None) => None,
        _ => {
            return Err(
                "only one of access_key and secret_key is set in the node's secure settings".into(),
            );
        }
    };
    let part_bytes = match config.get("buffer_size") {
        None | Some(Value::Null) => DEFAULT_PART_BYTES,
        Some(value) => byte_size(value)?,
    };
    if !(MIN_PART_BYTES..=MAX_PART_BYTES).contains(&part_bytes) {
        return Err(format!(
            "[buffer_size] must be between 5mb and 32mb, got {part_bytes} bytes"
        ));
    }
    let max_retries = match config.get("max_retries") {
        None | Some(Value::Null) => 3,
        Some(value) => value
            .as_u64()
            .filter(|retries| *retries <= 10)
            .ok_or_else(|| format!("[max_retries] must be a number from 0 to 10, got {value}"))?
            as u32,
    };
    Ok(Settings {
        scheme,
        authority: authority.to_string(),
        bucket,
        base_path,
        region,
        credentials,
        part_bytes,
        max_retries,
    })
}
