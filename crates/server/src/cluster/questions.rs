//! The shared part of the question registry (`crate::questions`) for several nodes: an admin
//! asks on one node, the peer answers on the node that holds it, and the answer must reach the
//! asking node's waiting caller. What is shared is the question record (which node asked, the
//! conversation and round, the question itself so the answering node can check the answer's
//! shape, a deadline) and the per-peer cap of pending questions; the caller's `oneshot` stays on
//! the asking node, which the answering node reaches through its channel ([`super::channel`]).
//!
//! Keys: `lattice:q:{alice}` (question id → record, JSON) and `lattice:q:{alice}:exp` (question
//! ids by deadline, on Redis's clock), both in the peer's slot, so registering (trim the
//! expired, check [`MAX_PENDING_QUESTIONS_PER_PEER`], count the conversation's round, insert) is
//! one script, and taking an answer is one script too: of nodes racing to take one answer,
//! exactly one gets the record. `lattice:conv:{c}` names the peer a conversation belongs to
//! (claimed before the question is registered: a conversation id of another peer is refused),
//! with the registry's idle lifetime. Every key has a TTL, so a peer that never answers leaves
//! nothing behind.

use std::sync::Arc;
use std::time::Duration;

use lattice_protocol::{ClientId, ConversationId, Question, QuestionId};
use redis::Script;
use serde::{Deserialize, Serialize};

use super::stats::{RedisStats, Timed as _};
use super::{id_key, ClusterError, NodeId, RedisConn, KEY_PREFIX};
use crate::limits::MAX_PENDING_QUESTIONS_PER_PEER;

// Lua: the time in milliseconds on Redis's clock.
const NOW: &str =
    "local t = redis.call('TIME')\nlocal now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n";

/// KEYS: conversation. ARGV: peer, lifetime ms. Returns 1 if the conversation is the peer's
/// (now or from before; its lifetime starts again), 0 if it is another peer's.
const CONVERSATION: &str = "
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[2]))
return 1
";

/// KEYS: records, deadlines. ARGV: question id, record (JSON), timeout ms, max pending,
/// conversation id, lifetime ms. Returns the question's round in its conversation (kept beside
/// the record as `r:<id>`), or 0 if the peer has `max pending` questions already.
const REGISTER: &str = "
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for _, q in ipairs(dead) do
  redis.call('HDEL', KEYS[1], q, 'r:' .. q)
  redis.call('ZREM', KEYS[2], q)
end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[4]) then return 0 end
local round = redis.call('HINCRBY', KEYS[1], 'round:' .. ARGV[5], 1)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2], 'r:' .. ARGV[1], round)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
local keep = math.max(tonumber(ARGV[3]), tonumber(ARGV[6]))
for _, k in ipairs(KEYS) do
  if redis.call('PTTL', k) < keep then redis.call('PEXPIRE', k, keep) end
end
return round
";

/// KEYS: records, deadlines. ARGV: question id. Removes the question and returns {record,
/// round} if it is still open; nil otherwise (unknown, answered, expired).
const TAKE: &str = "
local deadline = redis.call('ZSCORE', KEYS[2], ARGV[1])
local rec = redis.call('HMGET', KEYS[1], ARGV[1], 'r:' .. ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1], 'r:' .. ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if not deadline or not rec[1] or tonumber(deadline) <= now then return false end
return {rec[1], tonumber(rec[2] or '0')}
";

/// KEYS: records, deadlines. ARGV: question id. {record, round} if the question is open.
const PEEK: &str = "
local deadline = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not deadline or tonumber(deadline) <= now then return false end
local rec = redis.call('HMGET', KEYS[1], ARGV[1], 'r:' .. ARGV[1])
if not rec[1] then return false end
return {rec[1], tonumber(rec[2] or '0')}
";

/// What is stored per question (its round beside it).
#[derive(Serialize, Deserialize)]
struct Stored {
    asked_by: String,
    peer: ClientId,
    conversation: ConversationId,
    question: Question,
}

/// A pending question, as any node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuestionRecord {
    /// The node whose caller waits for the answer: where to publish it.
    pub asked_by: String,
    /// The peer asked.
    pub peer: ClientId,
    /// Its conversation.
    pub conversation: ConversationId,
    /// Its round in the conversation (1 for the first).
    pub round: u32,
    /// The question, to check the answer against.
    pub question: Question,
}

impl QuestionRecord {
    /// The node to send the answer to.
    pub fn asking_node(&self) -> NodeId {
        NodeId::from_redis(self.asked_by.clone())
    }
}

/// Why a question was not registered.
#[derive(Debug, thiserror::Error)]
pub enum RedisAskError {
    /// The peer has [`MAX_PENDING_QUESTIONS_PER_PEER`] questions waiting already.
    #[error("{0} already has {MAX_PENDING_QUESTIONS_PER_PEER} unanswered questions")]
    TooMany(ClientId),
    /// The conversation belongs to another peer.
    #[error("conversation {0} belongs to another peer")]
    ForeignConversation(ConversationId),
    /// Redis failed: nothing is registered.
    #[error(transparent)]
    Redis(#[from] ClusterError),
}

fn keys(peer: &ClientId) -> [String; 2] {
    let records = id_key("q", peer);
    let exp = format!("{records}:exp");
    [records, exp]
}

fn conversation_key(c: &ConversationId) -> String {
    format!("{KEY_PREFIX}:conv:{{{c}}}")
}

/// The shared question records, as seen from one node.
#[derive(Clone)]
pub struct RedisQuestions {
    conn: RedisConn,
    stats: Arc<RedisStats>,
    node: NodeId,
    conversation: Script,
    register: Script,
    take: Script,
    peek: Script,
}

impl std::fmt::Debug for RedisQuestions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisQuestions")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl RedisQuestions {
    /// The records on `conn`, for questions asked on `node`.
    pub fn new(conn: impl Into<RedisConn>, node: NodeId) -> Self {
        Self {
            conn: conn.into(),
            stats: Arc::default(),
            node,
            conversation: Script::new(CONVERSATION),
            register: Script::new(&format!("{NOW}{REGISTER}")),
            take: Script::new(&format!("{NOW}{TAKE}")),
            peek: Script::new(&format!("{NOW}{PEEK}")),
        }
    }

    /// Records this component's Redis round trips and errors in `stats`.
    #[must_use]
    pub fn with_stats(mut self, stats: Arc<RedisStats>) -> Self {
        self.stats = stats;
        self
    }

    /// Registers question `id` for `peer`, asked on this node, open for `timeout`, in
    /// `conversation` (which lives `lifetime` after its last question); its round.
    ///
    /// # Errors
    /// [`RedisAskError::ForeignConversation`], [`RedisAskError::TooMany`] (nothing registered);
    /// Redis failing.
    pub async fn register(
        &self,
        peer: &ClientId,
        id: &QuestionId,
        conversation: &ConversationId,
        question: &Question,
        timeout: Duration,
        lifetime: Duration,
    ) -> Result<u32, RedisAskError> {
        let own: i64 = self
            .conversation
            .key(conversation_key(conversation))
            .arg(peer.as_str())
            .arg(millis(lifetime))
            .invoke_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await
            .map_err(ClusterError::from)?;
        if own != 1 {
            return Err(RedisAskError::ForeignConversation(conversation.clone()));
        }
        let record = serde_json::to_string(&Stored {
            asked_by: self.node.as_str().to_owned(),
            peer: peer.clone(),
            conversation: conversation.clone(),
            question: question.clone(),
        })
        .map_err(|_| ClusterError::Reply("a question that does not serialize"))?;
        let [records, exp] = keys(peer);
        let round: i64 = self
            .register
            .key(records)
            .key(exp)
            .arg(id.as_str())
            .arg(record)
            .arg(millis(timeout))
            .arg(MAX_PENDING_QUESTIONS_PER_PEER)
            .arg(conversation.as_str())
            .arg(millis(lifetime))
            .invoke_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await
            .map_err(ClusterError::from)?;
        if round == 0 {
            return Err(RedisAskError::TooMany(peer.clone()));
        }
        Ok(u32::try_from(round).unwrap_or(u32::MAX))
    }

    /// The open question `id` of `peer`, if any (to check an answer's shape before taking it:
    /// an answer that does not fit leaves the question open).
    ///
    /// # Errors
    /// Redis failing, or a record that does not parse.
    pub async fn get(
        &self,
        peer: &ClientId,
        id: &QuestionId,
    ) -> Result<Option<QuestionRecord>, ClusterError> {
        self.record(&self.peek, peer, id).await
    }

    /// Takes `peer`'s answer to question `id`: its record if the question was open (then it is
    /// closed: of nodes racing, one gets it), `None` for an unknown, answered or expired one.
    ///
    /// # Errors
    /// Redis failing, or a record that does not parse.
    pub async fn take(
        &self,
        peer: &ClientId,
        id: &QuestionId,
    ) -> Result<Option<QuestionRecord>, ClusterError> {
        self.record(&self.take, peer, id).await
    }

    /// Runs `script` (peek or take) on `peer`'s question `id` and parses what it returns.
    async fn record(
        &self,
        script: &Script,
        peer: &ClientId,
        id: &QuestionId,
    ) -> Result<Option<QuestionRecord>, ClusterError> {
        let [records, exp] = keys(peer);
        let rec: Option<(String, u32)> = script
            .key(records)
            .key(exp)
            .arg(id.as_str())
            .invoke_async(&mut self.conn.clone())
            .timed(&self.stats)
            .await?;
        rec.map(|(r, round)| parse(&r, round)).transpose()
    }
}

fn parse(r: &str, round: u32) -> Result<QuestionRecord, ClusterError> {
    let s: Stored = serde_json::from_str(r)
        .map_err(|_| ClusterError::Reply("a question record that does not parse"))?;
    Ok(QuestionRecord {
        asked_by: s.asked_by,
        peer: s.peer,
        conversation: s.conversation,
        round,
        question: s.question,
    })
}
