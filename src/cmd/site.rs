//! `fedrun site`: a site agent that dials the server (SPEC section 11).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use fedrun::net::agent::{Agent, AgentConfig};
use fedrun::net::kit::{Kit, KitKind};
use fedrun::net::observe;
use fedrun::net::serve::{read_table, take_wire};
use fedrun::net::wire::WireConfig;
use fedrun::site::local::LocalSiteConfig;
use fedrun::trust::certs::RootCa;
use fedrun::trust::TrustPolicy;

/// Arguments of `fedrun site`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The site's startup kit folder (`fedrun.toml` and `startup/`).
    #[arg(long, value_name = "DIR")]
    pub kit: PathBuf,
    /// The site's work folder: one run folder per job.
    #[arg(long, value_name = "W", default_value = "fedrun-site")]
    pub work_dir: PathBuf,
    /// The site's settings: a `[site]` table with `resources`, `require_signed_jobs`,
    /// `app_env_pass`, `abort_grace`, `reservation_timeout`, `heartbeat_interval`,
    /// `heartbeat_timeout` and `metrics_listen`.
    #[arg(long, value_name = "SITE.toml")]
    pub config: Option<PathBuf>,
    /// Dial this address instead of the kit's; the server's TLS name stays the kit's host.
    #[arg(long, value_name = "HOST:PORT")]
    pub server: Option<String>,
    /// Serve `/metrics`, `/healthz` and `/readyz` over plain HTTP here (a bare port is
    /// loopback); overrides the `metrics_listen` setting. Off unless set.
    #[arg(long, value_name = "ADDR:PORT", value_parser = observe::parse_listen)]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// The `[site]` table of a site's settings file.
#[derive(serde::Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct SiteSettings {
    #[serde(default)]
    resources: BTreeMap<String, f64>,
    require_signed_jobs: Option<bool>,
    #[serde(default)]
    app_env_pass: Vec<String>,
    #[serde(default, with = "optional_duration")]
    abort_grace: Option<Duration>,
    #[serde(default, with = "optional_duration")]
    reservation_timeout: Option<Duration>,
    metrics_listen: Option<String>,
}

mod optional_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<fedrun::settings::DurationText>::deserialize(d).map(|o| o.map(|t| t.0))
    }
}

fn load_settings(path: Option<&std::path::Path>) -> anyhow::Result<(SiteSettings, WireConfig)> {
    let Some(path) = path else {
        return Ok((SiteSettings::default(), WireConfig::default()));
    };
    let mut top = read_table(path).map_err(anyhow::Error::msg)?;
    let mut table = match top.remove("site") {
        None => toml::Table::new(),
        Some(toml::Value::Table(t)) => t,
        Some(_) => bail!("{}: `site` must be a table", path.display()),
    };
    if let Some(key) = top.keys().next() {
        bail!(
            "{}: unknown key `{key}` (the settings go in the [site] table)",
            path.display()
        );
    }
    let wire = take_wire(&mut table, WireConfig::default())
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let settings: SiteSettings = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| anyhow::anyhow!("{}: {}", path.display(), e.message()))?;
    if let Some(addr) = &settings.metrics_listen {
        observe::parse_listen(addr).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }
    Ok((settings, wire))
}

/// Runs the command; the returned code is the process exit code.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let kit = Kit::load(&args.kit)?;
    if kit.kind != KitKind::Site {
        bail!(
            "{} is a {} kit; `fedrun site` needs a site's kit",
            args.kit.display(),
            kit.kind.as_str()
        );
    }
    let (settings, wire) = load_settings(args.config.as_deref())?;
    let metrics_listen = match (args.metrics_listen, &settings.metrics_listen) {
        (Some(addr), _) => Some(addr),
        (None, Some(text)) => Some(observe::parse_listen(text).map_err(anyhow::Error::msg)?),
        (None, None) => None,
    };
    let root_ca = RootCa::load(&kit.root_ca)
        .with_context(|| format!("reading the root CA {}", kit.root_ca.display()))?;
    std::fs::create_dir_all(&args.work_dir)
        .with_context(|| format!("creating {}", args.work_dir.display()))?;
    let mut site = LocalSiteConfig::new(&kit.name, args.work_dir.clone(), settings.resources);
    site.trust = TrustPolicy {
        root_ca: Some(root_ca),
        require_signed_jobs: settings.require_signed_jobs,
    };
    site.app_env_pass = settings.app_env_pass;
    if let Some(grace) = settings.abort_grace {
        site.abort_grace = grace;
    }
    if let Some(timeout) = settings.reservation_timeout {
        site.reservation_timeout = timeout;
    }
    let mut config = AgentConfig::new(kit, site);
    config.wire = wire;
    if let Some(server) = args.server {
        config.server = server;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async move {
        let name = config.kit.name.clone();
        let server = config.server.clone();
        // The handlers are in place before the agent starts and says so: a stop right
        // after it is a clean stop, not a kill.
        use tokio::signal::unix::{signal, SignalKind};
        let mut sigterm =
            signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut sigint =
            signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let metrics = config.metrics.clone();
        let agent = Agent::spawn(config)?;
        let observing = match metrics_listen {
            None => None,
            Some(addr) => match observe::start(addr, metrics).await {
                Ok(observing) => Some(observing),
                Err(e) => {
                    agent.stop().await;
                    return Err(e.into());
                }
            },
        };
        println!(
            "fedrun site: {name} dialling {server} (work folder {})",
            args.work_dir.display()
        );
        if let Some(observing) = &observing {
            println!(
                "fedrun site: metrics on http://{}/metrics",
                observing.local_addr()
            );
        }
        let _ = std::io::stdout().flush();
        tokio::select! {
            _ = sigint.recv() => {}
            _ = sigterm.recv() => {}
        }
        agent.stop().await;
        if let Some(observing) = observing {
            observing.stop().await;
        }
        println!("fedrun site: {name} stopped; its apps keep running");
        Ok::<i32, anyhow::Error>(0)
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    result
}
