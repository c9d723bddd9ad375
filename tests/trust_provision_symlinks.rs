//! `fedrun provision` never writes through a symbolic link planted in its output folder,
//! and reads its inputs with a size limit.
use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::{Duration, SystemTime};

use fedrun::trust::files::ReadFileError;
use fedrun::trust::provision::{provision, Project, ProvisionError, ProvisionOptions};

/// The smallest project: every kit costs a key generation.
const PROJECT: &str = r#"
name = "test_project"
valid_days = 30
[server]
host = "server.example.org"
org = "example"
"#;

fn options() -> ProvisionOptions {
    ProvisionOptions {
        force: false,
        now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_798_761_600),
    }
}

/// Every file under `dir`, with its bytes.
fn contents(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).unwrap_or_default(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn a_key_file_planted_as_a_symlink_is_refused_and_its_target_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("victim"), b"not a key").unwrap();
    let out = tmp.path().join("out");
    let startup = out.join("server.example.org/startup");
    fs::create_dir_all(&startup).unwrap();
    symlink(outside.join("victim"), startup.join("server.key")).unwrap();

    let project: Project = PROJECT.parse().unwrap();
    let err = provision(&project, &out, options()).unwrap_err();
    assert!(
        matches!(&err, ProvisionError::Symlink { path } if path.ends_with("startup/server.key")),
        "{err}"
    );
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert_eq!(
        contents(&outside),
        vec![("victim".into(), b"not a key".to_vec())]
    );
}

#[test]
fn a_kit_folder_planted_as_a_symlink_is_refused_and_nothing_is_written_outside() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let out = tmp.path().join("out");
    fs::create_dir(&out).unwrap();
    symlink(&outside, out.join("server.example.org")).unwrap();

    let project: Project = PROJECT.parse().unwrap();
    let err = provision(&project, &out, options()).unwrap_err();
    assert!(
        matches!(&err, ProvisionError::Symlink { path } if path.ends_with("server.example.org")),
        "{err}"
    );
    assert!(
        contents(&outside).is_empty(),
        "nothing written through the link"
    );
}

#[test]
fn a_project_file_that_never_ends_is_refused_with_a_size_error() {
    let err = Project::load(Path::new("/dev/zero")).unwrap_err();
    assert!(
        matches!(err, ProvisionError::File(ReadFileError::TooLarge { .. })),
        "{err}"
    );
}
