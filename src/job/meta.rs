//! The job's `meta.json`, as a validated model.
//!
//! Parsing and validation (SPEC section 5) live here too; the pure core stores a
//! [`JobMeta`] in the `JobSubmitted` event, so the fields below are part of the history's
//! format and change only by adding optional fields.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The name of the server in a deploy map.
pub const SERVER: &str = "server";
/// The deploy-map target that means "the server and every connected site".
pub const ALL_SITES: &str = "@ALL";
/// The `resource_spec` key whose entry applies to every site without its own.
pub const DEFAULT_RESOURCES: &str = "@default";

/// Where one app goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppTargets {
    /// The app's folder name in the package.
    pub app: String,
    /// The participants, in the order `meta.json` lists them: `"server"`, site names, or
    /// exactly `["@ALL"]`.
    pub targets: Vec<String>,
}

/// A validated `meta.json` (SPEC section 5).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobMeta {
    /// `name`; when absent, the package folder's name.
    pub name: String,
    /// `deploy_map`, normalised: apps sorted by name.
    pub deploy_map: Vec<AppTargets>,
    /// `min_clients` (default 1).
    pub min_clients: u32,
    /// `mandatory_clients` (default empty).
    pub mandatory_clients: Vec<String>,
    /// `resource_spec`: site name or `"@default"` -> resource name -> amount.
    pub resource_spec: BTreeMap<String, BTreeMap<String, f64>>,
}

impl JobMeta {
    /// True when the deploy map is the `@ALL` form: one app, targets `["@ALL"]`.
    pub fn is_all_sites(&self) -> bool {
        self.deploy_map.len() == 1 && self.deploy_map[0].targets == [ALL_SITES]
    }

    /// The sites (not the server) the deploy map lists, sorted and unique. Empty for `@ALL`.
    pub fn listed_sites(&self) -> Vec<String> {
        let mut sites: Vec<String> = self
            .deploy_map
            .iter()
            .flat_map(|a| a.targets.iter())
            .filter(|t| t.as_str() != SERVER && t.as_str() != ALL_SITES)
            .cloned()
            .collect();
        sites.sort();
        sites.dedup();
        sites
    }

    /// The app that runs at `participant` (`"server"` or a site name), if any.
    pub fn app_for(&self, participant: &str) -> Option<&str> {
        if self.is_all_sites() {
            return Some(&self.deploy_map[0].app);
        }
        self.deploy_map
            .iter()
            .find(|a| a.targets.iter().any(|t| t == participant))
            .map(|a| a.app.as_str())
    }
}
