//! The node role of `fog serve` against a real master on loopback: a host with a task gets the
//! agent's boot script from the node, others the menu; with the master stopped the node answers
//! from what it knew; when the master returns, heartbeats and task pulls resume.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fogcore::clock::now_ms;
use fogcore::control::client::Client;
use fogcore::control::db::Db;
use fogcore::control::master::{Master, MasterTls};
use fogcore::control::model::{After, CheckIn, Host, Image, NewTask, Node, Placement, TaskKind};
use fogcore::control::service::Control;
use fogcore::net::config::ServeConfig;
use fogcore::net::tls::{Fingerprint, ServerTls, Trust};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const TASK_MAC: &str = "52:54:00:12:34:56";
const IDLE_MAC: &str = "52:54:00:00:00:02";

async fn start_master(db_url: &str, listen: SocketAddr, tls: &ServerTls) -> fogcore::Result<Master> {
    let control = Arc::new(Control::new(Db::open(db_url).await?));
    Master::start_with_tls(control, listen, Some(tls)).await
}

fn host(name: &str, mac: &str) -> Host {
    Host {
        node: Some("site-a".into()),
        kernel_args: "quiet".into(),
        ..Host::new(name, vec![mac.into()])
    }
}

/// A node of `master` beating every second; `node_keys` are more `[node]` lines.
fn node_config(dir: &Path, master: &str, token_file: &Path, node_keys: &str) -> fogcore::Result<ServeConfig> {
    node_config_every(dir, master, token_file, 1, node_keys)
}

fn node_config_every(
    dir: &Path,
    master: &str,
    token_file: &Path,
    secs: u64,
    node_keys: &str,
) -> fogcore::Result<ServeConfig> {
    let boot = dir.join("boot");
    std::fs::create_dir_all(&boot).map_err(|e| fogcore::Error::io(&boot, e))?;
    let text = format!(
        "[node]\naddress = \"127.0.0.1\"\ndata_dir = {data:?}\nboot_dir = {boot:?}\n\
         master = \"{master}\"\nname = \"site-a\"\ntoken_file = {token:?}\nheartbeat_secs = {secs}\n\
         {node_keys}\n[http]\nlisten = \"127.0.0.1:0\"\n",
        data = dir.display().to_string(),
        boot = boot.display().to_string(),
        token = token_file.display().to_string(),
    );
    ServeConfig::parse(&text, "node.toml")
}

/// Polls `check` until it holds, for at most 20 s.
fn eventually(rt: &tokio::runtime::Runtime, what: &str, mut check: impl AsyncCheck) -> TestResult {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if rt.block_on(check.check()) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for: {what}").into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

trait AsyncCheck {
    fn check(&mut self) -> impl std::future::Future<Output = bool>;
}

impl<F: FnMut() -> Fut, Fut: std::future::Future<Output = bool>> AsyncCheck for F {
    fn check(&mut self) -> impl std::future::Future<Output = bool> {
        self()
    }
}

async fn script(http: SocketAddr, mac: &str) -> Result<String, reqwest::Error> {
    crate::http_client()
        .get(format!("http://{http}/boot/{mac}"))
        .send()
        .await?
        .text()
        .await
}

/// A master on loopback with node `site-a` (its token in `DIR/node-token`), hosts pc-01 (with a
/// deploy task) and pc-02 (none).
/// A master over HTTPS (a self-signed certificate, pinned by its clients and the node), a node
/// record, an image placed on all nodes, two hosts and a deploy task for one.
struct Lab {
    dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    db_url: String,
    master: Master,
    base: String,
    admin: Client,
    task: fogcore::control::model::Task,
    tls: ServerTls,
    trust: Trust,
    /// The `[node]` line that pins the master's certificate.
    pin: String,
}

fn lab() -> Result<Lab, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let rt = tokio::runtime::Runtime::new()?;
    let db_url = format!("sqlite://{}?mode=rwc", dir.path().join("fog.db").display());
    let tls = ServerTls::self_signed(dir.path(), &[])?;
    let files = MasterTls::Files {
        cert: tls.cert_file().to_path_buf(),
        key: dir.path().join(fogcore::net::tls::SELF_SIGNED_KEY),
    };
    let (master, admin_token) = rt.block_on(crate::tools::start_master_with(&db_url, None, files))?;
    let base = master.url();
    let trust = Trust::Pinned(tls.fingerprint());
    let pin = format!("master_fingerprint = \"{}\"", tls.fingerprint());
    let admin = Client::with_trust(&base, Some(&admin_token), &trust)?;
    let task = rt.block_on(async {
        let node = Node {
            name: "site-a".into(),
            url: "http://127.0.0.1:8080".into(),
            subnets: Vec::new(),
            max_clients: 2,
            enabled: true,
            last_seen: None,
        };
        let node_token = admin.create_node(&node).await?.token;
        std::fs::write(dir.path().join("node-token"), format!("{node_token}\n"))
            .map_err(|e| fogcore::Error::io("node-token", e))?;
        admin
            .create_image(&Image {
                name: "golden".into(),
                description: String::new(),
                os: String::new(),
                size_bytes: 0,
                placement: Placement::All,
            })
            .await?;
        admin.create_host(&host("pc-01", TASK_MAC)).await?;
        admin.create_host(&host("pc-02", IDLE_MAC)).await?;
        admin
            .create_task(&NewTask {
                kind: TaskKind::Deploy,
                host: Some("pc-01".into()),
                image: Some("golden".into()),
                after: After::Reboot,
                wake: false,
                layout: None,
            })
            .await
    })?;

    Ok(Lab {
        dir,
        rt,
        db_url,
        master,
        base,
        admin,
        task,
        tls,
        trust,
        pin,
    })
}

#[test]
fn node_boots_the_agent_for_tasks_menus_others_and_survives_the_master() -> TestResult {
    let Lab {
        dir,
        rt,
        db_url,
        master,
        base,
        admin,
        task,
        tls,
        trust,
        pin,
    } = lab()?;
    let master_addr = master.addr();
    let node_dir = dir.path().join("node");
    let config = node_config(&node_dir, &base, &dir.path().join("node-token"), &pin)?;
    let server = fogcore::control::node::serve(config)?;
    let http = server.addrs().http.ok_or("no http address")?;

    // The host with a task boots the agent, with the task and initrd= on the kernel line.
    let want_task = format!("fog.task={}", task.id);
    eventually(&rt, "the node learns the task", || async {
        script(http, TASK_MAC).await.is_ok_and(|s| s.contains(&want_task))
    })?;
    let agent = rt.block_on(script(http, TASK_MAC))?;
    let kernel = agent
        .lines()
        .find(|l| l.starts_with("kernel "))
        .ok_or("no kernel line")?;
    assert!(
        kernel.starts_with(&format!("kernel http://{http}/bootenv/vmlinuz initrd=initrd.img ")),
        "{kernel}"
    );
    for arg in [
        want_task.as_str(),
        "fog.action=deploy",
        &format!("fog.mac={TASK_MAC}"),
        &format!("fog.master=http://{http}"),
        &format!("fog.token=fogt_{}_", task.id),
        "quiet",
    ] {
        assert!(kernel.contains(arg), "{arg} missing: {kernel}");
    }
    let node_token = std::fs::read_to_string(dir.path().join("node-token"))?;
    assert!(
        !agent.contains(node_token.trim()),
        "the node's own token is not on the script"
    );
    let task_token = kernel
        .split(' ')
        .find_map(|a| a.strip_prefix("fog.token="))
        .ok_or("no token")?
        .to_string();
    assert!(
        agent.contains(&format!("\ninitrd http://{http}/bootenv/initrd.img")),
        "{agent}"
    );
    assert!(agent.contains("\nboot"), "{agent}");

    // A host without a task gets the menu.
    let menu = rt.block_on(script(http, IDLE_MAC))?;
    assert!(
        menu.contains("choose --timeout") && !menu.contains("fog.task="),
        "{menu}"
    );

    // The master's node row shows the heartbeat.
    let seen = rt
        .block_on(admin.nodes())?
        .into_iter()
        .find(|n| n.name == "site-a")
        .and_then(|n| n.last_seen)
        .ok_or("no heartbeat")?;
    assert!(seen > 0);

    // Master down: the node answers from its cache, the same script.
    rt.block_on(master.stop())?;
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(rt.block_on(script(http, TASK_MAC))?, agent);
    assert!(rt.block_on(script(http, IDLE_MAC))?.contains("choose --timeout"));

    // Master back on the same address and database: heartbeats resume, and a change made there
    // (the task cancelled) reaches the node.
    let restarted_at = now_ms();
    let master = rt.block_on(start_master(&db_url, master_addr, &tls))?;
    eventually(&rt, "a heartbeat after the restart", || async {
        admin
            .nodes()
            .await
            .ok()
            .and_then(|nodes| nodes.into_iter().find(|n| n.name == "site-a"))
            .and_then(|n| n.last_seen)
            .is_some_and(|t| t >= restarted_at)
    })?;
    // The agent's task token works on the master while the task is open, not after.
    let agent_client = Client::with_trust(&base, Some(&task_token), &trust)?;
    let reply = rt.block_on(agent_client.check_in(&CheckIn {
        mac: TASK_MAC.into(),
        uuid: None,
        address: None,
    }))?;
    assert_eq!(reply.task.id, task.id);
    let forged = Client::with_trust(&base, Some(&format!("fogt_{}_{}", task.id, "0".repeat(64))), &trust)?;
    assert!(
        rt.block_on(forged.node_tasks("site-a")).is_err(),
        "a forged task token is refused"
    );
    rt.block_on(admin.cancel_task(task.id))?;
    match rt.block_on(agent_client.node_tasks("site-a")) {
        Err(fogcore::Error::Remote { status: 401, .. }) => {}
        other => return Err(format!("a finished task's token was not refused: {other:?}").into()),
    }
    eventually(&rt, "the cancelled task leaves the node", || async {
        script(http, TASK_MAC)
            .await
            .is_ok_and(|s| s.contains("choose --timeout"))
    })?;

    server.stop()?;
    rt.block_on(master.stop())?;
    Ok(())
}

#[test]
fn a_missing_token_file_is_an_error_naming_the_key() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = node_config(dir.path(), "http://127.0.0.1:9", &dir.path().join("absent"), "")?;
    let error = match fogcore::control::node::serve(config) {
        Ok(_) => return Err("started without a token".into()),
        Err(e) => e,
    };
    assert!(error.to_string().contains("[node] token_file"), "{error}");
    Ok(())
}

#[test]
fn a_task_that_ended_since_the_last_beat_does_not_boot_the_agent_again() -> TestResult {
    let Lab {
        dir,
        rt,
        master,
        base,
        admin,
        task,
        pin,
        ..
    } = lab()?;
    // One beat at start, then none for an hour: only the recheck can see the change.
    let config = node_config_every(
        &dir.path().join("node"),
        &base,
        &dir.path().join("node-token"),
        3600,
        &pin,
    )?;
    let server = fogcore::control::node::serve(config)?;
    let http = server.addrs().http.ok_or("no http address")?;
    let want_task = format!("fog.task={}", task.id);
    eventually(&rt, "the first beat", || async {
        script(http, TASK_MAC).await.is_ok_and(|s| s.contains(&want_task))
    })?;
    rt.block_on(admin.cancel_task(task.id))?;
    let after = rt.block_on(script(http, TASK_MAC))?;
    assert!(
        after.contains("choose --timeout") && !after.contains("fog.task="),
        "{after}"
    );
    server.stop()?;
    rt.block_on(master.stop())?;
    Ok(())
}

/// A node whose pinned fingerprint is not the master's refuses to talk to it and says so; the
/// master hears nothing from it (no heartbeat).
#[test]
fn a_node_with_a_wrong_pin_refuses_the_master_and_says_so() -> TestResult {
    let Lab {
        dir,
        rt,
        master,
        base,
        admin,
        ..
    } = lab()?;
    let wrong = Fingerprint::of(b"not the master's certificate");
    let config = node_config(
        &dir.path().join("node"),
        &base,
        &dir.path().join("node-token"),
        &format!("master_fingerprint = \"{wrong}\""),
    )?;
    let role = fogcore::control::node::node_role(&config)?.ok_or("no node role")?;
    let error = rt.block_on(role.node_loop.beat()).err().ok_or("a beat got through")?;
    let text = error.to_string();
    assert!(text.contains(&format!("not the pinned {wrong}")), "{text}");
    let node = rt
        .block_on(admin.nodes())?
        .into_iter()
        .find(|n| n.name == "site-a")
        .ok_or("no node")?;
    assert_eq!(node.last_seen, None, "the master heard no heartbeat");
    rt.block_on(master.stop())?;
    Ok(())
}
