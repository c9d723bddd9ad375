//! The job's `meta.json`, as a validated model.
//!
//! Parsing and validation (SPEC section 5) live here too; the pure core stores a
//! [`JobMeta`] in the `JobSubmitted` event, so the fields below are part of the history's
//! format and change only by adding optional fields.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::flat_map::FlatMap;

/// The name of the server in a deploy map.
pub const SERVER: &str = "server";
/// The deploy-map target that means "the server and every connected site".
pub const ALL_SITES: &str = "@ALL";
/// The `resource_spec` key whose entry applies to every site without its own.
pub const DEFAULT_RESOURCES: &str = "@default";
/// The largest `meta.json` accepted: the meta travels in the `JobSubmitted` event, and a
/// history record must stay small.
pub const META_JSON_BYTES_MAX: u64 = 32 * 1024;
/// The longest job `name`, in bytes.
pub const JOB_NAME_BYTES_MAX: usize = 256;
/// The longest app name, site name or resource name in `meta.json`, in bytes. Site names
/// travel in every event about a site, so they stay short.
pub const NAME_BYTES_MAX: usize = 128;
/// The most distinct site names a `meta.json` may name (deploy map, mandatory clients and
/// resource_spec together). `@ALL` names none, whatever the number of sites it reaches.
pub const SITES_NAMED_MAX: usize = 1024;
/// The most resource names one `resource_spec` entry may hold. A merged request (a
/// site's own entry over `@default`) then stays a few kilobytes, so it fits in one event.
pub const RESOURCE_KEYS_MAX: usize = 64;
/// The most amounts a whole `resource_spec` may hold; with [`META_JSON_BYTES_MAX`] it
/// bounds the encoded meta, which the `JobSubmitted` event carries.
pub const RESOURCE_AMOUNTS_MAX: usize = 1024;

/// A `resource_spec`: site name or `"@default"` -> resource name -> amount. Fixed once
/// validated, so held in exactly sized slices ([`FlatMap`]), not tree nodes.
pub type ResourceSpec = FlatMap<String, FlatMap<String, f64>>;

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
    pub resource_spec: ResourceSpec,
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

/// Why a `meta.json` is refused: one variant per rule of SPEC section 5.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MetaError {
    /// Over [`META_JSON_BYTES_MAX`].
    #[error("meta.json is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// Not JSON at all.
    #[error("meta.json is not valid JSON: {message}")]
    NotJson {
        /// The parser's message, with line and column.
        message: String,
    },
    /// JSON, but not an object.
    #[error("meta.json must be a JSON object")]
    NotObject,
    /// `name` is there but not a non-empty string.
    #[error("meta.json: `name` must be a non-empty string")]
    BadName,
    /// No `deploy_map`.
    #[error("meta.json: `deploy_map` is missing")]
    DeployMapMissing,
    /// `deploy_map` is not an object, or is empty.
    #[error("meta.json: `deploy_map` must be a non-empty object of app name -> sites")]
    DeployMapEmpty,
    /// An app name that cannot be a folder name of the package.
    #[error("meta.json: deploy_map app {app:?} is not a single folder name")]
    BadAppName {
        /// The name.
        app: String,
    },
    /// An entry that is none of the three accepted forms.
    #[error(
        "meta.json: deploy_map[{app:?}] must be a list of names, {{\"sites\": [...]}} or {{\"targets\": [...]}}"
    )]
    BadEntryForm {
        /// The app.
        app: String,
    },
    /// A target that is not a non-empty string.
    #[error("meta.json: deploy_map[{app:?}] holds a target that is not a non-empty string")]
    BadTarget {
        /// The app.
        app: String,
    },
    /// An app with no targets.
    #[error("meta.json: deploy_map[{app:?}] lists no sites")]
    NoTargets {
        /// The app.
        app: String,
    },
    /// `"@ALL"` anywhere but as the only target of the only app.
    #[error("meta.json: \"@ALL\" must be the only target of the only app in deploy_map (found in {app:?})")]
    AllSitesForm {
        /// The app that lists it.
        app: String,
    },
    /// No app goes to `"server"`.
    #[error("meta.json: deploy_map must send exactly one app to \"server\"; none does")]
    ServerMissing,
    /// `"server"` listed more than once.
    #[error("meta.json: \"server\" is listed more than once in deploy_map (in {first:?} and {second:?})")]
    ServerListedTwice {
        /// The first app that lists it.
        first: String,
        /// The second.
        second: String,
    },
    /// A site in two apps, or twice in one.
    #[error("meta.json: site {site:?} is listed more than once in deploy_map (in {first:?} and {second:?})")]
    SiteListedTwice {
        /// The site.
        site: String,
        /// The first app that lists it.
        first: String,
        /// The second (the same app when listed twice there).
        second: String,
    },
    /// `min_clients` is not a positive integer.
    #[error("meta.json: `min_clients` must be a positive integer, not {value}")]
    BadMinClients {
        /// The value as JSON.
        value: String,
    },
    /// More `min_clients` than listed sites.
    #[error("meta.json: `min_clients` ({min_clients}) is larger than the number of sites deploy_map lists ({sites})")]
    MinClientsOverSites {
        /// The value.
        min_clients: u32,
        /// How many sites deploy_map lists.
        sites: usize,
    },
    /// `mandatory_clients` is not a list of non-empty strings.
    #[error("meta.json: `mandatory_clients` must be a list of site names")]
    BadMandatoryClients,
    /// A mandatory site deploy_map does not list (or a reserved name).
    #[error("meta.json: mandatory client {site:?} is not a site that deploy_map lists")]
    MandatoryNotListed {
        /// The site.
        site: String,
    },
    /// A mandatory site named twice.
    #[error("meta.json: mandatory client {site:?} is named more than once")]
    MandatoryRepeated {
        /// The site.
        site: String,
    },
    /// `resource_spec` is not an object of objects.
    #[error("meta.json: `resource_spec` must map each site (or \"@default\") to an object of resource -> number")]
    BadResourceSpec,
    /// A name over its length limit.
    #[error(
        "meta.json: {what} {name:?}... is {bytes} bytes long, over the limit of {limit} bytes"
    )]
    NameTooLong {
        /// What kind of name (`name`, `app`, `site`, `resource`).
        what: &'static str,
        /// Its first characters.
        name: String,
        /// Its length.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// More distinct sites named than [`SITES_NAMED_MAX`].
    #[error("meta.json names {count} sites, over the limit of {limit} (use \"@ALL\" to reach every site)")]
    TooManySites {
        /// Distinct sites named.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A `resource_spec` entry with more than [`RESOURCE_KEYS_MAX`] resources.
    #[error(
        "meta.json: resource_spec[{site:?}] holds {count} resources, over the limit of {limit}"
    )]
    TooManyResourceKeys {
        /// The site (or `@default`).
        site: String,
        /// Its resources.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A `resource_spec` with more than [`RESOURCE_AMOUNTS_MAX`] amounts in all.
    #[error("meta.json: resource_spec holds {count} amounts in all, over the limit of {limit}")]
    TooManyResourceAmounts {
        /// Amounts in all.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A resource amount that is not a non-negative number.
    #[error("meta.json: resource_spec[{site:?}][{resource:?}] must be a non-negative number, not {value}")]
    BadResourceAmount {
        /// The site (or `@default`).
        site: String,
        /// The resource.
        resource: String,
        /// The value as JSON.
        value: String,
    },
}

/// Whether `app` can be a folder at the top of a package.
fn is_folder_name(app: &str) -> bool {
    !app.is_empty()
        && app != "."
        && app != ".."
        && !app.contains(['/', '\\'])
        && !app.chars().any(char::is_control)
}

impl JobMeta {
    /// Parses and validates `meta.json` (SPEC section 5) except for the rule that needs
    /// the package (every app exists and has its run file; the package checks that).
    /// `folder_name` is the name used when `meta.json` has no `name`. Keys fedrun does not
    /// use are ignored, as NVFlare does, so NVFlare jobs load unchanged.
    pub fn parse(bytes: &[u8], folder_name: &str) -> Result<JobMeta, MetaError> {
        if bytes.len() as u64 > META_JSON_BYTES_MAX {
            return Err(MetaError::TooLarge {
                size: bytes.len() as u64,
                limit: META_JSON_BYTES_MAX,
            });
        }
        let value: Value = serde_json::from_slice(bytes).map_err(|err| MetaError::NotJson {
            message: err.to_string(),
        })?;
        let object = value.as_object().ok_or(MetaError::NotObject)?;

        let name = match object.get("name") {
            None => folder_name.to_owned(),
            Some(Value::String(name)) if !name.is_empty() => name.clone(),
            Some(_) => return Err(MetaError::BadName),
        };
        check_length("name", &name, JOB_NAME_BYTES_MAX)?;
        let deploy_map = parse_deploy_map(object.get("deploy_map"))?;
        let all_sites = deploy_map
            .iter()
            .any(|a| a.targets.iter().any(|t| t == ALL_SITES));
        if all_sites {
            if let Some(bad) = deploy_map
                .iter()
                .find(|a| deploy_map.len() != 1 || a.targets != [ALL_SITES])
            {
                return Err(MetaError::AllSitesForm {
                    app: bad.app.clone(),
                });
            }
        } else {
            check_each_target_once(&deploy_map)?;
        }
        let meta = JobMeta {
            name,
            deploy_map,
            min_clients: 1,
            mandatory_clients: Vec::new(),
            resource_spec: ResourceSpec::new(),
        };
        let listed = meta.listed_sites();
        for app in &meta.deploy_map {
            check_length("app", &app.app, NAME_BYTES_MAX)?;
            for target in &app.targets {
                check_length("site", target, NAME_BYTES_MAX)?;
            }
        }

        let min_clients = match object.get("min_clients") {
            None => 1,
            Some(value) => value
                .as_u64()
                .filter(|&n| n >= 1)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| MetaError::BadMinClients {
                    value: value.to_string(),
                })?,
        };
        if !all_sites && min_clients as usize > listed.len() {
            return Err(MetaError::MinClientsOverSites {
                min_clients,
                sites: listed.len(),
            });
        }

        let mut mandatory_clients = Vec::new();
        if let Some(value) = object.get("mandatory_clients") {
            let list = value.as_array().ok_or(MetaError::BadMandatoryClients)?;
            for item in list {
                let site = item
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .ok_or(MetaError::BadMandatoryClients)?;
                let reserved = site == SERVER || site == ALL_SITES;
                if reserved
                    || (!all_sites && listed.binary_search_by(|l| l.as_str().cmp(site)).is_err())
                {
                    return Err(MetaError::MandatoryNotListed {
                        site: site.to_owned(),
                    });
                }
                check_length("site", site, NAME_BYTES_MAX)?;
                if mandatory_clients.iter().any(|m| m == site) {
                    return Err(MetaError::MandatoryRepeated {
                        site: site.to_owned(),
                    });
                }
                mandatory_clients.push(site.to_owned());
            }
        }

        let mut resource_spec = BTreeMap::new();
        let mut amounts_total = 0usize;
        if let Some(value) = object.get("resource_spec") {
            let sites = value.as_object().ok_or(MetaError::BadResourceSpec)?;
            for (site, resources) in sites {
                let resources = resources.as_object().ok_or(MetaError::BadResourceSpec)?;
                check_length("site", site, NAME_BYTES_MAX)?;
                if resources.len() > RESOURCE_KEYS_MAX {
                    return Err(MetaError::TooManyResourceKeys {
                        site: site.chars().take(NAME_BYTES_MAX).collect(),
                        count: resources.len(),
                        limit: RESOURCE_KEYS_MAX,
                    });
                }
                amounts_total += resources.len();
                if amounts_total > RESOURCE_AMOUNTS_MAX {
                    return Err(MetaError::TooManyResourceAmounts {
                        count: amounts_total,
                        limit: RESOURCE_AMOUNTS_MAX,
                    });
                }
                let mut amounts = BTreeMap::new();
                for (resource, amount) in resources {
                    check_length("resource", resource, NAME_BYTES_MAX)?;
                    let number = amount.as_f64().filter(|n| n.is_finite() && *n >= 0.0);
                    let number = number.ok_or_else(|| MetaError::BadResourceAmount {
                        site: site.clone(),
                        resource: resource.clone(),
                        value: amount.to_string(),
                    })?;
                    amounts.insert(resource.clone(), number);
                }
                resource_spec.insert(site.clone(), FlatMap::from(amounts));
            }
        }
        let mut named: std::collections::BTreeSet<&str> =
            listed.iter().map(String::as_str).collect();
        named.extend(mandatory_clients.iter().map(String::as_str));
        named.extend(
            resource_spec
                .keys()
                .map(String::as_str)
                .filter(|s| *s != DEFAULT_RESOURCES),
        );
        if named.len() > SITES_NAMED_MAX {
            return Err(MetaError::TooManySites {
                count: named.len(),
                limit: SITES_NAMED_MAX,
            });
        }
        Ok(JobMeta {
            min_clients,
            mandatory_clients,
            resource_spec: FlatMap::from(resource_spec),
            ..meta
        })
    }
}

/// Refuses a name over `limit` bytes, quoting its start.
fn check_length(what: &'static str, name: &str, limit: usize) -> Result<(), MetaError> {
    if name.len() <= limit {
        return Ok(());
    }
    Err(MetaError::NameTooLong {
        what,
        name: name.chars().take(40).collect(),
        bytes: name.len(),
        limit,
    })
}

/// Parses `deploy_map` into its normalised form (apps sorted by name, targets in order).
fn parse_deploy_map(value: Option<&Value>) -> Result<Vec<AppTargets>, MetaError> {
    let map = value.ok_or(MetaError::DeployMapMissing)?;
    let map = map
        .as_object()
        .filter(|m| !m.is_empty())
        .ok_or(MetaError::DeployMapEmpty)?;
    let mut apps: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (app, entry) in map {
        if !is_folder_name(app) {
            return Err(MetaError::BadAppName { app: app.clone() });
        }
        let bad_form = || MetaError::BadEntryForm { app: app.clone() };
        let list = match entry {
            Value::Array(list) => list,
            Value::Object(form) if form.len() == 1 => form
                .get("sites")
                .or_else(|| form.get("targets"))
                .and_then(Value::as_array)
                .ok_or_else(bad_form)?,
            _ => return Err(bad_form()),
        };
        if list.is_empty() {
            return Err(MetaError::NoTargets { app: app.clone() });
        }
        let targets = list
            .iter()
            .map(|t| t.as_str().filter(|s| !s.is_empty()).map(str::to_owned))
            .collect::<Option<Vec<String>>>()
            .ok_or_else(|| MetaError::BadTarget { app: app.clone() })?;
        apps.insert(app, targets);
    }
    Ok(apps
        .into_iter()
        .map(|(app, targets)| AppTargets {
            app: app.to_owned(),
            targets,
        })
        .collect())
}

/// Without `@ALL`: `"server"` exactly once, and no site twice (in two apps or in one).
fn check_each_target_once(deploy_map: &[AppTargets]) -> Result<(), MetaError> {
    let mut owner: BTreeMap<&str, &str> = BTreeMap::new();
    for app in deploy_map {
        for target in &app.targets {
            if let Some(first) = owner.insert(target, &app.app) {
                let (first, second) = (first.to_owned(), app.app.clone());
                return Err(if target == SERVER {
                    MetaError::ServerListedTwice { first, second }
                } else {
                    MetaError::SiteListedTwice {
                        site: target.clone(),
                        first,
                        second,
                    }
                });
            }
        }
    }
    if !owner.contains_key(SERVER) {
        return Err(MetaError::ServerMissing);
    }
    Ok(())
}

/// The property the `meta_json` fuzz target and its replay test check on any bytes:
/// parsing never panics, and a meta it accepts obeys SPEC section 5. Panics (a bug) when
/// the property fails.
pub fn check_meta_parse(bytes: &[u8]) {
    let Ok(meta) = JobMeta::parse(bytes, "fuzz") else {
        return;
    };
    assert!(!meta.name.is_empty(), "a meta has a name");
    assert!(meta.min_clients >= 1, "min_clients is positive");
    assert!(!meta.deploy_map.is_empty(), "the deploy map is not empty");
    assert!(
        meta.deploy_map.windows(2).all(|w| w[0].app < w[1].app),
        "apps are sorted and unique"
    );
    assert!(
        meta.app_for(SERVER).is_some(),
        "some app runs on the server"
    );
    if !meta.is_all_sites() {
        let listed = meta.listed_sites();
        assert!(
            meta.min_clients as usize <= listed.len(),
            "min_clients fits the listed sites"
        );
        assert!(
            meta.mandatory_clients.iter().all(|m| listed.contains(m)),
            "mandatory clients are listed"
        );
    }
    for amounts in meta.resource_spec.values() {
        assert!(
            amounts.values().all(|a| a.is_finite() && *a >= 0.0),
            "amounts are non-negative"
        );
    }
}
