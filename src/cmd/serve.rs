//! `fedrun serve`: the server of a federation, on one mutual-TLS port (SPEC section 11).

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use fedrun::engine::clock::WallClock;
use fedrun::engine::server::{Server, ServerConfig, EXIT_ENGINE_STOPPED};
use fedrun::net::kit::{Kit, KitKind};
use fedrun::net::observe;
use fedrun::net::serve::{load_server_options, start, ServeOptions};
use fedrun::trust::certs::RootCa;
use fedrun::trust::TrustPolicy;

/// Arguments of `fedrun serve`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The server's startup kit folder (`fedrun.toml` and `startup/`).
    #[arg(long, value_name = "DIR")]
    pub kit: PathBuf,
    /// The data folder: history, blobs, the server's workspace.
    #[arg(long, value_name = "D", default_value = "fedrun-data")]
    pub data_dir: PathBuf,
    /// A settings file whose `[server]` table holds the settings (as in a scenario).
    /// `FEDRUN_SETTING_<NAME>` variables override it.
    #[arg(long, value_name = "SETTINGS.toml")]
    pub config: Option<PathBuf>,
    /// Listen here instead of on all interfaces at the kit's port; port 0 picks a free one.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
    /// Serve `/metrics`, `/healthz` and `/readyz` over plain HTTP here (a bare port is
    /// loopback); overrides the `metrics_listen` setting. Off unless set.
    #[arg(long, value_name = "ADDR:PORT", value_parser = observe::parse_listen)]
    pub metrics_listen: Option<SocketAddr>,
}

/// Runs the command; the returned code is the process exit code.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let kit = Kit::load(&args.kit)?;
    if kit.kind != KitKind::Server {
        bail!(
            "{} is a {} kit; `fedrun serve` needs the server's kit",
            args.kit.display(),
            kit.kind.as_str()
        );
    }
    let options = load_server_options(args.config.as_deref(), std::env::vars())
        .map_err(anyhow::Error::msg)?;
    let (settings, wire) = (options.settings, options.wire);
    let metrics_listen = args.metrics_listen.or(options.metrics_listen);
    let root_ca = RootCa::load(&kit.root_ca)
        .with_context(|| format!("reading the root CA {}", kit.root_ca.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(serve(args, kit, settings, wire, metrics_listen, root_ca));
    runtime.shutdown_timeout(Duration::from_secs(5));
    result
}

async fn serve(
    args: Args,
    kit: Kit,
    settings: fedrun::settings::Settings,
    wire: fedrun::net::wire::WireConfig,
    metrics_listen: Option<SocketAddr>,
    root_ca: RootCa,
) -> anyhow::Result<i32> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let mut config = ServerConfig::new(&args.data_dir);
    config.trust = TrustPolicy {
        root_ca: Some(root_ca),
        require_signed_jobs: settings.require_signed_jobs,
    };
    config.settings = settings;
    let server = Server::start(config, Arc::new(WallClock))
        .with_context(|| format!("starting the server on {}", args.data_dir.display()))?;
    let listen = args
        .listen
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], kit.server_port)));
    let serving = match start(&kit, server.clone(), listen, ServeOptions { wire }).await {
        Ok(serving) => serving,
        Err(e) => {
            server.shutdown().await;
            return Err(e.into());
        }
    };
    let observing = match metrics_listen {
        None => None,
        Some(addr) => match observe::start(addr, Arc::new(server.clone())).await {
            Ok(observing) => Some(observing),
            Err(e) => {
                serving.stop().await;
                server.shutdown().await;
                return Err(e.into());
            }
        },
    };
    // The handlers are in place before the address is printed: whoever waits for it may
    // stop the server at once, and that is a clean stop, not a kill.
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    println!(
        "fedrun serve: {} listening on {} (data folder {})",
        kit.name,
        serving.local_addr(),
        args.data_dir.display()
    );
    if let Some(observing) = &observing {
        println!(
            "fedrun serve: metrics on http://{}/metrics",
            observing.local_addr()
        );
    }
    let _ = std::io::stdout().flush();
    let code = tokio::select! {
        _ = sigint.recv() => None,
        _ = sigterm.recv() => None,
        cause = server.wait_stopped() => {
            eprintln!("error: the server's engine stopped for good: {cause}");
            Some(EXIT_ENGINE_STOPPED)
        }
    };
    tracing::info!("stopping: no new connections; closing the open ones");
    serving.stop().await;
    if let Some(code) = code {
        if let Some(observing) = observing {
            observing.stop().await;
        }
        return Ok(code);
    }
    server.shutdown().await;
    // `/readyz` answers 503 from the moment the engine stops until the listener closes.
    if let Some(observing) = observing {
        observing.stop().await;
    }
    println!("fedrun serve: stopped");
    Ok(0)
}
