//! `shoal plugin ...`: manage a node's plugins over its REST API, and check a component
//! offline with the conformance kit.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::Value;

use crate::plugins::check;

#[derive(Subcommand, Debug)]
pub(super) enum PluginCommand {
    /// List the node's plugins.
    List,
    /// Install (or hot-replace) a plugin from a .wasm component.
    Install {
        name: String,
        file: PathBuf,
        #[arg(long, default_value = "0.0.0")]
        version: String,
        /// Refuse the upload unless the component is of this kind.
        #[arg(long)]
        kind: Option<String>,
        /// Memory cap per instance, e.g. `16mb`.
        #[arg(long)]
        max_memory: Option<String>,
        /// Per-call deadline, e.g. `20ms`.
        #[arg(long)]
        deadline: Option<String>,
        /// Wasm work allowed per call in fuel units (about one per instruction), or `unlimited`.
        #[arg(long)]
        fuel: Option<String>,
        /// `open` (fall back to built-in behaviour) or `closed` (fail the request).
        #[arg(long)]
        on_failure: Option<String>,
    },
    /// Remove an uploaded plugin.
    Remove { name: String },
    /// Enable a plugin.
    Enable { name: String },
    /// Disable a plugin (its callers fall back to built-in behaviour).
    Disable { name: String },
    /// Run the conformance kit on a component, without a node.
    Check { file: PathBuf },
}

/// Runs a plugin command; `url` is the node's HTTP address.
pub(super) fn run(command: PluginCommand, url: &str) -> anyhow::Result<bool> {
    let client = reqwest::blocking::Client::new();
    let url = url.trim_end_matches('/');
    let send = |request: reqwest::blocking::RequestBuilder| -> anyhow::Result<Value> {
        let response = request
            .send()
            .with_context(|| format!("cannot reach the node at {url}"))?;
        let status = response.status();
        let body: Value = response.json().unwrap_or(Value::Null);
        if !status.is_success() {
            let reason = body["error"]["reason"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| body.to_string());
            bail!("{status}: {reason}");
        }
        Ok(body)
    };
    match command {
        PluginCommand::List => {
            let body = send(client.get(format!("{url}/_plugins")))?;
            println!(
                "{:<28} {:<16} {:<10} {:<9} {:>8} {:>7}",
                "name", "kind", "version", "state", "calls", "errors"
            );
            for plugin in body["plugins"]
                .as_object()
                .into_iter()
                .flat_map(|p| p.values())
            {
                println!(
                    "{:<28} {:<16} {:<10} {:<9} {:>8} {:>7}",
                    plugin["name"].as_str().unwrap_or_default(),
                    plugin["kind"].as_str().unwrap_or_default(),
                    plugin["version"].as_str().unwrap_or_default(),
                    plugin["state"].as_str().unwrap_or_default(),
                    plugin["stats"]["calls"],
                    plugin["stats"]["errors"],
                );
            }
        }
        PluginCommand::Install {
            name,
            file,
            version,
            kind,
            max_memory,
            deadline,
            fuel,
            on_failure,
        } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let mut query = vec![("version", version)];
            query.extend(kind.map(|k| ("kind", k)));
            query.extend(max_memory.map(|m| ("max_memory", m)));
            query.extend(deadline.map(|d| ("deadline", d)));
            query.extend(fuel.map(|f| ("fuel", f)));
            query.extend(on_failure.map(|f| ("on_failure", f)));
            let body = send(
                client
                    .put(format!("{url}/_plugins/{name}"))
                    .query(&query)
                    .header("content-type", "application/wasm")
                    .body(bytes),
            )?;
            println!(
                "installed {name}: {} plugin, version {}, sha256 {}",
                body["plugin"]["kind"].as_str().unwrap_or_default(),
                body["plugin"]["version"].as_str().unwrap_or_default(),
                body["plugin"]["sha256"].as_str().unwrap_or_default()
            );
        }
        PluginCommand::Remove { name } => {
            send(client.delete(format!("{url}/_plugins/{name}")))?;
            println!("removed {name}");
        }
        PluginCommand::Enable { name } => {
            send(client.post(format!("{url}/_plugins/{name}/_enable")))?;
            println!("enabled {name}");
        }
        PluginCommand::Disable { name } => {
            send(client.post(format!("{url}/_plugins/{name}/_disable")))?;
            println!("disabled {name}");
        }
        PluginCommand::Check { file } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let report = check::check(&file.display().to_string(), &bytes);
            print!("{}", report.render());
            return Ok(report.passed());
        }
    }
    Ok(true)
}
