//! Helpers for tests that drive real tools (sgdisk, sfdisk, mkfs.*, debugfs, mtools, ntfs-3g).
//! A missing tool fails the test with the shell's "command not found": `scripts/test` installs them.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs a shell command, panicking with its output when it fails; returns stdout.
pub fn sh(cmd: &str) -> String {
    String::from_utf8_lossy(&sh_bytes(cmd)).into_owned()
}

/// Like [`sh`], returning raw stdout.
pub fn sh_bytes(cmd: &str) -> Vec<u8> {
    let out = Command::new("bash")
        .arg("-c")
        .arg(cmd)
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "`{cmd}` failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

pub fn make_sparse(path: &Path, size: u64) {
    let f = fs::File::create(path).expect("create");
    f.set_len(size).expect("set_len");
}

pub fn sfdisk(path: &Path, script: &str, flags: &str) {
    let script_file = path.with_extension("sfdisk");
    fs::write(&script_file, script).expect("write script");
    sh(&format!(
        "sfdisk -q {flags} {} < {}",
        path.display(),
        script_file.display()
    ));
}

fn partitions_with(path: &Path, flags: &str) -> Vec<(u64, u64)> {
    let json: serde_json::Value =
        serde_json::from_str(&sh(&format!("sfdisk {flags} -J {}", path.display()))).expect("sfdisk json");
    let table = &json["partitiontable"];
    let sector = table["sectorsize"].as_u64().unwrap_or(512);
    let mut parts: Vec<(u64, u64)> = table["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .filter(|p| !matches!(p["type"].as_str(), Some("5" | "f" | "85")))
        .map(|p| {
            (
                p["start"].as_u64().expect("start") * sector,
                p["size"].as_u64().expect("size") * sector,
            )
        })
        .collect();
    parts.sort();
    parts
}

/// Data partitions as (offset, len) in bytes, in disk order (extended containers left out).
pub fn partitions(path: &Path) -> Vec<(u64, u64)> {
    partitions_with(path, "")
}

/// Same for a disk image with 4096-byte sectors (read by `fdisk -b 4096`).
pub fn partitions_4k(path: &Path) -> Vec<(u64, u64)> {
    let out = sh(&format!("fdisk -b 4096 -l -o Start,Sectors {}", path.display()));
    let rows = out.lines().skip_while(|l| !l.trim_start().starts_with("Start")).skip(1);
    rows.filter_map(|l| {
        let mut cols = l.split_whitespace().map(|c| c.parse::<u64>());
        match (cols.next(), cols.next()) {
            (Some(Ok(start)), Some(Ok(sectors))) => Some((start * 4096, sectors * 4096)),
            _ => None,
        }
    })
    .collect()
}

pub fn write_at(path: &Path, offset: u64, data: &[u8]) {
    let f = fs::OpenOptions::new().write(true).open(path).expect("open");
    f.write_all_at(data, offset).expect("write");
}

pub fn read_at(path: &Path, offset: u64, len: u64) -> Vec<u8> {
    let f = fs::File::open(path).expect("open");
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, offset).expect("read");
    buf
}

/// Copies a filesystem image into a partition of a disk.
pub fn put_partition(disk: &Path, (offset, len): (u64, u64), image: &Path) {
    let data = fs::read(image).expect("read image");
    assert!(
        data.len() as u64 <= len,
        "{} does not fit the partition",
        image.display()
    );
    write_at(disk, offset, &data);
}

/// Copies a partition of a disk out to its own file (for fsck tools that want a file).
pub fn extract(disk: &Path, (offset, len): (u64, u64), out: &Path) -> PathBuf {
    fs::write(out, read_at(disk, offset, len)).expect("write");
    out.to_path_buf()
}

/// Deterministic bytes that do not compress.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Writes a small tree of text, binary and duplicate files; returns (path in fs, content).
pub fn write_tree(dir: &Path, seed: u64) -> Vec<(String, Vec<u8>)> {
    let mut files = vec![
        ("/etc/hostname".to_string(), format!("host-{seed}\n").into_bytes()),
        ("/etc/fstab".to_string(), b"UUID=1234 / ext4 defaults 0 1\n".repeat(20)),
        (
            "/usr/share/doc/readme.txt".to_string(),
            b"fog images disks over the network. ".repeat(4000),
        ),
        ("/bin/blob0".to_string(), pseudo_random(700_000, seed)),
        ("/bin/blob1".to_string(), pseudo_random(1_300_000, seed + 100)),
        ("/bin/copy-of-blob0".to_string(), pseudo_random(700_000, seed)),
        ("/var/empty.log".to_string(), Vec::new()),
    ];
    for i in 0..30 {
        files.push((
            format!("/srv/data/file{i}.txt"),
            format!("line {i} of seed {seed}\n").repeat(50 + i * 40).into_bytes(),
        ));
    }
    for (name, data) in &files {
        let path = dir.join(name.trim_start_matches('/'));
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(&path, data).expect("write");
    }
    files
}

/// A file's content from an ext2/3/4 image, read by debugfs.
pub fn debugfs_cat(image: &Path, name: &str) -> Vec<u8> {
    sh_bytes(&format!("debugfs -R \"cat {name}\" {} 2>/dev/null", image.display()))
}

/// Bytes actually allocated to a file (sparse files allocate less than their size).
pub fn allocated_bytes(path: &Path) -> u64 {
    fs::metadata(path).expect("meta").blocks() * 512
}

/// Every file under `dir`, recursively.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// A 24 MiB ext4 disk image at `dir/source.img` holding [`write_tree`]'s files (seed `seed`) and
/// 6 MiB of incompressible data in `/big.bin`; the tree stays in `dir/tree`.
pub fn ext4_source_disk(dir: &Path, seed: u64) -> PathBuf {
    let tree = dir.join("tree");
    write_tree(&tree, seed);
    fs::write(tree.join("big.bin"), pseudo_random(6 << 20, 77)).expect("write");
    let source = dir.join("source.img");
    sh(&format!(
        "mkfs.ext4 -q -F -d {} {} 24M",
        tree.display(),
        source.display()
    ));
    source
}

/// A master on loopback over the database at `db_url` (serving `store` when given), started as
/// `fog master` starts one: it, and the admin token its first start issued.
pub async fn start_master(
    db_url: &str,
    store: Option<fogcore::imaging::store::Store>,
) -> fogcore::Result<(fogcore::control::master::Master, String)> {
    start_master_with(db_url, store, fogcore::control::master::MasterTls::Off).await
}

/// [`start_master`] speaking HTTPS as `tls` says.
pub async fn start_master_with(
    db_url: &str,
    store: Option<fogcore::imaging::store::Store>,
    tls: fogcore::control::master::MasterTls,
) -> fogcore::Result<(fogcore::control::master::Master, String)> {
    use fogcore::imaging::replica::{ImageStore, LocalStore};
    use std::sync::Arc;
    let config = fogcore::control::master::MasterConfig {
        listen: Some(std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0))),
        database: Some(db_url.to_string()),
        store: store.map(|s| Arc::new(LocalStore::new(s)) as Arc<dyn ImageStore>),
        data_dir: None,
        store_memory_mib: None,
        tls,
    };
    let started = fogcore::control::master::serve(&config).await?;
    let first = started
        .first_token
        .ok_or_else(|| fogcore::Error::internal("a new database gave no first admin token"))?;
    Ok((started.master, first.token))
}
