//! `fedrun dashboard`: a read-only page on 127.0.0.1 over the live server's admin API,
//! reached with the admin's kit (SPEC section 11, "Observation").

use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;

use super::remote::Target;

/// Arguments of `fedrun dashboard`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub target: Target,
    /// The local port on 127.0.0.1; 0 picks a free one (printed).
    #[arg(long, value_name = "P", default_value_t = 0)]
    pub port: u16,
}

/// Runs the command until SIGINT or SIGTERM; the returned code is the process exit code.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let client = match args.target.client() {
        Ok(client) => client,
        Err(code) => return Ok(code),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async move {
        let server = client.addr().to_string();
        let dashboard = fedrun::net::dashboard::start(client, args.port)
            .await
            .with_context(|| format!("listening on 127.0.0.1:{}", args.port))?;
        use tokio::signal::unix::{signal, SignalKind};
        let mut sigterm =
            signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut sigint =
            signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let addr = dashboard.local_addr();
        println!(
            "fedrun dashboard: listening on {addr} (open http://{addr}/; forwarding to {})",
            super::term::clean(&server)
        );
        let _ = std::io::stdout().flush();
        tokio::select! {
            _ = sigint.recv() => {}
            _ = sigterm.recv() => {}
        }
        dashboard.stop().await;
        println!("fedrun dashboard: stopped");
        anyhow::Ok(0)
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
    result
}
