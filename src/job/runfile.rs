//! The run file: `run.toml` at the top of every app folder, naming the command that runs
//! the app, its arguments and extra environment variables.
//!
//! ```toml
//! command = "sh"                         # required
//! args = ["train.sh", "--rounds", "3"]   # optional, default []
//! [env]                                  # optional
//! LEARNING_RATE = "0.01"
//! ```
//!
//! A `command` that is a relative path containing `/` (`./train.sh`, `bin/run`) names a
//! file of the app folder; any other command is an absolute path or a program found on
//! `PATH`. Apps run with the app folder as their working directory. Unknown keys are
//! errors, so a misspelt key is never silently ignored.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The run file's name in an app folder.
pub const RUN_FILE: &str = "run.toml";

/// The largest run file accepted; a run file names a command, it does not carry data.
pub const RUN_FILE_BYTES_MAX: u64 = 64 * 1024;

/// A parsed and checked `run.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunFile {
    /// The program to run.
    pub command: String,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment variables added to the server's or site's own.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// Why a run file is refused.
#[derive(Debug, thiserror::Error)]
pub enum RunFileError {
    /// The file could not be read.
    #[error("{path}: cannot read: {cause}")]
    Io {
        /// The run file's path.
        path: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
    /// The run file is a symbolic link or not a regular file.
    #[error("{path}: the run file must be a regular file")]
    NotAFile {
        /// The run file's path.
        path: PathBuf,
    },
    /// Too big.
    #[error("run.toml is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// Not UTF-8.
    #[error("run.toml is not valid UTF-8")]
    NotUtf8,
    /// Not TOML of the expected shape (missing `command`, unknown key, wrong type...).
    #[error("run.toml: {message}")]
    Syntax {
        /// The parser's message, which names the key and line.
        message: String,
    },
    /// `command = ""`.
    #[error("run.toml: `command` is empty")]
    EmptyCommand,
    /// A NUL byte, which no program name, argument or variable can hold.
    #[error("run.toml: {field} contains a NUL character")]
    NulCharacter {
        /// Which value (`command`, `args[2]`, `env.NAME`).
        field: String,
    },
    /// An environment variable name that is empty or holds `=`.
    #[error("run.toml: {name:?} is not a valid environment variable name")]
    BadEnvName {
        /// The name.
        name: String,
    },
    /// A relative command that climbs out of the app folder.
    #[error("run.toml: command {command:?} leaves the app folder")]
    CommandOutsideApp {
        /// The command.
        command: String,
    },
}

impl RunFile {
    /// Parses and checks a run file's bytes.
    pub fn parse(bytes: &[u8]) -> Result<RunFile, RunFileError> {
        if bytes.len() as u64 > RUN_FILE_BYTES_MAX {
            return Err(RunFileError::TooLarge {
                size: bytes.len() as u64,
                limit: RUN_FILE_BYTES_MAX,
            });
        }
        let text = std::str::from_utf8(bytes).map_err(|_| RunFileError::NotUtf8)?;
        let run: RunFile = toml::from_str(text).map_err(|err| RunFileError::Syntax {
            message: crate::settings::toml_message(text, &err),
        })?;
        run.check()?;
        Ok(run)
    }

    fn check(&self) -> Result<(), RunFileError> {
        let nul = |field: String| RunFileError::NulCharacter { field };
        if self.command.is_empty() {
            return Err(RunFileError::EmptyCommand);
        }
        if self.command.contains('\0') {
            return Err(nul("command".to_owned()));
        }
        for (index, arg) in self.args.iter().enumerate() {
            if arg.contains('\0') {
                return Err(nul(format!("args[{index}]")));
            }
        }
        for (name, value) in &self.env {
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                return Err(RunFileError::BadEnvName { name: name.clone() });
            }
            if value.contains('\0') {
                return Err(nul(format!("env.{name}")));
            }
        }
        if self.command.split('/').any(|c| c == "..") && !self.command.starts_with('/') {
            return Err(RunFileError::CommandOutsideApp {
                command: self.command.clone(),
            });
        }
        Ok(())
    }

    /// The file of the app folder that `command` names, as a package-relative path under
    /// the app (`./bin/run` gives `bin/run`), or `None` when the command is absolute or a
    /// bare program name looked up on `PATH`.
    pub fn app_file(&self) -> Option<String> {
        if self.command.starts_with('/') || !self.command.contains('/') {
            return None;
        }
        let parts: Vec<&str> = self
            .command
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .collect();
        Some(parts.join("/"))
    }

    /// The program to execute for an app unpacked at `app_dir`: the app's own file for a
    /// relative path with `/`, otherwise `command` as written.
    pub fn program(&self, app_dir: &Path) -> PathBuf {
        match self.app_file() {
            Some(file) => app_dir.join(file),
            None => PathBuf::from(&self.command),
        }
    }
}

/// Reads and checks `run.toml` of an unpacked app folder.
pub fn read_run_file(app_dir: &Path) -> Result<RunFile, RunFileError> {
    let path = app_dir.join(RUN_FILE);
    let io = |source| RunFileError::Io {
        path: path.clone(),
        cause: source,
    };
    let metadata = std::fs::symlink_metadata(&path).map_err(io)?;
    if !metadata.is_file() {
        return Err(RunFileError::NotAFile { path });
    }
    let mut bytes = Vec::new();
    std::fs::File::open(&path)
        .map_err(io)?
        .take(RUN_FILE_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    RunFile::parse(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses() {
        let run = RunFile::parse(
            b"command = \"sh\"\nargs = [\"train.sh\", \"--rounds\", \"3\"]\n[env]\nLEARNING_RATE = \"0.01\"\n",
        )
        .unwrap();
        assert_eq!(run.command, "sh");
        assert_eq!(run.args, ["train.sh", "--rounds", "3"]);
        assert_eq!(run.env["LEARNING_RATE"], "0.01");
        assert_eq!(run.app_file(), None);
    }

    #[test]
    fn args_and_env_default_to_empty() {
        let run = RunFile::parse(b"command = \"./bin/run\"").unwrap();
        assert!(run.args.is_empty() && run.env.is_empty());
        assert_eq!(run.app_file().as_deref(), Some("bin/run"));
        assert_eq!(
            run.program(Path::new("/w/app")),
            Path::new("/w/app/bin/run")
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let err = RunFile::parse(b"command = \"sh\"\nargz = []").unwrap_err();
        assert!(err.to_string().contains("argz"), "{err}");
        assert!(matches!(
            RunFile::parse(b"args = []"),
            Err(RunFileError::Syntax { .. })
        ));
        assert!(matches!(
            RunFile::parse(b"command = \"\""),
            Err(RunFileError::EmptyCommand)
        ));
        assert!(matches!(
            RunFile::parse(b"command = \"../../bin/sh\""),
            Err(RunFileError::CommandOutsideApp { .. })
        ));
        assert!(matches!(
            RunFile::parse(b"command = \"sh\"\n[env]\n\"A=B\" = \"1\""),
            Err(RunFileError::BadEnvName { .. })
        ));
        assert!(matches!(
            RunFile::parse(b"command = \"sh\"\nargs = [\"a\\u0000\"]"),
            Err(RunFileError::NulCharacter { .. })
        ));
        assert!(matches!(
            RunFile::parse(b"command = 3"),
            Err(RunFileError::Syntax { .. })
        ));
        assert!(matches!(
            RunFile::parse(&[0xff, 0xfe]),
            Err(RunFileError::NotUtf8)
        ));
    }

    #[test]
    fn read_run_file_reads_from_the_app_folder() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(RUN_FILE), "command = \"true\"\n").unwrap();
        assert_eq!(read_run_file(dir.path()).unwrap().command, "true");
        let missing = tempfile::tempdir().unwrap();
        assert!(matches!(
            read_run_file(missing.path()),
            Err(RunFileError::Io { .. })
        ));
    }
}
