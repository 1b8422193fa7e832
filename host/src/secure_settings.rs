//! Secrets a node holds for repository clients, as Elasticsearch's keystore does
//! (`s3.client.default.secret_key`): read from the TOML file named by `secure_settings` and
//! from `SHOAL_<NAMESPACE>_CLIENT_<CLIENT>_<KEY>` environment variables (which win), each time
//! a repository is opened, so rotated keys apply without a restart. They are handed to the
//! repository's plugin instance only: never written to the cluster state, never returned by
//! an API, never logged.

use std::collections::BTreeMap;
use std::path::Path;

use crate::config::NodeConfig;

/// Settings a repository must not carry in its (cluster-state, API-visible) settings.
pub const SECRET_KEYS: &[&str] = &["access_key", "secret_key", "session_token"];

#[derive(Debug, thiserror::Error)]
pub enum SecureSettingsError {
    #[error("cannot read the secure settings file {path}: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("invalid client name [{0}]: use letters, digits, '-' or '_'")]
    BadClient(String),
}

/// The secure settings of client `client` in `namespace` (`s3`), key → value.
pub fn client_settings(
    config: &NodeConfig,
    namespace: &str,
    client: &str,
) -> Result<BTreeMap<String, String>, SecureSettingsError> {
    let plain = |text: &str| {
        !text.is_empty()
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
    };
    if !plain(client) {
        return Err(SecureSettingsError::BadClient(client.to_string()));
    }
    let mut found = match &config.secure_settings {
        Some(path) => from_file(path, namespace, client)?,
        None => BTreeMap::new(),
    };
    let prefix = env_name(namespace, client, "");
    for (name, value) in std::env::vars() {
        if let Some(key) = name.strip_prefix(&prefix)
            && !key.is_empty()
        {
            found.insert(key.to_ascii_lowercase(), value);
        }
    }
    Ok(found)
}

/// The environment variable of secure setting `<namespace>.client.<client>.<key>`.
pub fn env_name(namespace: &str, client: &str, key: &str) -> String {
    let part = |text: &str| text.to_ascii_uppercase().replace('-', "_");
    format!(
        "SHOAL_{}_CLIENT_{}_{}",
        part(namespace),
        part(client),
        part(key)
    )
}

/// `[namespace.client.<client>]` of the file.
fn from_file(
    path: &Path,
    namespace: &str,
    client: &str,
) -> Result<BTreeMap<String, String>, SecureSettingsError> {
    let unreadable = |reason: String| SecureSettingsError::Unreadable {
        path: path.display().to_string(),
        reason,
    };
    warn_if_readable_by_others(path);
    let text = std::fs::read_to_string(path).map_err(|err| unreadable(err.to_string()))?;
    let table: toml::Table = toml::from_str(&text).map_err(|err| unreadable(err.to_string()))?;
    let section = table
        .get(namespace)
        .and_then(|value| value.get("client"))
        .and_then(|value| value.get(client))
        .and_then(toml::Value::as_table);
    let mut found = BTreeMap::new();
    for (key, value) in section.into_iter().flatten() {
        let Some(text) = value.as_str() else {
            return Err(unreadable(format!(
                "[{namespace}.client.{client}.{key}] must be a string"
            )));
        };
        found.insert(key.clone(), text.to_string());
    }
    Ok(found)
}

fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(metadata) = std::fs::metadata(path)
        && metadata.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            path = %path.display(),
            "the secure settings file is readable by other users; chmod 600 it"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_sections_are_read_per_client() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secure.toml");
        std::fs::write(
            &path,
            "[s3.client.default]\naccess_key = \"AK\"\nsecret_key = \"SK\"\n\n[s3.client.backup]\naccess_key = \"AK2\"\n",
        )
        .expect("write");
        let config = NodeConfig {
            secure_settings: Some(path.clone()),
            ..NodeConfig::default()
        };
        let default = client_settings(&config, "s3", "default").expect("default");
        assert_eq!(default.get("access_key").map(String::as_str), Some("AK"));
        assert_eq!(default.get("secret_key").map(String::as_str), Some("SK"));
        let backup = client_settings(&config, "s3", "backup").expect("backup");
        assert_eq!(backup.len(), 1);
        assert!(
            client_settings(&config, "gcs", "default")
                .expect("other namespace")
                .is_empty()
        );
        assert!(matches!(
            client_settings(&config, "s3", "../x"),
            Err(SecureSettingsError::BadClient(_))
        ));
        std::fs::write(&path, "[s3.client.default]\naccess_key = 5\n").expect("write");
        assert!(matches!(
            client_settings(&config, "s3", "default"),
            Err(SecureSettingsError::Unreadable { .. })
        ));
    }
}
