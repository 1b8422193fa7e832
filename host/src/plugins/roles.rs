//! Which plugin serves a policy role for an index: the index's own setting
//! (`index.plugins.pruning`), else the cluster's (`plugins.pruning` in `PUT /_cluster/settings`),
//! else the plugin Shoal ships for the role. `none` at either level turns the role off.

use super::{PluginHost, PluginKind};

/// The cluster setting naming the pruning plugin of every index that names none itself.
pub const CLUSTER_PRUNING: &str = "plugins.pruning";
/// The pruning plugin used when neither the index nor the cluster names one.
pub const SHIPPED_PRUNING: &str = "time-series-pruning";
/// The value that turns a role off.
pub const NONE: &str = "none";

/// The plugin serving a role, or `None` when the role is off.
pub fn choose<'a>(
    index_choice: Option<&'a str>,
    cluster_choice: Option<&'a str>,
    shipped: &'a str,
) -> Option<&'a str> {
    let name = index_choice.or(cluster_choice).unwrap_or(shipped);
    (name != NONE).then_some(name)
}

/// Refuses a role naming a plugin this node does not have, or one of another kind, so that a
/// typo is an error now rather than a role silently not served. (Plugins are installed per node
/// for now: install a plugin on every node before naming it.)
pub fn check(host: &PluginHost, kind: PluginKind, setting: &str, name: &str) -> Result<(), String> {
    if name == NONE {
        return Ok(());
    }
    match host.get(name) {
        None => Err(format!(
            "[{setting}] names plugin [{name}], which is not installed on this node; install it (PUT /_plugins/{name}) or use [{NONE}]"
        )),
        Some(plugin) if plugin.kind != kind => Err(format!(
            "[{setting}] needs a {kind:?} plugin, but [{name}] is a {:?} plugin",
            plugin.kind
        )),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_wins_over_the_cluster_which_wins_over_the_shipped_plugin() {
        let shipped = SHIPPED_PRUNING;
        assert_eq!(choose(None, None, shipped), Some(shipped));
        assert_eq!(choose(None, Some("mine"), shipped), Some("mine"));
        assert_eq!(choose(Some("its"), Some("mine"), shipped), Some("its"));
        assert_eq!(choose(None, Some(NONE), shipped), None);
        assert_eq!(choose(Some(shipped), Some(NONE), shipped), Some(shipped));
        assert_eq!(choose(Some(NONE), None, shipped), None);
    }

    #[test]
    fn names_must_be_installed_plugins_of_the_role_kind() {
        let host = PluginHost::new(None).expect("plugin host");
        let setting = "index.plugins.pruning";
        assert!(check(&host, PluginKind::Pruning, setting, SHIPPED_PRUNING).is_ok());
        assert!(check(&host, PluginKind::Pruning, setting, NONE).is_ok());
        let missing = check(&host, PluginKind::Pruning, setting, "no-such")
            .expect_err("a missing plugin is refused");
        assert!(missing.contains("not installed"), "{missing}");
        let wrong = check(&host, PluginKind::Pruning, setting, "fs-repository")
            .expect_err("a plugin of another kind is refused");
        assert!(wrong.contains("is a Repository plugin"), "{wrong}");
    }
}
