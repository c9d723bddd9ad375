//! Properties of the canonical form: random folder trees give the same hash whatever the
//! order their files were created in, a zip of the folder (made by an ordinary zip tool)
//! gives the same hash as the folder, and unpacking then ingesting gives it back.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use fedrun::job::limits::Limits;
use fedrun::job::package::{ingest, ingest_zip_bytes, unpack};
use proptest::prelude::*;

/// What a generated job holds besides `meta.json` and `app/run.toml`.
#[derive(Clone, Debug)]
enum Item {
    File {
        path: String,
        data: Vec<u8>,
        executable: bool,
    },
    EmptyFolder(String),
}

impl Item {
    fn path(&self) -> &str {
        match self {
            Item::File { path, .. } | Item::EmptyFolder(path) => path,
        }
    }
}

/// Random app contents with no path that is both a file and a folder.
fn items() -> impl Strategy<Value = Vec<Item>> {
    let files = prop::collection::btree_map(
        "[a-d]{1,2}(/[a-d]{1,2}){0,2}",
        (prop::collection::vec(any::<u8>(), 0..300), any::<bool>()),
        0..16,
    );
    let folders = prop::collection::btree_set("e[a-c]", 0..3);
    (files, folders).prop_map(|(files, folders)| {
        let paths: Vec<String> = files.keys().cloned().collect();
        let mut items: Vec<Item> = files
            .into_iter()
            .filter(|(path, _)| {
                !paths
                    .iter()
                    .any(|other| other.starts_with(&format!("{path}/")))
            })
            .map(|(path, (data, executable))| Item::File {
                path: format!("app/{path}"),
                data,
                executable,
            })
            .collect();
        items.extend(
            folders
                .into_iter()
                .map(|f| Item::EmptyFolder(format!("app/{f}"))),
        );
        items
    })
}

fn base_files() -> Vec<Item> {
    vec![
        Item::File {
            path: "meta.json".into(),
            data: br#"{"deploy_map": {"app": ["server", "site-1"]}}"#.to_vec(),
            executable: false,
        },
        Item::File {
            path: "app/run.toml".into(),
            data: b"command = \"true\"\n".to_vec(),
            executable: false,
        },
    ]
}

fn write_folder(root: &Path, items: &[Item]) {
    for item in items {
        let path = root.join(item.path());
        match item {
            Item::File {
                data, executable, ..
            } => {
                fs::create_dir_all(path.parent().unwrap()).unwrap();
                fs::write(&path, data).unwrap();
                let mode = if *executable { 0o755 } else { 0o644 };
                fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            }
            Item::EmptyFolder(_) => fs::create_dir_all(&path).unwrap(),
        }
    }
}

/// A zip of the job folder under `top/`, written by the `zip` crate with Deflate and
/// without explicit entries for the folders that hold files.
fn zip_folder(items: &[Item], top: &str) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for item in items {
        match item {
            Item::File {
                path,
                data,
                executable,
            } => {
                let options = zip::write::SimpleFileOptions::default()
                    .compression_method(zip::CompressionMethod::Deflated)
                    .unix_permissions(if *executable { 0o755 } else { 0o644 });
                writer.start_file(format!("{top}/{path}"), options).unwrap();
                writer.write_all(data).unwrap();
            }
            Item::EmptyFolder(path) => {
                let options = zip::write::SimpleFileOptions::default();
                writer
                    .add_directory(format!("{top}/{path}"), options)
                    .unwrap();
            }
        }
    }
    writer.finish().unwrap().into_inner()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn creation_order_never_changes_the_hash(
        (items, shuffled) in items().prop_flat_map(|items| {
            let mut all = base_files();
            all.extend(items);
            (Just(all.clone()), Just(all).prop_shuffle())
        })
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let first = tmp.path().join("one");
        let second = tmp.path().join("two");
        write_folder(&first, &items);
        write_folder(&second, &shuffled);
        let a = ingest(&first, &Limits::default()).unwrap();
        let b = ingest(&second, &Limits::default()).unwrap();
        prop_assert_eq!(a.hash, b.hash);
        prop_assert_eq!(&a.zip, &b.zip);

        // A zip of the folder, entries in another order, gives the same package too.
        let zip = zip_folder(&shuffled, "one");
        let c = ingest_zip_bytes(&zip, "ignored", &Limits::default()).unwrap();
        prop_assert_eq!(c.hash, a.hash);
        prop_assert_eq!(c.meta.name, a.meta.name);

        // Unpacking and ingesting again gives the same bytes; every file survives.
        let out = tmp.path().join("out");
        unpack(&a.zip, None, &out, &Limits::default()).unwrap();
        prop_assert_eq!(ingest(&out, &Limits::default()).unwrap().zip, a.zip);
        let files: BTreeMap<_, _> = items.iter().filter_map(|item| match item {
            Item::File { path, data, .. } => Some((path.clone(), data.clone())),
            Item::EmptyFolder(_) => None,
        }).collect();
        for (path, data) in files {
            prop_assert_eq!(fs::read(out.join(&path)).unwrap(), data);
        }
    }
}
