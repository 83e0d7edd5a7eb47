//! Replication between stores over the chunk service on loopback: a real ext4 disk captured into
//! store A, served over HTTP, copied to B and deployed from B; a re-capture moves only its new
//! chunks (bytes counted at the HTTP client); a cancelled copy leaves no image and resumes;
//! corrupt chunks are refused; the routes want tokens.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::tools::*;
use fogcore::Error;
use fogcore::control::chunks;
use fogcore::control::remote::RemoteStore;
use fogcore::control::replicate::{ReplicateOptions, replicate};
use fogcore::imaging::capture::{CaptureOptions, capture};
use fogcore::imaging::chunk::{ChunkId, encode};
use fogcore::imaging::deploy::{DeployOptions, deploy};
use fogcore::imaging::replica::{ImageStore, LocalStore, ReadThrough, WireChunk};
use fogcore::imaging::store::Store;
use fogcore::progress::{NoProgress, Progress};

const TOKEN: &str = "fog_test_token";

/// Serves `store` on loopback; the runtime lives as long as the returned value.
struct Served {
    url: String,
    _rt: tokio::runtime::Runtime,
}

fn serve(store: Arc<dyn ImageStore>) -> Served {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = chunks::router(store, vec![TOKEN.to_string()]);
    rt.spawn(async move { axum::serve(listener, app).await });
    Served {
        url: format!("http://{addr}"),
        _rt: rt,
    }
}

/// A 64 MiB ext4 disk with about 40 MiB of files, most of them incompressible.
fn disk(dir: &Path) -> PathBuf {
    let tree = dir.join("tree");
    write_tree(&tree, 7);
    for i in 0..12u64 {
        let p = tree.join(format!("big/part{i}.bin"));
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(&p, pseudo_random(3 << 20, 1000 + i)).expect("write");
    }
    let path = dir.join("disk.img");
    sh(&format!("mkfs.ext4 -q -F -d {} {} 64M", tree.display(), path.display()));
    path
}

fn deployed(store: &Store, name: &str, out: &Path) -> Vec<u8> {
    deploy(
        store,
        name,
        out,
        &DeployOptions {
            verify: true,
            ..DeployOptions::default()
        },
        &NoProgress,
    )
    .expect("deploy");
    fs::read(out).expect("read target")
}

struct CancelAfter {
    advances: AtomicU64,
    limit: u64,
}

impl Progress for CancelAfter {
    fn start(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64) {
        self.advances.fetch_add(1, Ordering::Relaxed);
    }
    fn cancelled(&self) -> bool {
        self.advances.load(Ordering::Relaxed) >= self.limit
    }
}

#[test]
fn replicates_over_http_then_sends_only_new_chunks_of_a_recapture() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source_disk = disk(dir.path());
    let a = Store::open(dir.path().join("a")).expect("store a");
    let b = Store::open(dir.path().join("b")).expect("store b");
    capture(&a, &source_disk, "golden", &CaptureOptions::default(), &NoProgress).expect("capture");
    let served = serve(Arc::new(LocalStore::new(a.clone())));
    let remote = RemoteStore::new(&served.url, Some(TOKEN)).expect("remote");
    let dest = LocalStore::new(b.clone());

    let first = replicate(&remote, &dest, "golden", &ReplicateOptions::default(), &NoProgress).expect("replicate");
    assert_eq!(first.chunks_sent, first.chunks_considered);
    assert_eq!(dest.images().expect("images"), vec!["golden".to_string()]);
    let from_a = deployed(&a, "golden", &dir.path().join("from-a.img"));
    let from_b = deployed(&b, "golden", &dir.path().join("from-b.img"));
    assert!(from_a == from_b, "deploys from A and B differ");
    assert_eq!(
        debugfs_cat(&dir.path().join("from-b.img"), "/big/part3.bin"),
        pseudo_random(3 << 20, 1003)
    );

    // About 1% of the data changes: a new incompressible file. Re-capture under the same name.
    let change = dir.path().join("change.bin");
    fs::write(&change, pseudo_random(400_000, 99)).expect("write");
    sh(&format!(
        "debugfs -w -R \"write {} /big/new.bin\" {}",
        change.display(),
        source_disk.display()
    ));
    capture(&a, &source_disk, "golden", &CaptureOptions::default(), &NoProgress).expect("recapture");
    let wire_before = remote.bytes_sent() + remote.bytes_received();
    let second = replicate(&remote, &dest, "golden", &ReplicateOptions::default(), &NoProgress).expect("replicate");
    let wire = remote.bytes_sent() + remote.bytes_received() - wire_before;
    assert!(second.manifest_delta, "the manifest came whole");
    assert!(second.chunks_sent > 0 && second.chunks_sent * 20 < second.chunks_considered);
    let ratio = wire as f64 / second.bytes_sent as f64;
    let whole = first.bytes_sent as f64 / second.bytes_sent as f64;
    eprintln!(
        "re-capture: {} bytes on the wire for {} bytes of new chunks ({} chunks): ratio {ratio:.3}; \
         manifest {} bytes (delta); whole-image copy would send {whole:.1}x the new chunks",
        wire, second.bytes_sent, second.chunks_sent, second.manifest_bytes
    );
    assert!(
        ratio <= 1.1,
        "sent {wire} bytes for {} bytes of new chunks",
        second.bytes_sent
    );
    let from_b = deployed(&b, "golden", &dir.path().join("from-b2.img"));
    assert_eq!(
        debugfs_cat(&dir.path().join("from-b2.img"), "/big/new.bin"),
        fs::read(&change).expect("read")
    );
    assert!(from_b == deployed(&a, "golden", &dir.path().join("from-a2.img")));
}

#[test]
fn cancelled_replication_shows_no_image_and_resumes_with_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source_disk = disk(dir.path());
    let a = Store::open(dir.path().join("a")).expect("store a");
    let c = Store::open(dir.path().join("c")).expect("store c");
    capture(&a, &source_disk, "golden", &CaptureOptions::default(), &NoProgress).expect("capture");
    let served = serve(Arc::new(LocalStore::new(a.clone())));
    let remote = RemoteStore::new(&served.url, Some(TOKEN)).expect("remote");
    let dest = LocalStore::new(c.clone());
    let small = ReplicateOptions {
        batch_bytes: 256 << 10,
        ..ReplicateOptions::default()
    };
    let cancel = CancelAfter {
        advances: AtomicU64::new(0),
        limit: 20,
    };
    let err = replicate(&remote, &dest, "golden", &small, &cancel).expect_err("cancelled");
    assert!(matches!(err, Error::Cancelled), "{err}");
    assert!(dest.images().expect("images").is_empty(), "a half image is visible");
    assert!(matches!(c.manifest("golden"), Err(Error::ImageNotFound(_))));

    let rest = replicate(&remote, &dest, "golden", &small, &NoProgress).expect("resume");
    assert!(rest.chunks_skipped > 0, "the resumed run sent everything again");
    assert_eq!(rest.chunks_sent + rest.chunks_skipped, rest.chunks_considered);
    let again = replicate(&remote, &dest, "golden", &small, &NoProgress).expect("again");
    assert_eq!(again.chunks_sent, 0);
    assert!(deployed(&a, "golden", &dir.path().join("a.img")) == deployed(&c, "golden", &dir.path().join("c.img")));
    assert!(c.verify().expect("verify").is_ok());
}

/// A source that serves one chunk with a flipped byte.
struct Corrupting(LocalStore);

impl ImageStore for Corrupting {
    fn images(&self) -> fogcore::Result<Vec<String>> {
        self.0.images()
    }
    fn manifest_to(&self, name: &str, out: &mut dyn std::io::Write) -> fogcore::Result<u64> {
        self.0.manifest_to(name, out)
    }
    fn missing(&self, ids: &[ChunkId]) -> fogcore::Result<Vec<ChunkId>> {
        self.0.missing(ids)
    }
    fn get_chunks(&self, ids: &[ChunkId]) -> fogcore::Result<Vec<Option<Vec<u8>>>> {
        let mut got = self.0.get_chunks(ids)?;
        if let Some(Some(bytes)) = got.get_mut(3)
            && let Some(last) = bytes.last_mut()
        {
            *last ^= 0x40;
        }
        Ok(got)
    }
    fn put_chunks(&self, chunks: &[WireChunk]) -> fogcore::Result<u64> {
        self.0.put_chunks(chunks)
    }
    fn put_manifest_from(&self, name: &str, manifest: &mut dyn std::io::Read) -> fogcore::Result<()> {
        self.0.put_manifest_from(name, manifest)
    }
}

#[test]
fn corrupt_chunk_on_the_wire_is_refused_and_the_destination_stays_consistent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tree = dir.path().join("tree");
    write_tree(&tree, 3);
    let source_disk = dir.path().join("small.img");
    sh(&format!(
        "mkfs.ext4 -q -F -d {} {} 16M",
        tree.display(),
        source_disk.display()
    ));
    let a = Store::open(dir.path().join("a")).expect("store a");
    let b = Store::open(dir.path().join("b")).expect("store b");
    capture(&a, &source_disk, "img", &CaptureOptions::default(), &NoProgress).expect("capture");
    let served_b = serve(Arc::new(LocalStore::new(b.clone())));
    let remote_b = RemoteStore::new(&served_b.url, Some(TOKEN)).expect("remote");

    let err = replicate(
        &Corrupting(LocalStore::new(a.clone())),
        &remote_b,
        "img",
        &ReplicateOptions::default(),
        &NoProgress,
    )
    .expect_err("corrupt chunk accepted");
    match &err {
        Error::Remote {
            status: 400, message, ..
        } => assert!(message.contains("chunk"), "{message}"),
        other => panic!("unexpected {other}"),
    }
    assert!(remote_b.images().expect("images").is_empty());
    assert!(b.verify().expect("verify").is_ok());

    // A hand-made batch: one good chunk, one whose bytes do not match its id. Nothing is stored.
    let good = b"good chunk".repeat(100);
    let bad = b"bad chunk".repeat(100);
    let batch = vec![
        WireChunk {
            id: ChunkId::of(&good),
            len: good.len() as u32,
            encoded: encode(&good),
        },
        WireChunk {
            id: ChunkId::of(&good[1..]),
            len: bad.len() as u32,
            encoded: encode(&bad),
        },
    ];
    let err = remote_b.put_chunks(&batch).expect_err("bad batch accepted");
    assert!(err.to_string().contains(&ChunkId::of(&good[1..]).to_hex()), "{err}");
    assert_eq!(remote_b.missing(&[ChunkId::of(&good)]).expect("missing").len(), 1);

    // A manifest whose chunks are absent is refused with 409; then the clean copy goes through.
    let mut manifest = Vec::new();
    LocalStore::new(a.clone())
        .manifest_to("img", &mut manifest)
        .expect("manifest");
    match remote_b.put_manifest_from("img", &mut &manifest[..]) {
        Err(Error::Remote { status: 409, .. }) => {}
        other => panic!("manifest without chunks: {other:?}"),
    }
    replicate(
        &LocalStore::new(a.clone()),
        &remote_b,
        "img",
        &ReplicateOptions::default(),
        &NoProgress,
    )
    .expect("clean replicate");
    assert_eq!(remote_b.images().expect("images"), vec!["img".to_string()]);
    assert!(b.verify().expect("verify").is_ok());
}

#[test]
fn chunk_routes_refuse_missing_and_wrong_tokens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path().join("s")).expect("store");
    let served = serve(Arc::new(LocalStore::new(store)));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let http = crate::http_client();
    let routes = chunks::table::<chunks::ChunkServer>();
    assert_eq!(routes.len(), 8);
    for (route, _) in routes {
        let url = format!("{}{}", served.url, route.path.replace("{name}", "x"));
        for token in [None, Some("wrong"), Some(TOKEN)] {
            let mut req = http.request(route.method.clone(), &url).body(Vec::<u8>::new());
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let status = rt.block_on(req.send()).expect("send").status().as_u16();
            if token == Some(TOKEN) {
                assert_ne!(status, 401, "{} {} with the token", route.method, route.path);
                // An empty body is the caller's mistake (an empty manifest, no ids): never a 5xx.
                assert!(
                    status < 500,
                    "{} {} with an empty body: {status}",
                    route.method,
                    route.path
                );
            } else {
                assert_eq!(status, 401, "{} {} with {token:?}", route.method, route.path);
            }
        }
    }
}

#[test]
fn master_serves_its_store_to_node_tokens_and_records_a_node_pull() {
    use fogcore::control::client::Client;
    use fogcore::control::model::{CopyState, Image, Node, Placement};
    use fogcore::control::replicate::pull_for_node;

    let dir = tempfile::tempdir().expect("tempdir");
    let tree = dir.path().join("tree");
    write_tree(&tree, 5);
    let source_disk = dir.path().join("small.img");
    sh(&format!(
        "mkfs.ext4 -q -F -d {} {} 16M",
        tree.display(),
        source_disk.display()
    ));
    let m = Store::open(dir.path().join("master-store")).expect("store");
    capture(&m, &source_disk, "golden", &CaptureOptions::default(), &NoProgress).expect("capture");
    let n1 = Store::open(dir.path().join("node-store")).expect("store");

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("fog.db").display());
        let (master, admin_token) = start_master(&url, Some(m.clone())).await.expect("master");
        let base = format!("http://{}", master.addr());
        let admin = Client::new(&base, Some(&admin_token)).expect("client");
        let node = |name: &str| Node {
            name: name.into(),
            url: format!("http://{name}.lab:8080"),
            subnets: Vec::new(),
            max_clients: 2,
            enabled: true,
            last_seen: None,
        };
        let n1_token = admin.create_node(&node("n1")).await.expect("node").token;
        let n2_token = admin.create_node(&node("n2")).await.expect("node").token;
        admin
            .create_image(&Image {
                name: "golden".into(),
                description: String::new(),
                os: String::new(),
                size_bytes: 0,
                placement: Placement::All,
            })
            .await
            .expect("image");

        // Node n1 pulls from the master with its own token; the master's row follows.
        let as_n1 = Client::new(&base, Some(&n1_token)).expect("client");
        let (b, t) = (base.clone(), n1_token.clone());
        let source: Arc<dyn ImageStore> = tokio::task::spawn_blocking(move || RemoteStore::new(&b, Some(&t)))
            .await
            .expect("join")
            .map(Arc::new)
            .expect("remote");
        let report = pull_for_node(
            &as_n1,
            "n1",
            source.clone(),
            Arc::new(LocalStore::new(n1.clone())),
            "golden",
            ReplicateOptions::default(),
        )
        .await
        .expect("pull");
        assert_eq!(report.chunks_sent, report.chunks_considered);
        let copies = admin.image_copies("golden").await.expect("copies");
        let n1_copy = copies.iter().find(|c| c.node == "n1").expect("n1 row");
        assert_eq!(n1_copy.state, CopyState::Complete);
        assert_eq!(n1_copy.bytes, report.bytes_considered);
        assert_eq!(
            copies.iter().find(|c| c.node == "n2").map(|c| c.state),
            Some(CopyState::Pending)
        );

        // n2's token cannot report for n1; no token cannot read chunks; a failed pull says why.
        let as_n2 = Client::new(&base, Some(&n2_token)).expect("client");
        let err = as_n2
            .set_copy_state(
                "golden",
                "n1",
                &fogcore::control::model::CopyReport {
                    state: CopyState::Failed,
                    bytes: 0,
                    reason: None,
                },
            )
            .await
            .expect_err("n2 reported for n1");
        assert!(matches!(err, Error::Remote { status: 403, .. }), "{err}");
        let status = crate::http_client()
            .post(format!("{base}/api/v1/store/chunks/get"))
            .body(vec![0u8; 32])
            .send()
            .await
            .expect("send")
            .status();
        assert_eq!(status, 401);
        let failed = pull_for_node(
            &as_n2,
            "n2",
            source,
            Arc::new(LocalStore::new(n1.clone())),
            "no-such-image",
            ReplicateOptions::default(),
        )
        .await;
        assert!(failed.is_err());
        assert!(n1.image_names().expect("names") == vec!["golden".to_string()]);
        assert_eq!(
            deployed(&n1, "golden", &dir.path().join("n1.img")),
            deployed(&m, "golden", &dir.path().join("m.img"))
        );
        master.stop().await.expect("stop");
    });
}

#[test]
fn a_read_through_store_keeps_what_it_fetched_and_serves_frames_from_itself() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = disk(dir.path());
    let master = Store::open(dir.path().join("master")).expect("store");
    capture(&master, &source, "img", &CaptureOptions::default(), &NoProgress).expect("capture");
    let served = serve(Arc::new(LocalStore::new(master.clone())));
    let upstream = RemoteStore::new(&served.url, Some(TOKEN)).expect("remote");
    let node = Store::open(dir.path().join("node")).expect("store");
    let through = ReadThrough {
        local: Arc::new(LocalStore::new(node.clone())),
        upstream: Arc::new(upstream),
    };
    let manifest = master.manifest("img").expect("manifest");
    let ids: Vec<ChunkId> = fogcore::imaging::replica::chunk_windows(&manifest, 1 << 16)
        .next()
        .expect("a window")
        .expect("chunks")
        .iter()
        .map(|c| c.id)
        .take(200)
        .collect();
    let mut asked = ids.clone();
    asked.push(ChunkId::of(b"nobody has this"));

    // Nothing local yet: fetched from upstream, checked, kept, and served as frames.
    let frames = through.get_frames(&asked).expect("frames");
    let got = fogcore::imaging::replica::checked_frame_chunks(&asked, &frames).expect("every chunk checks");
    let mut got_ids: Vec<ChunkId> = got.iter().map(|(id, _)| *id).collect();
    got_ids.sort();
    let mut want = ids.clone();
    want.sort();
    want.dedup();
    got_ids.dedup();
    assert_eq!(got_ids, want, "every present chunk once, the absent one in no frame");
    let local = LocalStore::new(node.clone());
    assert!(
        local.missing(&ids).expect("missing").is_empty(),
        "fetched chunks were not kept"
    );
    assert!(node.verify().expect("verify").is_ok());

    // Upstream gone: what was kept is still served.
    drop(served);
    let again = through.get_frames(&ids).expect("served from the node's store");
    assert_eq!(
        fogcore::imaging::replica::checked_frame_chunks(&ids, &again)
            .expect("check")
            .len(),
        ids.len()
    );
}

/// Chunk references in [`big_manifest`]: 2 Mi of 36 bytes, 72 MiB, past the 64 MiB that capped
/// a manifest PUT before manifests streamed (an agent capture of about 15 GiB failed with 413).
const BIG_REFS: u64 = 2 << 20;

/// Four distinct 4 KiB chunks, what [`big_manifest`] names over and over.
fn big_chunks() -> Vec<WireChunk> {
    (0..4u8)
        .map(|i| {
            let plain = vec![i; 4096];
            WireChunk {
                id: ChunkId::of(&plain),
                len: 4096,
                encoded: encode(&plain),
            }
        })
        .collect()
}

/// A valid manifest of [`BIG_REFS`] references to [`big_chunks`] (an 8 GiB unpartitioned disk
/// of 4 KiB chunks), written at `path`, cheaply.
fn big_manifest(path: &Path, name: &str) {
    use fogcore::imaging::extent::Extent;
    use fogcore::imaging::fs::Filesystem;
    use fogcore::imaging::manifest::{ChunkRef, FORMAT, Header, ManifestWriter, Region};
    use fogcore::imaging::partition::{Layout, TableKind};
    let ids: Vec<ChunkId> = big_chunks().iter().map(|c| c.id).collect();
    let mut w = ManifestWriter::create(path).expect("create");
    for i in 0..BIG_REFS {
        w.push_chunk(&ChunkRef {
            id: ids[(i % 4) as usize],
            len: 4096,
        })
        .expect("push");
    }
    let chunks = w.end_chunks();
    let len = BIG_REFS * 4096;
    let extents = w.write_extents(&[Extent::new(0, len)]).expect("extents");
    let header = Header {
        format: FORMAT,
        name: name.into(),
        created: 0,
        source: "test".into(),
        layout: Layout {
            table: TableKind::None,
            sector_size: 512,
            disk_size: len,
            partitions: Vec::new(),
            backup_gpt_len: 0,
            extended: false,
        },
        regions: vec![Region {
            partition: None,
            offset: 0,
            len,
            filesystem: Filesystem::Raw,
            used_bytes: len,
            extents,
            chunks,
            min_len: None,
            shrunk: false,
        }],
        chunk_count: BIG_REFS,
        data_bytes: len,
    };
    w.finish(&header).expect("finish");
}

#[test]
fn manifest_over_64_mib_is_put_through_the_http_route_and_replicates_both_ways() {
    use fogcore::imaging::replica::put_manifest_file;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("big.fogimg");
    big_manifest(&path, "big");
    let sent = fs::read(&path).expect("read");
    assert!(sent.len() > chunks::MAX_BODY, "{} bytes", sent.len());

    // An agent's capture ends like this: chunks, then the manifest PUT, to a node over HTTP.
    let b = Store::open(dir.path().join("b")).expect("store b");
    let served_b = serve(Arc::new(LocalStore::new(b.clone())));
    let remote_b = RemoteStore::new(&served_b.url, Some(TOKEN)).expect("remote");
    match put_manifest_file(&remote_b, "big", &path) {
        Err(Error::Remote { status: 409, .. }) => {}
        other => panic!("a manifest without its chunks: {other:?}"),
    }
    remote_b.put_chunks(&big_chunks()).expect("chunks");
    put_manifest_file(&remote_b, "big", &path).expect("a manifest over 64 MiB is accepted");
    assert_eq!(b.image_names().expect("names"), vec!["big".to_string()]);
    assert_eq!(b.manifest("big").expect("manifest").header.chunk_count, BIG_REFS);
    b.verify_image_refs("big").expect("every chunk it names is there");
    let mut got = Vec::new();
    remote_b.manifest_to("big", &mut got).expect("GET streams it back");
    assert!(got == sent, "the manifest changed on its way");

    // Replication pulls it from the node (GET streamed), then pushes it to a third store over
    // HTTP (PUT streamed); the second pull comes as a delta against the copy already there.
    let c = Store::open(dir.path().join("c")).expect("store c");
    let dest_c = LocalStore::new(c.clone());
    let pulled = replicate(&remote_b, &dest_c, "big", &ReplicateOptions::default(), &NoProgress).expect("pull");
    assert!(!pulled.manifest_delta);
    assert_eq!(pulled.manifest_bytes, sent.len() as u64);
    assert_eq!(pulled.chunks_sent, 4, "each chunk once, whatever the windows");
    let again = replicate(&remote_b, &dest_c, "big", &ReplicateOptions::default(), &NoProgress).expect("again");
    assert!(again.manifest_delta, "the manifest came whole");
    assert!(
        again.manifest_bytes * 10 < sent.len() as u64,
        "{} bytes",
        again.manifest_bytes
    );
    assert_eq!(again.chunks_sent, 0);

    let d = Store::open(dir.path().join("d")).expect("store d");
    let served_d = serve(Arc::new(LocalStore::new(d.clone())));
    let remote_d = RemoteStore::new(&served_d.url, Some(TOKEN)).expect("remote");
    let pushed = replicate(&dest_c, &remote_d, "big", &ReplicateOptions::default(), &NoProgress).expect("push");
    assert_eq!(pushed.chunks_sent, 4);
    let mut from_d = Vec::new();
    LocalStore::new(d.clone())
        .manifest_to("big", &mut from_d)
        .expect("manifest");
    assert!(from_d == sent, "the pushed manifest differs");
    d.verify_image_refs("big").expect("refs");
}

#[test]
fn manifest_put_cut_short_changes_nothing_and_leaves_no_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m");
    big_manifest(&path, "big");
    let b = Store::open(dir.path().join("b")).expect("store b");
    let served_b = serve(Arc::new(LocalStore::new(b.clone())));
    let remote_b = RemoteStore::new(&served_b.url, Some(TOKEN)).expect("remote");
    remote_b.put_chunks(&big_chunks()).expect("chunks");
    // The body ends early (the sender failed): refused, not taken for a whole manifest.
    struct Failing(std::io::Take<fs::File>);
    impl std::io::Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            match self.0.read(buf)? {
                0 => Err(std::io::Error::other("disk gone")),
                n => Ok(n),
            }
        }
    }
    use std::io::Read as _;
    let mut cut = Failing(fs::File::open(&path).expect("open").take(10 << 20));
    assert!(remote_b.put_manifest_from("big", &mut cut).is_err());
    // A truncated manifest that ends cleanly is refused as bad (400).
    let mut short = fs::File::open(&path).expect("open").take(10 << 20);
    match remote_b.put_manifest_from("big", &mut short) {
        Err(Error::Remote { status: 400, .. }) => {}
        other => panic!("a truncated manifest: {other:?}"),
    }
    assert!(b.image_names().expect("names").is_empty());
    // The server may still be cleaning up after the cut upload (the client gave up first).
    let left = || fs::read_dir(dir.path().join("b/tmp")).expect("tmp").count();
    for _ in 0..100 {
        if left() == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(left(), 0, "received files were left behind");
}
