//! The repository's settings, read once per instance from `host.config()`.
//!
//! - `endpoint` (required): `http://host:port` or `https://host`.
//! - `path_style_access`: `true` puts the bucket in the path (`endpoint/bucket/key`), which
//!   S3-compatible services expect; `false` puts it in the host name (`bucket.endpoint/key`),
//!   which AWS S3 requires of newer buckets. Default: virtual-hosted for `*.amazonaws.com`
//!   endpoints (unless the bucket name has a dot, which their TLS certificates do not cover),
//!   path-style for every other service.
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
    /// Path-style (`/bucket/key`) rather than virtual-hosted (`bucket.host/key`) requests.
    pub path_style: bool,
    /// Prefix of every object key, without leading or trailing `/`.
    pub base_path: String,
    pub region: String,
    pub credentials: Option<Credentials>,
    pub part_bytes: u64,
    pub max_retries: u32,
}

impl Settings {
    /// `host[:port]` requests go to: the endpoint, or the bucket's virtual host on it.
    pub fn request_authority(&self) -> String {
        if self.path_style {
            self.authority.clone()
        } else {
            format!("{}.{}", self.bucket, self.authority)
        }
    }

    /// The request path of object `key`, or of the bucket itself.
    pub fn request_path(&self, key: Option<&str>) -> String {
        let key = key.map(|key| crate::sigv4::uri_encode(key, true));
        match (self.path_style, key) {
            (true, Some(key)) => format!("/{}/{key}", self.bucket),
            (true, None) => format!("/{}", self.bucket),
            (false, Some(key)) => format!("/{key}"),
            (false, None) => "/".to_string(),
        }
    }

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
    let path_style = match config.get("path_style_access") {
        None | Some(Value::Null) => {
            let host = authority.split(':').next().unwrap_or_default();
            !host.ends_with(".amazonaws.com") || bucket.contains('.')
        }
        Some(Value::Bool(path_style)) => *path_style,
        Some(Value::String(text)) if text == "true" || text == "false" => text == "true",
        Some(other) => {
            return Err(format!(
                "[path_style_access] must be true or false, got {other}"
            ));
        }
    };
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
        path_style,
        base_path,
        region,
        credentials,
        part_bytes,
        max_retries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(extra: &str) -> Result<Settings, String> {
        parse(&format!(r#"{{"bucket": "snapshots", {extra}}}"#))
    }

    #[test]
    fn addressing_follows_the_endpoint_unless_set() {
        let local = settings(r#""endpoint": "http://127.0.0.1:9000""#).expect("valid");
        assert!(
            local.path_style,
            "S3-compatible services get path-style requests"
        );
        assert_eq!(local.request_authority(), "127.0.0.1:9000");
        assert_eq!(local.request_path(Some("a b/c")), "/snapshots/a%20b/c");
        assert_eq!(local.request_path(None), "/snapshots");

        let aws = settings(r#""endpoint": "https://s3.eu-west-1.amazonaws.com/""#).expect("valid");
        assert!(!aws.path_style, "AWS gets virtual-hosted requests");
        assert_eq!(
            aws.request_authority(),
            "snapshots.s3.eu-west-1.amazonaws.com"
        );
        assert_eq!(aws.request_path(Some("index/0")), "/index/0");
        assert_eq!(aws.request_path(None), "/");

        let dotted = parse(r#"{"bucket": "my.backups", "endpoint": "https://s3.amazonaws.com"}"#)
            .expect("valid");
        assert!(
            dotted.path_style,
            "a dotted bucket is not covered by AWS's certificate"
        );

        let forced = settings(r#""endpoint": "http://minio:9000", "path_style_access": false"#)
            .expect("valid");
        assert_eq!(forced.request_authority(), "snapshots.minio:9000");
        let forced =
            settings(r#""endpoint": "https://s3.amazonaws.com", "path_style_access": "true""#)
                .expect("valid");
        assert!(forced.path_style);
    }

    #[test]
    fn bad_settings_are_refused_with_the_setting_named() {
        for (extra, named) in [
            (r#""endpoint": "ftp://host""#, "[endpoint]"),
            (r#""endpoint": "http://host/path""#, "[endpoint]"),
            (
                r#""endpoint": "http://host", "path_style_access": "yes""#,
                "[path_style_access]",
            ),
            (
                r#""endpoint": "http://host", "buffer_size": "1mb""#,
                "[buffer_size]",
            ),
            (
                r#""endpoint": "http://host", "max_retries": 99"#,
                "[max_retries]",
            ),
            (
                r#""endpoint": "http://host", "access_key": "a""#,
                "access_key",
            ),
        ] {
            let err = settings(extra).expect_err(extra);
            assert!(err.contains(named), "{extra}: {err}");
        }
        let err = parse(r#"{"endpoint": "http://host", "bucket": "No_Caps"}"#).expect_err("bucket");
        assert!(err.contains("[bucket]"), "{err}");
    }
}
