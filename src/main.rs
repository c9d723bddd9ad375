//! The `fedrun` command line: parse, call the library, print.

mod cmd;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: fedrun::Allocator = fedrun::Allocator;

/// fedrun runs federated jobs across many remote sites and keeps every step in a
/// replayable, hash-chained history.
#[derive(Parser, Debug)]
#[command(
    name = "fedrun",
    version,
    about,
    long_about = None,
    after_help = "Exit codes: 0 success; 1 error; 70 the server's engine stopped for good \
                  (a write to its history failed); a supervisor restarts it."
)]
struct Cli {
    /// Log filter (tracing's env-filter syntax). Without it the FEDRUN_LOG variable is
    /// read, and without that `warn` is used.
    #[arg(long, global = true, value_name = "FILTER")]
    log: Option<String>,
    /// How log lines are written on stderr: human `text`, or one JSON object per line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// The `--log-format` choices.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a demo federation: a server and three local sites running the example jobs.
    Demo(cmd::demo::Args),
    /// Run a simulation scenario on a virtual clock.
    Sim(cmd::sim::Args),
    /// Print the history of events, oldest first.
    History(cmd::history::Args),
    /// List the jobs of a data folder, oldest first.
    List(cmd::list::Args),
    /// Show one job: status, submitter, schedule history, deploy detail, run and archive.
    Show(cmd::show::Args),
    /// Check the history: hash chain, anchor, snapshot.
    #[command(subcommand)]
    Audit(cmd::audit::Command),
    /// Validate a job folder or zip and write its canonical package.
    Package(cmd::package::Args),
    /// Create a project root CA and startup kits for server, sites and admins.
    Provision(cmd::provision::Args),
    /// Sign a job folder the way NVFlare does.
    Sign(cmd::sign::Args),
    /// Verify a signed job folder against a root CA.
    Verify(cmd::verify::Args),
    /// Run the server of a federation on its mutual-TLS port.
    Serve(cmd::serve::Args),
    /// Run a site agent that dials the server.
    Site(cmd::site::Args),
    /// Submit a job folder or zip to the live server.
    Submit(cmd::remote::SubmitArgs),
    /// Abort a job on the live server.
    Abort(cmd::remote::JobArgs),
    /// Delete a job on the live server (a SUBMITTED or finished one).
    Delete(cmd::remote::JobArgs),
    /// Submit a new job from the package of an existing one.
    Clone(cmd::remote::JobArgs),
    /// Download a finished job: its meta, package and workspace archive.
    Download(cmd::remote::DownloadArgs),
    /// The sites connected to the live server, with their resources and running jobs.
    Sites(cmd::remote::SitesArgs),
    /// An app's output (the server app's, or a site's with --site), through the live server.
    Logs(cmd::logs::Args),
    /// Serve a read-only page of the live server on 127.0.0.1, reached with the admin kit.
    Dashboard(cmd::dashboard::Args),
}

fn main() {
    let cli = Cli::parse();
    // The flag wins over the variable, which wins over the default.
    let filter = (cli.log.clone())
        .or_else(|| {
            std::env::var("FEDRUN_LOG")
                .ok()
                .filter(|v| !v.trim().is_empty())
        })
        .unwrap_or_else(|| "warn".to_string());
    let ansi = cmd::term::colour_allowed(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.with_ansi(ansi).init(),
        LogFormat::Json => logs.json().with_ansi(false).init(),
    }
    if matches!(
        cli.command,
        Command::Sim(_)
            | Command::History(_)
            | Command::List(_)
            | Command::Show(_)
            | Command::Audit(_)
            | Command::Package(_)
            | Command::Verify(_)
            | Command::Sites(_)
            | Command::Logs(_)
    ) {
        // Commands that only print what they read end quietly when their reader goes
        // away (`fedrun history | head`), as Unix filters do, instead of panicking on the
        // failed write. The demo, the server and the site agent keep SIGPIPE ignored: they
        // must clean up (stop apps, close the history) however their output ends.
        // SAFETY: resetting a signal's disposition to the default, before any thread runs.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let result = match cli.command {
        Command::Demo(a) => cmd::demo::run(a),
        Command::Sim(a) => cmd::sim::run(a),
        Command::History(a) => cmd::history::run(a),
        Command::List(a) => cmd::list::run(a),
        Command::Show(a) => cmd::show::run(a),
        Command::Audit(c) => cmd::audit::run(c),
        Command::Package(a) => cmd::package::run(a),
        Command::Provision(a) => cmd::provision::run(a),
        Command::Sign(a) => cmd::sign::run(a),
        Command::Verify(a) => cmd::verify::run(a),
        Command::Serve(a) => cmd::serve::run(a),
        Command::Site(a) => cmd::site::run(a),
        Command::Submit(a) => cmd::remote::submit(a),
        Command::Abort(a) => cmd::remote::change(a, "abort"),
        Command::Delete(a) => cmd::remote::change(a, "delete"),
        Command::Clone(a) => cmd::remote::change(a, "clone"),
        Command::Download(a) => cmd::remote::download(a),
        Command::Sites(a) => cmd::remote::sites(a),
        Command::Logs(a) => cmd::logs::run(a),
        Command::Dashboard(a) => cmd::dashboard::run(a),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(err) => {
            eprintln!("error: {}", cmd::term::error_chain(&err));
            std::process::exit(1);
        }
    }
}
