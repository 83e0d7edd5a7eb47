//! Signing in and out, one's own account (password, API tokens), users (admins), the audit log.

use std::net::SocketAddr;

use askama::Template;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};

use super::view;
use super::{
    App, Ctx, Fields, Layout, NOTICE_COOKIE, SESSION_COOKIE, WebResult, clear_cookie, cookie, done, page, set_cookie,
};
use crate::control::model::{AuditEntry, AuditQuery, IssuedToken, NewToken, NewUser, Role, TokenInfo, User};
use crate::control::service::SESSION_TTL_MS;
use crate::error::Error;

/// The sign-in page: outside the guard.
pub(super) fn sign_in_routes() -> Router<App> {
    Router::new().route("/login", get(sign_in_page).post(sign_in))
}

pub(super) fn routes() -> Router<App> {
    Router::new()
        .route("/logout", post(sign_out))
        .route("/account", get(account))
        .route("/account/password", post(own_password))
        .route("/account/tokens", post(new_token))
        .route("/account/tokens/{name}/revoke", post(revoke_own_token))
        .route("/users", get(users).post(add_user))
        .route("/users/{name}/role", post(set_role))
        .route("/users/{name}/password", post(reset_password))
        .route("/users/{name}/delete", post(delete_user))
        .route("/users/tokens/{name}/revoke", post(revoke_token))
        .route("/audit", get(audit))
}

#[derive(Template)]
#[template(path = "login.html")]
struct SignInPage {
    next: String,
    user: String,
    error: Option<String>,
}

/// Only a path of this site: never a redirect elsewhere. Browsers drop tabs and line breaks
/// from addresses (`/<TAB>/evil` becomes `//evil`) and read `\` as `/`, so only visible ASCII
/// passes, starting with one `/`.
fn local_path(next: Option<&str>) -> String {
    match next {
        Some(p)
            if p.starts_with('/') && !p.starts_with("//") && p.bytes().all(|b| b.is_ascii_graphic() && b != b'\\') =>
        {
            p.to_string()
        }
        _ => "/".into(),
    }
}

async fn sign_in_page(Query(q): Query<Vec<(String, String)>>) -> Response {
    let next = q.iter().find(|(k, _)| k == "next").map(|(_, v)| v.as_str());
    page(SignInPage {
        next: local_path(next),
        user: String::new(),
        error: None,
    })
}

async fn sign_in(
    State(web): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    fields: Fields,
) -> Response {
    let name = fields.get("user").unwrap_or_default().to_string();
    let next = local_path(fields.get("next"));
    // A sign-in form posted from another site is refused (login CSRF).
    let cross_site = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "cross-site");
    let result = if cross_site {
        Err(Error::Forbidden("a sign-in from another site".into()))
    } else {
        web.control
            .sign_in(&name, fields.get("password").unwrap_or_default(), Some(peer.ip()))
            .await
    };
    let mut audit = AuditEntry {
        id: 0,
        at: 0,
        actor: format!("user:{name}"),
        action: "POST /login".into(),
        // Anyone may post any name: only its start is kept.
        target: name.chars().take(64).collect(),
        address: Some(peer.ip().to_string()),
        status: 303,
        result: "ok".into(),
    };
    match result {
        Ok(signed_in) => {
            web.control.record_audit(audit).await;
            let mut response = Redirect::to(&next).into_response();
            response.headers_mut().append(
                header::SET_COOKIE,
                set_cookie(SESSION_COOKIE, &signed_in.cookie, SESSION_TTL_MS / 1000, web.secure),
            );
            response
        }
        Err(e) => {
            // Failures count as calls without a known token: anyone can send them, so the log
            // keeps ten a second at most (see `Control::record_audit`).
            audit.actor = crate::control::api::ANONYMOUS.into();
            audit.status = 401;
            audit.result = e.to_string();
            web.control.record_audit(audit).await;
            let body = SignInPage {
                next,
                user: name,
                error: Some(e.to_string()),
            };
            let mut response = page(body);
            *response.status_mut() = axum::http::StatusCode::UNAUTHORIZED;
            response
        }
    }
}

async fn sign_out(State(web): State<App>, headers: HeaderMap) -> WebResult {
    if let Some(value) = cookie(&headers, SESSION_COOKIE) {
        web.control.sign_out(&value).await?;
    }
    let mut response = Redirect::to("/login").into_response();
    for name in [SESSION_COOKIE, NOTICE_COOKIE] {
        response.headers_mut().append(header::SET_COOKIE, clear_cookie(name));
    }
    Ok(response)
}

#[derive(Template)]
#[template(path = "account.html")]
struct AccountPage {
    layout: Layout,
    tokens: Vec<TokenRow>,
    issued: Option<IssuedToken>,
    roles: Vec<Role>,
}

struct TokenRow {
    info: TokenInfo,
    created: String,
    expires: String,
}

fn token_rows(now: i64, tokens: Vec<TokenInfo>) -> Vec<TokenRow> {
    tokens
        .into_iter()
        .map(|info| TokenRow {
            created: view::when(info.created_at),
            expires: match info.expires_at {
                None => "never".into(),
                Some(at) if at <= now => format!("expired {}", view::when(at)),
                Some(at) => view::when(at),
            },
            info,
        })
        .collect()
}

async fn account(State(web): State<App>, Extension(ctx): Extension<Ctx>) -> WebResult {
    let tokens = web.control.tokens(Some(&ctx.user().name)).await?;
    Ok(page(AccountPage {
        layout: ctx.layout("account"),
        tokens: token_rows(web.control.clock().now(), tokens),
        issued: None,
        roles: Role::ALL.into_iter().filter(|r| *r <= ctx.user().role).collect(),
    }))
}

async fn own_password(State(web): State<App>, Extension(ctx): Extension<Ctx>, fields: Fields) -> WebResult {
    let user = ctx.user().name.clone();
    web.control
        .check_password(&user, fields.need("current")?, None)
        .await
        .map_err(|_| Error::Forbidden("the current password is wrong".into()))?;
    web.control.set_password(&user, fields.need("password")?).await?;
    // Every session of theirs ended, this one too: sign in again with the new password.
    Ok(done(
        &web,
        "/login",
        user,
        "Password changed: sign in with the new one.",
    ))
}

/// A token for scripts, shown once on the page that answers the POST.
async fn new_token(State(web): State<App>, Extension(ctx): Extension<Ctx>, fields: Fields) -> WebResult {
    let days: Option<i64> = match fields.get("days") {
        None => None,
        Some(d) => Some(
            d.parse()
                .ok()
                .filter(|d| (1..=36_500).contains(d))
                .ok_or_else(|| Error::invalid("days", d, "a whole number of days, 1 to 36,500"))?,
        ),
    };
    let now = web.control.clock().now();
    let new = NewToken {
        name: fields.need("name")?.to_string(),
        role: fields.get("role").map(str::parse).transpose()?,
        expires_at: days.map(|d| now + d * 86_400_000),
    };
    let issued = web.control.create_token(&new, Some(ctx.user())).await?;
    let tokens = web.control.tokens(Some(&ctx.user().name)).await?;
    let mut response = page(AccountPage {
        layout: ctx.layout("account"),
        tokens: token_rows(now, tokens),
        issued: Some(issued),
        roles: Role::ALL.into_iter().filter(|r| *r <= ctx.user().role).collect(),
    });
    response.extensions_mut().insert(super::Outcome {
        target: new.name,
        result: "ok".into(),
    });
    // The secret is on this page only: never kept by a cache.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    Ok(response)
}

async fn revoke_own_token(
    State(web): State<App>,
    Extension(ctx): Extension<Ctx>,
    Path(name): Path<String>,
) -> WebResult {
    web.control.revoke_token(&name, Some(ctx.user())).await?;
    Ok(done(&web, "/account", name.clone(), format!("Token {name} revoked.")))
}

#[derive(Template)]
#[template(path = "users.html")]
struct UsersPage {
    layout: Layout,
    users: Vec<UserRow>,
    tokens: Vec<TokenRow>,
    roles: [Role; 3],
}

struct UserRow {
    user: User,
    last_login: String,
}

async fn users(State(web): State<App>, Extension(ctx): Extension<Ctx>) -> WebResult {
    let now = web.control.clock().now();
    let users = web
        .control
        .users()
        .await?
        .into_iter()
        .map(|user| UserRow {
            last_login: view::ago(now, user.last_login),
            user,
        })
        .collect();
    let tokens = token_rows(now, web.control.tokens(None).await?);
    Ok(page(UsersPage {
        layout: ctx.layout("users"),
        users,
        tokens,
        roles: Role::ALL,
    }))
}

async fn add_user(State(web): State<App>, fields: Fields) -> WebResult {
    let new = NewUser {
        name: fields.need("name")?.to_string(),
        role: fields.need("role")?.parse()?,
        password: fields.need("password")?.to_string(),
    };
    let user = web.control.create_user(&new).await?;
    Ok(done(
        &web,
        "/users",
        user.name.clone(),
        format!("User {} added ({}).", user.name, user.role),
    ))
}

async fn set_role(State(web): State<App>, Path(name): Path<String>, fields: Fields) -> WebResult {
    let user = web.control.set_role(&name, fields.need("role")?.parse()?).await?;
    Ok(done(
        &web,
        "/users",
        name,
        format!("{} is now {}.", user.name, user.role),
    ))
}

async fn reset_password(State(web): State<App>, Path(name): Path<String>, fields: Fields) -> WebResult {
    web.control.set_password(&name, fields.need("password")?).await?;
    Ok(done(
        &web,
        "/users",
        name.clone(),
        format!("Password of {name} reset; their sessions ended."),
    ))
}

async fn delete_user(State(web): State<App>, Path(name): Path<String>) -> WebResult {
    web.control.remove_user(&name).await?;
    Ok(done(
        &web,
        "/users",
        name.clone(),
        format!("User {name} removed, with their sessions and tokens."),
    ))
}

async fn revoke_token(State(web): State<App>, Path(name): Path<String>) -> WebResult {
    web.control.revoke_token(&name, None).await?;
    Ok(done(&web, "/users", name.clone(), format!("Token {name} revoked.")))
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    layout: Layout,
    entries: Vec<(String, AuditEntry)>,
    next: Option<String>,
    actor: String,
    q: String,
    failed: bool,
}

async fn audit(State(web): State<App>, Extension(ctx): Extension<Ctx>, Query(query): Query<AuditQuery>) -> WebResult {
    let page_of = web.control.audit_page(&query).await?;
    let next = page_of.next.map(|after| {
        let mut url = format!("/audit?after={after}");
        for (k, v) in [("actor", &query.actor), ("q", &query.q)] {
            if let Some(v) = v {
                url.push_str(&format!("&{k}={}", super::percent_encode(v)));
            }
        }
        if query.failed {
            url.push_str("&failed=true");
        }
        url
    });
    Ok(page(AuditPage {
        layout: ctx.layout("audit"),
        entries: page_of.items.into_iter().map(|e| (view::when(e.at), e)).collect(),
        next,
        actor: query.actor.unwrap_or_default(),
        q: query.q.unwrap_or_default(),
        failed: query.failed,
    }))
}
