//! `fedrun logs JOB [--site S] [--follow]`: an app's output, read through the live server
//! (SPEC section 11). The bytes are the app's own: written as they are to a pipe or file;
//! on a terminal each line goes through [`super::term::clean`], so escapes in an app's
//! output cannot drive the terminal; `--json` prints one object per line. With
//! `--follow` a broken connection is picked up again from the last byte received.

use std::io::Write;

use bytes::Bytes;
use fedrun::net::client::{encode_query_value, Client, ClientError};
use hyper::Method;

use super::remote::{Target, EXIT_FAILED, EXIT_NO_CONNECTION};

/// Arguments of `fedrun logs`.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
A job's logs may be read by a project_admin, the job's submitter and the org_admin of the \
submitter's org; every read is recorded in the history, refusals too. A site's output is \
read from that site through the server (refused while the site is offline); the server \
app's from its run folder, or from its workspace archive once archived. The bytes go to a \
pipe as the app wrote them; on a terminal, control characters are escaped line by line.

Exit codes: 0 success; 1 refused by the server or failed; 2 usage; 3 no connection.")]
pub struct Args {
    /// The job's id, or a prefix of it that names one job only.
    #[arg(value_name = "JOB_ID")]
    pub job_id: String,
    /// The site whose app's output to read; without it, the server app's.
    #[arg(long, value_name = "SITE")]
    pub site: Option<String>,
    /// Read standard error instead of standard output.
    #[arg(long)]
    pub stderr: bool,
    /// Keep printing new output until the job has ended and its output is drained.
    #[arg(short, long)]
    pub follow: bool,
    /// Print one JSON object per line of output (`offset`, `line`) instead of the bytes.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub target: Target,
}

/// How the bytes are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// As they are (a pipe or a file).
    Raw,
    /// Line by line through `term::clean` (a terminal).
    Clean,
    /// One JSON object per line.
    Json,
}

/// Writes the stream, keeping an unfinished last line until it ends.
struct Printer {
    mode: Mode,
    /// Bytes of the line not yet ended (clean and JSON modes).
    pending: Vec<u8>,
    /// The offset of the first pending byte.
    line_offset: u64,
}

impl Printer {
    fn write(&mut self, out: &mut impl Write, data: &[u8]) -> std::io::Result<()> {
        if self.mode == Mode::Raw {
            out.write_all(data)?;
            return out.flush();
        }
        self.pending.extend_from_slice(data);
        while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            self.line(out, &line[..line.len() - 1])?;
            self.line_offset += line.len() as u64;
        }
        out.flush()
    }

    fn line(&self, out: &mut impl Write, line: &[u8]) -> std::io::Result<()> {
        let text = String::from_utf8_lossy(line);
        match self.mode {
            Mode::Json => {
                let value = serde_json::json!({ "offset": self.line_offset, "line": text });
                writeln!(out, "{value}")
            }
            _ => writeln!(out, "{}", super::term::clean(&text)),
        }
    }

    fn finish(&mut self, out: &mut impl Write) -> std::io::Result<()> {
        if !self.pending.is_empty() {
            let rest = std::mem::take(&mut self.pending);
            self.line(out, &rest)?;
        }
        out.flush()
    }
}

/// `fedrun logs`.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let client = match args.target.client() {
        Ok(client) => client,
        Err(code) => return Ok(code),
    };
    let mode = if args.json {
        Mode::Json
    } else if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        Mode::Clean
    } else {
        Mode::Raw
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(runtime.block_on(async move {
        match fetch(&client, &args, mode).await {
            Ok(code) => code,
            Err(err) => {
                eprintln!("error: {}", super::term::clean(&err.to_string()));
                if err.is_connection() {
                    EXIT_NO_CONNECTION
                } else {
                    EXIT_FAILED
                }
            }
        }
    }))
}

fn path(args: &Args, offset: u64) -> String {
    let mut path = format!(
        "/v1/jobs/{}/logs?offset={offset}",
        encode_query_value(&args.job_id)
    );
    if let Some(site) = &args.site {
        path.push_str(&format!("&site={}", encode_query_value(site)));
    }
    if args.stderr {
        path.push_str("&stream=stderr");
    }
    if args.follow {
        path.push_str("&follow=true");
    }
    path
}

async fn fetch(client: &Client, args: &Args, mode: Mode) -> Result<i32, ClientError> {
    let mut printer = Printer {
        mode,
        pending: Vec::new(),
        line_offset: 0,
    };
    let stdout = std::io::stdout();
    let mut offset = 0u64;
    loop {
        let path = path(args, offset);
        // A lost connection is retried for the reconnect window, from the last byte
        // received.
        let response = client
            .retrying(|| async {
                match client.send(Method::GET, &path, &[], Bytes::new()).await {
                    // A 503 (an offline site) is said at once, not retried.
                    Err(err) if err.is_unavailable() => Ok(Err(err)),
                    Err(err) => Err(err),
                    Ok(response) => Ok(Ok(response)),
                }
            })
            .await??;
        let mut body = response.into_body();
        let broke = loop {
            match http_body_util::BodyExt::frame(&mut body).await {
                None => break false,
                Some(Err(_)) => break true,
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    offset += data.len() as u64;
                    let mut out = stdout.lock();
                    if printer.write(&mut out, &data).is_err() {
                        // A closed pipe is the reader's choice.
                        return Ok(0);
                    }
                }
            }
        };
        if !broke || !args.follow {
            let _ = printer.finish(&mut stdout.lock());
            if broke {
                return Err(ClientError::Connect {
                    addr: client.addr().to_string(),
                    reason: "the connection broke during the answer".into(),
                });
            }
            return Ok(0);
        }
        tracing::info!(offset, "log stream broke; reconnecting");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn printed(mode: Mode, parts: &[&[u8]]) -> String {
        let mut printer = Printer {
            mode,
            pending: Vec::new(),
            line_offset: 0,
        };
        let mut out = Vec::new();
        for part in parts {
            printer.write(&mut out, part).expect("write");
        }
        printer.finish(&mut out).expect("finish");
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn raw_bytes_pass_and_a_terminal_gets_clean_lines() {
        let parts: &[&[u8]] = &[b"one\n\x1b[2Jtw", b"o\nthree"];
        assert_eq!(printed(Mode::Raw, parts), "one\n\x1b[2Jtwo\nthree");
        assert_eq!(printed(Mode::Clean, parts), "one\n\\u{1b}[2Jtwo\nthree\n");
        let json = printed(Mode::Json, parts);
        let lines: Vec<serde_json::Value> = json
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[1]["offset"], 4);
        assert_eq!(lines[1]["line"], "\u{1b}[2Jtwo");
        assert_eq!(lines[2]["offset"], 12);
    }
}
