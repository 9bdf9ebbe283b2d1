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
use lattice_protocol::{
    encode, ClientId, ConversationId, Frame, Question, QuestionId, ServerFrame, ServerQuestion,
};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq as _;
use tracing::{info, warn};

use crate::hub::Out;
use crate::limits::{MAX_ADMIN_BODY, MAX_ASK_TIMEOUT};
use crate::metrics::Metrics;
use crate::questions::{validate_question, AskError};
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
    let budget = state.large_messages.clone();
    ws.accept(budget, move |socket| async move {
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
    let (status, answer) = match &state.node {
        // On a node of several the question registry is in Redis, wherever the peer is.
        Some(node) => ask_cluster(&state, node, &peer_id, req).await,
        None => ask_here(&state, &peer_id, req).await,
    };
    (status, Json(answer)).into_response()
}

/// How long an admin question waits (its `timeoutMs`, or `--question-timeout`; at most
/// [`MAX_ASK_TIMEOUT`]).
fn ask_timeout(state: &ServerState, req: &AskRequest) -> Duration {
    req.timeout_ms
        .map_or(state.config.question_timeout, Duration::from_millis)
        .min(MAX_ASK_TIMEOUT)
}

/// Asks `peer_id` on a node of several and waits for its answer, wherever the peer is or goes:
/// the question is registered in Redis ([`crate::cluster::questions::RedisQuestions`]: the
/// conversation's owner and round, the per-peer cap), sent to the peer's connection (here, or
/// over its node's channel), and answered through whichever node the peer answers on
/// ([`crate::node::Node::answered`]). The statuses and bodies are [`ask_here`]'s.
async fn ask_cluster(
    state: &ServerState,
    node: &crate::node::Node,
    peer_id: &ClientId,
    req: AskRequest,
) -> (StatusCode, serde_json::Value) {
    use crate::cluster::questions::RedisAskError;
    let error = |status: StatusCode, message: String| (status, json!({ "error": message }));
    if let Err(e) = validate_question(&req.question) {
        return error(StatusCode::BAD_REQUEST, e.to_string());
    }
    let timeout = ask_timeout(state, &req);
    let not_online = || {
        error(
            StatusCode::NOT_FOUND,
            format!("peer {peer_id} is not online"),
        )
    };
    let unreachable = || {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Redis is unreachable".to_owned(),
        )
    };
    let local = state.hub.get(peer_id);
    let holder = match &local {
        Some(_) => None,
        None => match node.presence.holder(peer_id).await {
            Ok(Some(h)) => Some(h),
            Ok(None) => return not_online(),
            Err(e) => {
                warn!(error = %e, "presence lookup failed");
                return unreachable();
            }
        },
    };
    let (Ok(qid), Ok(new_conversation)) = (
        QuestionId::new(uuid::Uuid::new_v4().to_string()),
        ConversationId::new(uuid::Uuid::new_v4().to_string()),
    ) else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "no id".to_owned());
    };
    let conversation = req.conversation_id.unwrap_or(new_conversation);
    let Some(mut wait) = node.await_answer(&qid) else {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many admin questions wait on this node; retry later".to_owned(),
        );
    };
    let round = match node
        .questions
        .register(
            peer_id,
            &qid,
            &conversation,
            &req.question,
            timeout,
            state.questions.conversation_lifetime(),
        )
        .await
    {
        Ok(round) => round,
        Err(e @ RedisAskError::TooMany(_)) => {
            return error(StatusCode::TOO_MANY_REQUESTS, e.to_string())
        }
        Err(e @ RedisAskError::ForeignConversation(_)) => {
            return error(StatusCode::CONFLICT, e.to_string())
        }
        Err(RedisAskError::Redis(e)) => {
            warn!(error = %e, "question not registered");
            return unreachable();
        }
    };
    let frame = encode(&Frame::new(ServerFrame::ServerQuestion(ServerQuestion {
        question_id: qid.clone(),
        question: req.question,
        conversation_id: Some(conversation.clone()),
        round: Some(round),
    })));
    let sent = match (local, holder) {
        (Some(e), _) => e
            .session
            .tx
            .try_send(Out::Frame(Box::new(frame.into())))
            .is_ok(),
        (None, Some(h)) => {
            let msg = crate::node::NodeMsg::Notice {
                to: peer_id.clone(),
                conn: h.conn,
                frame,
            };
            node.publish(&h.node, &msg).await.unwrap_or(false)
        }
        (None, None) => false,
    };
    if !sent {
        if let Err(e) = node.questions.take(peer_id, &qid).await {
            warn!(error = %e, question = %qid, "unsent question left to expire");
        }
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("peer {peer_id} is not reading its connection"),
        );
    }
    info!(peer = %peer_id, question = %qid, round, "admin question sent");
    match wait.answer(timeout).await {
        Some(body) => (StatusCode::OK, body),
        None => {
            // Taken back, so a late answer is refused; one racing this may still have won.
            match node.questions.take(peer_id, &qid).await {
                Ok(None) => {
                    if let Some(body) = wait.answer(REMOTE_ANSWER_GRACE).await {
                        return (StatusCode::OK, body);
                    }
                }
                Ok(Some(_)) => {}
                Err(e) => warn!(error = %e, question = %qid, "question left to expire"),
            }
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

/// How long an admin caller whose wait ran out still waits for an answer another node took just
/// before (it is on its way over the channel).
const REMOTE_ANSWER_GRACE: Duration = Duration::from_secs(1);

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
