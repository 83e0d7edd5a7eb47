//! Wake-on-LAN through the control plane, on loopback: the master stores wake requests (asked
//! for directly, or by a task with `wake: true`), the host's node claims them at its beat and
//! sends one magic packet per MAC to its `[node] wake_broadcast`, where a real UDP socket
//! receives them. Nothing is sent by a node without `wake_broadcast`.

use std::net::UdpSocket;
use std::path::Path;
use std::time::{Duration, Instant};

use fogcore::Error;
use fogcore::control::client::Client;
use fogcore::control::master::Master;
use fogcore::control::model::{After, Host, NewTask, Node, TaskKind};
use fogcore::control::node::{NodeLoop, node_role};
use fogcore::net::config::ServeConfig;
use fogcore::net::wol::magic_packet;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const MAC_A: [u8; 6] = [0x52, 0x54, 0x00, 0x00, 0x09, 0x01];
const MAC_B: [u8; 6] = [0x52, 0x54, 0x00, 0x00, 0x09, 0x02];

fn mac_text(mac: [u8; 6]) -> String {
    fogcore::net::http::format_mac(mac)
}

/// A master with node `site-a` (token in `DIR/node-token`), host `pc-01` on it with two cards,
/// and host `stray` on no node.
struct Lab {
    dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    master: Master,
    base: String,
    admin: Client,
    node_token: String,
}

fn lab() -> Result<Lab, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let rt = tokio::runtime::Runtime::new()?;
    let db_url = format!("sqlite://{}?mode=rwc", dir.path().join("fog.db").display());
    let (master, admin_token) = rt.block_on(crate::tools::start_master(&db_url, None))?;
    let base = format!("http://{}", master.addr());
    let admin = Client::new(&base, Some(&admin_token))?;
    let node_token = rt.block_on(async {
        let mut node_token = String::new();
        for name in ["site-a", "site-b"] {
            let node = Node {
                name: name.into(),
                url: format!("http://{name}.lab:8080"),
                subnets: Vec::new(),
                max_clients: 2,
                enabled: true,
                last_seen: None,
            };
            let token = admin.create_node(&node).await?.token;
            if name == "site-a" {
                node_token = token;
            }
        }
        for (name, macs, node) in [
            ("pc-01", vec![mac_text(MAC_A), mac_text(MAC_B)], Some("site-a")),
            ("stray", vec!["52:54:00:00:09:99".to_string()], None),
        ] {
            admin
                .create_host(&Host {
                    node: node.map(str::to_string),
                    ..Host::new(name, macs)
                })
                .await?;
        }
        Ok::<_, Error>(node_token)
    })?;
    std::fs::write(dir.path().join("node-token"), format!("{node_token}\n"))?;
    Ok(Lab {
        dir,
        rt,
        master,
        base,
        admin,
        node_token,
    })
}

fn inventory(host: &str, wake: bool) -> NewTask {
    NewTask {
        kind: TaskKind::Inventory,
        host: Some(host.into()),
        image: None,
        after: After::Reboot,
        wake,
        layout: None,
    }
}

/// The node's config; `wake` is the `[node] wake_broadcast` value, if any.
fn node_config(dir: &Path, master: &str, wake: Option<&str>) -> fogcore::Result<ServeConfig> {
    let node_dir = dir.join("node");
    std::fs::create_dir_all(node_dir.join("boot")).map_err(|e| Error::io(&node_dir, e))?;
    let wake = wake.map(|w| format!("wake_broadcast = \"{w}\"\n")).unwrap_or_default();
    let text = format!(
        "[node]\naddress = \"127.0.0.1\"\ndata_dir = {data:?}\nmaster = \"{master}\"\nname = \"site-a\"\n\
         token_file = {token:?}\nheartbeat_secs = 1\n{wake}[http]\nlisten = \"127.0.0.1:0\"\n",
        data = node_dir.display().to_string(),
        token = dir.join("node-token").display().to_string(),
    );
    ServeConfig::parse(&text, "node.toml")
}

fn node_loop(config: &ServeConfig) -> Result<NodeLoop, Box<dyn std::error::Error>> {
    Ok(node_role(config)?.ok_or("no node role")?.node_loop)
}

/// A UDP socket on the loopback broadcast address, and the `wake_broadcast` value aiming at it.
fn receiver() -> Result<(UdpSocket, String), Box<dyn std::error::Error>> {
    let socket = UdpSocket::bind("127.255.255.255:0")?;
    let port = socket.local_addr()?.port();
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    Ok((socket, format!("127.255.255.255:{port}")))
}

/// Every datagram that arrives within `quiet` of the last one (or of the start), up to `wait`.
fn packets(socket: &UdpSocket, wait: Duration, want: usize) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + wait;
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        if let Ok((n, _)) = socket.recv_from(&mut buf) {
            out.push(buf.get(..n).unwrap_or_default().to_vec());
            if out.len() > want {
                break;
            }
        } else if out.len() == want && want > 0 {
            break;
        }
    }
    out
}

fn remote_code(e: Error) -> (u16, String, String) {
    match e {
        Error::Remote { status, code, message } => (status, code, message),
        other => (0, String::new(), other.to_string()),
    }
}

#[test]
fn a_wake_request_reaches_the_hosts_subnet_once_per_mac() -> TestResult {
    let lab = lab()?;
    let (socket, target) = receiver()?;
    let config = node_config(lab.dir.path(), &lab.base, Some(&target))?;
    let node = node_loop(&config)?;

    let wake = lab.rt.block_on(lab.admin.wake_host("pc-01"))?;
    assert_eq!((wake.host.as_str(), wake.node.as_str()), ("pc-01", "site-a"));
    assert_eq!(wake.macs, [mac_text(MAC_A), mac_text(MAC_B)]);

    lab.rt.block_on(node.beat())?;
    let mut got = packets(&socket, Duration::from_secs(5), 2);
    got.sort();
    let mut want = vec![magic_packet(MAC_A, None)?, magic_packet(MAC_B, None)?];
    want.sort();
    assert_eq!(got, want, "one 102-byte magic packet per MAC");
    assert!(got.iter().all(|p| p.len() == 102));

    // Sent once: the next beat sends nothing.
    lab.rt.block_on(node.beat())?;
    assert_eq!(packets(&socket, Duration::from_millis(600), 0).len(), 0);
    lab.rt.block_on(lab.master.stop())?;
    Ok(())
}

#[test]
fn a_task_with_wake_wakes_its_host_through_a_running_node() -> TestResult {
    let lab = lab()?;
    let (socket, target) = receiver()?;
    let config = node_config(lab.dir.path(), &lab.base, Some(&target))?;

    // A cancelled task's wake is dropped, not sent.
    let cancelled = lab.rt.block_on(lab.admin.create_task(&inventory("pc-01", true)))?;
    lab.rt.block_on(lab.admin.cancel_task(cancelled.id))?;
    let task = lab.rt.block_on(lab.admin.create_task(&inventory("pc-01", true)))?;
    assert!(task.wake);

    let server = fogcore::control::node::serve(config)?;
    let got = packets(&socket, Duration::from_secs(15), 2);
    server.stop()?;
    assert_eq!(got.len(), 2, "the open task's wake only, once per MAC: {got:?}");
    assert!(got.contains(&magic_packet(MAC_A, None)?) && got.contains(&magic_packet(MAC_B, None)?));
    // Claimed: nothing is left for the node.
    assert!(lab.rt.block_on(lab.admin.take_wakes("site-a"))?.is_empty());
    lab.rt.block_on(lab.master.stop())?;
    Ok(())
}

#[test]
fn a_node_without_wake_broadcast_sends_nothing_and_leaves_requests() -> TestResult {
    let lab = lab()?;
    let (socket, _) = receiver()?;
    let config = node_config(lab.dir.path(), &lab.base, None)?;
    let node = node_loop(&config)?;
    lab.rt.block_on(lab.admin.wake_host("pc-01"))?;
    lab.rt.block_on(node.beat())?;
    assert!(packets(&socket, Duration::from_millis(600), 0).is_empty());
    let left = lab.rt.block_on(lab.admin.take_wakes("site-a"))?;
    assert_eq!(left.len(), 1, "the request waits for a node that can send it");
    lab.rt.block_on(lab.master.stop())?;
    Ok(())
}

#[test]
fn wake_errors_name_the_host_and_tokens_are_checked() -> TestResult {
    let lab = lab()?;
    lab.rt.block_on(async {
        // No node can wake a host on none.
        let (status, code, message) = remote_code(lab.admin.wake_host("stray").await.err().ok_or("woke stray")?);
        // A valid request the host's setup cannot serve: 422.
        assert_eq!((status, code.as_str()), (422, "unprocessable"), "{message}");
        assert!(message.contains("stray") && message.contains("no node"), "{message}");
        let e = lab
            .admin
            .create_task(&inventory("stray", true))
            .await
            .err()
            .ok_or("task")?;
        let (status, _, message) = remote_code(e);
        assert_eq!(status, 422);
        assert!(message.contains("stray"), "{message}");
        // Without wake the same task is fine.
        lab.admin.create_task(&inventory("stray", false)).await?;
        let (status, code, _) = remote_code(lab.admin.wake_host("nobody").await.err().ok_or("woke nobody")?);
        assert_eq!((status, code.as_str()), (404, "not_found"));

        // A node token may claim its own wakes only, and may not ask for one.
        let node = Client::new(&lab.base, Some(&lab.node_token))?;
        let (status, code, _) = remote_code(node.wake_host("pc-01").await.err().ok_or("node woke")?);
        assert_eq!((status, code.as_str()), (403, "forbidden"));
        let (status, code, _) = remote_code(node.take_wakes("site-b").await.err().ok_or("took b")?);
        assert_eq!((status, code.as_str()), (403, "forbidden"));
        let (status, code, _) = remote_code(
            Client::new(&lab.base, Some("fog_wrong"))?
                .wake_host("pc-01")
                .await
                .err()
                .ok_or("wrong token woke")?,
        );
        assert_eq!((status, code.as_str()), (401, "unauthorized"));
        lab.admin.wake_host("pc-01").await?;
        assert_eq!(node.take_wakes("site-a").await?.len(), 1);
        assert!(node.take_wakes("site-a").await?.is_empty(), "returned once");
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    lab.rt.block_on(lab.master.stop())?;
    Ok(())
}
