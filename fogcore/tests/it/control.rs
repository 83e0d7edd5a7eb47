//! The master as a user meets it: a real server on loopback, HTTP status and JSON bodies.
//! Every test runs on SQLite, and on PostgreSQL too when `FOG_TEST_POSTGRES_URL` names a server
//! (each test then gets a database of its own).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use fogcore::Error;
use fogcore::clock::{Clock, ManualClock};
use fogcore::control::api::Access;
use fogcore::control::client::Client;
use fogcore::control::db::Db;
use fogcore::control::master::{self, Master};
use fogcore::control::model::TaskFilter;
use fogcore::control::model::{
    After, CheckIn, CheckOut, Group, Heartbeat, Host, Image, LayoutMode, NewTask, NewToken, Node, Placement,
    ProgressReport, Schedule, SlotState, TaskKind, TaskState, When,
};
use fogcore::control::service::Control;
use serde_json::{Value, json};
use sqlx::Connection;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// A database for one test: a SQLite file in a temp dir, or a fresh PostgreSQL database.
struct Backend {
    url: String,
    dir: tempfile::TempDir,
}

async fn backends() -> Result<Vec<Backend>, Box<dyn std::error::Error + Send + Sync>> {
    let dir = tempfile::tempdir()?;
    let mut out = vec![Backend {
        url: format!("sqlite://{}?mode=rwc", dir.path().join("fog.db").display()),
        dir,
    }];
    if let Some(url) = fresh_postgres().await? {
        out.push(Backend {
            url,
            dir: tempfile::tempdir()?,
        });
    }
    Ok(out)
}

/// A new, empty PostgreSQL database on the server `FOG_TEST_POSTGRES_URL` names, if it names one.
pub(crate) async fn fresh_postgres() -> Result<Option<String>, Box<dyn std::error::Error + Send + Sync>> {
    let Ok(base) = std::env::var("FOG_TEST_POSTGRES_URL") else {
        return Ok(None);
    };
    sqlx::any::install_default_drivers();
    let name = format!("fog_test_{}", hex::encode(rand::random::<[u8; 6]>()));
    let mut conn = sqlx::AnyConnection::connect(&base).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    let (path, query) = base.split_once('?').unwrap_or((&base, ""));
    let root = path.rsplit_once('/').map_or(path, |(root, _)| root);
    Ok(Some(if query.is_empty() {
        format!("{root}/{name}")
    } else {
        format!("{root}/{name}?{query}")
    }))
}

struct Running {
    master: Master,
    base: String,
    admin: String,
    client: Client,
    http: reqwest::Client,
}

async fn start(url: &str) -> Result<Running, Box<dyn std::error::Error + Send + Sync>> {
    let control = Arc::new(Control::new(Db::open(url).await?));
    let admin = control.create_token(&admin_token_named("test"), None).await?.token;
    let master = Master::start(control, "127.0.0.1:0".parse()?).await?;
    let base = format!("http://{}", master.addr());
    let client = Client::new(&base, Some(&admin))?;
    Ok(Running {
        master,
        base,
        admin,
        client,
        http: crate::http_client(),
    })
}

fn admin_token_named(name: &str) -> NewToken {
    NewToken {
        name: name.into(),
        role: None,
        expires_at: None,
    }
}

impl Running {
    /// Sends a request; returns the status and the JSON body.
    async fn raw(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<(u16, Value), Box<dyn std::error::Error + Send + Sync>> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        if let Some(body) = body {
            req = req
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&body)?);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await?;
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((status, value))
    }
}

fn host(name: &str, mac: &str) -> Host {
    Host::new(name, vec![mac.into()])
}

fn node(name: &str, subnet: &str, max: u32) -> Result<Node, Error> {
    Ok(Node {
        name: name.into(),
        url: format!("http://{name}.lab:8080"),
        subnets: vec![fogcore::control::model::parse_subnet(subnet)?],
        max_clients: max,
        enabled: true,
        last_seen: None,
    })
}

fn image(name: &str) -> Image {
    Image {
        name: name.into(),
        description: "golden".into(),
        os: "debian-13".into(),
        size_bytes: 1 << 30,
        placement: Placement::All,
    }
}

fn task(kind: TaskKind, host: &str) -> NewTask {
    NewTask {
        kind,
        host: Some(host.into()),
        image: None,
        after: After::Reboot,
        wake: false,
        layout: None,
    }
}

/// The `{code, message}` of a failed call, or a panic-free empty pair.
fn remote(result: Result<impl std::fmt::Debug, Error>) -> (u16, String, String) {
    match result {
        Err(Error::Remote { status, code, message }) => (status, code, message),
        other => (0, String::new(), format!("{other:?}")),
    }
}

#[tokio::test]
async fn crud_and_validation_errors_name_the_input() -> TestResult {
    for b in backends().await? {
        let m = start(&b.url).await?;
        let c = &m.client;
        let created = c.create_node(&node("site-a", "10.1.0.0/16", 4)?).await?;
        assert!(created.token.starts_with("fog_"));
        c.create_group(&Group {
            name: "lab".into(),
            description: "room 12".into(),
        })
        .await?;
        c.create_image(&image("win11")).await?;
        let mut h = host("pc-01", "52-54-00-AA-BB-01");
        h.group = Some("lab".into());
        h.image = Some("win11".into());
        h.uuid = Some("4C4C4544-0042-3510-8051-B7C04F563232".into());
        let stored = c.create_host(&h).await?;
        assert_eq!(stored.macs, ["52:54:00:aa:bb:01"], "MACs come back canonical");
        assert_eq!(c.hosts().await?.len(), 1);
        assert_eq!(c.image_copies("win11").await?.len(), 1, "placed on all nodes: site-a");

        let mut h2 = stored.clone();
        h2.macs.push("52:54:00:aa:bb:02".into());
        h2.kernel_args = "quiet".into();
        assert_eq!(c.update_host(&h2).await?.macs.len(), 2);
        assert_eq!(c.host("pc-01").await?.kernel_args, "quiet");

        // Validation: each error names what was wrong.
        let (status, code, msg) = remote(c.create_host(&host("pc-02", "52:54:00:zz:00:01")).await);
        assert_eq!((status, code.as_str()), (400, "invalid"), "{msg}");
        assert!(msg.contains("52:54:00:zz:00:01"), "{msg}");
        let (status, code, msg) = remote(c.create_host(&host("pc 02", "52:54:00:00:00:09")).await);
        assert_eq!((status, code.as_str()), (400, "invalid"));
        assert!(msg.contains("pc 02"), "{msg}");
        let (status, code, msg) = remote(c.create_host(&host("pc-03", "52:54:00:aa:bb:02")).await);
        assert_eq!((status, code.as_str()), (409, "conflict"), "{msg}");
        assert!(msg.contains("52:54:00:aa:bb:02"), "the MAC another host has: {msg}");
        let (status, _, _) = remote(c.create_host(&host("pc-01", "52:54:00:00:00:10")).await);
        assert_eq!(status, 409, "duplicate name");
        let mut orphan = host("pc-04", "52:54:00:00:00:11");
        orphan.image = Some("nope".into());
        let (status, code, msg) = remote(c.create_host(&orphan).await);
        assert_eq!((status, code.as_str()), (404, "not_found"));
        assert!(msg.contains("nope"), "{msg}");
        let (status, _, msg) = remote(c.create_node(&node("site-b", "10.2.0.0/16", 0)?).await);
        assert_eq!(status, 400, "{msg}");
        let (status, body) = m
            .raw(
                reqwest::Method::POST,
                "/api/v1/nodes",
                Some(&m.admin),
                Some(json!({"name": "n", "url": "http://n", "subnets": ["10.0.0.0/33"]})),
            )
            .await?;
        assert_eq!(status, 400);
        assert_eq!(body["code"], "invalid");
        assert!(body["message"].as_str().unwrap_or("").contains("10.0.0.0/33"), "{body}");
        let (status, body) = m
            .raw(
                reqwest::Method::POST,
                "/api/v1/hosts",
                Some(&m.admin),
                Some(json!({"name": "x", "macs": ["52:54:00:00:00:12"], "colour": 1})),
            )
            .await?;
        assert_eq!((status, body["code"].as_str()), (400, Some("invalid")), "{body}");
        assert!(body["message"].as_str().unwrap_or("").contains("colour"), "{body}");
        let (status, body) = m
            .raw(reqwest::Method::GET, "/api/v1/nope", Some(&m.admin), None)
            .await?;
        assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));

        // Deletes: refused while in use, then gone.
        let (status, _, _) = remote(c.delete_image("win11").await);
        assert_eq!(status, 409, "a host uses it");
        c.delete_host("pc-01").await?;
        c.delete_image("win11").await?;
        c.delete_group("lab").await?;
        c.delete_node("site-a").await?;
        assert!(c.hosts().await?.is_empty() && c.images().await?.is_empty() && c.nodes().await?.is_empty());
        let (status, code, _) = remote(c.host("pc-01").await);
        assert_eq!((status, code.as_str()), (404, "not_found"));
        m.master.stop().await?;
        drop(b.dir);
    }
    Ok(())
}

#[tokio::test]
async fn tokens_none_wrong_or_node_are_refused() -> TestResult {
    for b in backends().await? {
        let m = start(&b.url).await?;
        let a = m.client.create_node(&node("site-a", "10.1.0.0/16", 2)?).await?;
        let other = m.client.create_node(&node("site-b", "10.2.0.0/16", 2)?).await?;
        m.client.create_image(&image("img")).await?;
        let mut h = host("pc-b", "52:54:00:00:0b:01");
        h.node = Some("site-b".into());
        m.client.create_host(&h).await?;
        m.client.create_task(&task(TaskKind::Inventory, "pc-b")).await?;
        use reqwest::Method as M;
        let new_host = json!({"name": "evil", "macs": ["52:54:00:00:0e:01"]});
        for (token, status, code) in [
            (None, 401, "unauthorized"),
            (Some("fog_wrong"), 401, "unauthorized"),
            (Some(a.token.as_str()), 403, "forbidden"),
        ] {
            let (s, body) = m.raw(M::POST, "/api/v1/hosts", token, Some(new_host.clone())).await?;
            assert_eq!((s, body["code"].as_str()), (status, Some(code)), "{token:?}: {body}");
            let (s, _) = m.raw(M::GET, "/api/v1/hosts", token, None).await?;
            assert_eq!(s, status, "reads need a token too");
            let (s, _) = m.raw(M::DELETE, "/api/v1/nodes/site-b", token, None).await?;
            assert_eq!(s, status);
        }
        assert!(m.client.host("evil").await.is_err(), "nothing was created");
        // A node token does node things, for itself only.
        let (s, _) = m
            .raw(
                M::POST,
                "/api/v1/nodes/site-a/heartbeat",
                Some(&a.token),
                Some(json!({"images": ["img"]})),
            )
            .await?;
        assert_eq!(s, 200);
        let (s, _) = m
            .raw(
                M::POST,
                "/api/v1/nodes/site-b/heartbeat",
                Some(&a.token),
                Some(json!({})),
            )
            .await?;
        assert_eq!(s, 403);
        let (s, body) = m
            .raw(
                M::POST,
                "/api/v1/checkin",
                Some(&a.token),
                Some(json!({"mac": "52:54:00:00:0b:01"})),
            )
            .await?;
        assert_eq!(
            (s, body["code"].as_str()),
            (403, Some("forbidden")),
            "a host of another node: {body}"
        );
        let (s, body) = m
            .raw(
                M::POST,
                "/api/v1/checkin",
                Some(&other.token),
                Some(json!({"mac": "52:54:00:00:0b:01"})),
            )
            .await?;
        assert_eq!((s, body["slot"].as_str()), (200, Some("granted")), "{body}");
        let (s, tasks) = m
            .raw(M::GET, "/api/v1/nodes/site-b/tasks", Some(&other.token), None)
            .await?;
        assert_eq!((s, tasks.as_array().map(Vec::len)), (200, Some(1)));
        // Rotating a node's token revokes the old one.
        let rotated = m.client.node_token("site-a").await?;
        let (s, _) = m
            .raw(M::GET, "/api/v1/nodes/site-a/tasks", Some(&a.token), None)
            .await?;
        assert_eq!(s, 401);
        let (s, _) = m
            .raw(M::GET, "/api/v1/nodes/site-a/tasks", Some(&rotated.token), None)
            .await?;
        assert_eq!(s, 200);
        let copies = m.client.image_copies("img").await?;
        assert_eq!(
            copies.iter().map(|c| c.state.as_str()).collect::<Vec<_>>(),
            ["complete", "pending"]
        );
        let (s, _) = m.raw(M::GET, "/api/v1/health", None, None).await?;
        assert_eq!(s, 200);
        m.master.stop().await?;
        if b.url.starts_with("sqlite") {
            // Tokens are stored hashed: no token's text is in the database files.
            for entry in std::fs::read_dir(b.dir.path())? {
                let bytes = std::fs::read(entry?.path())?;
                for token in [&m.admin, &rotated.token, &other.token] {
                    assert!(!bytes.windows(token.len()).any(|w| w == token.as_bytes()));
                }
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn slot_limit_two_five_agents_fifo() -> TestResult {
    for b in backends().await? {
        let m = start(&b.url).await?;
        let site = m.client.create_node(&node("site-a", "10.1.0.0/16", 2)?).await?;
        m.client.create_image(&image("img")).await?;
        for i in 0..5 {
            let mut h = host(&format!("pc-{i}"), &format!("52:54:00:00:01:{i:02x}"));
            h.image = Some("img".into());
            h.address = Some(format!("10.1.0.{}", 10 + i).parse()?);
            m.client.create_host(&h).await?;
            let t = m.client.create_task(&task(TaskKind::Deploy, &h.name)).await?;
            assert_eq!(t.node.as_deref(), Some("site-a"), "picked by subnet");
        }
        let agent = Client::new(&m.base, Some(&site.token))?;
        let running = Arc::new(AtomicU32::new(0));
        let peak = Arc::new(AtomicU32::new(0));
        let grants = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut agents = Vec::new();
        for i in 0..5u32 {
            let (agent, running, peak, grants) = (agent.clone(), running.clone(), peak.clone(), grants.clone());
            agents.push(tokio::spawn(async move {
                let mut places = Vec::new();
                let check_in = CheckIn {
                    mac: format!("52:54:00:00:01:{i:02x}"),
                    uuid: None,
                    address: None,
                };
                let reply = loop {
                    let reply = agent.check_in(&check_in).await?;
                    match reply.slot {
                        SlotState::Granted => break reply,
                        SlotState::Waiting { place, active, max } => {
                            assert!(place >= 1 && active <= max && max == 2);
                            places.push(place);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(15)).await;
                };
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                grants
                    .lock()
                    .map_err(|_| Error::InvalidInput("poisoned".into()))?
                    .push(reply.task.ticket);
                for pct in [25.0, 50.0, 100.0] {
                    agent
                        .progress(
                            reply.task.id,
                            &ProgressReport {
                                percent: pct,
                                bytes: 1 << 20,
                                rate: 1 << 20,
                            },
                        )
                        .await?;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                running.fetch_sub(1, Ordering::SeqCst);
                let done = agent
                    .check_out(
                        reply.task.id,
                        &CheckOut {
                            ok: true,
                            reason: None,
                            inventory: None,
                            ..CheckOut::default()
                        },
                    )
                    .await?;
                assert_eq!(done.state, TaskState::Complete);
                Ok::<Vec<u32>, Error>(places)
            }));
        }
        // Watch the master's own view while the agents run.
        let watcher = {
            let c = m.client.clone();
            tokio::spawn(async move {
                let mut most = 0;
                for _ in 0..200 {
                    let filter = TaskFilter {
                        state: Some("in_progress".into()),
                        ..TaskFilter::default()
                    };
                    let n = c.tasks(&filter).await?.len();
                    most = most.max(n);
                    let open = c
                        .tasks(&TaskFilter {
                            open_only: true,
                            ..TaskFilter::default()
                        })
                        .await?;
                    if open.is_empty() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Ok::<usize, Error>(most)
            })
        };
        for a in agents {
            let places = a.await??;
            assert!(
                places.windows(2).all(|w| w[1] <= w[0]),
                "place in line never goes back: {places:?}"
            );
        }
        assert!(watcher.await?? <= 2, "the master showed more than 2 in progress");
        assert!(peak.load(Ordering::SeqCst) <= 2);
        let granted = grants.lock().map_err(|_| "poisoned")?.len();
        assert_eq!(granted, 5, "all five ran");
        // First come, first served, as the master recorded it: in ticket order, each task
        // started no earlier than the one before it in line.
        let mut starts = Vec::new();
        for t in m.client.tasks(&TaskFilter::default()).await? {
            let history = m.client.task_history(t.id).await?;
            let started = history.iter().find(|e| e.to == "in_progress").map(|e| e.at);
            starts.push((t.ticket.ok_or("no ticket")?, started.ok_or("never started")?));
        }
        starts.sort();
        assert!(
            starts.windows(2).all(|w| w[0].1 <= w[1].1),
            "slots out of line order: {starts:?}"
        );
        let all = m.client.tasks(&TaskFilter::default()).await?;
        assert!(all.iter().all(|t| t.state == TaskState::Complete));
        let history = m.client.task_history(all[0].id).await?;
        let path: Vec<&str> = history.iter().map(|e| e.to.as_str()).collect();
        assert_eq!(path.first(), Some(&"queued"));
        assert_eq!(path.last(), Some(&"complete"));
        assert!(path.contains(&"in_progress"));
        m.master.stop().await?;
    }
    Ok(())
}

#[tokio::test]
async fn task_rules_and_illegal_transitions() -> TestResult {
    for b in backends().await? {
        let m = start(&b.url).await?;
        let c = &m.client;
        c.create_node(&node("site-a", "10.1.0.0/16", 2)?).await?;
        let near = c.create_node(&node("site-a-lab", "10.1.5.0/24", 2)?).await?;
        c.create_group(&Group {
            name: "lab".into(),
            description: String::new(),
        })
        .await?;
        for i in 0..3 {
            let mut h = host(&format!("pc-{i}"), &format!("52:54:00:00:02:{i:02x}"));
            h.group = Some("lab".into());
            h.address = Some(format!("10.1.5.{i}").parse()?);
            c.create_host(&h).await?;
        }
        let (s, code, msg) = remote(c.create_task(&task(TaskKind::Deploy, "pc-0")).await);
        // Valid by the document, refused by a rule it cannot state (the host has no image): 422.
        assert_eq!(
            (s, code.as_str()),
            (422, "unprocessable"),
            "deploy without an image: {msg}"
        );
        let (s, _, _) = remote(c.create_task(&task(TaskKind::Multicast, "pc-0")).await);
        assert_eq!(s, 422);
        let t = c.create_task(&task(TaskKind::WipeFast, "pc-0")).await?;
        assert_eq!(
            t.node.as_deref(),
            Some("site-a-lab"),
            "the longest matching subnet wins"
        );
        let (s, code, _) = remote(c.create_task(&task(TaskKind::Inventory, "pc-0")).await);
        assert_eq!((s, code.as_str()), (409, "conflict"), "one open task per host");
        let (s, code, msg) = remote(
            c.progress(
                t.id,
                &ProgressReport {
                    percent: 5.0,
                    bytes: 0,
                    rate: 0,
                },
            )
            .await,
        );
        assert_eq!((s, code.as_str()), (409, "illegal_transition"));
        assert!(msg.contains("queued"), "{msg}");
        let (s, code, _) = remote(c.delete_host("pc-0").await);
        assert_eq!((s, code.as_str()), (409, "conflict"), "host busy");
        let report = c
            .group_task(
                "lab",
                &NewTask {
                    host: None,
                    ..task(TaskKind::Inventory, "")
                },
            )
            .await?;
        assert_eq!(report.created.len(), 2);
        assert_eq!(report.skipped.len(), 1);
        assert_eq!(report.skipped[0].host, "pc-0");
        assert!(report.created.iter().all(|t| t.group.as_deref() == Some("lab")));
        let cancelled = c.cancel_task(t.id).await?;
        assert_eq!(cancelled.state, TaskState::Cancelled);
        let (s, code, _) = remote(c.cancel_task(t.id).await);
        assert_eq!((s, code.as_str()), (409, "illegal_transition"));
        // An agent that fails reports why; the reason stays on the task and in its history.
        let agent = Client::new(&m.base, Some(&near.token))?;
        let r = agent
            .check_in(&CheckIn {
                mac: "52:54:00:00:02:01".into(),
                uuid: Some("4C4C4544-0042-3510-8051-B7C04F563299".into()),
                address: None,
            })
            .await?;
        assert_eq!(r.slot, SlotState::Granted);
        let failed = agent
            .check_out(
                r.task.id,
                &CheckOut {
                    ok: false,
                    reason: Some("disk /dev/sda not found".into()),
                    inventory: Some(json!({"cpu": "x"})),
                    ..CheckOut::default()
                },
            )
            .await?;
        assert_eq!(
            failed.state,
            TaskState::Failed {
                reason: "disk /dev/sda not found".into()
            }
        );
        let h1 = c.host("pc-1").await?;
        assert_eq!(
            h1.uuid.as_deref(),
            Some("4c4c4544-0042-3510-8051-b7c04f563299"),
            "learned at check-in"
        );
        assert_eq!(h1.inventory, json!({"cpu": "x"}));
        let history = c.task_history(r.task.id).await?;
        assert_eq!(
            history.last().and_then(|e| e.detail.as_deref()),
            Some("disk /dev/sda not found")
        );
        let (s, code, _) = remote(
            agent
                .check_in(&CheckIn {
                    mac: "52:54:00:00:09:09".into(),
                    uuid: None,
                    address: None,
                })
                .await,
        );
        assert_eq!((s, code.as_str()), (404, "not_found"), "unknown MAC");
        let (s, _, _) = remote(
            c.tasks(&TaskFilter {
                state: Some("sleeping".into()),
                ..TaskFilter::default()
            })
            .await,
        );
        assert_eq!(s, 400);
        m.master.stop().await?;
    }
    Ok(())
}

/// A deploy's layout: a host's is `fit` until changed; a task takes the one asked for, else its
/// host's, and keeps it; a value not `fit` or `exact` is refused naming the field, and so is a
/// layout for a task that deploys nothing.
#[tokio::test]
async fn deploy_layouts_come_from_the_task_else_the_host() -> TestResult {
    for b in backends().await? {
        let m = start(&b.url).await?;
        let c = &m.client;
        let admin = Some(m.admin.as_str());
        c.create_node(&node("site-a", "10.1.0.0/16", 4)?).await?;
        c.create_image(&image("win11")).await?;
        c.create_group(&Group {
            name: "lab".into(),
            description: String::new(),
        })
        .await?;
        for (name, mac) in [("pc-01", "52:54:00:00:07:01"), ("pc-02", "52:54:00:00:07:02")] {
            let (status, body) = m
                .raw(
                    reqwest::Method::POST,
                    "/api/v1/hosts",
                    admin,
                    Some(json!({"name": name, "macs": [mac], "image": "win11", "group": "lab", "node": "site-a"})),
                )
                .await?;
            assert_eq!((status, &body["layout"]), (200, &json!("fit")), "the default: {body}");
        }
        // PUT replaces the record: the layout given is kept.
        let mut pc1 = c.host("pc-01").await?;
        let mut body = serde_json::to_value(&pc1)?;
        body["layout"] = json!("exact");
        let (status, body) = m
            .raw(reqwest::Method::PUT, "/api/v1/hosts/pc-01", admin, Some(body))
            .await?;
        assert_eq!((status, &body["layout"]), (200, &json!("exact")), "{body}");
        pc1 = c.host("pc-01").await?;
        assert_eq!(pc1.layout, LayoutMode::Exact);
        let (status, body) = m
            .raw(
                reqwest::Method::POST,
                "/api/v1/hosts",
                admin,
                Some(json!({"name": "pc-03", "macs": ["52:54:00:00:07:03"], "layout": "sideways"})),
            )
            .await?;
        assert_eq!((status, body["code"].as_str()), (400, Some("invalid")), "{body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.contains("layout") && message.contains("sideways"), "{message}");

        // A task's own layout, over the host's; read back as created.
        let (status, created) = m
            .raw(
                reqwest::Method::POST,
                "/api/v1/tasks",
                admin,
                Some(json!({"kind": "deploy", "host": "pc-02", "layout": "exact"})),
            )
            .await?;
        assert_eq!((status, &created["layout"]), (200, &json!("exact")), "{created}");
        let id = created["id"].as_i64().ok_or("no id")?;
        let (status, read) = m
            .raw(reqwest::Method::GET, &format!("/api/v1/tasks/{id}"), admin, None)
            .await?;
        assert_eq!((status, &read["layout"]), (200, &json!("exact")), "{read}");
        c.cancel_task(id).await?;
        // None asked: the host's, settled at creation.
        let t = c.create_task(&task(TaskKind::Deploy, "pc-01")).await?;
        assert_eq!(t.layout, Some(LayoutMode::Exact), "pc-01's layout");
        c.cancel_task(t.id).await?;
        let t = c
            .create_task(&NewTask {
                layout: Some(LayoutMode::Fit),
                ..task(TaskKind::Deploy, "pc-01")
            })
            .await?;
        assert_eq!(t.layout, Some(LayoutMode::Fit), "the task's over the host's");
        c.cancel_task(t.id).await?;
        // A group deploy: each host's own.
        let report = c
            .group_task(
                "lab",
                &NewTask {
                    host: None,
                    ..task(TaskKind::Deploy, "")
                },
            )
            .await?;
        let mut layouts: Vec<(String, Option<LayoutMode>)> =
            report.created.iter().map(|t| (t.host.clone(), t.layout)).collect();
        layouts.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            layouts,
            [
                ("pc-01".to_string(), Some(LayoutMode::Exact)),
                ("pc-02".to_string(), Some(LayoutMode::Fit))
            ]
        );
        for t in &report.created {
            c.cancel_task(t.id).await?;
        }
        // Refused: an unknown name (400, the schema's enum), a layout for a task that deploys
        // nothing (422, a rule the schema cannot state).
        let (status, body) = m
            .raw(
                reqwest::Method::POST,
                "/api/v1/tasks",
                admin,
                Some(json!({"kind": "deploy", "host": "pc-02", "layout": "bogus"})),
            )
            .await?;
        assert_eq!((status, body["code"].as_str()), (400, Some("invalid")), "{body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.contains("layout") && message.contains("bogus"), "{message}");
        let (status, code, message) = remote(
            c.create_task(&NewTask {
                layout: Some(LayoutMode::Exact),
                ..task(TaskKind::Inventory, "pc-02")
            })
            .await,
        );
        assert_eq!((status, code.as_str()), (422, "unprocessable"), "{message}");
        assert!(message.contains("layout"), "{message}");
        let inventory = c.create_task(&task(TaskKind::Inventory, "pc-02")).await?;
        assert_eq!(inventory.layout, None, "only deploys carry a layout");
        m.master.stop().await?;
    }
    Ok(())
}

#[tokio::test]
async fn schedules_fire_and_quiet_waiters_lose_their_place() -> TestResult {
    for b in backends().await? {
        let clock = Arc::new(ManualClock::new(1_795_688_100_000));
        let control = Control::with_clock(Db::open(&b.url).await?, clock.clone(), 60_000).with_agent_timeout(120_000);
        let now = clock.now();
        control.create_node(&node("site-a", "10.1.0.0/16", 1)?).await?;
        control
            .create_group(&Group {
                name: "lab".into(),
                description: String::new(),
            })
            .await?;
        for i in 0..3 {
            let mut h = host(&format!("pc-{i}"), &format!("52:54:00:00:03:{i:02x}"));
            h.group = Some("lab".into());
            h.node = Some("site-a".into());
            control.create_host(h).await?;
        }
        let once = control
            .create_schedule(&Schedule {
                id: 0,
                when: When::At(now + 1000),
                task: task(TaskKind::Inventory, "pc-0"),
                group: None,
                next_run: None,
            })
            .await?;
        let nightly = control
            .create_schedule(&Schedule {
                id: 0,
                when: When::Cron("0 2 * * *".into()),
                task: NewTask {
                    host: None,
                    ..task(TaskKind::WipeFast, "")
                },
                group: Some("lab".into()),
                next_run: None,
            })
            .await?;
        assert!(
            control
                .create_schedule(&Schedule {
                    id: 0,
                    when: When::Cron("0 25 * * *".into()),
                    task: task(TaskKind::Inventory, "pc-0"),
                    group: None,
                    next_run: None
                })
                .await
                .is_err()
        );
        assert!(control.run_schedules(now).await?.created.is_empty(), "nothing due yet");
        let fired = control.run_schedules(now + 1000).await?;
        assert_eq!(fired.created.len(), 1);
        assert_eq!(fired.created[0].schedule, Some(once.id));
        let at_two = nightly.next_run.ok_or("no next run")?;
        let fired = control.run_schedules(at_two).await?;
        assert_eq!((fired.created.len(), fired.skipped.len()), (2, 1), "pc-0 is busy");
        let left = control.schedules().await?;
        assert_eq!(
            left.iter().find(|s| s.id == once.id).and_then(|s| s.next_run),
            None,
            "one-off retired"
        );
        assert_eq!(
            left.iter().find(|s| s.id == nightly.id).and_then(|s| s.next_run),
            Some(at_two + 86_400_000)
        );

        // One slot: pc-0 runs, pc-1 waits first, pc-2 second. pc-1 goes quiet past the timeout.
        let admin = fogcore::control::service::Caller::admin("token:test");
        let ci = |i: u32| CheckIn {
            mac: format!("52:54:00:00:03:{i:02x}"),
            uuid: None,
            address: None,
        };
        assert_eq!(control.check_in(&admin, &ci(0)).await?.slot, SlotState::Granted);
        assert_eq!(
            control.check_in(&admin, &ci(1)).await?.slot,
            SlotState::Waiting {
                place: 1,
                active: 1,
                max: 1
            }
        );
        assert_eq!(
            control.check_in(&admin, &ci(2)).await?.slot,
            SlotState::Waiting {
                place: 2,
                active: 1,
                max: 1
            }
        );
        clock.advance(45_000);
        assert_eq!(
            control.check_in(&admin, &ci(2)).await?.slot,
            SlotState::Waiting {
                place: 2,
                active: 1,
                max: 1
            }
        );
        clock.advance(30_000);
        assert_eq!(
            control.check_in(&admin, &ci(2)).await?.slot,
            SlotState::Waiting {
                place: 1,
                active: 1,
                max: 1
            },
            "pc-1 went quiet"
        );
        assert_eq!(
            control.check_in(&admin, &ci(1)).await?.slot,
            SlotState::Waiting {
                place: 2,
                active: 1,
                max: 1
            },
            "back of the line"
        );
        // pc-0 has not reported since its grant, 75 s ago; 50 s more and it is taken for dead:
        // its task fails and the slot goes to the head of the line.
        clock.advance(50_000);
        assert_eq!(control.check_in(&admin, &ci(2)).await?.slot, SlotState::Granted);
        let dead = control
            .tasks(&TaskFilter {
                host: Some("pc-0".into()),
                ..TaskFilter::default()
            })
            .await?;
        let reason = match &dead.first().ok_or("no task for pc-0")?.state {
            TaskState::Failed { reason } => reason.clone(),
            other => return Err(format!("pc-0's task is {other:?}, not failed").into()),
        };
        assert!(reason.contains("silent for 125 s"), "{reason}");
        control.close().await;
    }
    Ok(())
}

#[tokio::test]
async fn restart_keeps_state_and_migrations_are_idempotent() -> TestResult {
    let dir = tempfile::tempdir()?;
    let control = Arc::new(Control::new(Db::open_dir(dir.path()).await?));
    let (admin, file) = control
        .first_admin_token(Some(dir.path()))
        .await?
        .ok_or("no first token")?;
    let file = file.ok_or("no token file")?;
    assert_eq!(std::fs::read_to_string(&file)?.trim(), admin);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&file)?.permissions().mode() & 0o777, 0o600);
    let master = Master::start(control, "127.0.0.1:0".parse()?).await?;
    let c = Client::new(&format!("http://{}", master.addr()), Some(&admin))?;
    c.create_node(&node("site-a", "10.1.0.0/16", 2)?).await?;
    let mut h = host("pc-01", "52:54:00:00:04:01");
    h.node = Some("site-a".into());
    c.create_host(&h).await?;
    let t = c.create_task(&task(TaskKind::Inventory, "pc-01")).await?;
    c.check_in(&CheckIn {
        mac: "52:54:00:00:04:01".into(),
        uuid: None,
        address: None,
    })
    .await?;
    master.stop().await?;

    let db = Db::open_dir(dir.path()).await?;
    assert_eq!(db.migrate().await?, 0, "nothing left to migrate");
    assert_eq!(db.schema_versions().await?, [1, 2, 3, 4, 5, 6]);
    let control = Arc::new(Control::new(db));
    assert!(
        control.first_admin_token(Some(dir.path())).await?.is_none(),
        "no second admin token"
    );
    let master = Master::start(control, "127.0.0.1:0".parse()?).await?;
    let c = Client::new(&format!("http://{}", master.addr()), Some(&admin))?;
    assert_eq!(c.host("pc-01").await?.macs, ["52:54:00:00:04:01"]);
    let again = c.task(t.id).await?;
    assert!(matches!(again.state, TaskState::InProgress { .. }), "{:?}", again.state);
    let done = c
        .check_out(
            t.id,
            &CheckOut {
                ok: true,
                reason: None,
                inventory: None,
                ..CheckOut::default()
            },
        )
        .await?;
    assert_eq!(done.state, TaskState::Complete);
    master.stop().await?;
    Ok(())
}

#[tokio::test]
async fn openapi_documents_every_route() -> TestResult {
    let b = backends().await?.into_iter().next().ok_or("no backend")?;
    let m = start(&b.url).await?;
    let (status, doc) = m.raw(reqwest::Method::GET, "/api/v1/openapi.json", None, None).await?;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().ok_or("no paths")?;
    let mut documented = 0;
    let access: HashMap<(String, String), Access> = master::routes()
        .into_iter()
        .map(|r| ((r.method.as_str().to_lowercase(), r.path), r.access))
        .collect();
    for (path, ops) in paths {
        for (method, op) in ops.as_object().ok_or("no ops")? {
            documented += 1;
            assert!(op["summary"].as_str().is_some_and(|s| !s.is_empty()), "{method} {path}");
            let url = path.replace("{name}", "x").replace("{id}", "1");
            let m_ = reqwest::Method::from_bytes(method.to_uppercase().as_bytes())?;
            let (status, body) = m.raw(m_, &url, None, Some(json!({}))).await?;
            match access.get(&(method.clone(), path.clone())) {
                Some(Access::Public) => assert_eq!(status, 200, "{method} {path}"),
                Some(_) => {
                    assert_eq!(status, 401, "{method} {path} is served and needs a token");
                    assert_eq!(body["code"], "unauthorized");
                    assert_eq!(op["security"][0]["bearer"], json!([]));
                }
                None => panic!("{method} {path} documented but not in the route table"),
            }
        }
    }
    assert_eq!(documented, access.len());
    assert!(documented >= 30);
    // Bodies and replies are described by the types: fields, required ones, patterns, enums.
    let schemas = &doc["components"]["schemas"];
    let host = &schemas["Host"];
    assert_eq!(host["required"], json!(["name", "macs"]), "{host}");
    assert_eq!(host["additionalProperties"], false);
    assert!(host["properties"]["macs"]["items"]["pattern"].is_string(), "{host}");
    assert_eq!(host["properties"]["address"]["format"], "ipv4");
    assert!(
        schemas["TaskKind"].to_string().contains("wipe_fast"),
        "{}",
        schemas["TaskKind"]
    );
    for (record, field) in [("Host", "layout"), ("NewTask", "layout"), ("Task", "layout")] {
        let text = schemas[record]["properties"][field].to_string();
        assert!(
            text.contains("#/components/schemas/LayoutMode"),
            "{record}.{field}: {text}"
        );
    }
    let layouts = schemas["LayoutMode"].to_string();
    assert!(
        layouts.contains("\"fit\"") && layouts.contains("\"exact\""),
        "{layouts}"
    );
    assert!(
        schemas["ErrorBody"]["properties"]["code"]["enum"]
            .to_string()
            .contains("unprocessable")
    );
    // Every reference resolves.
    let text = doc.to_string();
    for reference in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = reference.split('"').next().unwrap_or_default();
        assert!(schemas.get(name).is_some(), "{name} is referred to and not defined");
    }
    // A route that is not in the table is not served.
    let (status, body) = m
        .raw(reqwest::Method::PATCH, "/api/v1/hosts/x", Some(&m.admin), None)
        .await?;
    assert_eq!((status, body["code"].as_str()), (405, Some("method_not_allowed")));
    m.master.stop().await?;
    Ok(())
}

/// Every route of the table, called by every kind of caller its access rule excludes, refuses
/// it (401 without a known token, 403 for a node's or a task's token on an admin route, or on
/// another node's records); the callers it allows get past the check.
#[tokio::test]
async fn every_route_refuses_the_callers_its_access_excludes() -> TestResult {
    let b = backends().await?.into_iter().next().ok_or("no backend")?;
    let m = start(&b.url).await?;
    let a = m.client.create_node(&node("site-a", "10.1.0.0/16", 2)?).await?;
    m.client.create_node(&node("site-b", "10.2.0.0/16", 2)?).await?;
    let mut ha = host("pc-a", "52:54:00:00:0a:01");
    ha.node = Some("site-a".into());
    m.client.create_host(&ha).await?;
    let mut hb = host("pc-b", "52:54:00:00:0b:01");
    hb.node = Some("site-b".into());
    m.client.create_host(&hb).await?;
    let task_a = m.client.create_task(&task(TaskKind::Inventory, "pc-a")).await?;
    let task_b = m.client.create_task(&task(TaskKind::Inventory, "pc-b")).await?;
    let task_token = fogcore::control::service::task_token(&a.token, "site-a", task_a.id);
    // Images of the store's routes: one placed on site-a, one on site-b only.
    for (name, on) in [("on-a", "site-a"), ("on-b", "site-b")] {
        let mut record = image(name);
        record.placement = Placement::Nodes {
            nodes: vec![on.to_string()],
        };
        m.client.create_image(&record).await?;
    }
    let with = |path: &str, name: &str, id: i64| {
        path.replace("{name}", name)
            .replace("{node}", name)
            .replace("{id}", &id.to_string())
    };
    let refused = |s: u16| s == 401 || s == 403;
    let routes = master::routes();
    assert!(routes.len() >= 30);
    for route in &routes {
        let what = format!("{} {}", route.method, route.path);
        let call = |token: Option<String>, path: String| {
            let method = route.method.clone();
            // Bodies that parse, so the refusal cannot come from the body.
            let path_ends = |tail: &str| route.path.ends_with(tail);
            let body = route.body.map(|_| {
                if path_ends("/copies/{node}") {
                    json!({"state": "complete"})
                } else if path_ends("/progress") {
                    json!({"percent": 1.0, "bytes": 0, "rate": 0})
                } else if path_ends("/checkout") {
                    json!({"ok": true})
                } else {
                    json!({})
                }
            });
            let m = &m;
            async move { m.raw(method, &path, token.as_deref(), body).await.map(|(s, _)| s) }
        };
        let plain = with(&route.path, "x", 999_999);
        for token in [None, Some("fog_unknown".to_string()), Some("fogt_1_00".to_string())] {
            let s = call(token.clone(), plain.clone()).await?;
            match route.access {
                Access::Public => assert_eq!(s, 200, "{what} is public ({token:?})"),
                _ => assert_eq!(s, 401, "{what} without a known token ({token:?})"),
            }
        }
        // Routes about one node's records: its name in the path, or one of its tasks.
        let names_node = route.path.starts_with("/api/v1/nodes/{name}") || route.path.contains("{node}");
        let names_task = route.path.starts_with("/api/v1/tasks/{id}/");
        let reads_image = route.path.starts_with("/api/v1/store/images/{name}") && route.method != reqwest::Method::PUT;
        let own = if names_node {
            with(&route.path, "site-a", task_a.id)
        } else if reads_image {
            with(&route.path, "on-a", 0)
        } else {
            plain.clone()
        };
        for (kind, token) in [("node", &a.token), ("task", &task_token)] {
            let s = call(Some(token.clone()), own.clone()).await?;
            match route.access {
                Access::User => assert_eq!(s, 403, "{what}: a {kind} token on an admin route"),
                Access::Public | Access::Node => assert!(!refused(s), "{what}: a {kind} token is let in ({s})"),
            }
            if route.access == Access::Node && (names_node || names_task) {
                let s = call(Some(token.clone()), with(&route.path, "site-b", task_b.id)).await?;
                assert_eq!(s, 403, "{what}: a {kind} token of site-a on site-b's records");
            }
            if reads_image {
                let s = call(Some(token.clone()), with(&route.path, "on-b", 0)).await?;
                assert_eq!(s, 403, "{what}: a {kind} token of site-a reading site-b's image");
            }
        }
        let s = call(Some(m.admin.clone()), plain.clone()).await?;
        assert!(!refused(s), "{what}: an admin is let in ({s})");
    }
    // A task token acts for its own task only, even of its own node.
    let other_a = {
        let mut h = host("pc-a2", "52:54:00:00:0a:02");
        h.node = Some("site-a".into());
        m.client.create_host(&h).await?;
        m.client.create_task(&task(TaskKind::Inventory, "pc-a2")).await?
    };
    let (s, _) = m
        .raw(
            reqwest::Method::POST,
            &format!("/api/v1/tasks/{}/checkout", other_a.id),
            Some(&task_token),
            Some(json!({"ok": true})),
        )
        .await?;
    assert_eq!(s, 403, "a task token on another task of its node");
    m.master.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_taken_port_is_an_error_naming_it() -> TestResult {
    let dir = tempfile::tempdir()?;
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr: SocketAddr = taken.local_addr()?;
    let control = Arc::new(Control::new(Db::open_dir(dir.path()).await?));
    let e = Master::start(control, addr)
        .await
        .err()
        .ok_or("started on a taken port")?;
    assert!(e.to_string().contains(&format!("port {}", addr.port())), "{e}");
    assert!(e.is_bad_input());
    let _ = Heartbeat::default();
    Ok(())
}

#[tokio::test]
async fn progress_reads_back_at_once_and_is_written_in_batches() -> TestResult {
    for b in backends().await? {
        let db = Db::open(&b.url).await?;
        let control = Control::new(db.clone());
        control.create_node(&node("site-a", "10.1.0.0/16", 1)?).await?;
        let mut ids = Vec::new();
        for i in 0..2 {
            let mut h = host(&format!("pc-{i}"), &format!("52:54:00:00:05:{i:02x}"));
            h.node = Some("site-a".into());
            control.create_host(h).await?;
            ids.push(
                control
                    .create_task(&task(TaskKind::Inventory, &format!("pc-{i}")))
                    .await?
                    .id,
            );
        }
        let admin = fogcore::control::service::Caller::admin("token:test");
        let ci = |i: u32| CheckIn {
            mac: format!("52:54:00:00:05:{i:02x}"),
            uuid: None,
            address: None,
        };
        assert_eq!(control.check_in(&admin, &ci(0)).await?.slot, SlotState::Granted);
        let waiting = control.check_in(&admin, &ci(1)).await?;
        assert!(matches!(waiting.slot, SlotState::Waiting { place: 1, .. }));
        // Asking again (answered from memory) keeps the place and the state.
        let again = control.check_in(&admin, &ci(1)).await?;
        assert_eq!(
            (again.slot, again.task.state),
            (waiting.slot, TaskState::WaitingForSlot)
        );
        let report = ProgressReport {
            percent: 40.0,
            bytes: 4096,
            rate: 100,
        };
        let running = TaskState::InProgress {
            percent: 40.0,
            bytes: 4096,
            rate: 100,
        };
        assert_eq!(control.progress(&admin, ids[0], &report).await?.state, running);
        assert_eq!(control.task(ids[0]).await?.state, running, "read back at once");
        let listed = control.tasks(&TaskFilter::default()).await?;
        assert_eq!(listed.iter().find(|t| t.id == ids[0]).map(|t| &t.state), Some(&running));
        control.flush().await?;
        assert_eq!(db.task(ids[0]).await?.state, running, "written");
        // A report written late never undoes the check-out.
        control.progress(&admin, ids[0], &report).await?;
        let out = CheckOut {
            ok: true,
            ..CheckOut::default()
        };
        assert_eq!(
            control.check_out(&admin, ids[0], &out).await?.state,
            TaskState::Complete
        );
        // What the batch writer would do next: write the dirty rows.
        control.flush().await?;
        assert_eq!(db.task(ids[0]).await?.state, TaskState::Complete);
        assert!(matches!(
            control.progress(&admin, ids[0], &report).await,
            Err(Error::IllegalTransition { .. })
        ));
        // The slot went free: the waiter gets it when it asks.
        assert_eq!(control.check_in(&admin, &ci(1)).await?.slot, SlotState::Granted);
        db.close().await;
    }
    Ok(())
}

/// Lists come a page at a time, by a keyset cursor: `limit` (default 100, at most 1000), `next`
/// to `after`; search and filters narrow them in the database; the client follows the cursors.
#[tokio::test]
async fn lists_come_in_pages_with_search_and_filters() -> TestResult {
    for b in backends().await? {
        let m = start(&b.url).await?;
        let c = &m.client;
        c.create_group(&Group {
            name: "lab".into(),
            description: String::new(),
        })
        .await?;
        c.create_image(&image("win11")).await?;
        for i in 0..250u32 {
            let mut h = host(
                &format!("pc-{i:03}"),
                &format!("52:54:00:00:{:02x}:{:02x}", i / 256, i % 256),
            );
            if i % 10 == 0 {
                h.group = Some("lab".into());
                h.image = Some("win11".into());
            }
            if i == 123 {
                h.inventory = json!({ "dmi": { "serial": "SN-XYZ-42" } });
            }
            c.create_host(&h).await?;
        }
        let get = |path: String| {
            let m = &m;
            async move { m.raw(reqwest::Method::GET, &path, Some(&m.admin), None).await }
        };
        // Pages of 100 by name, each `next` the last name, none after the last page.
        let mut names = Vec::new();
        let mut path = "/api/v1/hosts".to_string();
        let mut pages = 0;
        loop {
            let (status, page) = get(path.clone()).await?;
            assert_eq!(status, 200, "{path}: {page}");
            pages += 1;
            let items = page["items"].as_array().ok_or("no items")?;
            names.extend(items.iter().filter_map(|h| h["name"].as_str().map(str::to_string)));
            match page["next"].as_str() {
                Some(next) => {
                    assert_eq!(Some(next), names.last().map(String::as_str));
                    path = format!("/api/v1/hosts?after={next}");
                }
                None => break,
            }
        }
        assert_eq!((pages, names.len()), (3, 250));
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, names, "every host once, in name order");
        // The client follows the cursors.
        assert_eq!(c.hosts().await?.len(), 250);
        // Search: a MAC written with dashes and in capitals, a serial in the inventory, a name.
        let (_, page) = get("/api/v1/hosts?q=00-00-7B".into()).await?;
        assert_eq!(page["items"][0]["name"], "pc-123", "{page}");
        assert_eq!(page["items"].as_array().map(Vec::len), Some(1));
        let (_, page) = get("/api/v1/hosts?q=sn-xyz".into()).await?;
        assert_eq!(page["items"][0]["name"], "pc-123", "{page}");
        let (_, page) = get("/api/v1/hosts?q=pc-24&limit=5".into()).await?;
        assert_eq!(page["items"].as_array().map(Vec::len), Some(5), "{page}");
        assert_eq!(page["next"], "pc-244");
        // A LIKE wildcard is searched for as itself.
        let (_, page) = get("/api/v1/hosts?q=%25".into()).await?;
        assert_eq!(page["items"].as_array().map(Vec::len), Some(0), "{page}");
        // Filters.
        let (_, page) = get("/api/v1/hosts?group=lab&image=win11&limit=1000".into()).await?;
        assert_eq!(page["items"].as_array().map(Vec::len), Some(25), "{page}");
        assert_eq!(page["next"], Value::Null);
        // Limits outside 1..=1000 and names that are not names are refused, naming them.
        for bad in ["limit=0", "limit=1001", "group=.x", "limit=x"] {
            let (status, body) = get(format!("/api/v1/hosts?{bad}")).await?;
            assert_eq!((status, body["code"].as_str()), (400, Some("invalid")), "{bad}: {body}");
        }
        // Tasks: newest first, by id.
        for i in 0..5 {
            c.create_task(&task(TaskKind::Inventory, &format!("pc-{i:03}"))).await?;
        }
        let (_, page) = get("/api/v1/tasks?limit=2".into()).await?;
        let ids: Vec<i64> = page["items"]
            .as_array()
            .ok_or("no items")?
            .iter()
            .filter_map(|t| t["id"].as_i64())
            .collect();
        assert_eq!(ids.len(), 2);
        assert!(ids[0] > ids[1], "newest first: {ids:?}");
        let next = page["next"].as_str().ok_or("no next")?;
        let (_, rest) = get(format!("/api/v1/tasks?after={next}&kind=inventory")).await?;
        assert_eq!(rest["items"].as_array().map(Vec::len), Some(3), "{rest}");
        assert_eq!(
            c.tasks(&TaskFilter {
                limit: Some(4),
                ..TaskFilter::default()
            })
            .await?
            .len(),
            4
        );
        let (_, none) = get("/api/v1/tasks?kind=capture".into()).await?;
        assert_eq!(none["items"], json!([]));
        // Images page the same way.
        let (_, page) = get("/api/v1/images?q=WIN".into()).await?;
        assert_eq!(page["items"][0]["name"], "win11", "{page}");
        m.master.stop().await?;
    }
    Ok(())
}

/// Admin tokens are named, listed, revoked (refused at the very next request, though cached)
/// and expire; the last working one cannot be revoked. The audit log records every mutating
/// call and every refusal: who, what, on what, from where, how it ended.
#[tokio::test]
async fn tokens_are_revoked_at_once_expire_and_calls_are_audited() -> TestResult {
    for b in backends().await? {
        let clock = Arc::new(ManualClock::new(1_800_000_000_000));
        let control = Arc::new(Control::with_clock(
            Db::open(&b.url).await?,
            clock.clone(),
            fogcore::control::service::WAITER_TIMEOUT_MS,
        ));
        let admin = control.create_token(&admin_token_named("root"), None).await?.token;
        let master = Master::start(control, "127.0.0.1:0".parse()?).await?;
        let base = format!("http://{}", master.addr());
        let root = Client::new(&base, Some(&admin))?;

        let ci = root.create_token(&admin_token_named("ci")).await?;
        assert!(ci.token.starts_with("fog_"));
        let names: Vec<String> = root.tokens().await?.into_iter().map(|t| t.name).collect();
        assert_eq!(names, ["ci", "root"]);
        let e = root
            .create_token(&admin_token_named("ci"))
            .await
            .expect_err("a name taken");
        assert!(matches!(e, Error::Remote { status: 409, .. }), "{e}");

        // Used (and so cached), revoked, refused at the next request.
        let as_ci = Client::new(&base, Some(&ci.token))?;
        as_ci.create_host(&host("pc-1", "52:54:00:00:0c:01")).await?;
        root.revoke_token("ci").await?;
        let e = as_ci.host("pc-1").await.expect_err("revoked");
        assert!(matches!(e, Error::Remote { status: 401, .. }), "{e}");

        // An expiring token works until its time, then not.
        let short = root
            .create_token(&NewToken {
                name: "short".into(),
                role: None,
                expires_at: Some(clock.now() + 60_000),
            })
            .await?;
        let as_short = Client::new(&base, Some(&short.token))?;
        as_short.host("pc-1").await?;
        clock.advance(60_001);
        let e = as_short.delete_host("pc-1").await.expect_err("expired");
        assert!(
            matches!(&e, Error::Remote { status: 401, message, .. } if message.contains("expired")),
            "{e}"
        );
        assert!(root.host("pc-1").await.is_ok(), "the expired token deleted nothing");
        // The last working admin token stays.
        let e = root.revoke_token("root").await.expect_err("the last one");
        assert!(matches!(e, Error::Remote { status: 409, .. }), "{e}");

        // The audit log, newest first.
        let page = root.audit_page(&Default::default()).await?;
        let seen: Vec<(String, String, String, u16)> = page
            .items
            .iter()
            .map(|e| (e.actor.clone(), e.action.clone(), e.target.clone(), e.status))
            .collect();
        let expect = |actor: &str, action: &str, target: &str, status: u16| {
            let row = (actor.to_string(), action.to_string(), target.to_string(), status);
            assert!(seen.contains(&row), "{row:?} not in {seen:#?}");
        };
        expect("token:root", "POST /api/v1/tokens", "ci", 200);
        expect("token:root", "POST /api/v1/tokens", "ci", 409);
        expect("token:ci", "POST /api/v1/hosts", "pc-1", 200);
        expect("token:root", "DELETE /api/v1/tokens/{name}", "ci", 200);
        expect("anonymous", "GET /api/v1/hosts/{name}", "pc-1", 401);
        expect("anonymous", "DELETE /api/v1/hosts/{name}", "pc-1", 401);
        expect("token:root", "DELETE /api/v1/tokens/{name}", "root", 409);
        // Reads that succeed are not recorded; every entry names the caller's address.
        assert!(
            !seen
                .iter()
                .any(|(a, act, _, s)| a == "token:short" && act.starts_with("GET") && *s == 200)
        );
        assert!(
            page.items.iter().all(|e| e.address.as_deref() == Some("127.0.0.1")),
            "{page:?}"
        );
        let expired = page
            .items
            .iter()
            .find(|e| e.action == "DELETE /api/v1/hosts/{name}")
            .ok_or("no refused delete")?;
        assert!(expired.result.contains("expired"), "{expired:?}");
        // Filters: by actor, refusals only.
        let mine = root
            .audit_page(&fogcore::control::model::AuditQuery {
                actor: Some("token:ci".into()),
                ..Default::default()
            })
            .await?;
        assert_eq!(mine.items.len(), 1, "{mine:?}");
        let failed = root
            .audit_page(&fogcore::control::model::AuditQuery {
                failed: true,
                limit: Some(2),
                ..Default::default()
            })
            .await?;
        assert_eq!(failed.items.len(), 2);
        assert!(failed.items.iter().all(|e| e.status >= 400));
        assert!(failed.next.is_some(), "more refusals than a page of 2");
        // Calls without a known token are recorded ten a second; the rest are counted in the
        // next entry, so nobody fills the log without a token.
        clock.advance(1_000);
        let stranger = Client::new(&base, Some("fog_nobody"))?;
        for _ in 0..15 {
            assert!(stranger.host("pc-1").await.is_err());
        }
        clock.advance(1_000);
        assert!(stranger.host("pc-1").await.is_err());
        let anonymous = root
            .audit_page(&fogcore::control::model::AuditQuery {
                actor: Some("anonymous".into()),
                since: Some(clock.now() - 1_999),
                ..Default::default()
            })
            .await?;
        assert_eq!(anonymous.items.len(), 11, "{anonymous:?}");
        assert!(
            anonymous.items[0].result.contains("(5 more calls"),
            "{:?}",
            anonymous.items[0]
        );
        master.stop().await?;
    }
    Ok(())
}

/// A node's token reads the images placed on its node, and those an open task of its hosts
/// uses, and no other: the store's list leaves them out, their manifests are refused (403), and
/// the audit log records each refusal.
#[tokio::test]
async fn a_node_reads_only_the_images_placed_on_it() -> TestResult {
    use fogcore::imaging::capture::{CaptureOptions, capture};
    use fogcore::imaging::replica::{ImageStore, LocalStore};
    use fogcore::imaging::store::Store;
    use fogcore::progress::NoProgress;
    for b in backends().await? {
        let store = Store::open(b.dir.path().join("store"))?;
        let disk = b.dir.path().join("disk.raw");
        for (name, seed) in [("shared", 1), ("secret", 2)] {
            std::fs::write(&disk, crate::tools::pseudo_random(1 << 20, seed))?;
            capture(&store, &disk, name, &CaptureOptions::default(), &NoProgress)?;
        }
        let (master, admin) = crate::tools::start_master(&b.url, Some(store.clone())).await?;
        let base = format!("http://{}", master.addr());
        let root = Client::new(&base, Some(&admin))?;
        let site_a = root.create_node(&node("site-a", "10.1.0.0/16", 2)?).await?.token;
        root.create_node(&node("site-b", "10.2.0.0/16", 2)?).await?;
        for (name, on) in [("shared", "site-a"), ("secret", "site-b")] {
            let mut record = image(name);
            record.placement = Placement::Nodes {
                nodes: vec![on.to_string()],
            };
            root.create_image(&record).await?;
        }
        let http = crate::http_client();
        let get = |path: &str| {
            http.get(format!("{base}/api/v1/store{path}"))
                .bearer_auth(&site_a)
                .send()
        };
        let listed: Vec<String> = serde_json::from_slice(&get("/images").await?.bytes().await?)?;
        assert_eq!(listed, ["shared"]);
        let shared = get("/images/shared/manifest").await?;
        assert_eq!(shared.status(), 200);
        let mut stored = Vec::new();
        LocalStore::new(store.clone()).manifest_to("shared", &mut stored)?;
        assert_eq!(shared.bytes().await?.to_vec(), stored);
        let secret = get("/images/secret/manifest").await?;
        assert_eq!(secret.status(), 403);
        let body: Value = serde_json::from_slice(&secret.bytes().await?)?;
        assert!(body["message"].as_str().is_some_and(|m| m.contains("site-a")), "{body}");
        let delta = http
            .post(format!("{base}/api/v1/store/images/secret/manifest/delta"))
            .bearer_auth(&site_a)
            .body(Vec::new())
            .send()
            .await?;
        assert_eq!(delta.status(), 403);
        // A deploy of it to one of site-a's hosts opens it to site-a while the task is open.
        let mut h = host("pc-a", "52:54:00:00:0a:01");
        h.node = Some("site-a".into());
        root.create_host(&h).await?;
        let mut deploy = task(TaskKind::Deploy, "pc-a");
        deploy.image = Some("secret".into());
        let t = root.create_task(&deploy).await?;
        assert_eq!(get("/images/secret/manifest").await?.status(), 200);
        root.cancel_task(t.id).await?;
        assert_eq!(get("/images/secret/manifest").await?.status(), 403);
        // An admin reads everything; every refusal is in the audit log.
        let all = http
            .get(format!("{base}/api/v1/store/images"))
            .bearer_auth(&admin)
            .send()
            .await?
            .bytes()
            .await?;
        let all: Vec<String> = serde_json::from_slice(&all)?;
        assert_eq!(all.len(), 2);
        let refused = root
            .audit_page(&fogcore::control::model::AuditQuery {
                actor: Some("node:site-a".into()),
                failed: true,
                ..Default::default()
            })
            .await?;
        let seen: Vec<(&str, &str, u16)> = refused
            .items
            .iter()
            .map(|e| (e.action.as_str(), e.target.as_str(), e.status))
            .collect();
        assert_eq!(
            seen,
            [
                ("GET /api/v1/store/images/{name}/manifest", "secret", 403),
                ("POST /api/v1/store/images/{name}/manifest/delta", "secret", 403),
                ("GET /api/v1/store/images/{name}/manifest", "secret", 403),
            ]
        );
        master.stop().await?;
    }
    Ok(())
}

/// A master speaking HTTPS with a self-signed certificate (made on the first start, kept in its
/// data directory, the same after a restart): a client trusts it by its CA file or its pinned
/// fingerprint; the system's roots and a wrong pin refuse it with one clear error, and nothing
/// reaches the master (no host, no audit entry).
#[tokio::test]
async fn a_tls_master_is_trusted_by_its_ca_or_its_pin_and_nothing_else() -> TestResult {
    use fogcore::control::master::{MasterConfig, MasterTls};
    use fogcore::net::tls::{Fingerprint, Trust};
    let dir = tempfile::tempdir()?;
    let config = MasterConfig {
        listen: Some("127.0.0.1:0".parse()?),
        data_dir: Some(dir.path().to_path_buf()),
        tls: MasterTls::SelfSigned { names: Vec::new() },
        ..MasterConfig::default()
    };
    let started = master::serve(&config).await?;
    let tls = started.tls.clone().ok_or("no TLS")?;
    let admin = started.first_token.clone().ok_or("no first token")?.token;
    let url = started.master.url();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");

    let pinned = Client::with_trust(&url, Some(&admin), &Trust::Pinned(tls.fingerprint()))?;
    pinned.create_host(&host("pc-1", "52:54:00:00:0d:01")).await?;
    let by_ca = Client::with_trust(&url, Some(&admin), &Trust::CaFile(tls.cert_file().to_path_buf()))?;
    assert_eq!(by_ca.host("pc-1").await?.name, "pc-1");

    // Bad input (exit code 2, not worth a retry), naming why.
    let refused = |e: Error| match e {
        Error::Invalid {
            field: "master certificate",
            reason,
            ..
        } => reason,
        other => panic!("not a certificate refusal: {other}"),
    };
    let system = Client::with_trust(&url, Some(&admin), &Trust::System)?;
    let e = system.delete_host("pc-1").await.expect_err("an unknown issuer");
    assert!(refused(e).contains("certificate"), "says why");
    let wrong = Fingerprint::of(b"another certificate");
    let mismatched = Client::with_trust(&url, Some(&admin), &Trust::Pinned(wrong))?;
    let reason = refused(mismatched.delete_host("pc-1").await.expect_err("a wrong pin"));
    assert!(
        reason.contains(&format!("not the pinned {wrong}")) && reason.contains(&tls.fingerprint().to_string()),
        "{reason}"
    );
    // Plain HTTP to the TLS port gets nothing either.
    let plain = Client::new(&url.replace("https://", "http://"), Some(&admin))?;
    assert!(plain.delete_host("pc-1").await.is_err());
    assert_eq!(pinned.host("pc-1").await?.name, "pc-1", "nothing was deleted");
    let audit = pinned.audit_page(&Default::default()).await?;
    assert!(
        audit.items.iter().all(|e| !e.action.starts_with("DELETE")),
        "no refused call reached the master: {audit:?}"
    );

    // A restart keeps the certificate: pins stay valid.
    started.master.stop().await?;
    let again = master::serve(&config).await?;
    assert_eq!(again.tls.as_ref().map(|t| t.fingerprint()), Some(tls.fingerprint()));
    assert!(again.first_token.is_none());
    let pinned = Client::with_trust(&again.master.url(), Some(&admin), &Trust::Pinned(tls.fingerprint()))?;
    assert_eq!(pinned.host("pc-1").await?.name, "pc-1");
    again.master.stop().await?;
    Ok(())
}
