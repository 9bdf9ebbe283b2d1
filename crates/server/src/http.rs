//! The HTTP surface, all on one port: the WebSocket upgrade on any path (original clients connect
//! to a bare `ws://host:port`), `/healthz`, `/metrics`, and the bearer-token `/admin` API.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use lattice_protocol::limits::MAX_DISCOVER_PEERS;
use lattice_protocol::{encode, ClientId, ConversationId, Frame, Question, ServerFrame};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq as _;
use tracing::{info, warn};

use crate::hub::Out;
use crate::limits::{MAX_ADMIN_BODY, MAX_ASK_TIMEOUT};
use crate::metrics::Metrics;
use crate::questions::AskError;
use crate::session;
use crate::state::ServerState;
use crate::ws::{Upgrade, UpgradeRejection};

/// Builds the router.
pub fn router(state: Arc<ServerState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/admin/peers", get(admin_peers))
        .route("/admin/peers/{id}/questions", post(admin_ask))
        .merge(crate::blob_http::routes())
        .fallback(upgrade)
        .layer(DefaultBodyLimit::max(MAX_ADMIN_BODY))
        .with_state(state)
}

/// Whether an upgrade's `Origin` header (if any) may open a WebSocket. Browsers always send one
/// and a page cannot forge it; native clients send none. Without this check any web page the
/// user visits could connect to a server on their machine or network, list who is online and
/// send messages in their name. Origins compare case-insensitively, without a trailing slash.
fn origin_allowed(allowed: &[String], origin: Option<&str>) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    let norm = |s: &str| s.trim().trim_end_matches('/').to_ascii_lowercase();
    let origin = norm(origin);
    allowed.iter().any(|a| norm(a) == origin)
}

async fn upgrade(
    State(state): State<Arc<ServerState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: Result<Upgrade, UpgradeRejection>,
) -> Response {
    let Ok(ws) = ws else {
        return (
            StatusCode::UPGRADE_REQUIRED,
            [(header::UPGRADE, "websocket")],
            "Lattice signaling server. Connect with a WebSocket client.\n",
        )
            .into_response();
    };
    let origin = headers
        .get(header::ORIGIN)
        .map(|v| v.to_str().unwrap_or("?"));
    if !origin_allowed(&state.config.allow_origin, origin) {
        info!(%remote, origin = origin.unwrap_or_default(), "refused a WebSocket from a browser origin");
        Metrics::inc(&state.metrics.connections_refused);
        return (
            StatusCode::FORBIDDEN,
            "This origin may not connect (see --allow-origin)\n",
        )
            .into_response();
    }
    // Admission: count first, then check, so racing upgrades cannot overshoot the cap.
    let open = state.open_connections.fetch_add(1, Ordering::AcqRel);
    if open >= state.config.max_connections {
        state.open_connections.fetch_sub(1, Ordering::AcqRel);
        Metrics::inc(&state.metrics.connections_refused);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "Too many connections; try again later\n",
        )
            .into_response();
    }
    Metrics::inc(&state.metrics.connections_total);
    let tasks = state.tasks.clone();
    ws.accept(move |socket| async move {
        match socket {
            Some(socket) => {
                tasks
                    .track_future(session::run(state, socket, remote))
                    .await
            }
            None => {
                state.open_connections.fetch_sub(1, Ordering::AcqRel);
            }
        }
    })
}

/// 200 with the counts; 503 on a node of several whose Redis does not answer (it accepts no
/// registrations then, so a load balancer should send new connections elsewhere).
async fn healthz(State(state): State<Arc<ServerState>>) -> Response {
    if let Some(node) = &state.node {
        if !node.healthy().await {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({
                    "status": "redis unreachable",
                    "node": node.id.to_string(),
                    "connections": state.sessions.len(),
                    "registered": state.hub.len(),
                })),
            )
                .into_response();
        }
    }
    Json(json!({
        "status": "ok",
        "node": state.node.as_ref().map(|n| n.id.to_string()),
        "connections": state.sessions.len(),
        "registered": state.hub.len(),
    }))
    .into_response()
}

async fn metrics(State(state): State<Arc<ServerState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(state.sessions.len(), state.hub.len())
            + &crate::metrics::render_blobs(state.blobs.as_deref())
            + &state.node.as_ref().map_or_else(String::new, |node| {
                let mut out = String::new();
                node.stats.render(&mut out);
                out
            }),
    )
}

fn admin_error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

fn too_many_attempts(wait: Duration) -> Response {
    let secs = wait.as_secs().max(1);
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::RETRY_AFTER, secs.to_string())],
        Json(json!({ "error": format!("too many failed attempts; retry in {secs} s") })),
    )
        .into_response()
}

/// `Err(response)` unless the request carries the configured bearer token and its source is not
/// backing off.
fn authorize(state: &ServerState, headers: &HeaderMap, ip: IpAddr) -> Result<(), Box<Response>> {
    let Some(token) = &state.config.admin_token else {
        return Err(Box::new(admin_error(
            StatusCode::NOT_FOUND,
            "the admin API is disabled (no --admin-token)",
        )));
    };
    let now = Instant::now();
    if let Some(wait) = state.admin_guard.blocked(ip, now) {
        return Err(Box::new(too_many_attempts(wait)));
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
        state.admin_guard.succeeded(ip);
        Ok(())
    } else {
        if let Some(wait) = state.admin_guard.failed(ip, now) {
            warn!(%ip, wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX), "admin authentication failures: backing off");
        }
        Err(Box::new(admin_error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token",
        )))
    }
}

/// Query of `GET /admin/peers`: the page after `cursor` (the last id of the previous page).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PeersQuery {
    #[serde(default)]
    cursor: Option<ClientId>,
}

/// `GET /admin/peers`: the online peers, up to [`MAX_DISCOVER_PEERS`] a page in id order, with
/// `more` and the `cursor` of the next page as `discover` pages. On a node of several the list is
/// every node's (the online index in Redis), each peer with its node; Redis unreachable: 503.
async fn admin_peers(
    State(state): State<Arc<ServerState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    query: Result<Query<PeersQuery>, QueryRejection>,
) -> Response {
    if let Err(r) = authorize(&state, &headers, remote.ip()) {
        return *r;
    }
    let Ok(Query(query)) = query else {
        return admin_error(
            StatusCode::BAD_REQUEST,
            "the only query parameter is cursor, a client id",
        );
    };
    let after = query.cursor.as_ref();
    let (peers, more, last) = match &state.node {
        None => {
            let (ids, more) = state.hub.online_page(after, MAX_DISCOVER_PEERS);
            let peers: Vec<_> = ids
                .iter()
                .filter_map(|id| state.hub.get(id))
                .map(|e| json!({ "clientId": e.id, "verified": e.verified }))
                .collect();
            (peers, more, ids.last().cloned())
        }
        Some(node) => match cluster_peers(&state, node, after).await {
            Ok(page) => page,
            Err(e) => {
                warn!(error = %e, "admin peer list failed");
                return admin_error(StatusCode::SERVICE_UNAVAILABLE, "redis unreachable");
            }
        },
    };
    let cursor = if more { last } else { None };
    Json(json!({ "peers": peers, "more": more, "cursor": cursor })).into_response()
}

/// A page of every node's online peers: the ids from the online index, each one's node and
/// whether it is verified from its presence record (the page's lookups go out together, one
/// pipelined batch on the node's Redis connection); an id whose record expired meanwhile is left
/// out.
async fn cluster_peers(
    state: &ServerState,
    node: &crate::node::Node,
    after: Option<&ClientId>,
) -> Result<(Vec<serde_json::Value>, bool, Option<ClientId>), crate::cluster::ClusterError> {
    let (ids, more) = node.presence.online_page(after, MAX_DISCOVER_PEERS).await?;
    let records = futures_util::future::join_all(ids.iter().map(|id| async {
        match state.hub.get(id) {
            Some(e) => Ok(Some((node.id.to_string(), e.verified))),
            None => node.presence.keys(id).await.map(|found| {
                found.map(|(holder, keys)| (holder.node.to_string(), keys.identity_key.is_some()))
            }),
        }
    }))
    .await;
    let mut peers = Vec::with_capacity(ids.len());
    for (id, record) in ids.iter().zip(records) {
        if let Some((on, verified)) = record? {
            peers.push(json!({ "clientId": id, "verified": verified, "node": on }));
        }
    }
    Ok((peers, more, ids.last().cloned()))
}

/// Body of `POST /admin/peers/{id}/questions`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AskRequest {
    question: Question,
    #[serde(default)]
    conversation_id: Option<ConversationId>,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

async fn admin_ask(
    State(state): State<Arc<ServerState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    if let Err(r) = authorize(&state, &headers, remote.ip()) {
        return *r;
    }
    let Ok(peer_id) = ClientId::new(id) else {
        return admin_error(StatusCode::BAD_REQUEST, "not a valid client id");
    };
    let req: AskRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return admin_error(
                StatusCode::BAD_REQUEST,
                format!("invalid request body: {e}"),
            )
        }
    };
    if state.hub.get(&peer_id).is_none() {
        if let Some(node) = &state.node {
            // Not here: on a node of several the peer may be on another node, which asks.
            let raw = serde_json::from_slice(&body).unwrap_or_default();
            return ask_elsewhere(node, &peer_id, raw, ask_timeout(&state, &req)).await;
        }
    }
    let (status, answer) = ask_here(&state, &peer_id, req).await;
    (status, Json(answer)).into_response()
}

/// How long an admin question waits (its `timeoutMs`, or `--question-timeout`; at most
/// [`MAX_ASK_TIMEOUT`]).
fn ask_timeout(state: &ServerState, req: &AskRequest) -> Duration {
    req.timeout_ms
        .map_or(state.config.question_timeout, Duration::from_millis)
        .min(MAX_ASK_TIMEOUT)
}

/// How much longer the asking node waits than the question itself, so the peer's node's own
/// timeout answer (504) arrives first.
const REMOTE_ASK_MARGIN: Duration = Duration::from_secs(2);

/// Asks `peer_id`, online on another node, through that node (which asks as [`ask_here`] does).
async fn ask_elsewhere(
    node: &crate::node::Node,
    peer_id: &ClientId,
    request: serde_json::Value,
    timeout: Duration,
) -> Response {
    use crate::node::RemoteAnswer;
    let holder = match node.presence.holder(peer_id).await {
        Ok(Some(h)) if h.node != node.id => h,
        Ok(_) => {
            return admin_error(
                StatusCode::NOT_FOUND,
                format!("peer {peer_id} is not online"),
            )
        }
        Err(e) => {
            warn!(error = %e, "presence lookup failed");
            return admin_error(StatusCode::SERVICE_UNAVAILABLE, "Redis is unreachable");
        }
    };
    match node
        .ask_remote(&holder.node, peer_id, request, timeout + REMOTE_ASK_MARGIN)
        .await
    {
        Ok(RemoteAnswer::Answered(status, body)) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            Json(body),
        )
            .into_response(),
        Ok(RemoteAnswer::NoAnswer) => admin_error(
            StatusCode::GATEWAY_TIMEOUT,
            format!("no answer from the node of {peer_id}"),
        ),
        Ok(RemoteAnswer::NodeGone) => admin_error(
            StatusCode::NOT_FOUND,
            format!("peer {peer_id} is not online"),
        ),
        Ok(RemoteAnswer::Busy) => admin_error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many admin questions wait for other nodes; retry later",
        ),
        Err(e) => {
            warn!(error = %e, "admin question not forwarded");
            admin_error(StatusCode::SERVICE_UNAVAILABLE, "Redis is unreachable")
        }
    }
}

/// Answers admin questions other nodes forward for peers this node holds: each is asked here
/// (in a task the server's shutdown waits for) and its answer published back.
pub(crate) fn answer_forwarded_asks(state: Arc<ServerState>) -> crate::node::AskHandler {
    Arc::new(move |ask| {
        let state = Arc::clone(&state);
        state.tasks.clone().spawn(async move {
            let Some(node) = state.node.clone() else {
                return;
            };
            let (status, body) = match serde_json::from_value::<AskRequest>(ask.request.clone()) {
                Ok(req) => ask_here(&state, &ask.peer, req).await,
                Err(e) => (
                    StatusCode::BAD_REQUEST,
                    json!({ "error": format!("invalid request body: {e}") }),
                ),
            };
            node.answer_remote(&ask, status.as_u16(), body).await;
        });
    })
}

/// Asks `peer_id`, a session of this node, and waits for its answer: the status and JSON body
/// of `POST /admin/peers/{peer}/questions`.
async fn ask_here(
    state: &ServerState,
    peer_id: &ClientId,
    req: AskRequest,
) -> (StatusCode, serde_json::Value) {
    let error = |status: StatusCode, message: String| (status, json!({ "error": message }));
    let timeout = ask_timeout(state, &req);
    let Some(peer) = state.hub.get(peer_id) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("peer {peer_id} is not online"),
        );
    };
    let asked = match state
        .questions
        .ask(peer_id, req.question, req.conversation_id, Some(timeout))
    {
        Ok(a) => a,
        Err(e @ AskError::BadQuestion(_)) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e @ AskError::ForeignConversation(_)) => {
            return error(StatusCode::CONFLICT, e.to_string())
        }
        Err(e @ (AskError::TooMany(_) | AskError::TooManyDemos(_))) => {
            return error(StatusCode::TOO_MANY_REQUESTS, e.to_string())
        }
    };
    let qid = asked.frame.question_id.clone();
    let conversation = asked.frame.conversation_id.clone();
    let round = asked.frame.round;
    let frame = encode(&Frame::new(ServerFrame::ServerQuestion(asked.frame)));
    if peer
        .session
        .tx
        .try_send(Out::Frame(Box::new(frame.into())))
        .is_err()
    {
        state.questions.cancel(&qid);
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("peer {peer_id} is not reading its connection"),
        );
    }
    info!(peer = %peer_id, question = %qid, "admin question sent");
    let Some(rx) = asked.answer else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "no answer channel".to_owned(),
        );
    };
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(answer)) => match serde_json::to_value(answer) {
            Ok(v) => (StatusCode::OK, v),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
        Ok(Err(_)) | Err(_) => {
            state.questions.cancel(&qid);
            (
                StatusCode::GATEWAY_TIMEOUT,
                json!({
                    "error": format!("no answer from {peer_id} within {} ms", timeout.as_millis()),
                    "questionId": qid,
                    "conversationId": conversation,
                    "round": round,
                }),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_refused_unless_listed() {
        let allowed = vec!["https://chat.example.org/".to_owned()];
        assert!(origin_allowed(&allowed, None), "native clients send none");
        assert!(origin_allowed(&allowed, Some("HTTPS://Chat.Example.org")));
        assert!(!origin_allowed(&allowed, Some("https://evil.example")));
        assert!(!origin_allowed(&allowed, Some("null")));
        assert!(!origin_allowed(&[], Some("http://localhost:3005")));
    }
}
