//! The web front end at fleet size (run by `benches/web.sh`).
//!
//! 1. Pages: a master's data directory with 20,000 hosts (added through the service, as the API
//!    adds them) and 200,000 finished tasks over the last 30 days (written straight into its
//!    database, in one transaction: history to read, not a test of the writes); `fog master`
//!    serves it; a signed-in browser's requests are timed (sequential, full body) on the pages an
//!    admin opens: the host list, a later page, searches by name, MAC and serial, the tasks page
//!    with its history, the dashboard. Reported: the first view's time, p50 and p95 of the next
//!    50 (after 4 more to warm up), bytes per page.
//! 2. Live progress: 500 tasks in progress, each reporting every 2 s through the node API
//!    (250 reports/s), first with no page open, then with 10 task pages open on the SSE stream.
//!    Reported: updates per second the pages receive, and the master's CPU (of one core) for the
//!    pages: the difference between the two windows.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fogcore::control::db::Db;
use fogcore::control::model::{Group, Host, Image, NewUser, Node, Placement, Role};
use fogcore::control::service::Control;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const PASSWORD: &str = "bench-password-1";

struct Args {
    fog: PathBuf,
    hosts: u32,
    history: u32,
    busy: u32,
    pages: u32,
    window: u64,
    json: Option<PathBuf>,
}

fn parse_args() -> Result<Args, BoxError> {
    let mut args = Args {
        fog: PathBuf::from("target/release/fog"),
        hosts: 20_000,
        history: 200_000,
        busy: 500,
        pages: 10,
        window: 20,
        json: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--fog" => args.fog = value.into(),
            "--hosts" => args.hosts = value.parse()?,
            "--history" => args.history = value.parse()?,
            "--busy" => args.busy = value.parse()?,
            "--pages" => args.pages = value.parse()?,
            "--window" => args.window = value.parse::<u64>()?.clamp(5, 600),
            "--json" => args.json = Some(value.into()),
            _ => return Err(format!("unknown flag {flag}").into()),
        }
    }
    if args.busy > args.hosts {
        return Err("--busy cannot be above --hosts".into());
    }
    Ok(args)
}

fn mac(i: u32) -> String {
    let b = i.to_be_bytes();
    format!("52:54:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3])
}

/// Fills the data directory: users, a node, images, groups, hosts through the service; the
/// history straight into the database. Returns the node's token.
async fn seed(dir: &std::path::Path, args: &Args) -> Result<String, BoxError> {
    let db = Db::open_dir(dir).await?;
    let control = Control::new(db);
    control
        .create_user(&NewUser {
            name: "bench".into(),
            role: Role::Admin,
            password: PASSWORD.into(),
        })
        .await?;
    let node = control
        .create_node(&Node {
            name: "site-a".into(),
            url: "http://127.0.0.1:1".into(),
            subnets: Vec::new(),
            max_clients: args.busy.max(1),
            enabled: true,
            last_seen: None,
        })
        .await?;
    for name in ["win11", "ubuntu-24.04"] {
        control
            .create_image(&Image {
                name: name.into(),
                description: String::new(),
                os: String::new(),
                size_bytes: 40_000_000_000,
                placement: Placement::All,
            })
            .await?;
    }
    for g in 0..20 {
        control
            .create_group(&Group {
                name: format!("room-{g:02}"),
                description: format!("Lab room {g}"),
            })
            .await?;
    }
    let started = Instant::now();
    for i in 0..args.hosts {
        control
            .create_host(Host {
                image: Some("win11".into()),
                group: Some(format!("room-{:02}", i % 20)),
                node: Some("site-a".into()),
                inventory: serde_json::json!({
                    "dmi": {"vendor": "Dell Inc.", "product": "OptiPlex 7090", "serial": format!("SN{i:07}")},
                    "memory_bytes": 17_179_869_184u64,
                }),
                ..Host::new(format!("host-{i:05}"), vec![mac(i)])
            })
            .await?;
    }
    eprintln!(
        "seeded {} hosts in {:.1} s",
        args.hosts,
        started.elapsed().as_secs_f64()
    );
    control.close().await;

    // The history: finished tasks over the last 30 days, each with its last state change.
    let started = Instant::now();
    let url = format!("sqlite://{}", dir.join("fog.db").display());
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await?;
    let mut tx = pool.begin().await?;
    let now = fogcore::clock::now_ms();
    for i in 0..args.history {
        let at = now - i64::from(i) * 30 * 86_400_000 / i64::from(args.history.max(1));
        let state = if i % 10 == 0 { "failed" } else { "complete" };
        let host = format!("host-{:05}", i % args.hosts.max(1));
        let row = sqlx::query(
            "INSERT INTO tasks (kind, host, image, node, after_task, wake, state, percent, bytes, rate, reason,
                created_at, updated_at) VALUES ('deploy', $1, 'win11', 'site-a', 'reboot', 0, $2, 100, 0, 0, $3, $4, $5)
             RETURNING id",
        )
        .bind(&host)
        .bind(state)
        .bind((state == "failed").then_some("disk not found"))
        .bind(at - 600_000)
        .bind(at)
        .fetch_one(&mut *tx)
        .await?;
        let id: i64 = sqlx::Row::try_get(&row, "id")?;
        sqlx::query(
            "INSERT INTO task_events (task, at, from_state, to_state, detail) VALUES ($1, $2, 'in_progress', $3, NULL)",
        )
        .bind(id)
        .bind(at)
        .bind(state)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    pool.close().await;
    eprintln!(
        "wrote {} finished tasks in {:.1} s",
        args.history,
        started.elapsed().as_secs_f64()
    );
    Ok(node.token)
}

struct Master {
    child: Child,
    url: String,
}

impl Drop for Master {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_master(fog: &std::path::Path, dir: &std::path::Path) -> Result<Master, BoxError> {
    use std::io::BufRead;
    let mut child = Command::new(fog)
        .arg("master")
        .arg("--data-dir")
        .arg(dir)
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .env_remove("FOG_DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(dir.join("master.log"))?))
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", fog.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("fog master: listening on ") {
                let _ = tx.send(url.trim().to_string());
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(60))
        .map_err(|_| "fog master did not say where it listens within 60 s")?;
    Ok(Master { child, url })
}

/// CPU seconds (user + system) of a process, from /proc.
fn cpu_seconds(pid: u32) -> Result<f64, BoxError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').ok_or("bad /proc stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11).ok_or("stat")?.parse::<f64>()? + fields.get(12).ok_or("stat")?.parse::<f64>()?;
    // SAFETY: sysconf reads a constant of the system; it has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Ok(ticks / hz.max(1) as f64)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn sign_in(http: &reqwest::Client, base: &str) -> Result<String, BoxError> {
    let response = http
        .post(format!("{base}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("user=bench&password={PASSWORD}&next=%2F"))
        .send()
        .await?;
    let cookie = response
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("fog_session="))
        .ok_or("sign-in set no session cookie")?;
    Ok(cookie.split(';').next().unwrap_or_default().to_string())
}

async fn run(args: &Args) -> Result<serde_json::Value, BoxError> {
    let dir = tempfile::Builder::new().prefix("fog-web-load.").tempdir()?;
    let node_token = seed(dir.path(), args).await?;
    let master = start_master(&args.fog, dir.path())?;
    let base = master.url.clone();
    let http = fogcore::net::tls::http_client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let cookie = sign_in(&http, &base).await?;

    // ---- pages
    let pages = [
        ("hosts, first page", "/hosts".to_string()),
        ("hosts, page 100 (keyset)", "/hosts?after=host-04950".to_string()),
        ("hosts, 1000 rows", "/hosts?limit=1000".to_string()),
        ("search by name", "/hosts?q=host-1234".to_string()),
        ("search by MAC", format!("/hosts?q={}", mac(12_345).replace(':', "-"))),
        ("search by serial", "/hosts?q=SN0012345".to_string()),
        ("filter by group", "/hosts?group=room-07".to_string()),
        ("tasks and history", "/tasks".to_string()),
        ("history, failed, 7 days", "/tasks?state=failed&days=7".to_string()),
        ("dashboard", "/".to_string()),
    ];
    let mut page_rows = Vec::new();
    println!(
        "{:<28} {:>9} {:>9} {:>9} {:>10}",
        "page", "first ms", "p50 ms", "p95 ms", "bytes"
    );
    for (name, path) in &pages {
        let mut times = Vec::new();
        let mut first = 0.0;
        let mut bytes = 0;
        for round in 0..55 {
            let started = Instant::now();
            let response = http
                .get(format!("{base}{path}"))
                .header("cookie", &cookie)
                .send()
                .await?;
            let status = response.status();
            let body = response.bytes().await?;
            let elapsed = started.elapsed().as_secs_f64() * 1000.0;
            if !status.is_success() {
                return Err(format!("{path}: {status}").into());
            }
            bytes = body.len();
            if round == 0 {
                first = elapsed;
            } else if round >= 5 {
                times.push(elapsed);
            }
        }
        times.sort_by(f64::total_cmp);
        let (p50, p95) = (percentile(&times, 0.5), percentile(&times, 0.95));
        println!("{name:<28} {first:>9.1} {p50:>9.1} {p95:>9.1} {bytes:>10}");
        page_rows.push(
            serde_json::json!({"page": name, "path": path, "first_ms": first, "p50_ms": p50, "p95_ms": p95, "bytes": bytes}),
        );
    }

    // ---- live progress: tasks in progress, reporting every 2 s
    // The tasks come through the API with the first admin token; the node's token checks the
    // agents in (a slot each) and reports their progress.
    let mut ids = Vec::new();
    let node_auth = format!("Bearer {node_token}");
    let admin_token = std::fs::read_to_string(dir.path().join("admin-token"))?
        .trim()
        .to_string();
    for i in 0..args.busy {
        let body = serde_json::json!({"kind": "inventory", "host": format!("host-{i:05}")});
        let answer = http
            .post(format!("{base}/api/v1/tasks"))
            .bearer_auth(&admin_token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?;
        let task: serde_json::Value = serde_json::from_slice(&answer)?;
        ids.push(task["id"].as_i64().ok_or("no task id")?);
        http.post(format!("{base}/api/v1/checkin"))
            .header("authorization", &node_auth)
            .header("content-type", "application/json")
            .body(serde_json::json!({"mac": mac(i)}).to_string())
            .send()
            .await?
            .error_for_status()?;
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reports = Arc::new(AtomicU64::new(0));
    let reporter = {
        let (http, base, stop, reports, ids) = (http.clone(), base.clone(), stop.clone(), reports.clone(), ids.clone());
        tokio::spawn(async move {
            // Each task every 2 s, spread evenly: one report every 2 s / N.
            let mut tick = tokio::time::interval(Duration::from_secs_f64(2.0 / ids.len().max(1) as f64));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let id = ids[(n % ids.len() as u64) as usize];
                let round = n / ids.len() as u64;
                let percent = (round as f64 * 0.5) % 100.0;
                let (http, base, auth, reports) = (http.clone(), base.clone(), node_auth.clone(), reports.clone());
                tokio::spawn(async move {
                    let sent = http
                        .post(format!("{base}/api/v1/tasks/{id}/progress"))
                        .header("authorization", auth)
                        .header("content-type", "application/json")
                        .body(
                            serde_json::json!({"percent": percent, "bytes": round * 100_000_000, "rate": 90_000_000 + n % 1000})
                                .to_string(),
                        )
                        .send()
                        .await;
                    if sent.is_ok_and(|r| r.status().is_success()) {
                        reports.fetch_add(1, Ordering::Relaxed);
                    }
                });
                n += 1;
            }
        })
    };
    let pid = master.child.id();
    let window = Duration::from_secs(args.window);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (cpu0, reports0, t0) = (cpu_seconds(pid)?, reports.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(window).await;
    let idle_cpu = (cpu_seconds(pid)? - cpu0) / t0.elapsed().as_secs_f64();
    let idle_reports = (reports.load(Ordering::Relaxed) - reports0) as f64 / t0.elapsed().as_secs_f64();

    let events = Arc::new(AtomicU64::new(0));
    let mut streams = Vec::new();
    for _ in 0..args.pages {
        let response = http
            .get(format!("{base}/tasks/live"))
            .header("cookie", &cookie)
            .send()
            .await?
            .error_for_status()?;
        let events = events.clone();
        streams.push(tokio::spawn(async move {
            let mut response = response;
            while let Ok(Some(chunk)) = response.chunk().await {
                let text = String::from_utf8_lossy(&chunk);
                events.fetch_add(text.matches("event: task-").count() as u64, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (cpu1, events1, reports1, t1) = (
        cpu_seconds(pid)?,
        events.load(Ordering::Relaxed),
        reports.load(Ordering::Relaxed),
        Instant::now(),
    );
    tokio::time::sleep(window).await;
    let elapsed = t1.elapsed().as_secs_f64();
    let open_cpu = (cpu_seconds(pid)? - cpu1) / elapsed;
    let updates = (events.load(Ordering::Relaxed) - events1) as f64 / elapsed;
    let open_reports = (reports.load(Ordering::Relaxed) - reports1) as f64 / elapsed;
    stop.store(true, Ordering::Relaxed);
    let _ = reporter.await;
    for s in streams {
        s.abort();
    }
    println!();
    println!(
        "live progress: {} tasks reporting every 2 s, {} pages open on /tasks",
        args.busy, args.pages
    );
    println!("  progress reports/s        {idle_reports:>8.1} (no page) {open_reports:>8.1} (pages open)");
    println!(
        "  master CPU, % of one core {:>8.1} (no page) {:>8.1} (pages open)",
        idle_cpu * 100.0,
        open_cpu * 100.0
    );
    println!(
        "  SSE row updates/s         {updates:>8.1} in all ({:.1} per page)",
        updates / f64::from(args.pages.max(1))
    );
    println!(
        "  CPU for the pages         {:>8.1} % of one core (goal: under 10)",
        (open_cpu - idle_cpu) * 100.0
    );
    Ok(serde_json::json!({
        "hosts": args.hosts, "history": args.history, "pages": page_rows,
        "live": {"tasks": args.busy, "pages": args.pages, "reports_per_s": open_reports,
                 "updates_per_s": updates, "cpu_no_page": idle_cpu, "cpu_pages_open": open_cpu,
                 "cpu_for_pages": open_cpu - idle_cpu},
    }))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("web_load: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match run(&args).await {
        Ok(report) => {
            if let Some(path) = &args.json
                && let Err(e) = std::fs::write(path, report.to_string())
            {
                eprintln!("web_load: {}: {e}", path.display());
                return std::process::ExitCode::FAILURE;
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("web_load: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
