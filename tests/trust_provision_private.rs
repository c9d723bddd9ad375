//! Startup kits are private whatever the umask. One test only in this file: the umask
//! belongs to the whole process, and no other test may run while it is cleared.
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use fedrun::trust::provision::{provision, Project, ProvisionOptions};

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn kit_folders_are_0700_and_kit_files_0600_even_under_umask_000() {
    let project: Project = r#"
name = "test_project"
valid_days = 30
[server]
host = "server.example.org"
org = "example"
"#
    .parse()
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    // A kit folder an older version left open to everyone is made private too.
    std::fs::create_dir_all(out.join("server.example.org")).unwrap();
    std::fs::set_permissions(
        out.join("server.example.org"),
        std::fs::Permissions::from_mode(0o777),
    )
    .unwrap();
    // SAFETY: umask only swaps the process's file creation mask.
    let old = unsafe { libc::umask(0) };
    let result = provision(
        &project,
        &out,
        ProvisionOptions {
            force: false,
            now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_798_761_600),
        },
    );
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    result.unwrap();
    for dir in ["ca", "server.example.org", "server.example.org/startup"] {
        assert_eq!(mode(&out.join(dir)), 0o700, "{dir}");
    }
    for file in [
        "ca/rootCA.key",
        "ca/rootCA.pem",
        "server.example.org/startup/server.key",
        "server.example.org/startup/server.crt",
        "server.example.org/startup/rootCA.pem",
    ] {
        assert_eq!(mode(&out.join(file)), 0o600, "{file}");
    }
    let leftovers: Vec<_> = std::fs::read_dir(out.join("ca"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with('.')
        })
        .collect();
    assert!(leftovers.is_empty(), "no temp files left behind");
}
