//! The control plane as separate processes on loopback: a `fog master`, `fog serve` nodes with
//! their own data directories and ports, and `fog agent run` processes imaging disk image files
//! (`--disk` stands in for the real disk). Results are checked as a user sees them: files read
//! back from the disks with debugfs, task states on the master, images in the stores.
//!
//! Every process logs to a file in the test's directory; a failing test prints them all.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::tools::{debugfs_cat, ext4_source_disk};
use fogcore::control::client::Client;
use fogcore::control::model::TaskFilter;
use fogcore::control::model::{After, CopyState, Host, Image, NewTask, Node, Placement, Task, TaskKind, TaskState};
use fogcore::imaging::capture::{CaptureOptions, capture};
use fogcore::imaging::store::Store;
use fogcore::progress::NoProgress;

const FOG: &str = env!("CARGO_BIN_EXE_fog");
/// Generous: the debug build under a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(120);

/// A child process that is killed when dropped.
struct Proc {
    child: Child,
}

impl Proc {
    fn spawn(args: &[&str], log: &Path) -> Proc {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let err = out.try_clone().expect("log file");
        // No CA certificates, as in the boot environment agents run in: plain http:// must work.
        let child = Command::new(FOG)
            .args(args)
            .env("RUST_LOG", "info")
            .env("SSL_CERT_FILE", "/nonexistent/fog-test-ca.pem")
            .env("SSL_CERT_DIR", "/nonexistent/fog-test-certs")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn fog");
        Proc { child }
    }

    /// SIGKILL: no chance to tidy up.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to end; its exit code.
    fn wait(mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A node process and what it needs to be restarted the same way.
struct NodeProc {
    name: String,
    dir: PathBuf,
    url: String,
    token: String,
    proc: Option<Proc>,
}

struct Cluster {
    dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    master: Option<Proc>,
    master_listen: String,
    base: String,
    admin: Client,
    nodes: Vec<NodeProc>,
    logs: Vec<PathBuf>,
    source: PathBuf,
}

/// Polls `check` every 100 ms until it is `Some`, for at most [`WAIT`].
fn until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The line of `log` after `marker` up to the end of the line, once it appears.
fn log_value(log: &Path, marker: &str) -> String {
    until(&format!("{marker} in {}", log.display()), || {
        let text = fs::read_to_string(log).ok()?;
        let at = text.rfind(marker)? + marker.len();
        let rest = &text[at..];
        Some(rest.split_whitespace().next()?.trim_matches('"').to_string())
    })
}

impl Cluster {
    /// A master whose store holds `golden`, captured from a 24 MiB ext4 disk of real files.
    fn start() -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = ext4_source_disk(dir.path(), 7);
        let master_dir = dir.path().join("master");
        let store = Store::open(master_dir.join("store")).expect("store");
        capture(&store, &source, "golden", &CaptureOptions::default(), &NoProgress).expect("capture");
        drop(store);

        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let mut cluster = Cluster {
            rt,
            master: None,
            master_listen: "127.0.0.1:0".into(),
            base: String::new(),
            admin: Client::new("http://127.0.0.1:1", None).expect("client"),
            nodes: Vec::new(),
            logs: Vec::new(),
            source,
            dir,
        };
        cluster.start_master();
        let token = fs::read_to_string(master_dir.join("admin-token")).expect("admin token");
        cluster.admin = Client::new(&cluster.base, Some(token.trim())).expect("client");
        cluster
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn log(&mut self, name: &str) -> PathBuf {
        let log = self.path(&format!("{name}.log"));
        if !self.logs.contains(&log) {
            self.logs.push(log.clone());
        }
        log
    }

    /// Starts the master (again, on the same address and database after the first time).
    fn start_master(&mut self) {
        let log = self.log("master");
        let data = self.path("master");
        let listen = self.master_listen.clone();
        let proc = Proc::spawn(
            &[
                "master",
                "--data-dir",
                data.to_str().expect("utf-8"),
                "--listen",
                &listen,
            ],
            &log,
        );
        let url = log_value(&log, "fog master: listening on ");
        if self.base.is_empty() {
            self.base = url.clone();
            self.master_listen = url.trim_start_matches("http://").to_string();
        }
        self.master = Some(proc);
        let probe = Client::new(&self.base, None).expect("client");
        until("the master answers", || self.rt.block_on(probe.health()).ok());
    }

    fn kill_master(&mut self) {
        if let Some(master) = self.master.take() {
            master.kill();
        }
    }

    /// Registers node `name` (at most `max` hosts at once) and starts it; `extra` goes into its
    /// `[node]` section.
    fn add_node(&mut self, name: &str, max: u32, extra: &str) -> usize {
        let node = Node {
            name: name.into(),
            url: "http://127.0.0.1".into(),
            subnets: Vec::new(),
            max_clients: max,
            enabled: true,
            last_seen: None,
        };
        let token = self.rt.block_on(self.admin.create_node(&node)).expect("node").token;
        let dir = self.path(name);
        fs::create_dir_all(dir.join("boot")).expect("mkdir");
        fs::write(dir.join("token"), &token).expect("token");
        self.nodes.push(NodeProc {
            name: name.into(),
            dir,
            url: String::new(),
            token,
            proc: None,
        });
        let i = self.nodes.len() - 1;
        self.start_node(i, "127.0.0.1:0", extra);
        i
    }

    fn start_node(&mut self, i: usize, listen: &str, extra: &str) {
        let log = self.log(&self.nodes[i].name.clone());
        let node = &self.nodes[i];
        let config = format!(
            "[node]\naddress = \"127.0.0.1\"\ndata_dir = {data:?}\nboot_dir = {boot:?}\nmaster = \"{master}\"\n\
             name = \"{name}\"\ntoken_file = {token:?}\nheartbeat_secs = 1\n{extra}\n[http]\nlisten = \"{listen}\"\n",
            data = node.dir.display().to_string(),
            boot = node.dir.join("boot").display().to_string(),
            master = self.base,
            name = node.name,
            token = node.dir.join("token").display().to_string(),
        );
        let config_path = node.dir.join("node.toml");
        fs::write(&config_path, config).expect("config");
        let proc = Proc::spawn(&["serve", "--config", config_path.to_str().expect("utf-8")], &log);
        let http = log_value(&log, "http=");
        self.nodes[i].url = format!("http://{http}");
        self.nodes[i].proc = Some(proc);
    }

    fn kill_node(&mut self, i: usize) {
        if let Some(p) = self.nodes[i].proc.take() {
            p.kill();
        }
    }

    fn add_image(&self, name: &str, placement: Placement) {
        let image = Image {
            name: name.into(),
            description: String::new(),
            os: String::new(),
            size_bytes: 0,
            placement,
        };
        self.rt.block_on(self.admin.create_image(&image)).expect("image");
    }

    fn add_host(&self, name: &str, mac: &str, node: &str) {
        let host = Host {
            node: Some(node.into()),
            ..Host::new(name, vec![mac.into()])
        };
        self.rt.block_on(self.admin.create_host(&host)).expect("host");
    }

    fn add_task(&self, host: &str, kind: TaskKind, image: &str) -> Task {
        let task = NewTask {
            kind,
            host: Some(host.into()),
            image: Some(image.into()),
            after: After::Stay,
            wake: false,
            layout: None,
        };
        self.rt.block_on(self.admin.create_task(&task)).expect("task")
    }

    fn task(&self, id: i64) -> Option<Task> {
        self.rt.block_on(self.admin.task(id)).ok()
    }

    fn wait_task(&self, id: i64, state: &TaskState) -> Task {
        until(&format!("task {id} {}", state.name()), || {
            self.task(id).filter(|t| &t.state == state)
        })
    }

    fn copy_state(&self, image: &str, node: &str) -> Option<(CopyState, u64)> {
        let copies = self.rt.block_on(self.admin.image_copies(image)).ok()?;
        copies.into_iter().find(|c| c.node == node).map(|c| (c.state, c.bytes))
    }

    fn wait_copy(&self, image: &str, node: &str) {
        until(&format!("{image} complete on {node}"), || {
            (self.copy_state(image, node)?.0 == CopyState::Complete).then_some(())
        });
    }

    /// Starts an agent for the host with `mac` against node `i`, on `disk`.
    fn agent(&mut self, i: usize, mac: &str, disk: &Path, extra: &[&str]) -> Proc {
        let log = self.log(&format!("agent-{}", mac.replace(':', "")));
        let node = &self.nodes[i];
        let mut args = vec![
            "agent",
            "run",
            "--master",
            &node.url,
            "--token",
            &node.token,
            "--mac",
            mac,
            "--disk",
            disk.to_str().expect("utf-8"),
            "--no-power",
            "--poll-max",
            "1",
        ];
        args.extend_from_slice(extra);
        Proc::spawn(&args, &log)
    }

    /// An empty 24 MiB target disk.
    fn blank_disk(&self, name: &str) -> PathBuf {
        let path = self.path(name);
        let f = fs::File::create(&path).expect("disk");
        f.set_len(24 << 20).expect("size");
        path
    }

    /// The target holds a clean ext4 with the source's files.
    fn assert_same_files(&self, target: &Path) {
        let fsck = Command::new("e2fsck")
            .args(["-fn"])
            .arg(target)
            .output()
            .expect("e2fsck");
        assert!(
            fsck.status.success(),
            "e2fsck on {}: {}",
            target.display(),
            String::from_utf8_lossy(&fsck.stdout)
        );
        for file in ["/etc/hostname", "/bin/blob1", "/srv/data/file29.txt", "/big.bin"] {
            assert!(
                debugfs_cat(target, file) == debugfs_cat(&self.source, file),
                "{file} differs on {}",
                target.display()
            );
        }
    }

    fn tasks_in_progress(&self) -> usize {
        let filter = TaskFilter {
            state: Some("in_progress".into()),
            ..TaskFilter::default()
        };
        self.rt.block_on(self.admin.tasks(&filter)).map_or(0, |t| t.len())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for log in &self.logs {
                eprintln!("===== {} =====", log.display());
                eprintln!("{}", fs::read_to_string(log).unwrap_or_default());
            }
        }
    }
}

#[test]
fn capture_at_one_site_reaches_the_master_then_deploys_identically_at_another() {
    let mut c = Cluster::start();
    let a = c.add_node("site-a", 2, "");
    let b = c.add_node("site-b", 2, "");
    c.add_image("lab", Placement::All);

    // Capture at site A: the image lands on node A and is pushed to the master.
    c.add_host("golden-pc", "52:54:00:aa:00:01", "site-a");
    let capture_task = c.add_task("golden-pc", TaskKind::Capture, "lab");
    let source = c.source.clone();
    let agent = c.agent(a, "52:54:00:aa:00:01", &source, &[]);
    assert_eq!(agent.wait(WAIT), Some(0), "the capture agent failed");
    c.wait_task(capture_task.id, &TaskState::Complete);
    let master_store = Store::open(c.path("master/store")).expect("store");
    assert!(master_store.image_names().expect("images").contains(&"lab".to_string()));

    // Placed on every node: node B pulls it by itself.
    c.wait_copy("lab", "site-b");
    let b_store = Store::open(c.nodes[b].dir.join("store")).expect("store");
    assert!(b_store.image_names().expect("images").contains(&"lab".to_string()));

    // Deploy at site B onto an empty disk.
    c.add_host("new-pc", "52:54:00:bb:00:01", "site-b");
    let deploy_task = c.add_task("new-pc", TaskKind::Deploy, "lab");
    let target = c.blank_disk("target.img");
    let agent = c.agent(b, "52:54:00:bb:00:01", &target, &[]);
    assert_eq!(agent.wait(WAIT), Some(0), "the deploy agent failed");
    c.wait_task(deploy_task.id, &TaskState::Complete);
    c.assert_same_files(&target);
}

#[test]
fn five_agents_on_a_node_of_two_slots_never_exceed_two_and_all_finish() {
    let mut c = Cluster::start();
    let a = c.add_node("site-a", 2, "");
    c.add_image("golden", Placement::All);
    c.wait_copy("golden", "site-a");
    let mut agents = Vec::new();
    let mut ids = Vec::new();
    for i in 0..5 {
        let mac = format!("52:54:00:cc:00:{i:02x}");
        c.add_host(&format!("pc-{i}"), &mac, "site-a");
        ids.push(c.add_task(&format!("pc-{i}"), TaskKind::Deploy, "golden").id);
        let disk = c.blank_disk(&format!("pc-{i}.img"));
        // Slow enough (about 3 s each) that the agents overlap.
        agents.push((c.agent(a, &mac, &disk, &["--bandwidth", "4000000"]), disk));
    }
    let mut most = 0;
    let deadline = Instant::now() + WAIT;
    while ids
        .iter()
        .any(|id| c.task(*id).is_none_or(|t| t.state != TaskState::Complete))
    {
        let now = c.tasks_in_progress();
        most = most.max(now);
        assert!(now <= 2, "{now} tasks in progress on a node of 2 slots");
        assert!(Instant::now() < deadline, "the five tasks did not complete");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(most, 2, "the slots were never both used");
    for (agent, disk) in agents {
        assert_eq!(agent.wait(WAIT), Some(0));
        c.assert_same_files(&disk);
    }
}

#[test]
fn with_the_master_killed_the_node_and_agents_finish_and_the_master_learns_it_after() {
    let mut c = Cluster::start();
    let a = c.add_node("site-a", 4, "");
    c.add_image("golden", Placement::All);
    c.wait_copy("golden", "site-a");
    c.add_host("pc-1", "52:54:00:dd:00:01", "site-a");
    c.add_host("pc-2", "52:54:00:dd:00:02", "site-a");
    let first = c.add_task("pc-1", TaskKind::Deploy, "golden");
    let second = c.add_task("pc-2", TaskKind::Deploy, "golden");
    // Both tasks in the node's cache before the master goes.
    until("the node knows both tasks", || {
        let text = fs::read_to_string(c.nodes[a].dir.join("node/tasks.json")).ok()?;
        (text.contains("52:54:00:dd:00:01") && text.contains("52:54:00:dd:00:02")).then_some(())
    });

    // The first agent starts with the master up; the master dies mid-task.
    let disk1 = c.blank_disk("pc-1.img");
    let agent1 = c.agent(a, "52:54:00:dd:00:01", &disk1, &["--bandwidth", "3000000"]);
    until("task 1 in progress", || {
        c.task(first.id)
            .filter(|t| matches!(t.state, TaskState::InProgress { .. }))
    });
    c.kill_master();
    // The second agent checks in while the master is down: the node grants it from its cache.
    let disk2 = c.blank_disk("pc-2.img");
    let agent2 = c.agent(a, "52:54:00:dd:00:02", &disk2, &[]);
    assert_eq!(agent1.wait(WAIT), Some(0), "agent 1 did not finish without the master");
    assert_eq!(agent2.wait(WAIT), Some(0), "agent 2 did not finish without the master");
    c.assert_same_files(&disk1);
    c.assert_same_files(&disk2);
    let outbox = fs::read_to_string(c.nodes[a].dir.join("node/outbox.json")).expect("outbox");
    assert!(outbox.contains(&format!("\"task\": {}", first.id)), "{outbox}");

    // The master returns: the node delivers both check-outs, once.
    c.start_master();
    c.wait_task(first.id, &TaskState::Complete);
    c.wait_task(second.id, &TaskState::Complete);
    until("the outbox empties", || {
        let text = fs::read_to_string(c.nodes[a].dir.join("node/outbox.json")).ok()?;
        (text.trim() == "[]").then_some(())
    });
    let history = c.rt.block_on(c.admin.task_history(second.id)).expect("history");
    let completions = history.iter().filter(|e| e.to == "complete").count();
    assert_eq!(completions, 1, "{history:?}");
}

#[test]
fn a_node_killed_mid_replication_resumes_and_never_shows_half_an_image() {
    let mut c = Cluster::start();
    // 1 MB/s: the ~10 MB image takes seconds, time to kill the node in the middle.
    let b = c.add_node("site-b", 2, "bandwidth = 1000000");
    c.add_image("golden", Placement::All);
    until("replication under way", || {
        let (state, bytes) = c.copy_state("golden", "site-b")?;
        (state == CopyState::Replicating && bytes > 0).then_some(())
    });
    c.kill_node(b);
    let store_dir = c.nodes[b].dir.join("store");
    let store = Store::open(&store_dir).expect("store");
    assert!(
        store.image_names().expect("images").is_empty(),
        "half an image is visible"
    );
    let partial = store.stats().expect("stats").chunks;
    assert!(partial > 0, "nothing was kept from the first attempt");
    drop(store);

    let listen = c.nodes[b].url.trim_start_matches("http://").to_string();
    c.start_node(b, &listen, "");
    c.wait_copy("golden", "site-b");
    let verify = Command::new(FOG)
        .args(["image", "verify", "golden", "--store"])
        .arg(&store_dir)
        .output()
        .expect("fog image verify");
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));
}

#[test]
fn the_master_and_the_node_refuse_requests_without_the_right_token() {
    let mut c = Cluster::start();
    let a = c.add_node("site-a", 2, "");
    let node_token = c.nodes[a].token.clone();
    for (token, path, want) in [
        (None, "/api/v1/hosts", 401),
        (Some("fog_wrong"), "/api/v1/hosts", 401),
        (Some(node_token.as_str()), "/api/v1/hosts", 403),
    ] {
        assert_eq!(http_status(&c.base, path, token), want, "{path} with {token:?}");
    }
    let node_url = c.nodes[a].url.clone();
    for (token, want) in [(None, 401), (Some("fog_wrong"), 401), (Some("fogt_1_00"), 401)] {
        assert_eq!(
            http_status(&node_url, "/api/v1/checkin", token),
            want,
            "node with {token:?}"
        );
    }
}

/// The status of a `POST {}` through curl (a real client, as an operator would use).
fn http_status(base: &str, path: &str, token: Option<&str>) -> u16 {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"])
        .args(["-H", "content-type: application/json", "--data", "{}"]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("authorization: Bearer {t}")]);
    }
    let out = cmd.arg(format!("{base}{path}")).output().expect("curl");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

/// `curl` posting a sign-in form: the status and the session cookie it set, if any.
fn sign_in(base: &str, user: &str, password: &str) -> (u16, bool) {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-D", "-", "-w", "%{http_code}"])
        .args(["--data-urlencode", &format!("user={user}")])
        .args(["--data-urlencode", &format!("password={password}")])
        .arg(format!("{base}/login"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    let status = text.lines().last().unwrap_or_default().trim().parse().unwrap_or(0);
    (status, text.to_lowercase().contains("set-cookie: fog_session="))
}

#[test]
fn users_added_by_the_cli_sign_in_to_the_web_pages() {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let c = Cluster::start();
    let master_dir = c.path("master");
    let password_file = master_dir.join("admin-password");
    assert_eq!(
        fs::metadata(&password_file)
            .expect("admin-password")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let admin_password = fs::read_to_string(&password_file).expect("admin password");
    assert_eq!(sign_in(&c.base, "admin", admin_password.trim()), (303, true));
    assert_eq!(sign_in(&c.base, "admin", "not-it-at-all"), (401, false));

    let token = fs::read_to_string(master_dir.join("admin-token")).expect("admin token");
    let fog = |args: &[&str], stdin: &str| {
        let mut child = Command::new(FOG)
            .args(args)
            .env("FOG_MASTER", &c.base)
            .env("FOG_TOKEN", token.trim())
            .env("SSL_CERT_FILE", "/nonexistent/fog-test-ca.pem")
            .env("SSL_CERT_DIR", "/nonexistent/fog-test-certs")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("fog");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("write stdin");
        child.wait_with_output().expect("fog runs")
    };
    let added = fog(
        &["user", "add", "alice", "--role", "viewer", "--password-stdin"],
        "alice-password-1\n",
    );
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    assert_eq!(sign_in(&c.base, "alice", "alice-password-1"), (303, true));
    let listed = fog(&["--json", "user", "ls"], "");
    let users: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("user ls --json");
    let roles: Vec<(&str, &str)> = users
        .as_array()
        .expect("a list")
        .iter()
        .map(|u| (u["name"].as_str().unwrap_or(""), u["role"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(roles, [("admin", "admin"), ("alice", "viewer")]);

    let short = fog(&["user", "passwd", "alice", "--password-stdin"], "short\n");
    assert_eq!(short.status.code(), Some(2), "a short password is bad input");
    let changed = fog(&["user", "passwd", "alice", "--password-stdin"], "alice-password-2\n");
    assert!(changed.status.success(), "{}", String::from_utf8_lossy(&changed.stderr));
    assert_eq!(sign_in(&c.base, "alice", "alice-password-1").0, 401);
    assert_eq!(sign_in(&c.base, "alice", "alice-password-2"), (303, true));
    let last_admin = fog(&["user", "rm", "admin"], "");
    assert!(!last_admin.status.success(), "the last admin cannot be removed");
    assert!(fog(&["user", "rm", "alice"], "").status.success());
    assert_eq!(sign_in(&c.base, "alice", "alice-password-2").0, 401);
}
