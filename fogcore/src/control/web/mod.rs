//! The web front end on the master's listener, under `/` beside the REST API: server-rendered
//! HTML (askama templates, checked at compile time, in `templates/`), htmx and its SSE extension
//! (compiled in from `assets/`; nothing fetched at run time) for partial updates, one CSS file,
//! charts drawn as SVG on the server.
//!
//! Every page calls the same [`Control`] functions as `/api/v1`, never the HTTP API. Every control
//! is a real link or form first; htmx only makes some partial. People sign in with a user name
//! and password ([`Control::sign_in`]); the session cookie is HttpOnly, SameSite=Strict and Secure
//! under TLS; every POST carries the session's CSRF token; state changes only by POST; the role a
//! page needs is the API's ([`role_needed`]); every POST goes to the audit log as `user:NAME`.
//!
//! Here: the router, the guard in front of every page (session, role, CSRF, audit), forms, the
//! layout and errors. Pages: `dashboard`, `hosts`, `fleet` (registrations, groups, images,
//! nodes), `tasks` (with the live stream in `live`), `people` (sign-in, users, own account).

mod dashboard;
mod fleet;
mod hosts;
mod live;
mod people;
mod tasks;
mod view;

use std::net::SocketAddr;
use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::extract::{ConnectInfo, FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;

use crate::control::api::{constant_time_eq, role_needed, status_of};
use crate::control::model::{AuditEntry, Role};
use crate::control::service::{Control, Session};
use crate::error::Error;

/// The session cookie's name.
const SESSION_COOKIE: &str = "fog_session";
/// A one-time message for the next page (after a redirect).
const NOTICE_COOKIE: &str = "fog_notice";
/// The largest form a page takes.
const FORM_LIMIT: usize = 1024 * 1024;

/// What every page handler shares.
struct Web {
    control: Arc<Control>,
    /// Cookies get `Secure` (the master speaks HTTPS).
    secure: bool,
    live: live::Feed,
    past_days: std::sync::Mutex<dashboard::PastDays>,
}

type App = Arc<Web>;

/// The web pages, for the master's listener (`secure`: it speaks HTTPS). Cancelling `stop` ends
/// the pages' live streams (the master's shutdown).
pub fn router(control: Arc<Control>, secure: bool, stop: tokio_util::sync::CancellationToken) -> Router {
    let web = Arc::new(Web {
        live: live::Feed::new(Arc::downgrade(&control), stop),
        control,
        secure,
        past_days: std::sync::Mutex::new(dashboard::PastDays::default()),
    });
    let pages = Router::new()
        .merge(dashboard::routes())
        .merge(hosts::routes())
        .merge(fleet::routes())
        .merge(tasks::routes())
        .merge(people::routes())
        .route_layer(middleware::from_fn_with_state(web.clone(), guard));
    Router::new()
        .merge(pages)
        .merge(people::sign_in_routes())
        .route("/assets/{file}", get(asset))
        .layer(middleware::from_fn(page_headers))
        .with_state(web)
}

/// The one script of our own, inline in every page: a form with `data-confirm` asks first
/// (delete, revoke: bulk actions and cancels confirm on a page of their own), and a
/// `data-tick-all` box ticks every row of its form.
const PAGE_SCRIPT: &str = r#"document.addEventListener("submit", e => { const q = e.target.dataset.confirm; if (q && !confirm(q)) e.preventDefault(); });
document.addEventListener("click", e => { const all = e.target.closest("[data-tick-all]"); if (all) for (const b of all.form.querySelectorAll("input[name=host]")) b.checked = all.checked; });"#;

/// The pages' Content-Security-Policy: scripts from this site and the inline one above only (by
/// its SHA-256), nothing framed, forms posted here only. Styles may be inline (progress bars'
/// widths, htmx's indicator style).
static CONTENT_POLICY: std::sync::LazyLock<HeaderValue> = std::sync::LazyLock::new(|| {
    use base64::Engine;
    let hash = ring::digest::digest(&ring::digest::SHA256, PAGE_SCRIPT.as_bytes());
    let hash = base64::engine::general_purpose::STANDARD.encode(hash.as_ref());
    HeaderValue::from_str(&format!(
        "default-src 'self'; script-src 'self' 'sha256-{hash}'; style-src 'self' 'unsafe-inline'; \
         img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("default-src 'self'; frame-ancestors 'none'"))
});

/// Headers on every page: the policy above, no framing, no type sniffing, no address sent to
/// other sites.
async fn page_headers(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, CONTENT_POLICY.clone());
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    response
}

/// The compiled-in files: htmx and its SSE extension (see `assets/README.md`), the style sheet.
async fn asset(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    let (body, kind): (&'static [u8], &str) = match file.as_str() {
        "htmx.min.js" => (include_bytes!("assets/htmx.min.js"), "text/javascript"),
        "htmx-ext-sse.js" => (include_bytes!("assets/htmx-ext-sse.js"), "text/javascript"),
        "fog.css" => (include_bytes!("assets/fog.css"), "text/css"),
        _ => return not_found_page(&format!("/assets/{file}")),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

/// What the guard found out about a request, for the handler.
#[derive(Debug, Clone)]
struct Ctx {
    session: Session,
    /// The message a redirect left for this page.
    notice: Option<String>,
}

impl Ctx {
    fn layout(&self, nav: &'static str) -> Layout {
        Layout {
            user: self.session.user.name.clone(),
            role: self.session.user.role,
            csrf: self.session.csrf.clone(),
            nav,
            notice: self.notice.clone(),
        }
    }

    fn user(&self) -> &crate::control::model::User {
        &self.session.user
    }
}

/// What a handler tells the guard for the audit log: what the POST acted on, how it ended.
#[derive(Debug, Clone)]
struct Outcome {
    target: String,
    result: String,
}

/// The role a page needs: the API's rule for the same path, but a person's own account and
/// signing out are anyone's.
fn page_role(method: &Method, path: &str) -> Role {
    if path == "/logout" || path == "/account" || path.starts_with("/account/") {
        Role::Viewer
    } else {
        role_needed(method, path)
    }
}

/// In front of every page but sign-in and the assets: a live session (else to the sign-in
/// page), the role the page needs, the CSRF token on a POST; every POST is audited.
async fn guard(State(web): State<App>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let address = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| peer.ip().to_string());
    let session = match cookie(req.headers(), SESSION_COOKIE) {
        None => Err(Error::Unauthorized("not signed in".into())),
        Some(value) => web.control.session(&value).await,
    };
    let session = match session {
        Ok(session) => session,
        Err(Error::Unauthorized(_)) => return to_sign_in(&req),
        Err(e) => return error_page(&e),
    };
    let needed = page_role(&method, &path);
    let mut audit = AuditEntry {
        id: 0,
        at: 0,
        actor: format!("user:{}", session.user.name),
        action: format!("{method} {path}"),
        target: String::new(),
        address,
        status: 0,
        result: String::new(),
    };
    let refusal = if session.user.role < needed {
        Some(Error::Forbidden(format!(
            "{} is {}: this needs the {needed} role",
            session.user.name, session.user.role
        )))
    } else {
        None
    };
    let (mut parts, body) = req.into_parts();
    let body = if method == Method::POST && refusal.is_none() {
        let bytes = match axum::body::to_bytes(body, FORM_LIMIT).await {
            Ok(bytes) => bytes,
            Err(_) => return error_page(&Error::invalid("form", "", "over 1 MiB")),
        };
        let sent = parts
            .headers
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| Fields::parse(&bytes).get("csrf").map(str::to_string));
        if !sent.is_some_and(|t| constant_time_eq(t.as_bytes(), session.csrf.as_bytes())) {
            let e = Error::Forbidden(
                "the form is out of date or from elsewhere (no valid CSRF token): reload the page and try again".into(),
            );
            audit.status = 403;
            audit.result = e.to_string();
            web.control.record_audit(audit).await;
            return error_page(&e);
        }
        axum::body::Body::from(bytes)
    } else {
        body
    };
    if let Some(e) = refusal {
        audit.status = 403;
        audit.result = e.to_string();
        web.control.record_audit(audit).await;
        return error_page(&e);
    }
    let notice = cookie(&parts.headers, NOTICE_COOKIE).map(|n| percent_decode(&n));
    let had_notice = notice.is_some();
    parts.extensions.insert(Ctx { session, notice });
    let mut response = next.run(Request::from_parts(parts, body)).await;
    if had_notice && !response.status().is_redirection() {
        response
            .headers_mut()
            .append(header::SET_COOKIE, clear_cookie(NOTICE_COOKIE));
    }
    if method == Method::POST {
        let outcome = response.extensions().get::<Outcome>().cloned();
        audit.status = response.status().as_u16();
        match outcome {
            Some(o) => {
                audit.target = o.target;
                audit.result = o.result;
            }
            None => {
                audit.result = if audit.status < 400 {
                    "ok".into()
                } else {
                    audit.status.to_string()
                }
            }
        }
        web.control.record_audit(audit).await;
    }
    response
}

/// To the sign-in page, coming back here after (htmx requests are told to go there whole).
fn to_sign_in(req: &Request) -> Response {
    let back = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let back = if req.method() == Method::GET { back } else { "/" };
    let target = format!("/login?next={}", percent_encode(back));
    if req.headers().contains_key("hx-request") {
        let mut response = StatusCode::NO_CONTENT.into_response();
        if let Ok(value) = HeaderValue::from_str(&target) {
            response.headers_mut().insert("hx-redirect", value);
        }
        return response;
    }
    Redirect::to(&target).into_response()
}

/// A cookie's value from the request's headers.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
        .filter(|v| !v.is_empty())
}

fn set_cookie(name: &str, value: &str, max_age_s: i64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn clear_cookie(name: &str) -> HeaderValue {
    set_cookie(name, "", 0, false)
}

/// A redirect after a POST (so reloading does not post again), leaving `notice` for the next
/// page, and telling the audit log what was done to what.
fn done(web: &Web, to: &str, target: impl Into<String>, notice: impl Into<String>) -> Response {
    let notice = notice.into();
    let mut response = Redirect::to(to).into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(NOTICE_COOKIE, &percent_encode(&notice), 60, web.secure),
    );
    response.extensions_mut().insert(Outcome {
        target: target.into(),
        result: "ok".into(),
    });
    response
}

fn percent_encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

fn percent_decode(text: &str) -> String {
    form_urlencoded::parse(format!("v={text}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// A query field's value, unless empty or blank (an empty filter box filters nothing).
fn filled(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

/// A submitted form's fields, in order (a field may repeat: the rows ticked in a table).
#[derive(Debug, Clone, Default)]
struct Fields(Vec<(String, String)>);

impl Fields {
    fn parse(bytes: &[u8]) -> Fields {
        Fields(form_urlencoded::parse(bytes).into_owned().collect())
    }

    /// The field's first value, unless empty.
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    }

    /// The field's value, or an error naming it.
    fn need(&self, name: &'static str) -> Result<&str, WebError> {
        self.get(name)
            .ok_or_else(|| WebError(Error::invalid(name, "", "required")))
    }

    /// Every non-empty value of the field.
    fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, v)| k == name && !v.trim().is_empty())
            .map(|(_, v)| v.trim().to_string())
            .collect()
    }

    /// The fields again, as hidden inputs carry them to a confirmation.
    fn pairs(&self) -> Vec<(String, String)> {
        self.0.iter().filter(|(k, _)| k != "csrf").cloned().collect()
    }
}

impl<S: Send + Sync> FromRequest<S> for Fields {
    type Rejection = WebError;

    async fn from_request(req: Request, _: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::to_bytes(req.into_body(), FORM_LIMIT)
            .await
            .map_err(|_| WebError(Error::invalid("form", "", "over 1 MiB")))?;
        Ok(Fields::parse(&bytes))
    }
}

/// What every page's frame shows: who is signed in, the navigation, the CSRF token.
#[derive(Debug, Clone)]
struct Layout {
    user: String,
    role: Role,
    csrf: String,
    /// The navigation entry that is this page.
    nav: &'static str,
    notice: Option<String>,
}

impl Layout {
    /// The inline script ([`PAGE_SCRIPT`]).
    fn script(&self) -> &'static str {
        PAGE_SCRIPT
    }

    fn can_operate(&self) -> bool {
        self.role >= Role::Operator
    }

    fn is_admin(&self) -> bool {
        self.role >= Role::Admin
    }

    /// `class="here"` on the current page's navigation link.
    fn here(&self, nav: &str) -> &'static str {
        if self.nav == nav { "here" } else { "" }
    }
}

/// A page, or an error page when the template fails.
fn page(template: impl Template) -> Response {
    match template.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => error_page(&Error::invalid("page", "", e.to_string())),
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    status: u16,
    reason: String,
    message: String,
}

/// An error as a page, with the status its kind gives.
fn error_page(e: &Error) -> Response {
    let status = status_of(e);
    if status.is_server_error() {
        tracing::warn!("web: {e}");
    }
    let body = ErrorPage {
        status: status.as_u16(),
        reason: status.canonical_reason().unwrap_or("").into(),
        message: e.to_string(),
    }
    .render()
    .unwrap_or_else(|_| e.to_string());
    let mut response = (status, Html(body)).into_response();
    response.extensions_mut().insert(Outcome {
        target: String::new(),
        result: e.to_string(),
    });
    response
}

fn not_found_page(what: &str) -> Response {
    error_page(&Error::not_found("page", what))
}

/// A handler's error, answered as a page.
#[derive(Debug)]
struct WebError(Error);

impl From<Error> for WebError {
    fn from(e: Error) -> Self {
        WebError(e)
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        error_page(&self.0)
    }
}

type WebResult = Result<Response, WebError>;
