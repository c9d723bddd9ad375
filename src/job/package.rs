//! Job package ingest and unpacking.
//!
//! [`ingest`] takes a job folder, or a zip of one, from outside the server: it checks
//! every entry (names, kinds, sizes, the [`Limits`]), validates `meta.json` and every
//! app's run file, and re-packs the job into the canonical zip (sorted entries, fixed
//! timestamps and modes, Stored), whose BLAKE3 hash names it in the blob store. The same
//! folder gives the same bytes whatever the file system's order, the files' times or the
//! version of fedrun. Signature files (`.__nvfl_sig.json`, `.__nvfl_submitter.crt`) are
//! ordinary files here, so a signed job still verifies once unpacked.
//!
//! [`unpack`] writes a canonical zip (or one app of it) into a destination folder with the
//! same checks, and never writes outside that folder: names are relative and free of
//! `..`, symlinks are refused, and every file is created new (`O_EXCL`), so nothing
//! already there (such as a planted symlink) is followed or overwritten.
//!
//! Canonical layout: `meta.json` at the top, one folder per app, the app's `run.toml` at
//! the top of its folder. A zip of one folder (`job/meta.json`, `job/app/...`) is stored
//! without that top folder, so a folder and the zip of that folder give the same hash.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::job::limits::{check_entry_name, shorten_name, LimitError, Limits, NameError};
use crate::job::meta::{JobMeta, MetaError, META_JSON_BYTES_MAX};
use crate::job::runfile::{RunFile, RunFileError, RUN_FILE, RUN_FILE_BYTES_MAX};
use crate::job::zipread::{
    read_zip, write_canonical, CanonicalEntry, EntryKind, FormatLimitError, ZipReadError,
};

/// The job description's name at the top of a package.
pub const META_JSON: &str = "meta.json";
/// The signature file NVFlare's signer writes into every folder of a signed job.
const SIGNATURE_FILE: &str = ".__nvfl_sig.json";

/// A validated job package in its canonical form.
#[derive(Clone, Debug, PartialEq)]
pub struct Package {
    /// The validated `meta.json` (its `name` defaulted to the folder's name).
    pub meta: JobMeta,
    /// The canonical zip.
    pub zip: Vec<u8>,
    /// BLAKE3 of [`Package::zip`]: the package's name in the blob store.
    pub hash: blake3::Hash,
    /// The run file of every app the deploy map names, by app name.
    pub apps: BTreeMap<String, RunFile>,
    /// Whether the job's top folder holds `.__nvfl_sig.json` (NVFlare's signed layout).
    pub signed: bool,
    /// Files and folders in the canonical zip.
    pub entry_count: u64,
    /// Bytes of all files together.
    pub total_bytes: u64,
}

/// Why a package is refused. Messages name the entry (package-relative path) and the rule.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The input could not be read.
    #[error("{path}: cannot read: {cause}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
    /// The input is neither a folder nor a regular file.
    #[error("{path}: neither a job folder nor a zip file")]
    NotFolderOrFile {
        /// The path given.
        path: PathBuf,
    },
    /// The zip is malformed or hostile.
    #[error(transparent)]
    Zip(#[from] ZipReadError),
    /// A size or count limit.
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// A file name in the folder that is not UTF-8.
    #[error("{entry}: the name is not valid UTF-8")]
    NonUtf8Name {
        /// The path, with invalid bytes replaced.
        entry: String,
    },
    /// A file name in the folder that breaks a name rule.
    #[error("{entry}: {rule}")]
    BadName {
        /// The path.
        entry: String,
        /// The rule.
        rule: NameError,
    },
    /// A symbolic link in the folder.
    #[error("{entry}: symbolic links are not allowed in a job package")]
    Symlink {
        /// The path.
        entry: String,
    },
    /// A device, pipe or socket in the folder.
    #[error("{entry}: only regular files and folders are allowed in a job package")]
    SpecialFile {
        /// The path.
        entry: String,
    },
    /// A path that is both a file and a folder (`a` and `a/b` in a zip).
    #[error("{entry}: is both a file and a folder in the package")]
    PathConflict {
        /// The path.
        entry: String,
    },
    /// A file changed size while it was being read.
    #[error("{entry}: the file changed while it was being read")]
    FileChanged {
        /// The path.
        entry: String,
    },
    /// A zip with neither `meta.json` at its top nor exactly one folder holding everything.
    #[error("the zip holds neither meta.json at its top nor a single job folder")]
    NotOneFolder,
    /// No `meta.json` file at the top of the job.
    #[error("meta.json is missing at the top of the job folder")]
    MetaMissing,
    /// `meta.json` breaks a rule.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// An app the deploy map names has no folder.
    #[error("app {app:?}: deploy_map names it but the job has no folder {app}/")]
    AppMissing {
        /// The app.
        app: String,
    },
    /// An app has no run file.
    #[error("app {app:?}: {app}/run.toml is missing")]
    RunFileMissing {
        /// The app.
        app: String,
    },
    /// An app's run file is invalid.
    #[error("app {app:?}: {cause}")]
    RunFile {
        /// The app.
        app: String,
        /// What is wrong with it.
        cause: RunFileError,
    },
    /// A run file's command names a file the app does not hold.
    #[error("app {app:?}: run.toml's command {command:?} is not a file of the app")]
    CommandMissing {
        /// The app.
        app: String,
        /// The command.
        command: String,
    },
    /// The canonical zip would not fit the zip format without zip64.
    #[error(transparent)]
    Format(#[from] FormatLimitError),
}

/// Why [`unpack`] refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The zip is malformed or over the limits.
    #[error(transparent)]
    Zip(#[from] ZipReadError),
    /// A path that is both a file and a folder.
    #[error("{entry}: is both a file and a folder in the package")]
    PathConflict {
        /// The path.
        entry: String,
    },
    /// `only_app` is not a folder name.
    #[error("{app:?} is not an app folder name")]
    BadAppName {
        /// The name asked for.
        app: String,
    },
    /// `only_app` is not in the package.
    #[error("app {app:?} is not in the package")]
    AppMissing {
        /// The name asked for.
        app: String,
    },
    /// The destination exists and is not a folder.
    #[error("{path}: the destination is not a folder")]
    DestinationNotFolder {
        /// The destination.
        path: PathBuf,
    },
    /// Something already exists where an entry goes; it is never followed or replaced.
    #[error("{path}: already exists")]
    AlreadyExists {
        /// The path.
        path: PathBuf,
    },
    /// Writing failed.
    #[error("{path}: cannot write: {cause}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
}

/// What [`unpack`] wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unpacked {
    /// Files written.
    pub files: u64,
    /// Folders created.
    pub folders: u64,
    /// Bytes written.
    pub bytes: u64,
}

/// Where a file's bytes are until the canonical zip is written.
#[derive(Debug)]
enum Content<'a> {
    Memory(Cow<'a, [u8]>),
    Disk(PathBuf),
}

impl Content<'_> {
    /// The bytes, read from disk when they are there.
    fn bytes(&self) -> std::io::Result<Cow<'_, [u8]>> {
        match self {
            Content::Memory(data) => Ok(Cow::Borrowed(data)),
            Content::Disk(path) => fs::read(path).map(Cow::Owned),
        }
    }
}

#[derive(Debug)]
enum Node<'a> {
    Folder,
    File {
        executable: bool,
        size: u64,
        content: Content<'a>,
    },
}

impl<'a> Node<'a> {
    /// The node for one entry read from a zip, its bytes kept in memory (borrowed from
    /// the zip when the entry was Stored). Ingest and unpack both build their tree this way.
    fn from_zip(kind: EntryKind, data: Cow<'a, [u8]>) -> Self {
        match kind {
            EntryKind::Folder => Node::Folder,
            EntryKind::File { executable } => Node::File {
                executable,
                size: data.len() as u64,
                content: Content::Memory(data),
            },
        }
    }
}

/// A package's entries by path; `BTreeMap` order is the canonical order, and puts every
/// folder before what it holds (a prefix sorts first).
#[derive(Debug)]
struct Tree<'a> {
    nodes: BTreeMap<String, Node<'a>>,
    /// The most nodes the tree may hold (`entry_count_max`), folders implied by names
    /// included: checked as each node is made, so names cannot make the tree grow past
    /// what the limits allow before the count is checked.
    max_nodes: u64,
}

/// Why [`Tree::insert`] refused an entry.
enum InsertError {
    /// This path would be both a file and a folder.
    Conflict(String),
    /// The tree would hold more than `entry_count_max` nodes.
    TooMany(LimitError),
}

impl<'a> Tree<'a> {
    /// An empty tree bounded by `limits.entry_count_max`.
    fn new(limits: &Limits) -> Self {
        Tree {
            nodes: BTreeMap::new(),
            max_nodes: limits.entry_count_max,
        }
    }

    /// Adds an entry and every folder above it. Refuses a path that would be both a file
    /// and a folder, and a node past the limit.
    fn insert(&mut self, name: String, node: Node<'a>) -> Result<(), InsertError> {
        for (at, _) in name.match_indices('/') {
            let parent = &name[..at];
            match self.nodes.get(parent) {
                Some(Node::File { .. }) => return Err(InsertError::Conflict(parent.to_owned())),
                Some(Node::Folder) => {}
                None => {
                    self.make_room()?;
                    self.nodes.insert(parent.to_owned(), Node::Folder);
                }
            }
        }
        match (self.nodes.get(&name), &node) {
            (None, _) => {
                self.make_room()?;
                self.nodes.insert(name, node);
                Ok(())
            }
            (Some(Node::Folder), Node::Folder) => Ok(()),
            _ => Err(InsertError::Conflict(name)),
        }
    }

    /// Checks that one more node stays within the limit.
    fn make_room(&self) -> Result<(), InsertError> {
        let count = self.nodes.len() as u64 + 1;
        if count > self.max_nodes {
            return Err(InsertError::TooMany(LimitError::TooManyEntries {
                count,
                limit: self.max_nodes,
            }));
        }
        Ok(())
    }

    fn file_bytes(&self, name: &str, max: u64) -> Result<Option<Vec<u8>>, IngestError> {
        match self.nodes.get(name) {
            Some(Node::File { content, .. }) => match content {
                Content::Memory(data) => Ok(Some(data.to_vec())),
                Content::Disk(path) => {
                    let mut bytes = Vec::new();
                    let io = |source| IngestError::Io {
                        path: path.clone(),
                        cause: source,
                    };
                    fs::File::open(path)
                        .map_err(io)?
                        .take(max + 1)
                        .read_to_end(&mut bytes)
                        .map_err(io)?;
                    Ok(Some(bytes))
                }
            },
            _ => Ok(None),
        }
    }

    fn is_folder(&self, name: &str) -> bool {
        matches!(self.nodes.get(name), Some(Node::Folder))
    }
}

impl From<InsertError> for IngestError {
    fn from(error: InsertError) -> Self {
        match error {
            InsertError::Conflict(entry) => IngestError::PathConflict {
                entry: shorten_name(&entry),
            },
            InsertError::TooMany(limit) => IngestError::Limit(limit),
        }
    }
}

impl From<InsertError> for UnpackError {
    fn from(error: InsertError) -> Self {
        match error {
            InsertError::Conflict(entry) => UnpackError::PathConflict {
                entry: shorten_name(&entry),
            },
            InsertError::TooMany(limit) => UnpackError::Zip(ZipReadError::Limit(limit)),
        }
    }
}

/// Ingests a job folder, or a zip file of one, into its validated canonical form.
pub fn ingest(path: &Path, limits: &Limits) -> Result<Package, IngestError> {
    let io = |source| IngestError::Io {
        path: path.to_owned(),
        cause: source,
    };
    let metadata = fs::metadata(path).map_err(io)?;
    if metadata.is_dir() {
        let name = folder_name(path);
        let tree = walk_folder(path, limits)?;
        build(tree, &name, limits)
    } else if metadata.is_file() {
        limits.check_package_size(metadata.len())?;
        let mut bytes = Vec::new();
        fs::File::open(path)
            .map_err(io)?
            .take(limits.package_bytes_max + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        ingest_zip_bytes(&bytes, &stem, limits)
    } else {
        Err(IngestError::NotFolderOrFile {
            path: path.to_owned(),
        })
    }
}

/// Ingests a zip held in memory. `fallback_name` names the job when neither `meta.json`
/// nor a single top folder does (callers pass the zip file's stem). Ingesting a canonical
/// zip gives back the same bytes. Never panics, whatever the bytes.
pub fn ingest_zip_bytes(
    bytes: &[u8],
    fallback_name: &str,
    limits: &Limits,
) -> Result<Package, IngestError> {
    let entries = read_zip(bytes, limits)?;
    let has_top_meta = entries
        .iter()
        .any(|e| e.name == META_JSON && matches!(e.kind, EntryKind::File { .. }));
    let mut name = fallback_name.to_owned();
    let mut strip = None;
    if !has_top_meta {
        let top = entries
            .first()
            .map(|e| e.name.split('/').next().unwrap_or_default().to_owned());
        let top = top.ok_or(IngestError::NotOneFolder)?;
        let prefix = format!("{top}/");
        let one_folder = entries
            .iter()
            .all(|e| (e.name == top && e.kind == EntryKind::Folder) || e.name.starts_with(&prefix));
        if !one_folder {
            return Err(IngestError::NotOneFolder);
        }
        name = top;
        strip = Some(prefix);
    }
    let mut tree = Tree::new(limits);
    for entry in entries {
        let path = match &strip {
            Some(prefix) => match entry.name.strip_prefix(prefix.as_str()) {
                Some(rest) => rest.to_owned(),
                None => continue, // the top folder itself
            },
            None => entry.name,
        };
        tree.insert(path, Node::from_zip(entry.kind, entry.data))?;
    }
    build(tree, &name, limits)
}

/// The job's name when `meta.json` has none: the folder's own name.
fn folder_name(path: &Path) -> String {
    let named = path.file_name().map(|n| n.to_string_lossy().into_owned());
    named
        .or_else(|| {
            let absolute = fs::canonicalize(path).ok()?;
            absolute
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "job".to_owned())
}

/// Lists a job folder without following symlinks or reading file contents.
fn walk_folder(root: &Path, limits: &Limits) -> Result<Tree<'static>, IngestError> {
    let mut tree = Tree::new(limits);
    let mut total = 0u64;
    let mut count = 0u64;
    let mut pending = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = pending.pop() {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| IngestError::Io {
                path,
                cause: source,
            }
        };
        for item in fs::read_dir(&dir).map_err(io(&dir))? {
            let item = item.map_err(io(&dir))?;
            let file_name = item.file_name();
            let join = |name: &str| {
                if prefix.is_empty() {
                    name.to_owned()
                } else {
                    format!("{prefix}/{name}")
                }
            };
            let Some(name) = file_name.to_str() else {
                return Err(IngestError::NonUtf8Name {
                    entry: join(&file_name.to_string_lossy()),
                });
            };
            let entry = join(name);
            check_entry_name(&entry).map_err(|rule| IngestError::BadName {
                entry: shorten_name(&entry),
                rule,
            })?;
            count += 1;
            limits.check_entry_count(count)?;
            let path = item.path();
            // `symlink_metadata` describes the link itself, never its target.
            let metadata = fs::symlink_metadata(&path).map_err(io(&path))?;
            let kind = metadata.file_type();
            let node = if kind.is_symlink() {
                return Err(IngestError::Symlink { entry });
            } else if kind.is_dir() {
                pending.push((path, entry.clone()));
                Node::Folder
            } else if kind.is_file() {
                limits.add_entry_size(&entry, metadata.len(), &mut total)?;
                Node::File {
                    executable: metadata.permissions().mode() & 0o111 != 0,
                    size: metadata.len(),
                    content: Content::Disk(path),
                }
            } else {
                return Err(IngestError::SpecialFile { entry });
            };
            tree.insert(entry, node)?;
        }
    }
    Ok(tree)
}

/// Validates a listed tree and writes its canonical zip.
fn build(tree: Tree<'_>, folder_name: &str, limits: &Limits) -> Result<Package, IngestError> {
    limits.check_entry_count(tree.nodes.len() as u64)?;
    let meta_bytes = tree.file_bytes(META_JSON, META_JSON_BYTES_MAX)?;
    let meta = JobMeta::parse(&meta_bytes.ok_or(IngestError::MetaMissing)?, folder_name)?;
    let mut apps = BTreeMap::new();
    for target in &meta.deploy_map {
        let app = &target.app;
        if !tree.is_folder(app) {
            return Err(IngestError::AppMissing { app: app.clone() });
        }
        let run_bytes = tree.file_bytes(&format!("{app}/{RUN_FILE}"), RUN_FILE_BYTES_MAX)?;
        let run_bytes =
            run_bytes.ok_or_else(|| IngestError::RunFileMissing { app: app.clone() })?;
        let run = RunFile::parse(&run_bytes).map_err(|source| IngestError::RunFile {
            app: app.clone(),
            cause: source,
        })?;
        if let Some(file) = run.app_file() {
            let present = matches!(
                tree.nodes.get(&format!("{app}/{file}")),
                Some(Node::File { .. })
            );
            if !present {
                return Err(IngestError::CommandMissing {
                    app: app.clone(),
                    command: run.command.clone(),
                });
            }
        }
        apps.insert(app.clone(), run);
    }

    let nodes: Vec<(&String, &Node<'_>)> = tree.nodes.iter().collect();
    let layout: Vec<CanonicalEntry<'_>> = nodes
        .iter()
        .map(|(name, node)| match node {
            Node::Folder => CanonicalEntry {
                name,
                kind: EntryKind::Folder,
                size: 0,
            },
            Node::File {
                executable, size, ..
            } => CanonicalEntry {
                name,
                kind: EntryKind::File {
                    executable: *executable,
                },
                size: *size,
            },
        })
        .collect();
    let total_bytes = layout.iter().map(|e| e.size).sum();
    let (zip, hash) = write_canonical(&layout, |index, out| match nodes[index].1 {
        Node::File { content, .. } => fill_content(out, nodes[index].0, content),
        Node::Folder => Ok(()),
    })??;
    limits.check_package_size(zip.len() as u64)?;
    tracing::debug!(name = %meta.name, %hash, bytes = zip.len(), "job package ingested");
    Ok(Package {
        signed: matches!(tree.nodes.get(SIGNATURE_FILE), Some(Node::File { .. })),
        meta,
        zip,
        hash,
        apps,
        entry_count: tree.nodes.len() as u64,
        total_bytes,
    })
}

/// Writes one file's bytes, read once, straight into its slice of the zip buffer.
fn fill_content(out: &mut [u8], entry: &str, content: &Content<'_>) -> Result<(), IngestError> {
    let changed = || IngestError::FileChanged {
        entry: entry.to_owned(),
    };
    match content {
        Content::Memory(data) if data.len() == out.len() => out.copy_from_slice(data),
        Content::Memory(_) => return Err(changed()),
        Content::Disk(path) => {
            let io = |source| IngestError::Io {
                path: path.clone(),
                cause: source,
            };
            let mut file = fs::File::open(path).map_err(io)?;
            file.read_exact(out).map_err(|err| match err.kind() {
                std::io::ErrorKind::UnexpectedEof => changed(),
                _ => io(err),
            })?;
            // One more byte would mean the file grew since it was listed.
            if file.read(&mut [0u8; 1]).map_err(io)? != 0 {
                return Err(changed());
            }
        }
    }
    Ok(())
}

/// Unpacks a canonical zip into `dest` (created if missing): the whole job, or with
/// `only_app` just that app's folder (`dest/<app>/...`). Entry paths are kept as they are
/// in the package, so the app's folder is always `dest.join(app)`. Checks the zip as
/// [`ingest`] does; writes nothing outside `dest`, and refuses to replace anything there.
pub fn unpack(
    canonical_zip: &[u8],
    only_app: Option<&str>,
    dest: &Path,
    limits: &Limits,
) -> Result<Unpacked, UnpackError> {
    let entries = read_zip(canonical_zip, limits)?;
    let mut tree = Tree::new(limits);
    for entry in entries {
        tree.insert(entry.name, Node::from_zip(entry.kind, entry.data))?;
    }
    if let Some(app) = only_app {
        if check_entry_name(app).is_err() || app.contains('/') {
            return Err(UnpackError::BadAppName {
                app: app.to_owned(),
            });
        }
        if !tree.is_folder(app) {
            return Err(UnpackError::AppMissing {
                app: app.to_owned(),
            });
        }
    }
    let wanted = |name: &str| match only_app {
        None => true,
        Some(app) => {
            name == app
                || name
                    .strip_prefix(app)
                    .is_some_and(|rest| rest.starts_with('/'))
        }
    };

    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| UnpackError::Io {
            path,
            cause: source,
        }
    };
    if fs::metadata(dest).is_err() {
        fs::create_dir_all(dest).map_err(io(dest))?;
    }
    if !fs::metadata(dest).map_err(io(dest))?.is_dir() {
        return Err(UnpackError::DestinationNotFolder {
            path: dest.to_owned(),
        });
    }
    let mut done = Unpacked::default();
    for (name, node) in tree.nodes.iter().filter(|(name, _)| wanted(name)) {
        // Every name passed `check_entry_name`: relative, no `..`, no empty or `.` parts,
        // so the joined path stays under `dest`.
        let path = dest.join(name);
        match node {
            Node::Folder => {
                match fs::create_dir(&path) {
                    Ok(()) => {}
                    Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                        // An existing real folder is reused; a symlink or file is not.
                        if !fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                            return Err(UnpackError::AlreadyExists { path });
                        }
                    }
                    Err(source) => {
                        return Err(UnpackError::Io {
                            path,
                            cause: source,
                        })
                    }
                }
                done.folders += 1;
            }
            Node::File {
                executable,
                content,
                ..
            } => {
                let data = content.bytes().map_err(io(&path))?;
                let mode = if *executable { 0o755 } else { 0o644 };
                // `create_new` is O_CREAT|O_EXCL: it fails on anything already there,
                // a symlink included, instead of following or truncating it.
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .open(&path)
                    .map_err(|source| match source.kind() {
                        std::io::ErrorKind::AlreadyExists => {
                            UnpackError::AlreadyExists { path: path.clone() }
                        }
                        _ => UnpackError::Io {
                            path: path.clone(),
                            cause: source,
                        },
                    })?;
                file.write_all(&data).map_err(io(&path))?;
                done.files += 1;
                done.bytes += data.len() as u64;
            }
        }
    }
    tracing::debug!(dest = %dest.display(), files = done.files, "job package unpacked");
    Ok(done)
}

/// Limits small enough that a fuzzer spends its time on structure, not on inflating.
pub fn fuzz_limits() -> Limits {
    Limits {
        package_bytes_max: 1 << 20,
        entry_count_max: 256,
        entry_bytes_max: 1 << 20,
        total_bytes_max: 4 << 20,
        compression_ratio_max: 100,
    }
}

/// The property the `zip_ingest` fuzz target and its replay test check on any bytes:
/// ingest never panics, and a package it accepts ingests again to exactly the same
/// canonical bytes and meta. Panics (a bug) when the property fails.
pub fn check_ingest_is_canonical(bytes: &[u8]) {
    let limits = fuzz_limits();
    let Ok(package) = ingest_zip_bytes(bytes, "fuzz", &limits) else {
        return;
    };
    assert_eq!(
        package.hash,
        blake3::hash(&package.zip),
        "the hash is of the canonical bytes"
    );
    let again = ingest_zip_bytes(&package.zip, &package.meta.name, &limits);
    let again =
        again.unwrap_or_else(|err| panic!("a canonical zip was refused on re-ingest: {err}"));
    assert_eq!(
        again.zip, package.zip,
        "re-ingesting a canonical zip changed its bytes"
    );
    assert_eq!(
        again.meta, package.meta,
        "re-ingesting a canonical zip changed its meta"
    );
}
