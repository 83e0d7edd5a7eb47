//! The agent against a real master on loopback: it deploys an image from the master's store to a
//! disk image file, captures a disk into the store, reports an inventory, and five agents share
//! a node's two slots. Results are checked as a user would: bytes on the disks, files read back
//! with debugfs, tasks complete on the master.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::tools::*;
use fogcore::agent::{AgentConfig, AgentReport, capture_remote, deploy_options, deploy_remote, run};
use fogcore::control::client::Client;
use fogcore::control::master::Master;
use fogcore::control::model::TaskFilter;
use fogcore::control::model::{
    After, CheckIn, Host, Image, LayoutMode, NewTask, Node, Placement, Task, TaskKind, TaskState,
};
use fogcore::imaging::capture::{CaptureOptions, capture};
use fogcore::imaging::chunk::{ChunkId, WireFrame};
use fogcore::imaging::deploy::{DeployOptions, deploy};
use fogcore::imaging::replica::{ImageStore, LocalStore, WireChunk};
use fogcore::imaging::store::Store;
use fogcore::progress::NoProgress;

/// A master with a store holding `golden` (captured from an ext4 disk), a node of `max` slots
/// and its token; the runtime serves as long as this lives.
struct Site {
    rt: tokio::runtime::Runtime,
    master: Option<Master>,
    base: String,
    admin: Client,
    node_token: String,
    store: Store,
    source: PathBuf,
    sys: PathBuf,
    dir: tempfile::TempDir,
}

impl Site {
    fn start(max: u32) -> Site {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = ext4_source_disk(dir.path(), 5);
        let store = Store::open(dir.path().join("master-store")).expect("store");
        capture(&store, &source, "golden", &CaptureOptions::default(), &NoProgress).expect("capture");
        // What the agent sees as /sys: one vendor string, no cards (MACs come from the config).
        let sys = dir.path().join("sys");
        fs::create_dir_all(sys.join("class/dmi/id")).expect("mkdir");
        fs::write(sys.join("class/dmi/id/sys_vendor"), "QEMU\n").expect("write");

        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("fog.db").display());
        let (master, base, admin, node_token) = rt.block_on(async {
            let (master, admin_token) = start_master(&url, Some(store.clone())).await.expect("master");
            let base = format!("http://{}", master.addr());
            let admin = Client::new(&base, Some(&admin_token)).expect("client");
            let node = Node {
                name: "site".into(),
                url: "http://site.lab:8080".into(),
                subnets: Vec::new(),
                max_clients: max,
                enabled: true,
                last_seen: None,
            };
            let token = admin.create_node(&node).await.expect("node").token;
            for name in ["golden", "captured", "lost"] {
                let image = Image {
                    name: name.into(),
                    description: String::new(),
                    os: String::new(),
                    size_bytes: 0,
                    placement: Placement::All,
                };
                admin.create_image(&image).await.expect("image");
            }
            (master, base, admin, token)
        });
        Site {
            rt,
            master: Some(master),
            base,
            admin,
            node_token,
            store,
            source,
            sys,
            dir,
        }
    }

    fn mac(i: u32) -> String {
        format!("52:54:00:00:02:{i:02x}")
    }

    fn add_host(&self, i: u32) {
        let host = Host {
            image: Some("golden".into()),
            node: Some("site".into()),
            ..Host::new(format!("pc-{i}"), vec![Site::mac(i)])
        };
        self.rt.block_on(self.admin.create_host(&host)).expect("host");
    }

    fn add_task(&self, i: u32, kind: TaskKind, image: Option<&str>) {
        let task = NewTask {
            kind,
            host: Some(format!("pc-{i}")),
            image: image.map(str::to_string),
            after: After::Stay,
            wake: false,
            layout: None,
        };
        self.rt.block_on(self.admin.create_task(&task)).expect("task");
    }

    fn agent(&self, i: u32, disk: &Path) -> AgentConfig {
        let mut config = AgentConfig::new(&self.base, Some(&self.node_token));
        config.disk = Some(disk.to_path_buf());
        config.macs = vec![Site::mac(i)];
        config.sys_root = self.sys.clone();
        config.proc_root = self.dir.path().join("proc");
        config.once = true;
        config.poll = Duration::from_millis(20);
        config.poll_max = Duration::from_millis(100);
        config.report_every = Duration::from_millis(50);
        config.threads = Some(2);
        config
    }

    fn tasks(&self, host: &str) -> Vec<fogcore::control::model::Task> {
        let filter = TaskFilter {
            host: Some(host.into()),
            ..TaskFilter::default()
        };
        self.rt.block_on(self.admin.tasks(&filter)).expect("tasks")
    }

    /// `name` deployed locally from the master's store to `out`.
    fn local_deploy(&self, name: &str, out: &Path) -> Vec<u8> {
        deploy(&self.store, name, out, &DeployOptions::default(), &NoProgress).expect("deploy");
        fs::read(out).expect("read")
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        if let Some(master) = self.master.take() {
            let _ = self.rt.block_on(master.stop());
        }
    }
}

fn run_agent(config: &AgentConfig) -> AgentReport {
    let report = run(config, &NoProgress).expect("agent");
    assert!(report.ok, "agent failed: {:?}", report.reason);
    report
}

#[test]
fn agent_deploys_captures_and_reports_inventory_over_http() {
    let site = Site::start(2);
    site.add_host(0);
    let dir = site.dir.path().to_path_buf();

    // Nothing to do: with --once the agent says so and changes nothing.
    let idle = run(&site.agent(0, &dir.join("none.img")), &NoProgress).expect("idle agent");
    assert!(idle.task.is_none() && idle.ok);
    assert!(!dir.join("none.img").exists());

    // Deploy: the target equals a local deploy of the same image; the task is complete.
    site.add_task(0, TaskKind::Deploy, Some("golden"));
    let target = dir.join("target.img");
    let report = run_agent(&site.agent(0, &target));
    assert_eq!(report.after, Some(After::Stay));
    assert!(report.bytes > 6 << 20, "moved {} bytes", report.bytes);
    let expected = site.local_deploy("golden", &dir.join("local.img"));
    assert!(
        fs::read(&target).expect("read") == expected,
        "agent deploy differs from a local deploy"
    );
    assert_eq!(debugfs_cat(&target, "/big.bin"), pseudo_random(6 << 20, 77));
    let tasks = site.tasks("pc-0");
    assert_eq!(tasks.first().map(|t| &t.state), Some(&TaskState::Complete));
    let history = site.rt.block_on(site.admin.task_history(tasks[0].id)).expect("history");
    assert!(history.iter().any(|e| e.to == "in_progress"), "{history:?}");

    // Capture: a changed disk goes into the master's store and deploys back identical.
    let changed = dir.join("changed.img");
    fs::copy(&site.source, &changed).expect("copy");
    let new_file = dir.join("new.bin");
    fs::write(&new_file, pseudo_random(300_000, 9)).expect("write");
    sh(&format!(
        "debugfs -w -R \"write {} /new.bin\" {} >/dev/null 2>&1",
        new_file.display(),
        changed.display()
    ));
    site.add_task(0, TaskKind::Capture, Some("captured"));
    run_agent(&site.agent(0, &changed));
    assert!(
        site.store
            .image_names()
            .expect("names")
            .contains(&"captured".to_string())
    );
    let back = dir.join("back.img");
    site.local_deploy("captured", &back);
    assert_eq!(debugfs_cat(&back, "/new.bin"), pseudo_random(300_000, 9));
    assert_eq!(debugfs_cat(&back, "/big.bin"), pseudo_random(6 << 20, 77));
    let direct = Store::open(dir.join("direct-store")).expect("store");
    capture(&direct, &changed, "direct", &CaptureOptions::default(), &NoProgress).expect("capture");
    let direct_bytes = {
        deploy(
            &direct,
            "direct",
            &dir.join("direct.img"),
            &DeployOptions::default(),
            &NoProgress,
        )
        .expect("deploy");
        fs::read(dir.join("direct.img")).expect("read")
    };
    assert!(
        fs::read(&back).expect("read") == direct_bytes,
        "captured over HTTP differs"
    );
    // An agent deploy of what it captured equals the disk it captured.
    site.add_task(0, TaskKind::Deploy, Some("captured"));
    let again = dir.join("again.img");
    run_agent(&site.agent(0, &again));
    assert!(fs::read(&again).expect("read") == direct_bytes);

    // Inventory: stored on the host.
    site.add_task(0, TaskKind::Inventory, None);
    run_agent(&site.agent(0, &target));
    let host = site.rt.block_on(site.admin.host("pc-0")).expect("host");
    assert_eq!(host.inventory["dmi"]["vendor"], "QEMU", "{}", host.inventory);
    assert!(site.tasks("pc-0").iter().all(|t| t.state == TaskState::Complete));
}

#[test]
fn agent_failure_is_checked_out_with_its_reason() {
    let site = Site::start(2);
    site.add_host(0);
    site.add_task(0, TaskKind::Deploy, Some("lost")); // a record, but not in the store
    let report = run(&site.agent(0, &site.dir.path().join("t.img")), &NoProgress).expect("agent");
    assert!(!report.ok);
    match &site.tasks("pc-0")[0].state {
        TaskState::Failed { reason } => assert!(reason.contains("lost"), "{reason}"),
        other => panic!("task is {other:?}"),
    }
}

#[test]
fn five_agents_share_two_slots_and_all_complete() {
    let site = Site::start(2);
    for i in 0..5 {
        site.add_host(i);
        site.add_task(i, TaskKind::Deploy, Some("golden"));
    }
    let done = AtomicBool::new(false);
    let peak = AtomicUsize::new(0);
    let dir = site.dir.path().to_path_buf();
    std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            let filter = TaskFilter {
                state: Some("in_progress".into()),
                ..TaskFilter::default()
            };
            while !done.load(Ordering::SeqCst) {
                let running = site.rt.block_on(site.admin.tasks(&filter)).expect("tasks").len();
                peak.fetch_max(running, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        let agents: Vec<_> = (0..5u32)
            .map(|i| {
                let mut config = site.agent(i, &dir.join(format!("t{i}.img")));
                config.once = false;
                scope.spawn(move || run(&config, &NoProgress))
            })
            .collect();
        for agent in agents {
            let report = agent.join().expect("agent thread").expect("agent");
            assert!(report.ok, "{:?}", report.reason);
        }
        done.store(true, Ordering::SeqCst);
        watcher.join().expect("watcher");
    });
    let peak = peak.load(Ordering::SeqCst);
    assert!((1..=2).contains(&peak), "{peak} tasks in progress at once");
    let expected = site.local_deploy("golden", &dir.join("local.img"));
    for i in 0..5 {
        assert!(
            fs::read(dir.join(format!("t{i}.img"))).expect("read") == expected,
            "t{i} differs"
        );
        assert_eq!(
            site.tasks(&format!("pc-{i}")).first().map(|t| &t.state),
            Some(&TaskState::Complete)
        );
    }
}

/// Counts the requests an [`ImageStore`] answers, to check the agent batches them.
struct Counting {
    inner: LocalStore,
    gets: AtomicUsize,
    puts: AtomicUsize,
    missing: AtomicUsize,
}

impl ImageStore for Counting {
    fn images(&self) -> fogcore::Result<Vec<String>> {
        self.inner.images()
    }
    fn manifest_to(&self, name: &str, out: &mut dyn std::io::Write) -> fogcore::Result<u64> {
        self.inner.manifest_to(name, out)
    }
    fn missing(&self, ids: &[ChunkId]) -> fogcore::Result<Vec<ChunkId>> {
        self.missing.fetch_add(1, Ordering::SeqCst);
        self.inner.missing(ids)
    }
    fn get_chunks(&self, ids: &[ChunkId]) -> fogcore::Result<Vec<Option<Vec<u8>>>> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.inner.get_chunks(ids)
    }
    fn get_frames(&self, ids: &[ChunkId]) -> fogcore::Result<Vec<WireFrame>> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.inner.get_frames(ids)
    }
    fn put_chunks(&self, chunks: &[WireChunk]) -> fogcore::Result<u64> {
        self.puts.fetch_add(1, Ordering::SeqCst);
        self.inner.put_chunks(chunks)
    }
    fn put_manifest_from(&self, name: &str, manifest: &mut dyn std::io::Read) -> fogcore::Result<()> {
        self.inner.put_manifest_from(name, manifest)
    }
}

#[test]
fn deploy_and_capture_move_chunks_in_batches() {
    let site = Site::start(1);
    let dir = site.dir.path().to_path_buf();
    let store = Counting {
        inner: LocalStore::new(site.store.clone()),
        gets: AtomicUsize::new(0),
        puts: AtomicUsize::new(0),
        missing: AtomicUsize::new(0),
    };
    let config = site.agent(0, &dir.join("unused"));
    let chunks = site.store.manifest("golden").expect("manifest").header.chunk_count as usize;
    assert!(chunks > 300, "{chunks} chunks");

    deploy_remote(
        &store,
        "golden",
        &dir.join("t.img"),
        &config,
        &DeployOptions::default(),
        &NoProgress,
    )
    .expect("deploy");
    let gets = store.gets.load(Ordering::SeqCst);
    assert!(gets * 50 < chunks, "{gets} requests for {chunks} chunks");
    assert!(fs::read(dir.join("t.img")).expect("read") == site.local_deploy("golden", &dir.join("l.img")));

    // A first capture under a new name sends everything in a few batches; a re-capture of the
    // same disk under that name sends nothing, asking in batches.
    let fresh = Counting {
        inner: LocalStore::new(Store::open(dir.join("fresh")).expect("store")),
        gets: AtomicUsize::new(0),
        puts: AtomicUsize::new(0),
        missing: AtomicUsize::new(0),
    };
    capture_remote(&fresh, "copy", &site.source, &config, &NoProgress).expect("capture");
    let (puts, asks) = (fresh.puts.load(Ordering::SeqCst), fresh.missing.load(Ordering::SeqCst));
    assert!(
        puts >= 1 && puts * 50 < chunks && asks * 50 < chunks,
        "{puts} puts, {asks} asks"
    );
    capture_remote(&fresh, "copy", &site.source, &config, &NoProgress).expect("recapture");
    assert_eq!(
        fresh.puts.load(Ordering::SeqCst),
        puts,
        "a re-capture sent chunks again"
    );
    assert!(fresh.missing.load(Ordering::SeqCst) - asks <= 2);
    let copy = fresh.inner.store().clone();
    let out = dir.join("copy.img");
    deploy(&copy, "copy", &out, &DeployOptions::default(), &NoProgress).expect("deploy copy");
    assert!(fs::read(&out).expect("read") == site.local_deploy("golden", &dir.join("l2.img")));
}

/// The layout a deploy task settled on at creation (here its host's) is the one the agent's
/// deploy options carry, and the agent deploys with them.
#[test]
fn the_agent_deploys_with_the_layout_its_task_carries() {
    let site = Site::start(1);
    site.add_host(0);
    let mut host = site.rt.block_on(site.admin.host("pc-0")).expect("host");
    host.layout = LayoutMode::Exact;
    site.rt.block_on(site.admin.update_host(&host)).expect("host layout");
    site.add_task(0, TaskKind::Deploy, None);
    let disk = site.dir.path().join("exact.img");
    let config = site.agent(0, &disk);

    // The task as the agent receives it at check-in.
    let agent = Client::new(&site.base, Some(&site.node_token)).expect("client");
    let check_in = CheckIn {
        mac: Site::mac(0),
        uuid: None,
        address: None,
    };
    let reply = site.rt.block_on(agent.check_in(&check_in)).expect("check in");
    assert_eq!(reply.task.layout, Some(LayoutMode::Exact), "the host's layout");
    assert_eq!(deploy_options(&config, &reply.task).layout, LayoutMode::Exact);
    let stored_before_layouts = Task {
        layout: None,
        ..reply.task.clone()
    };
    assert_eq!(deploy_options(&config, &stored_before_layouts).layout, LayoutMode::Fit);

    // The agent (asking again, as after a restart) runs it.
    let report = run_agent(&config);
    assert_eq!(report.task.and_then(|t| t.layout), Some(LayoutMode::Exact));
    assert!(fs::read(&disk).expect("read") == site.local_deploy("golden", &site.dir.path().join("l.img")));
}

#[test]
fn wipe_tasks_erase_the_signature_then_every_byte() {
    let site = Site::start(1);
    site.add_host(0);
    let disk = site.dir.path().join("retired.img");
    fs::copy(&site.source, &disk).expect("copy");
    let ext4 = |disk: &Path| sh(&format!("blkid -p -o value -s TYPE {} || true", disk.display()));
    assert_eq!(ext4(&disk).trim(), "ext4");

    site.add_task(0, TaskKind::WipeFast, None);
    run_agent(&site.agent(0, &disk));
    assert_eq!(ext4(&disk).trim(), "", "the filesystem signature survived a fast wipe");
    assert!(
        fs::read(&disk).expect("read").iter().any(|&b| b != 0),
        "a fast wipe zeroed everything"
    );

    site.add_task(0, TaskKind::WipeFull, None);
    let report = run_agent(&site.agent(0, &disk));
    assert_eq!(report.bytes, fs::metadata(&disk).expect("meta").len());
    assert!(
        fs::read(&disk).expect("read").iter().all(|&b| b == 0),
        "a full wipe left data"
    );
    assert!(site.tasks("pc-0").iter().all(|t| t.state == TaskState::Complete));
}

#[test]
fn a_damaged_frame_in_the_store_fails_the_deploy_naming_image_and_chunk() {
    let site = Site::start(1);
    let dir = site.dir.path().to_path_buf();
    // A copy of the master's store with one byte flipped in the middle of its largest pack: the
    // store sends frames unchecked, so the agent's own check must catch it.
    let copy = dir.join("damaged-store");
    sh(&format!("cp -a {} {}", site.store.root().display(), copy.display()));
    let pack = fs::read_dir(copy.join("packs"))
        .expect("packs")
        .map(|e| e.expect("entry").path())
        .max_by_key(|p| fs::metadata(p).map_or(0, |m| m.len()))
        .expect("a pack");
    let mut bytes = fs::read(&pack).expect("read pack");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    fs::write(&pack, bytes).expect("write pack");
    let store = LocalStore::new(Store::open(&copy).expect("store"));
    let config = site.agent(0, &dir.join("unused"));
    match deploy_remote(
        &store,
        "golden",
        &dir.join("t.img"),
        &config,
        &DeployOptions::default(),
        &NoProgress,
    ) {
        Err(fogcore::Error::ChunkCorrupt { image, chunk, .. }) => {
            assert_eq!(image, "golden");
            assert_eq!(chunk.len(), 64, "{chunk}");
        }
        other => panic!("deploy from a damaged store: {other:?}"),
    }
}

/// A `/sys` of a VM with two cards and the DMI values qemu's `-smbios type=1,...` sets.
fn registration_sys(root: &Path) -> PathBuf {
    let sys = root.join("reg-sys");
    let put = |rel: &str, text: &str| {
        let path = sys.join(rel);
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(path, text).expect("write");
    };
    put("class/dmi/id/sys_vendor", "FogTest\n");
    put("class/dmi/id/product_name", "Lab-VM\n");
    put("class/dmi/id/product_serial", "SN-1234\n");
    put("class/dmi/id/product_uuid", "0A1B2C3D-0000-4000-8000-000000000060\n");
    put("class/net/eth0/address", "52:54:00:60:00:01\n");
    fs::create_dir_all(sys.join("class/net/eth0/device")).expect("mkdir");
    put("class/net/eth1/address", "52:54:00:60:00:02\n");
    fs::create_dir_all(sys.join("class/net/eth1/device")).expect("mkdir");
    put("class/net/lo/address", "00:00:00:00:00:00\n");
    sys
}

#[test]
fn quick_registration_creates_the_host_from_sysfs_then_updates_it() {
    let site = Site::start(2);
    let mut config = AgentConfig::new(&site.base, Some(&site.node_token));
    config.sys_root = registration_sys(site.dir.path());
    config.proc_root = site.dir.path().join("no-proc");

    let first = fogcore::agent::register(&config, None).expect("register");
    assert!(first.created);
    let host = site
        .rt
        .block_on(site.admin.host("sn-1234"))
        .expect("host named after the serial");
    assert_eq!(host.macs, ["52:54:00:60:00:01", "52:54:00:60:00:02"]);
    assert_eq!(host.uuid.as_deref(), Some("0a1b2c3d-0000-4000-8000-000000000060"));
    assert_eq!(host.node.as_deref(), Some("site"), "the calling node images it");
    assert_eq!(host.inventory["dmi"]["vendor"], "FogTest");
    assert_eq!(host.inventory["dmi"]["product"], "Lab-VM");

    // Again, with a new product name: the same host, its inventory updated, nothing added.
    fs::write(config.sys_root.join("class/dmi/id/product_name"), "Lab-VM-2\n").expect("write");
    let again = fogcore::agent::register(&config, None).expect("register again");
    assert!(!again.created);
    let hosts = site.rt.block_on(site.admin.hosts()).expect("hosts");
    assert_eq!(hosts.len(), 1, "{hosts:?}");
    assert_eq!(hosts[0].inventory["dmi"]["product"], "Lab-VM-2");

    // A machine without a usable serial gets host-<mac>; an unknown token changes nothing.
    let mut other = AgentConfig::new(&site.base, Some(&site.node_token));
    other.sys_root = site.dir.path().join("empty-sys");
    other.macs = vec!["52-54-00-60-00-09".into()];
    let r = fogcore::agent::register(&other, None).expect("register by mac");
    assert_eq!(r.host.name, "host-525400600009");
    let mut intruder = AgentConfig::new(&site.base, Some("fog_not_a_token"));
    intruder.macs = vec!["52:54:00:60:00:0a".into()];
    let e = fogcore::agent::register(&intruder, None).expect_err("unknown token");
    assert!(matches!(e, fogcore::Error::Remote { status: 401, .. }), "{e}");
    assert_eq!(site.rt.block_on(site.admin.hosts()).expect("hosts").len(), 2);
    // Another node's token may not touch this node's host.
    let other_node = Node {
        name: "elsewhere".into(),
        url: "http://elsewhere.lab:8080".into(),
        subnets: Vec::new(),
        max_clients: 1,
        enabled: true,
        last_seen: None,
    };
    let other_token = site
        .rt
        .block_on(site.admin.create_node(&other_node))
        .expect("node")
        .token;
    let mut stranger = AgentConfig::new(&site.base, Some(&other_token));
    stranger.sys_root = config.sys_root.clone();
    let e = fogcore::agent::register(&stranger, None).expect_err("another node's host");
    assert!(matches!(e, fogcore::Error::Remote { status: 403, .. }), "{e}");

    // The menu's deploy/capture items: an admin token creates the task, then the agent runs it.
    let admin_token = site.rt.block_on(async {
        let control = site.master.as_ref().expect("master").control().clone();
        let new = fogcore::control::model::NewToken {
            name: "menu".into(),
            role: None,
            expires_at: None,
        };
        control.create_token(&new, None).await.expect("token").token
    });
    let mut run_config = AgentConfig::new(&site.base, Some(&admin_token));
    run_config.sys_root = config.sys_root.clone();
    run_config.proc_root = config.proc_root.clone();
    run_config.once = true;
    run_config.request = Some(NewTask {
        kind: TaskKind::Inventory,
        host: None,
        image: None,
        after: After::Stay,
        wake: false,
        layout: None,
    });
    let report = run_agent(&run_config);
    assert_eq!(report.task.expect("task").host, "sn-1234");
    assert_eq!(site.tasks("sn-1234")[0].state, TaskState::Complete);
}

#[test]
fn multicast_tasks_take_no_slot_and_deploy_over_http_where_no_session_runs() {
    // One slot, three multicast tasks: all three are granted at once (one stream serves a
    // session, so they hold no slot). The master answers agents itself here, with no node and so
    // no session: each agent deploys over HTTP instead.
    let site = Site::start(1);
    let agent = Client::new(&site.base, Some(&site.node_token)).expect("client");
    for i in 0..3 {
        site.add_host(i);
        site.add_task(i, TaskKind::Multicast, Some("golden"));
        let check_in = CheckIn {
            mac: Site::mac(i),
            uuid: None,
            address: None,
        };
        let reply = site.rt.block_on(agent.check_in(&check_in)).expect("check in");
        assert_eq!(
            reply.slot,
            fogcore::control::model::SlotState::Granted,
            "task of pc-{i}"
        );
    }
    let expected = site.local_deploy("golden", &site.dir.path().join("unicast.img"));
    std::thread::scope(|scope| {
        for i in 0..3 {
            let disk = site.dir.path().join(format!("mc-{i}.img"));
            let config = site.agent(i, &disk);
            let expected = &expected;
            scope.spawn(move || {
                run_agent(&config);
                assert!(fs::read(&disk).expect("read") == *expected, "pc-{i}'s disk");
            });
        }
    });
    for i in 0..3 {
        let tasks = site.tasks(&format!("pc-{i}"));
        assert_eq!(tasks.len(), 1);
        assert_eq!(tasks[0].state, TaskState::Complete, "pc-{i}: {:?}", tasks[0].state);
    }
}
