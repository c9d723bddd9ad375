//! The admin CLI over the admin API (SPEC section 11): `submit`, `abort`, `delete`,
//! `clone`, `download`, `sites`, and the live-server side of `list`, `show`, `history` and
//! `audit verify`. Exit codes: 0 success; 1 refused by the server or failed; 2 usage; 3 no
//! connection (or lost and not regained within 30 s); `submit --wait` 4 when the job ended
//! otherwise than `FINISHED:COMPLETED`.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use bytes::Bytes;
use fedrun::history::events::event_text;
use fedrun::job::limits::Limits;
use fedrun::job::package::{ingest, unpack, Package};
use fedrun::lifecycle::view::{
    find_job, run_phase_name, ArchiveView, JobSummary, JobView, MetaView,
};
use fedrun::lifecycle::{Actor, Archive, BootId, Event, EventKind, RunPhase, RunStatus, Timestamp};
use fedrun::net::admin::download_entries;
use fedrun::net::client::{encode_query_value, Client, ClientError, NoProgress, Progress};
use hyper::Method;

use super::list::print;

/// Exit code: refused by the server, or failed.
pub const EXIT_FAILED: i32 = 1;
/// Exit code: a usage error.
pub const EXIT_USAGE: i32 = 2;
/// Exit code: no connection could be made, or it was lost and not regained in 30 s.
pub const EXIT_NO_CONNECTION: i32 = 3;
/// Exit code of `submit --wait`: the job ended otherwise than `FINISHED:COMPLETED`.
pub const EXIT_NOT_COMPLETED: i32 = 4;

/// Which server a command talks to.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Target {
    /// The admin's startup kit (`DIR/<admin>`); also read from FEDRUN_KIT.
    #[arg(long, value_name = "DIR")]
    pub kit: Option<PathBuf>,
    /// The server's address, instead of the one in the kit (the TLS name stays the kit's).
    #[arg(long, value_name = "HOST:PORT")]
    pub server: Option<String>,
}

/// Where a reading command reads from.
pub enum Source {
    /// A live server, through its admin API.
    Live(Client),
    /// A stopped server's data folder.
    Folder(PathBuf),
}

/// A usage error: printed, exit code 2.
fn usage(message: &str) -> i32 {
    eprintln!("error: {message}");
    EXIT_USAGE
}

impl Target {
    /// The kit: `--kit`, else FEDRUN_KIT.
    fn kit_dir(&self) -> Option<PathBuf> {
        self.kit
            .clone()
            .or_else(|| std::env::var_os("FEDRUN_KIT").map(PathBuf::from))
    }

    /// A client for a command that needs the live server. `Err` is the exit code.
    pub fn client(&self) -> Result<Client, i32> {
        let Some(kit) = self.kit_dir() else {
            return Err(usage(
                "this command needs the admin kit: give --kit DIR (or set FEDRUN_KIT)",
            ));
        };
        Client::from_kit(&kit, self.server.as_deref()).map_err(|err| {
            eprintln!("error: {err}");
            EXIT_FAILED
        })
    }

    /// The source of a command that also reads a data folder: `--data-dir` or the kit,
    /// never both. `Err` is the exit code.
    pub fn source(&self, data_dir: Option<&Path>) -> Result<Source, i32> {
        match (data_dir, &self.kit, &self.server) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => Err(usage(
                "give either --data-dir (a stopped server's folder) or --kit (the live server), not both",
            )),
            (Some(dir), None, None) => Ok(Source::Folder(dir.to_path_buf())),
            (None, _, _) => self.client().map(Source::Live),
        }
    }
}

/// The exit code of a failed request, after printing why.
fn failed(err: &ClientError) -> i32 {
    // The error may carry the server's message: escaped like any outside text.
    eprintln!("error: {}", printable(&err.to_string()));
    if err.is_connection() {
        EXIT_NO_CONNECTION
    } else {
        EXIT_FAILED
    }
}

/// Runs `work` on a fresh runtime; its `Err` is printed and gives its exit code.
fn block_on<F>(work: F) -> anyhow::Result<i32>
where
    F: std::future::Future<Output = Result<i32, ClientError>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    Ok(runtime.block_on(work).unwrap_or_else(|err| failed(&err)))
}

/// A progress bar on stderr for an upload or a download (SPEC section 11). indicatif draws
/// nothing when stderr is not a terminal, so scripts and pipes see no bar.
struct TransferBar(indicatif::ProgressBar);

impl TransferBar {
    fn new(what: &'static str) -> std::sync::Arc<TransferBar> {
        let bar =
            indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .expect("a valid progress template")
            .progress_chars("=> "),
        );
        bar.set_message(what);
        std::sync::Arc::new(TransferBar(bar))
    }

    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

impl Progress for TransferBar {
    fn start(&self, total: Option<u64>) {
        if let Some(total) = total {
            self.0.set_length(total);
        }
        self.0.set_position(0);
    }

    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }
}

fn new_key() -> String {
    uuid::Builder::from_random_bytes(rand::random())
        .into_uuid()
        .to_string()
}

fn job_path(id: &str, tail: &str) -> String {
    format!("/v1/jobs/{}{tail}", encode_query_value(id))
}

/// Text a server or site chose, made harmless for a terminal by the one escaping every
/// command uses ([`super::term::clean`]).
fn printable(text: &str) -> String {
    super::term::clean(text).into_owned()
}

/// One JSON value per line.
fn json_lines(values: &[serde_json::Value]) -> String {
    values.iter().map(|v| format!("{v}\n")).collect()
}

// ---- list and show: the local renderers, fed from the API's JSON ----

fn text_field(value: &serde_json::Value, key: &str) -> Result<String, ClientError> {
    value[key]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| ClientError::Protocol(format!("field {key} missing")))
}

fn opt_text(value: &serde_json::Value, key: &str) -> Option<String> {
    value[key].as_str().map(str::to_string)
}

fn status_field(value: &serde_json::Value) -> Result<RunStatus, ClientError> {
    text_field(value, "status")?
        .parse()
        .map_err(|e: fedrun::lifecycle::status::UnknownStatus| ClientError::Protocol(e.to_string()))
}

fn strings(value: &serde_json::Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn from_json<T: serde::de::DeserializeOwned + Default>(value: &serde_json::Value) -> T {
    serde_json::from_value(value.clone()).unwrap_or_default()
}

/// A `list` row as the API sends it.
pub fn summary_from_json(value: &serde_json::Value) -> Result<JobSummary, ClientError> {
    Ok(JobSummary {
        job_id: text_field(value, "job_id")?,
        name: text_field(value, "name")?,
        status: status_field(value)?,
        submitter_name: text_field(value, "submitter_name")?,
        submitter_org: text_field(value, "submitter_org")?,
        submitter_role: text_field(value, "submitter_role")?,
        submit_time: value["submit_time"].as_i64().unwrap_or(0),
        submit_time_iso: text_field(value, "submit_time_iso")?,
        duration: opt_text(value, "duration"),
        deleted: value["deleted"].as_bool().unwrap_or(false),
    })
}

/// A `show` answer as the API sends it.
pub fn view_from_json(value: &serde_json::Value) -> Result<JobView, ClientError> {
    let meta = &value["meta"];
    let run = text_field(value, "run")?;
    let run = RunPhase::ALL
        .into_iter()
        .map(run_phase_name)
        .find(|name| *name == run)
        .ok_or_else(|| ClientError::Protocol(format!("unknown run phase {run:?}")))?;
    let archive = &value["archive"];
    let archive = match archive["state"].as_str() {
        Some("no_workspace") => ArchiveView::NoWorkspace,
        Some("pending") => ArchiveView::Pending {
            failures: archive["failures"].as_u64().unwrap_or(0) as u32,
            last_reason: opt_text(archive, "last_reason"),
        },
        Some("archived") => ArchiveView::Archived {
            hash: text_field(archive, "hash")?,
        },
        Some("failed") => ArchiveView::Failed {
            reason: text_field(archive, "reason")?,
        },
        other => {
            return Err(ClientError::Protocol(format!(
                "unknown archive state {other:?}"
            )))
        }
    };
    Ok(JobView {
        job_id: text_field(value, "job_id")?,
        name: text_field(value, "name")?,
        submitter_name: text_field(value, "submitter_name")?,
        submitter_org: text_field(value, "submitter_org")?,
        submitter_role: text_field(value, "submitter_role")?,
        submit_time: value["submit_time"].as_i64().unwrap_or(0),
        submit_time_iso: text_field(value, "submit_time_iso")?,
        status: status_field(value)?,
        finish_reason: opt_text(value, "finish_reason"),
        start_time: opt_text(value, "start_time"),
        duration: opt_text(value, "duration"),
        schedule_count: value["schedule_count"].as_u64().unwrap_or(0) as u32,
        last_schedule_time: opt_text(value, "last_schedule_time"),
        schedule_history: strings(&value["schedule_history"]),
        job_deploy_detail: strings(&value["job_deploy_detail"]),
        job_clients: strings(&value["job_clients"]),
        meta: MetaView {
            deploy_map: from_json::<BTreeMap<String, Vec<String>>>(&meta["deploy_map"]),
            min_clients: meta["min_clients"].as_u64().unwrap_or(0) as u32,
            mandatory_clients: strings(&meta["mandatory_clients"]),
            resource_spec: from_json(&meta["resource_spec"]),
        },
        run,
        archive,
        deleted: value["deleted"].as_bool().unwrap_or(false),
    })
}

/// `fedrun list --kit`.
pub fn list(
    client: Client,
    status: Option<&str>,
    name: Option<&str>,
    all: bool,
    json: bool,
) -> anyhow::Result<i32> {
    let mut query = Vec::new();
    if let Some(status) = status {
        query.push(format!("status={}", encode_query_value(status)));
    }
    if let Some(name) = name {
        query.push(format!("name={}", encode_query_value(name)));
    }
    if all {
        query.push("all=true".to_string());
    }
    let path = if query.is_empty() {
        "/v1/jobs".to_string()
    } else {
        format!("/v1/jobs?{}", query.join("&"))
    };
    block_on(async move {
        let value = client
            .retrying(|| client.json(Method::GET, &path, &[], Bytes::new()))
            .await?;
        let rows = value.as_array().cloned().unwrap_or_default();
        let text = if json {
            json_lines(&rows)
        } else {
            let rows = rows
                .iter()
                .map(summary_from_json)
                .collect::<Result<Vec<_>, _>>()?;
            super::list::table(&rows)
        };
        Ok(print(&text).unwrap_or(EXIT_FAILED))
    })
}

/// `fedrun show --kit`.
pub fn show(client: Client, id: &str, json: bool) -> anyhow::Result<i32> {
    let path = job_path(id, "");
    block_on(async move {
        let value = client
            .retrying(|| client.json(Method::GET, &path, &[], Bytes::new()))
            .await?;
        let text = if json {
            format!("{value}\n")
        } else {
            super::show::text(&view_from_json(&value)?)
                .map_err(|e| ClientError::Protocol(e.to_string()))?
        };
        Ok(print(&text).unwrap_or(EXIT_FAILED))
    })
}

// ---- history ----

/// An event as the API's JSON line gives it, for the local text renderer.
pub fn event_from_json(value: &serde_json::Value) -> Option<Event> {
    Some(Event {
        seq: value["seq"].as_u64()?,
        at: Timestamp::from_millis(value["at_ms"].as_i64()?),
        actor: serde_json::from_value::<Actor>(value["actor"].clone()).ok()?,
        request_id: opt_text(value, "request_id"),
        boot_id: BootId(value["boot_id"].as_str()?.parse().ok()?),
        kind: serde_json::from_value::<EventKind>(value["kind"].clone()).ok()?,
    })
}

/// `fedrun history --kit`: the events (of one job), and with `follow` every new one,
/// reconnecting from the last one seen when the connection breaks.
pub fn history(client: Client, job: Option<&str>, follow: bool, json: bool) -> anyhow::Result<i32> {
    let job = job.map(str::to_string);
    block_on(async move {
        let mut next = 1u64;
        let stdout = std::io::stdout();
        loop {
            let mut path = format!("/v1/history?from={next}");
            if let Some(job) = &job {
                path.push_str(&format!("&job={}", encode_query_value(job)));
            }
            if follow {
                path.push_str("&follow=true");
            }
            let response = client
                .retrying(|| client.send(Method::GET, &path, &[], Bytes::new()))
                .await?;
            let mut lines = JsonLines::new(response.into_body());
            let broke = loop {
                let (line, value) = match lines.next().await {
                    Ok(Some(line)) => line,
                    Ok(None) => break false,
                    Err(Broke) => break true,
                };
                let value = value?;
                if let Some(seq) = value["seq"].as_u64() {
                    next = seq + 1;
                }
                let text = if json {
                    line
                } else {
                    event_from_json(&value)
                        .map(|e| printable(&event_text(&e)))
                        .unwrap_or_else(|| printable(&line))
                };
                let mut out = stdout.lock();
                if writeln!(out, "{text}").and_then(|()| out.flush()).is_err() {
                    // A closed pipe is the reader's choice.
                    return Ok(0);
                }
            };
            if !broke || !follow {
                if broke {
                    return Err(ClientError::Connect {
                        addr: client.addr().to_string(),
                        reason: "the connection broke during the answer".into(),
                    });
                }
                return Ok(0);
            }
            tracing::info!(next, "history stream broke; reconnecting");
        }
    })
}

/// The connection broke in the middle of a streamed answer.
struct Broke;

/// One line of a JSON-lines answer, with its parsed value.
type Line = (String, Result<serde_json::Value, ClientError>);

/// The lines of a streamed JSON-lines answer (`/v1/history`), each with its parsed value.
struct JsonLines {
    body: hyper::body::Incoming,
    pending: Vec<u8>,
}

impl JsonLines {
    fn new(body: hyper::body::Incoming) -> JsonLines {
        JsonLines {
            body,
            pending: Vec::new(),
        }
    }

    /// A complete line already received, without waiting for more.
    fn buffered(&mut self) -> Option<Line> {
        let end = self.pending.iter().position(|b| *b == b'\n')?;
        let line: Vec<u8> = self.pending.drain(..=end).collect();
        let line = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
        let value = serde_json::from_str(&line).map_err(|e| ClientError::Protocol(e.to_string()));
        Some((line, value))
    }

    /// The next complete line: `Ok(None)` at the end of the answer, `Err(Broke)` when the
    /// connection broke first.
    async fn next(&mut self) -> Result<Option<Line>, Broke> {
        loop {
            if let Some(line) = self.buffered() {
                return Ok(Some(line));
            }
            match http_body_util::BodyExt::frame(&mut self.body).await {
                None => return Ok(None),
                Some(Err(_)) => return Err(Broke),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.pending.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

// ---- audit ----

/// `fedrun audit verify --kit`: the live server's audit.
pub fn audit(client: Client, json: bool) -> anyhow::Result<i32> {
    block_on(async move {
        let report = client
            .retrying(|| client.json(Method::GET, "/v1/audit", &[], Bytes::new()))
            .await?;
        let ok = report["ok"].as_bool().unwrap_or(false);
        let text = if json {
            format!("{report}\n")
        } else {
            audit_text(&report, client.addr())
        };
        print(&text).map_err(|e| ClientError::Protocol(e.to_string()))?;
        Ok(if ok { 0 } else { EXIT_FAILED })
    })
}

/// The live audit in the words of the local one: only the checks really made are named.
fn audit_text(report: &serde_json::Value, addr: &str) -> String {
    let mut out = format!("server:   {}\n", printable(addr));
    let records_ok = report["records_ok"].as_u64().unwrap_or(0);
    out.push_str(&format!(
        "records:  {records_ok} checked and good, last stored is {}\n",
        report["head"]["seq"].as_u64().unwrap_or(0)
    ));
    let anchor = report["anchor"]["seq"].as_u64();
    match anchor {
        Some(seq) => out.push_str(&format!("anchor:   record {seq}\n")),
        None => out.push_str("anchor:   none\n"),
    }
    let snapshot = report["snapshot_seq"].as_u64();
    match snapshot {
        Some(seq) => out.push_str(&format!("snapshot: covers records up to {seq}\n")),
        None => out.push_str("snapshot: none\n"),
    }
    if report["ok"].as_bool().unwrap_or(false) {
        let mut checks = vec![format!(
            "chain intact ({records_ok} records, every transition legal)"
        )];
        if let (true, Some(seq)) = (report["anchor_matches"].as_bool().unwrap_or(false), anchor) {
            checks.push(format!("anchor matches record {seq}"));
        }
        if let (true, Some(seq)) = (
            report["snapshot_matches"].as_bool().unwrap_or(false),
            snapshot,
        ) {
            checks.push(format!("replay equals the snapshot at record {seq}"));
        }
        let blobs = report["blobs_checked"].as_u64().unwrap_or(0);
        if blobs > 0 {
            checks.push(format!("{blobs} blobs intact"));
        }
        out.push_str(&format!("result:   OK: {}\n", checks.join(", ")));
    } else {
        match report["first_bad_seq"].as_u64() {
            Some(seq) => out.push_str(&format!("result:   FAILED: first bad record is {seq}\n")),
            None => out.push_str("result:   FAILED\n"),
        }
        for problem in report["problems"].as_array().into_iter().flatten() {
            let message = printable(problem["message"].as_str().unwrap_or(""));
            match problem["seq"].as_u64() {
                Some(seq) => out.push_str(&format!("  record {seq}: {message}\n")),
                None => out.push_str(&format!("  {message}\n")),
            }
        }
    }
    out
}

// ---- the commands that change jobs ----

/// Arguments of `fedrun submit`.
#[derive(clap::Args, Debug)]
pub struct SubmitArgs {
    /// The job folder (holding meta.json) or its zip.
    #[arg(value_name = "FOLDER_OR_ZIP")]
    pub job: PathBuf,
    /// Follow the job until it has finished and its archive has settled; exit 0 only if
    /// it ended FINISHED:COMPLETED, else 4.
    #[arg(long)]
    pub wait: bool,
    /// Submit an unsigned job unsigned (by default it is signed with the kit's key, in a
    /// temporary copy).
    #[arg(long)]
    pub no_sign: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub target: Target,
}

/// Arguments of `fedrun abort`, `delete` and `clone`.
#[derive(clap::Args, Debug)]
pub struct JobArgs {
    /// The job's id, or a prefix of it that names one job only.
    #[arg(value_name = "JOB_ID")]
    pub job_id: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub target: Target,
}

/// Arguments of `fedrun sites`.
#[derive(clap::Args, Debug)]
pub struct SitesArgs {
    /// Print one JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub target: Target,
}

/// Arguments of `fedrun download`.
#[derive(clap::Args, Debug)]
pub struct DownloadArgs {
    /// The job's id, or a prefix of it that names one job only.
    #[arg(value_name = "JOB_ID")]
    pub job_id: String,
    /// The folder to write `<job id>/` into.
    #[arg(short = 'o', long = "output", value_name = "DIR", default_value = ".")]
    pub output: PathBuf,
    /// A stopped server's data folder to read instead of the live server (read-only).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub target: Target,
}

/// The package to upload: the canonical zip of the folder or zip at `path`, signed with
/// the kit's key in a temporary copy unless it is signed already or `no_sign`.
fn prepare(path: &Path, kit: Option<&Path>, no_sign: bool) -> anyhow::Result<Package> {
    let limits = Limits::default();
    let package = ingest(path, &limits)
        .with_context(|| format!("the job at {} is not a valid job", path.display()))?;
    if package.signed || no_sign {
        return Ok(package);
    }
    let kit = kit.context("signing needs the admin kit")?;
    let kit = fedrun::net::kit::Kit::load(kit)?;
    let signer = fedrun::trust::Signer::load(&kit.cert, &kit.key)
        .context("loading the kit's certificate and key to sign the job")?;
    let scratch = tempfile::tempdir().context("creating a temporary folder to sign the job in")?;
    let copy = scratch.path().join("job");
    unpack(&package.zip, None, &copy, &limits).context("unpacking the job to sign it")?;
    fedrun::trust::sign_job_folder(&copy, &signer).context("signing the job")?;
    let mut signed = ingest(&copy, &limits).context("packaging the signed job")?;
    // The name is the one the job had before the copy (its folder's or zip's).
    signed.meta.name = package.meta.name;
    Ok(signed)
}

/// `fedrun submit`.
pub fn submit(args: SubmitArgs) -> anyhow::Result<i32> {
    let client = match args.target.client() {
        Ok(client) => client,
        Err(code) => return Ok(code),
    };
    let kit = args.target.kit_dir();
    let package = match prepare(&args.job, kit.as_deref(), args.no_sign) {
        Ok(package) => package,
        Err(err) => {
            eprintln!("error: {err:#}");
            return Ok(EXIT_FAILED);
        }
    };
    let path = format!("/v1/jobs?name={}", encode_query_value(&package.meta.name));
    let key = new_key();
    let body = Bytes::from(package.zip);
    let (wait, json) = (args.wait, args.json);
    block_on(async move {
        let headers = [
            ("idempotency-key", key),
            ("content-type", "application/zip".to_string()),
        ];
        let bar = TransferBar::new("uploading");
        let answer = client
            .retrying(|| {
                client.send_full_counted(
                    Method::POST,
                    &path,
                    &headers,
                    body.clone(),
                    bar.clone(),
                    std::sync::Arc::new(NoProgress),
                )
            })
            .await;
        bar.finish();
        let answer: serde_json::Value =
            serde_json::from_slice(&answer?).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let job_id = text_field(&answer, "job_id")?;
        if json {
            println!("{answer}");
        } else {
            println!("submitted job {job_id}");
        }
        if !wait {
            return Ok(0);
        }
        let view = wait_settled(&client, &job_id, json).await?;
        let status = text_field(&view, "status")?;
        if json {
            println!("{view}");
        } else {
            println!("job {job_id} ended {status}");
        }
        Ok(if status == RunStatus::Completed.as_str() {
            0
        } else {
            EXIT_NOT_COMPLETED
        })
    })
}

/// Follows the job until it is terminal and its archive has settled; returns its view.
async fn wait_settled(
    client: &Client,
    job_id: &str,
    quiet: bool,
) -> Result<serde_json::Value, ClientError> {
    let path = job_path(job_id, "");
    let follow = format!("/v1/history?job={}&follow=true", encode_query_value(job_id));
    let mut last_status = String::new();
    let mut next = 1u64;
    let mut events: Option<JsonLines> = None;
    loop {
        // The job as it is now; if it has not settled, the next of its events (followed on
        // the history stream, not polled) is the moment to look again.
        let view = client
            .retrying(|| client.json(Method::GET, &path, &[], Bytes::new()))
            .await?;
        let status = status_field(&view)?;
        if !quiet && status.as_str() != last_status {
            eprintln!("job {job_id}: {status}");
            last_status = status.as_str().to_string();
        }
        let settled = view["archive"]["state"].as_str() != Some("pending");
        if status.is_terminal() && settled {
            return Ok(view);
        }
        let stream = match events.as_mut() {
            Some(stream) => stream,
            None => {
                let from = format!("{follow}&from={next}");
                let response = client
                    .retrying(|| client.send(Method::GET, &from, &[], Bytes::new()))
                    .await?;
                events.insert(JsonLines::new(response.into_body()))
            }
        };
        match stream.next().await {
            Ok(Some((_, value))) => {
                let mut seq = value?["seq"].as_u64();
                // Events that came in the same read (a backlog) need one look, not one each.
                while let Some((_, value)) = stream.buffered() {
                    seq = value?["seq"].as_u64().or(seq);
                }
                if let Some(seq) = seq {
                    next = seq + 1;
                }
            }
            // The stream ended or broke: look again, and reopen it from the next event.
            Ok(None) | Err(Broke) => events = None,
        }
    }
}

/// `fedrun abort`, `delete` or `clone`.
pub fn change(args: JobArgs, operation: &'static str) -> anyhow::Result<i32> {
    let client = match args.target.client() {
        Ok(client) => client,
        Err(code) => return Ok(code),
    };
    let (method, path) = match operation {
        "abort" => (Method::POST, job_path(&args.job_id, "/abort")),
        "clone" => (Method::POST, job_path(&args.job_id, "/clone")),
        _ => (Method::DELETE, job_path(&args.job_id, "")),
    };
    let key = new_key();
    let json = args.json;
    block_on(async move {
        let headers = [("idempotency-key", key)];
        let answer = client
            .retrying(|| client.json(method.clone(), &path, &headers, Bytes::new()))
            .await?;
        if json {
            println!("{answer}");
        } else {
            let job_id = text_field(&answer, "job_id")?;
            match operation {
                "abort" => println!("aborted job {job_id}"),
                "clone" => println!("cloned as job {job_id}"),
                _ => println!("deleted job {job_id}"),
            }
        }
        Ok(0)
    })
}

/// `fedrun sites`.
pub fn sites(args: SitesArgs) -> anyhow::Result<i32> {
    let client = match args.target.client() {
        Ok(client) => client,
        Err(code) => return Ok(code),
    };
    let json = args.json;
    block_on(async move {
        let value = client
            .retrying(|| client.json(Method::GET, "/v1/sites", &[], Bytes::new()))
            .await?;
        let rows = value.as_array().cloned().unwrap_or_default();
        let text = if json {
            json_lines(&rows)
        } else {
            sites_table(&rows)
        };
        Ok(print(&text).unwrap_or(EXIT_FAILED))
    })
}

fn sites_table(rows: &[serde_json::Value]) -> String {
    let mut lines = vec![[
        "SITE".to_string(),
        "CONNECTED_SINCE".to_string(),
        "RESOURCES".to_string(),
        "RUNNING".to_string(),
    ]];
    for row in rows {
        let resources = row["resources"]
            .as_object()
            .map(|r| {
                r.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        let running = strings(&row["running"]);
        lines.push([
            printable(row["name"].as_str().unwrap_or("")),
            printable(row["connected_since"].as_str().unwrap_or("")),
            printable(if resources.is_empty() {
                "-"
            } else {
                &resources
            }),
            if running.is_empty() {
                "-".to_string()
            } else {
                printable(&running.join(","))
            },
        ]);
    }
    let mut widths = [0usize; 4];
    for line in &lines {
        for (w, cell) in widths.iter_mut().zip(line) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for line in &lines {
        let text: Vec<String> = line
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(text.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `fedrun download`: from the live server (recorded there), or from a stopped server's
/// data folder with `--data-dir` (read-only; nothing is recorded).
pub fn download(args: DownloadArgs) -> anyhow::Result<i32> {
    let source = match args.target.source(args.data_dir.as_deref()) {
        Ok(source) => source,
        Err(code) => return Ok(code),
    };
    let (job_id, files) = match source {
        Source::Folder(dir) => match local_download(&dir, &args.job_id) {
            Ok(found) => found,
            Err(err) => {
                eprintln!("error: {err:#}");
                return Ok(EXIT_FAILED);
            }
        },
        Source::Live(client) => {
            let id = args.job_id.clone();
            let mut fetched = None;
            let code = block_on(async {
                let key = new_key();
                let headers = [("idempotency-key", key)];
                let path = job_path(&id, "/download");
                let bar = TransferBar::new("downloading");
                let zip = client
                    .retrying(|| {
                        client.send_full_counted(
                            Method::GET,
                            &path,
                            &headers,
                            Bytes::new(),
                            std::sync::Arc::new(NoProgress),
                            bar.clone(),
                        )
                    })
                    .await;
                bar.finish();
                let zip = zip?;
                let files = unzip_download(&zip).map_err(ClientError::Protocol)?;
                let show = job_path(&id, "");
                let view = client
                    .retrying(|| client.json(Method::GET, &show, &[], Bytes::new()))
                    .await?;
                fetched = Some((text_field(&view, "job_id")?, files));
                Ok(0)
            })?;
            match fetched {
                Some(found) => found,
                None => return Ok(code),
            }
        }
    };
    let dest = args.output.join(&job_id);
    if dest.exists() {
        eprintln!(
            "error: {} already exists; choose another folder with -o",
            dest.display()
        );
        return Ok(EXIT_FAILED);
    }
    std::fs::create_dir_all(&dest).with_context(|| format!("creating {}", dest.display()))?;
    let mut written = Vec::new();
    for (name, bytes) in &files {
        let path = dest.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        written.push(path.display().to_string());
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "job_id": job_id, "folder": dest.display().to_string(), "files": written })
        );
    } else {
        println!("downloaded job {job_id} into {}", dest.display());
        for path in written {
            println!("  {path}");
        }
    }
    Ok(0)
}

/// A download's files: name and bytes.
type Files = Vec<(&'static str, Vec<u8>)>;

/// The entries of a download's zip, by name (only the known ones).
fn unzip_download(zip: &[u8]) -> Result<Files, String> {
    use std::io::Read;
    let mut archive =
        zip::ZipArchive::new(std::io::Cursor::new(zip)).map_err(|e| format!("download: {e}"))?;
    let mut files = Vec::new();
    for name in [
        download_entries::META,
        download_entries::PACKAGE,
        download_entries::WORKSPACE,
    ] {
        let mut entry = match archive.by_name(name) {
            Ok(entry) => entry,
            Err(zip::result::ZipError::FileNotFound) if name == download_entries::WORKSPACE => {
                continue
            }
            Err(e) => return Err(format!("download: {name}: {e}")),
        };
        let mut bytes = Vec::new();
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| format!("download: {name}: {e}"))?;
        files.push((name, bytes));
    }
    Ok(files)
}

/// A download read from a stopped server's data folder: the same files, the same rules
/// (a finished job whose archive has settled), nothing recorded.
fn local_download(data_dir: &Path, given: &str) -> anyhow::Result<(String, Files)> {
    let state = super::list::load_state(data_dir)?;
    let job = find_job(&state, given)?;
    if !job.status.is_terminal() {
        anyhow::bail!(fedrun::lifecycle::Rejection::JobNotFinished {
            job_id: job.id,
            status: job.status,
        });
    }
    if !job.archive.is_settled() {
        anyhow::bail!(fedrun::lifecycle::Rejection::ArchivePending { job_id: job.id });
    }
    let blobs = fedrun::blobs::BlobStore::open(fedrun::history::DataPaths::new(data_dir).blobs)
        .context("opening the blob store")?;
    let mut files = vec![
        (
            download_entries::META,
            serde_json::to_vec_pretty(&job.meta).context("encoding meta.json")?,
        ),
        (
            download_entries::PACKAGE,
            blobs
                .get(&job.package)
                .context("reading the job's package")?,
        ),
    ];
    if let Archive::Archived { hash } = &job.archive {
        files.push((
            download_entries::WORKSPACE,
            blobs.get(hash).context("reading the workspace archive")?,
        ));
    }
    Ok((job.id.to_string(), files))
}
