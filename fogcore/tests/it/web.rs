//! The web pages through the router (tower's `oneshot`), as a browser meets them: sign-in and
//! its cookie, CSRF and roles on every POST, pages read with an HTML parser, the live stream.
//! On SQLite, or on PostgreSQL when `FOG_TEST_POSTGRES_URL` names a server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode, header};
use fogcore::clock::ManualClock;
use fogcore::control::db::Db;
use fogcore::control::model::{AuditQuery, Host, LayoutMode, NewTask, NewUser, Role, TaskFilter, TaskKind};
use fogcore::control::service::{Control, SESSION_TTL_MS};
use http_body_util::BodyExt;
use scraper::{Html, Selector};
use tower::ServiceExt;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

const PASSWORD: &str = "correct horse battery";

struct Site {
    control: Arc<Control>,
    clock: Arc<ManualClock>,
    app: Router,
    _dir: tempfile::TempDir,
}

async fn site() -> Result<Site, Box<dyn std::error::Error + Send + Sync>> {
    let dir = tempfile::tempdir()?;
    // SQLite; PostgreSQL instead when `FOG_TEST_POSTGRES_URL` names a server (scripts/e2e).
    let url = match crate::control::fresh_postgres().await? {
        Some(url) => url,
        None => format!("sqlite://{}?mode=rwc", dir.path().join("fog.db").display()),
    };
    let db = Db::open(&url).await?;
    let clock = Arc::new(ManualClock::new(1_780_000_000_000));
    let control = Arc::new(Control::with_clock(db, clock.clone(), 120_000));
    for (name, role) in [("ada", Role::Admin), ("otto", Role::Operator), ("vera", Role::Viewer)] {
        control
            .create_user(&NewUser {
                name: name.into(),
                role,
                password: PASSWORD.into(),
            })
            .await?;
    }
    let app = fogcore::control::web::router(control.clone(), false, tokio_util::sync::CancellationToken::new());
    Ok(Site {
        control,
        clock,
        app,
        _dir: dir,
    })
}

/// A browser's session: its cookie and the CSRF token the pages carry.
struct Browser {
    cookie: String,
    csrf: String,
}

struct Answer {
    status: StatusCode,
    location: String,
    cookies: Vec<String>,
    headers: axum::http::HeaderMap,
    body: String,
}

fn from_peer(mut req: Request<Body>) -> Request<Body> {
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40_000))));
    req
}

async fn send(site: &Site, req: Request<Body>) -> Result<Answer, Box<dyn std::error::Error + Send + Sync>> {
    let response = site.app.clone().oneshot(from_peer(req)).await?;
    let status = response.status();
    let header_text = |name| {
        response
            .headers()
            .get(name)
            .and_then(|v: &header::HeaderValue| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let location = header_text(header::LOCATION);
    let cookies = response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_string))
        .collect();
    let headers = response.headers().clone();
    let body = String::from_utf8_lossy(&response.into_body().collect().await?.to_bytes()).into_owned();
    Ok(Answer {
        status,
        location,
        cookies,
        headers,
        body,
    })
}

fn form(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

async fn sign_in(site: &Site, user: &str, password: &str) -> Result<Answer, Box<dyn std::error::Error + Send + Sync>> {
    let req = Request::post("/login")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(form(&[
            ("user", user),
            ("password", password),
            ("next", "/hosts"),
        ])))?;
    send(site, req).await
}

impl Browser {
    async fn new(site: &Site, user: &str) -> Result<Browser, Box<dyn std::error::Error + Send + Sync>> {
        let answer = sign_in(site, user, PASSWORD).await?;
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
        let cookie = answer
            .cookies
            .iter()
            .find(|c| c.starts_with("fog_session="))
            .ok_or("no session cookie")?;
        let pair = cookie.split(';').next().unwrap_or_default().to_string();
        let mut browser = Browser {
            cookie: pair,
            csrf: String::new(),
        };
        let page = browser.get(site, "/account").await?;
        browser.csrf = select(&page.body, "input[name=csrf]")
            .first()
            .map(|(_, attr)| attr.clone())
            .ok_or("no CSRF token on the page")?;
        Ok(browser)
    }

    async fn get(&self, site: &Site, path: &str) -> Result<Answer, Box<dyn std::error::Error + Send + Sync>> {
        send(
            site,
            Request::get(path)
                .header(header::COOKIE, &self.cookie)
                .body(Body::empty())?,
        )
        .await
    }

    async fn post(
        &self,
        site: &Site,
        path: &str,
        pairs: &[(&str, &str)],
    ) -> Result<Answer, Box<dyn std::error::Error + Send + Sync>> {
        let mut all = vec![("csrf", self.csrf.as_str())];
        all.extend_from_slice(pairs);
        let req = Request::post(path)
            .header(header::COOKIE, &self.cookie)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(form(&all)))?;
        send(site, req).await
    }
}

/// Each element `css` selects: its text, and its `value` attribute.
fn select(html: &str, css: &str) -> Vec<(String, String)> {
    let doc = Html::parse_document(html);
    let Ok(selector) = Selector::parse(css) else {
        return Vec::new();
    };
    doc.select(&selector)
        .map(|e| {
            (
                e.text().collect::<String>().trim().to_string(),
                e.value().attr("value").unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn host_names(html: &str) -> Vec<String> {
    select(html, "table.hosts tbody td a")
        .into_iter()
        .map(|(t, _)| t)
        .collect()
}

async fn add_hosts(site: &Site, count: usize) -> TestResult {
    for i in 0..count {
        site.control
            .create_host(Host {
                inventory: serde_json::json!({"dmi": {"serial": format!("SN{i:04}")}}),
                ..Host::new(format!("lab-{i:02}"), vec![format!("52:54:00:00:00:{i:02x}")])
            })
            .await?;
    }
    Ok(())
}

#[tokio::test]
async fn sign_in_sets_a_strict_cookie_and_a_wrong_password_is_refused() -> TestResult {
    let site = site().await?;
    let wrong = sign_in(&site, "ada", "not the password").await?;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.cookies.iter().all(|c| !c.starts_with("fog_session=")));
    assert!(
        select(&wrong.body, "[role=alert]")[0]
            .0
            .contains("wrong user name or password")
    );

    // No page may be framed; scripts only from the site and the one inline script, by its hash.
    let policy = wrong
        .headers
        .get(header::CONTENT_SECURITY_POLICY)
        .ok_or("no CSP")?
        .to_str()?;
    assert!(
        policy.contains("frame-ancestors 'none'") && policy.contains("script-src 'self' 'sha256-"),
        "{policy}"
    );
    assert_eq!(
        wrong.headers.get(header::X_FRAME_OPTIONS).ok_or("no X-Frame-Options")?,
        "DENY"
    );

    let right = sign_in(&site, "ada", PASSWORD).await?;
    assert_eq!(right.status, StatusCode::SEE_OTHER);
    assert_eq!(right.location, "/hosts");
    let cookie = right
        .cookies
        .iter()
        .find(|c| c.starts_with("fog_session="))
        .ok_or("cookie")?;
    for part in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(part), "{cookie} lacks {part}");
    }

    // Failures past the free ones make the next try wait, even with the right password.
    for _ in 0..4 {
        sign_in(&site, "otto", "wrong one").await?;
    }
    let slowed = sign_in(&site, "otto", PASSWORD).await?;
    assert_eq!(slowed.status, StatusCode::UNAUTHORIZED);
    assert!(slowed.body.contains("too many failed sign-ins"), "{}", slowed.body);
    site.clock.advance(5_000);
    assert_eq!(sign_in(&site, "otto", PASSWORD).await?.status, StatusCode::SEE_OTHER);

    // Signing in and the refusals are in the audit log. A failed sign-in is anyone's call
    // (kept to ten a second), naming the user tried.
    let audit = site.control.audit_page(&AuditQuery::default()).await?.items;
    assert!(
        audit
            .iter()
            .any(|e| e.actor == "anonymous" && e.target == "ada" && e.status == 401)
    );
    assert!(
        audit
            .iter()
            .any(|e| e.actor == "user:ada" && e.action == "POST /login" && e.status == 303)
    );

    // After signing in, only a path of this site: never another site, however it is written.
    for next in [
        "//evil.example/",
        "/\t/evil.example/",
        "/\\evil.example",
        "https://evil.example/",
    ] {
        let req = Request::post("/login")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(form(&[
                ("user", "ada"),
                ("password", PASSWORD),
                ("next", next),
            ])))?;
        let answer = send(&site, req).await?;
        assert_eq!(
            (answer.status, answer.location.as_str()),
            (StatusCode::SEE_OTHER, "/"),
            "next={next:?}"
        );
    }

    // Guesses sent all at once are counted before the password is checked: they cannot all
    // pass the wait that the first few set off.
    site.clock.advance(600_000);
    let burst = (0..8).map(|_| sign_in(&site, "vera", "guess-guess"));
    let answers = futures_util::future::join_all(burst).await;
    let slowed = answers
        .iter()
        .filter(|a| a.as_ref().is_ok_and(|a| a.body.contains("too many failed sign-ins")))
        .count();
    assert!(slowed >= 4, "only {slowed} of 8 parallel guesses were slowed");
    assert_eq!(sign_in(&site, "vera", PASSWORD).await?.status, StatusCode::UNAUTHORIZED);
    Ok(())
}

#[tokio::test]
async fn pages_need_a_live_session() -> TestResult {
    let site = site().await?;
    let anonymous = send(&site, Request::get("/hosts?q=lab").body(Body::empty())?).await?;
    assert_eq!(anonymous.status, StatusCode::SEE_OTHER);
    assert_eq!(anonymous.location, "/login?next=%2Fhosts%3Fq%3Dlab");

    let browser = Browser::new(&site, "ada").await?;
    assert_eq!(browser.get(&site, "/hosts").await?.status, StatusCode::OK);
    site.clock.advance(SESSION_TTL_MS + 1);
    let expired = browser.get(&site, "/hosts").await?;
    assert_eq!(
        expired.status,
        StatusCode::SEE_OTHER,
        "an expired session is sent to sign in"
    );
    assert!(expired.location.starts_with("/login"));

    // Signing out ends the session on the server, not only in the browser.
    let again = Browser::new(&site, "ada").await?;
    assert_eq!(again.post(&site, "/logout", &[]).await?.status, StatusCode::SEE_OTHER);
    assert_eq!(again.get(&site, "/hosts").await?.status, StatusCode::SEE_OTHER);
    Ok(())
}

#[tokio::test]
async fn a_post_needs_the_csrf_token_and_the_role() -> TestResult {
    let site = site().await?;
    let admin = Browser::new(&site, "ada").await?;
    let forged = Browser {
        cookie: admin.cookie.clone(),
        csrf: "0".repeat(64),
    };
    let refused = forged
        .post(&site, "/hosts", &[("name", "pc-1"), ("macs", "52:54:00:aa:bb:01")])
        .await?;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(refused.body.contains("CSRF"));
    assert!(
        site.control.host("pc-1").await.is_err(),
        "a forged form changed nothing"
    );

    let viewer = Browser::new(&site, "vera").await?;
    let refused = viewer
        .post(&site, "/hosts", &[("name", "pc-1"), ("macs", "52:54:00:aa:bb:01")])
        .await?;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(refused.body.contains("needs the operator role"), "{}", refused.body);
    assert!(site.control.host("pc-1").await.is_err());
    // The viewer sees the hosts but no control that changes them.
    add_hosts(&site, 2).await?;
    let page = viewer.get(&site, "/hosts").await?;
    assert_eq!(host_names(&page.body), ["lab-00", "lab-01"]);
    assert!(select(&page.body, "form[action='/hosts/bulk']").is_empty());
    assert!(select(&page.body, "input[name=host]").is_empty());
    // Users and the audit log are the admin's.
    assert_eq!(viewer.get(&site, "/users").await?.status, StatusCode::FORBIDDEN);
    assert_eq!(
        Browser::new(&site, "otto").await?.get(&site, "/audit").await?.status,
        StatusCode::FORBIDDEN
    );

    let operator = Browser::new(&site, "otto").await?;
    let added = operator
        .post(&site, "/hosts", &[("name", "pc-1"), ("macs", "52-54-00-AA-BB-01")])
        .await?;
    assert_eq!(added.status, StatusCode::SEE_OTHER, "{}", added.body);
    assert_eq!(site.control.host("pc-1").await?.macs, ["52:54:00:aa:bb:01"]);
    let audit = site.control.audit_page(&AuditQuery::default()).await?.items;
    let entry = audit
        .iter()
        .find(|e| e.action == "POST /hosts")
        .ok_or("no audit entry")?;
    assert_eq!((entry.actor.as_str(), entry.target.as_str()), ("user:otto", "pc-1"));
    assert!(audit.iter().any(|e| e.actor == "user:vera" && e.status == 403));
    Ok(())
}

/// The host form shows and sets the layout (a value not offered is refused, the host unchanged);
/// a bulk deploy gives each host's task its host's layout, shown in the host's task table.
#[tokio::test]
async fn the_host_form_sets_the_layout_and_bulk_deploys_take_each_hosts() -> TestResult {
    let site = site().await?;
    add_hosts(&site, 2).await?;
    let operator = Browser::new(&site, "otto").await?;
    let page = operator.get(&site, "/hosts/lab-01").await?;
    let offered: Vec<String> = select(&page.body, "select[name=layout] option")
        .into_iter()
        .map(|(_, value)| value)
        .collect();
    assert_eq!(offered, ["fit", "exact"]);
    assert_eq!(select(&page.body, "select[name=layout] option[selected]")[0].1, "fit");
    let form = |layout| [("macs", "52:54:00:00:00:01"), ("layout", layout)];
    let refused = operator.post(&site, "/hosts/lab-01", &form("sideways")).await?;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.body);
    assert!(refused.body.contains("sideways"), "{}", refused.body);
    assert_eq!(site.control.host("lab-01").await?.layout, LayoutMode::Fit);
    let saved = operator.post(&site, "/hosts/lab-01", &form("exact")).await?;
    assert_eq!(saved.status, StatusCode::SEE_OTHER, "{}", saved.body);
    assert_eq!(site.control.host("lab-01").await?.layout, LayoutMode::Exact);
    let page = operator.get(&site, "/hosts/lab-01").await?;
    assert_eq!(select(&page.body, "select[name=layout] option[selected]")[0].1, "exact");

    site.control
        .create_image(&fogcore::control::model::Image {
            name: "win11".into(),
            description: String::new(),
            os: String::new(),
            size_bytes: 0,
            placement: fogcore::control::model::Placement::All,
        })
        .await?;
    let bulk = [
        ("action", "deploy"),
        ("host", "lab-00"),
        ("host", "lab-01"),
        ("image", "win11"),
        ("confirmed", "1"),
    ];
    let done = operator.post(&site, "/hosts/bulk", &bulk).await?;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    let mut layouts: Vec<(String, Option<LayoutMode>)> = site
        .control
        .tasks(&TaskFilter::default())
        .await?
        .into_iter()
        .map(|t| (t.host, t.layout))
        .collect();
    layouts.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        layouts,
        [
            ("lab-00".to_string(), Some(LayoutMode::Fit)),
            ("lab-01".to_string(), Some(LayoutMode::Exact))
        ]
    );
    let page = operator.get(&site, "/hosts/lab-01").await?;
    let cells: Vec<String> = select(&page.body, "table td")
        .into_iter()
        .map(|(text, _)| text)
        .collect();
    assert!(cells.iter().any(|c| c == "exact"), "{cells:?}");
    Ok(())
}

#[tokio::test]
async fn search_narrows_the_table_and_bulk_deploy_asks_first() -> TestResult {
    let site = site().await?;
    add_hosts(&site, 12).await?;
    let operator = Browser::new(&site, "otto").await?;
    let page = operator.get(&site, "/hosts?limit=5").await?;
    assert_eq!(host_names(&page.body).len(), 5);
    let next = select(&page.body, "a[rel=next]");
    assert_eq!(next.len(), 1, "a next page");
    // Search over the serial in the inventory, and over a MAC written with dashes.
    let found = operator.get(&site, "/hosts?q=SN0003").await?;
    assert_eq!(host_names(&found.body), ["lab-03"]);
    let found = operator.get(&site, "/hosts?q=52-54-00-00-00-0a").await?;
    assert_eq!(host_names(&found.body), ["lab-10"]);
    assert_eq!(select(&found.body, "#host-total")[0].0, "1");

    // "All matching": the filter travels with the form; the first POST only asks.
    let bulk = [
        ("action", "deploy"),
        ("all", "1"),
        ("f_q", "lab-0"),
        ("image", ""),
        ("group", ""),
    ];
    site.control
        .create_image(&fogcore::control::model::Image {
            name: "win11".into(),
            description: String::new(),
            os: String::new(),
            size_bytes: 0,
            placement: fogcore::control::model::Placement::All,
        })
        .await?;
    let mut with_image = bulk.to_vec();
    with_image[3] = ("image", "win11");
    let asked = operator.post(&site, "/hosts/bulk", &with_image).await?;
    assert_eq!(asked.status, StatusCode::OK);
    assert_eq!(
        select(&asked.body, "#question")[0].0,
        "Deploy image win11 to 10 hosts, erasing their disks?"
    );
    assert!(
        site.control.tasks(&TaskFilter::default()).await?.is_empty(),
        "nothing before the confirmation"
    );
    let mut confirmed = with_image.clone();
    confirmed.push(("confirmed", "1"));
    let done = operator.post(&site, "/hosts/bulk", &confirmed).await?;
    assert_eq!(done.status, StatusCode::SEE_OTHER);
    assert_eq!(done.location, "/tasks");
    let tasks = site.control.tasks(&TaskFilter::default()).await?;
    assert_eq!(tasks.len(), 10);
    assert!(
        tasks
            .iter()
            .all(|t| t.kind == TaskKind::Deploy && t.image.as_deref() == Some("win11"))
    );
    // The tasks page lists them, each row bound to its live event.
    let page = operator.get(&site, "/tasks").await?;
    let rows = select(&page.body, "#active-rows tr[sse-swap]");
    assert_eq!(rows.len(), 10);
    Ok(())
}

#[tokio::test]
async fn the_live_stream_pushes_a_new_task_row() -> TestResult {
    let site = site().await?;
    add_hosts(&site, 1).await?;
    let viewer = Browser::new(&site, "vera").await?;
    let req = Request::get("/tasks/live")
        .header(header::COOKIE, &viewer.cookie)
        .body(Body::empty())?;
    let response = site.app.clone().oneshot(from_peer(req)).await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    let task = site
        .control
        .create_task(&NewTask {
            kind: TaskKind::Inventory,
            host: Some("lab-00".into()),
            image: None,
            after: Default::default(),
            wake: false,
            layout: None,
        })
        .await?;
    let mut body = response.into_body();
    let mut text = String::new();
    let wanted = format!("event: task-{}", task.id);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !text.contains(&wanted) {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .map_err(|_| format!("no {wanted} within 20 s; got {text:?}"))?;
        let Some(frame) = frame else { break };
        if let Ok(data) = frame?.into_data() {
            text.push_str(&String::from_utf8_lossy(&data));
        }
    }
    assert!(text.contains(&wanted), "{text}");
    assert!(text.contains("lab-00") && text.contains("queued"), "{text}");
    // A viewer's rows carry no cancel control.
    assert!(!text.contains("/cancel"), "{text}");
    Ok(())
}

#[tokio::test]
async fn a_machine_registered_from_the_boot_menu_waits_for_approval() -> TestResult {
    use fogcore::control::api::Caller;
    use fogcore::control::model::Registration;
    let site = site().await?;
    site.control
        .create_group(&fogcore::control::model::Group {
            name: "lab".into(),
            description: String::new(),
        })
        .await?;
    let registered = site
        .control
        .register(
            &Caller::admin("token:test"),
            &Registration {
                macs: vec!["52:54:00:aa:00:07".into()],
                uuid: None,
                name: None,
                inventory: serde_json::json!({"dmi": {"vendor": "LENOVO", "product": "ThinkCentre M70q", "serial": "PC0XYZ42"}}),
            },
        )
        .await?;
    let name = registered.host.name;
    assert_eq!(name, "pc0xyz42", "named from its serial");
    let operator = Browser::new(&site, "otto").await?;
    let dashboard = operator.get(&site, "/").await?;
    assert!(
        select(&dashboard.body, ".alert")
            .iter()
            .any(|(text, _)| text.contains("1 new machines registered")),
        "{}",
        dashboard.body
    );
    let waiting = operator.get(&site, "/registrations").await?;
    let rows = select(&waiting.body, "tbody tr td:nth-child(3)");
    assert_eq!(rows[0].0, "LENOVO · ThinkCentre M70q · PC0XYZ42");
    let approved = operator
        .post(
            &site,
            &format!("/registrations/{name}/approve"),
            &[("group", "lab"), ("image", "")],
        )
        .await?;
    assert_eq!(approved.status, StatusCode::SEE_OTHER, "{}", approved.body);
    assert_eq!(site.control.host(&name).await?.group.as_deref(), Some("lab"));
    assert!(!site.control.is_pending(&name).await?);
    let waiting = operator.get(&site, "/registrations").await?;
    assert!(select(&waiting.body, "td.empty")[0].0.contains("No machine waits"));
    Ok(())
}
