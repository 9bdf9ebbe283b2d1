//! Server-initiated conversations: questions the server asks a registered peer, answered with
//! `peer_response`.
//!
//! A conversation is a sequence of rounds sharing a `conversationId`. Two drivers exist: the
//! built-in demo started by `debug_question` (the next question is computed from earlier answers),
//! and the admin API, whose caller waits for each answer and may continue the conversation by
//! passing its id again. Every pending question has a deadline; the sweeper expires it, and a late or
//! unknown answer gets `UNKNOWN_QUESTION`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lattice_protocol::limits::{MAX_QUESTION_OPTIONS, MAX_QUESTION_TEXT};
use lattice_protocol::{
    ClientId, ConversationId, Question, QuestionId, QuestionKind, ServerQuestion,
};
use serde_json::Value;
use tokio::sync::oneshot;

use crate::limits::{
    DEMO_LIFETIME, DEMO_QUESTION_TIMEOUT, MAX_OPEN_DEMOS_PER_PEER, MAX_PENDING_QUESTIONS_PER_PEER,
};

/// What an admin caller gets back.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Answer {
    /// The question answered.
    pub question_id: QuestionId,
    /// Its conversation.
    pub conversation_id: ConversationId,
    /// Its round.
    pub round: u32,
    /// The answer, normalised (`true`/`false` for confirm, the option for choice, text otherwise).
    pub response: Value,
}

/// Why an answer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    /// Unknown, expired, already answered, or asked of someone else.
    #[error("Question {0} is unknown or has expired")]
    Unknown(QuestionId),
    /// The answer does not fit the question (the question stays open).
    #[error("{0}")]
    Invalid(String),
}

/// Why a question could not be asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AskError {
    /// The question is malformed.
    #[error("{0}")]
    BadQuestion(String),
    /// The conversation belongs to another peer.
    #[error("conversation {0} belongs to another peer")]
    ForeignConversation(ConversationId),
    /// Too many questions already wait for this peer.
    #[error("{0} already has {MAX_PENDING_QUESTIONS_PER_PEER} unanswered questions")]
    TooMany(ClientId),
    /// The peer already has as many demo conversations open as allowed.
    #[error("{0} already has {MAX_OPEN_DEMOS_PER_PEER} demo conversations open; answer or finish one first")]
    TooManyDemos(ClientId),
}

#[derive(Debug)]
enum Waiter {
    Demo,
    Admin(oneshot::Sender<Answer>),
}

#[derive(Debug)]
struct Pending {
    peer: ClientId,
    conversation: ConversationId,
    round: u32,
    question: Question,
    deadline: Instant,
    waiter: Waiter,
}

#[derive(Debug, Default, Clone)]
struct DemoState {
    name: Option<String>,
    interest: Option<String>,
}

#[derive(Debug)]
struct Conversation {
    peer: ClientId,
    round: u32,
    demo: Option<DemoState>,
    last_activity: Instant,
    started: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    pending: HashMap<QuestionId, Pending>,
    conversations: HashMap<ConversationId, Conversation>,
}

/// The question registry.
#[derive(Debug)]
pub struct Questions {
    // std Mutex: each call is a short map update; nothing awaits while holding it.
    inner: Mutex<Inner>,
    timeout: Duration,
    demo_lifetime: Duration,
}

/// A question ready to send, and the receiver for admin-driven ones.
#[derive(Debug)]
pub struct Asked {
    /// The `server_question` payload.
    pub frame: ServerQuestion,
    /// Resolves with the answer (admin questions only).
    pub answer: Option<oneshot::Receiver<Answer>>,
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Checks a question's shape (used for admin input).
///
/// # Errors
/// [`AskError::BadQuestion`] describing the problem.
pub fn validate_question(q: &Question) -> Result<(), AskError> {
    if q.text.trim().is_empty() || q.text.len() > MAX_QUESTION_TEXT {
        return Err(AskError::BadQuestion(format!(
            "question text must be 1-{MAX_QUESTION_TEXT} bytes"
        )));
    }
    match (q.kind, &q.options) {
        (Some(QuestionKind::Choice), Some(opts))
            if (2..=MAX_QUESTION_OPTIONS).contains(&opts.len())
                && opts.iter().all(|o| !o.trim().is_empty() && o.len() <= 200) =>
        {
            Ok(())
        }
        (Some(QuestionKind::Choice), _) => Err(AskError::BadQuestion(format!(
            "a choice question needs 2-{MAX_QUESTION_OPTIONS} non-empty options"
        ))),
        (Some(QuestionKind::Other), _) => Err(AskError::BadQuestion(
            "kind must be text, choice or confirm".into(),
        )),
        (_, Some(_)) => Err(AskError::BadQuestion(
            "only choice questions take options".into(),
        )),
        _ => Ok(()),
    }
}

/// Normalises `response` for `q` (the question stays open when it does not fit).
///
/// # Errors
/// Why the answer does not fit, for the peer.
pub fn normalise(q: &Question, response: &Value) -> Result<Value, String> {
    match q.kind {
        Some(QuestionKind::Confirm) => match response {
            Value::Bool(b) => Ok(Value::Bool(*b)),
            Value::String(s) if s.eq_ignore_ascii_case("yes") || s.eq_ignore_ascii_case("y") => {
                Ok(Value::Bool(true))
            }
            Value::String(s) if s.eq_ignore_ascii_case("no") || s.eq_ignore_ascii_case("n") => {
                Ok(Value::Bool(false))
            }
            _ => Err("This question expects yes or no (true/false)".into()),
        },
        Some(QuestionKind::Choice) => {
            let opts = q.options.as_deref().unwrap_or_default();
            match response {
                Value::String(s) if opts.iter().any(|o| o == s) => Ok(Value::String(s.clone())),
                _ => Err(format!("This question expects one of: {}", opts.join(", "))),
            }
        }
        // Free text (and the original protocol's kind-less questions): accept any scalar as text.
        _ => {
            let text = match response {
                Value::String(s) => s.clone(),
                Value::Bool(_) | Value::Number(_) => response.to_string(),
                _ => return Err("This question expects a text answer".into()),
            };
            if text.len() > MAX_QUESTION_TEXT {
                return Err(format!("Answers are limited to {MAX_QUESTION_TEXT} bytes"));
            }
            Ok(Value::String(text))
        }
    }
}

impl Questions {
    /// A registry whose questions expire after `timeout` unless told otherwise.
    pub fn new(timeout: Duration) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            timeout,
            demo_lifetime: DEMO_LIFETIME,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers an admin question for `peer`, continuing `conversation` if given.
    ///
    /// # Errors
    /// [`AskError`] for a malformed question, a conversation of another peer, or too many pending.
    pub fn ask(
        &self,
        peer: &ClientId,
        question: Question,
        conversation: Option<ConversationId>,
        timeout: Option<Duration>,
    ) -> Result<Asked, AskError> {
        validate_question(&question)?;
        let (tx, rx) = oneshot::channel();
        let frame = self.register(
            peer,
            question,
            conversation,
            None,
            Waiter::Admin(tx),
            timeout,
        )?;
        Ok(Asked {
            frame,
            answer: Some(rx),
        })
    }

    /// Starts the demo conversation with `peer`; returns its first question.
    ///
    /// # Errors
    /// [`AskError::TooMany`] when the peer already has too many open questions.
    pub fn start_demo(&self, peer: &ClientId) -> Result<ServerQuestion, AskError> {
        let q = Question::text("Welcome to the Lattice demo! What should I call you?");
        self.register(
            peer,
            q,
            None,
            Some(DemoState::default()),
            Waiter::Demo,
            Some(self.demo_timeout()),
        )
    }

    fn demo_timeout(&self) -> Duration {
        self.timeout.min(DEMO_QUESTION_TIMEOUT)
    }

    /// Forgets `peer`'s demo conversations (its connection ended: nobody will answer them).
    pub fn forget_demos(&self, peer: &ClientId) {
        let mut inner = self.lock();
        let Inner {
            pending,
            conversations,
        } = &mut *inner;
        pending.retain(|_, p| !(&p.peer == peer && matches!(p.waiter, Waiter::Demo)));
        conversations.retain(|_, c| !(&c.peer == peer && c.demo.is_some()));
    }

    fn register(
        &self,
        peer: &ClientId,
        question: Question,
        conversation: Option<ConversationId>,
        demo: Option<DemoState>,
        waiter: Waiter,
        timeout: Option<Duration>,
    ) -> Result<ServerQuestion, AskError> {
        let mut inner = self.lock();
        if inner.pending.values().filter(|p| &p.peer == peer).count()
            >= MAX_PENDING_QUESTIONS_PER_PEER
        {
            return Err(AskError::TooMany(peer.clone()));
        }
        // A new demo conversation (the only caller passing a fresh DemoState): each open demo has
        // exactly one pending question, so counting those counts the open demos.
        if demo.is_some()
            && inner
                .pending
                .values()
                .filter(|p| &p.peer == peer && matches!(p.waiter, Waiter::Demo))
                .count()
                >= MAX_OPEN_DEMOS_PER_PEER
        {
            return Err(AskError::TooManyDemos(peer.clone()));
        }
        let now = Instant::now();
        let conversation_id = match conversation {
            Some(id) => id,
            None => {
                ConversationId::new(new_id()).map_err(|e| AskError::BadQuestion(e.to_string()))?
            }
        };
        let conv = inner
            .conversations
            .entry(conversation_id.clone())
            .or_insert_with(|| Conversation {
                peer: peer.clone(),
                round: 0,
                demo,
                last_activity: now,
                started: now,
            });
        if &conv.peer != peer {
            return Err(AskError::ForeignConversation(conversation_id));
        }
        conv.round += 1;
        conv.last_activity = now;
        let round = conv.round;
        let question_id =
            QuestionId::new(new_id()).map_err(|e| AskError::BadQuestion(e.to_string()))?;
        inner.pending.insert(
            question_id.clone(),
            Pending {
                peer: peer.clone(),
                conversation: conversation_id.clone(),
                round,
                question: question.clone(),
                deadline: now + timeout.unwrap_or(self.timeout),
                waiter,
            },
        );
        Ok(ServerQuestion {
            question_id,
            question,
            conversation_id: Some(conversation_id),
            round: Some(round),
        })
    }

    /// Takes `peer`'s answer to `question_id`. Returns the next question to send, if the
    /// conversation continues on the server's side (the demo).
    ///
    /// # Errors
    /// [`AnswerError::Unknown`] for an unknown, expired or foreign question;
    /// [`AnswerError::Invalid`] when the answer does not fit (the question stays open).
    pub fn answer(
        &self,
        peer: &ClientId,
        question_id: &QuestionId,
        response: &Value,
    ) -> Result<Option<ServerQuestion>, AnswerError> {
        let pending = {
            let mut inner = self.lock();
            let Some(p) = inner.pending.get(question_id) else {
                return Err(AnswerError::Unknown(question_id.clone()));
            };
            if &p.peer != peer || p.deadline <= Instant::now() {
                return Err(AnswerError::Unknown(question_id.clone()));
            }
            let normalised = normalise(&p.question, response).map_err(AnswerError::Invalid)?;
            let Some(p) = inner.pending.remove(question_id) else {
                return Err(AnswerError::Unknown(question_id.clone()));
            };
            (p, normalised)
        };
        let (p, response) = pending;
        match p.waiter {
            Waiter::Admin(tx) => {
                // The admin caller may have given up already; then the answer is simply dropped.
                let _ = tx.send(Answer {
                    question_id: question_id.clone(),
                    conversation_id: p.conversation,
                    round: p.round,
                    response,
                });
                Ok(None)
            }
            Waiter::Demo => Ok(self.demo_next(peer, &p.conversation, p.round, &response)),
        }
    }

    /// Forgets a question whose admin caller gave up.
    pub fn cancel(&self, question_id: &QuestionId) {
        self.lock().pending.remove(question_id);
    }

    /// Drops expired questions and idle conversations; returns how many questions expired.
    pub fn expire(&self) -> usize {
        let now = Instant::now();
        let mut inner = self.lock();
        let before = inner.pending.len();
        inner.pending.retain(|_, p| p.deadline > now);
        let expired = before - inner.pending.len();
        let live: std::collections::HashSet<ConversationId> = inner
            .pending
            .values()
            .map(|p| p.conversation.clone())
            .collect();
        let keep_for = self.conversation_lifetime();
        inner
            .conversations
            .retain(|id, c| live.contains(id) || now.duration_since(c.last_activity) < keep_for);
        expired
    }

    /// How long an idle conversation is kept (its owner and round): twice the question timeout,
    /// at least two minutes.
    pub fn conversation_lifetime(&self) -> Duration {
        self.timeout.max(Duration::from_secs(60)) * 2
    }

    /// Questions waiting for an answer.
    pub fn pending_count(&self) -> usize {
        self.lock().pending.len()
    }

    fn demo_next(
        &self,
        peer: &ClientId,
        conversation: &ConversationId,
        round: u32,
        answer: &Value,
    ) -> Option<ServerQuestion> {
        let text = answer.as_str().unwrap_or_default().trim().to_owned();
        let state = {
            let mut inner = self.lock();
            let conv = inner.conversations.get_mut(conversation)?;
            if conv.started.elapsed() >= self.demo_lifetime {
                // The demo has run its course, whatever the answer: no further round.
                return None;
            }
            let demo = conv.demo.as_mut()?;
            match round {
                1 => {
                    demo.name = Some(if text.is_empty() {
                        "friend".into()
                    } else {
                        clip(&text, 40)
                    })
                }
                2 => demo.interest = Some(text.clone()),
                _ => {}
            }
            demo.clone()
        };
        let name = state.name.clone().unwrap_or_else(|| "friend".into());
        let interest = state.interest.clone().unwrap_or_default();
        let next = match round {
            1 => Some(interest_question(&name)),
            2 => Some(match interest.as_str() {
                "Private messages" => Question::confirm(format!(
                    "{name}, Lattice can remind you to compare fingerprints with each new contact. Turn the reminder on?"
                )),
                "Post-quantum crypto" => Question::choice(
                    "Quiz time: which key-encapsulation mechanism protects your Lattice messages?",
                    vec!["ML-KEM-768".into(), "RSA-2048".into(), "X25519 alone".into()],
                ),
                _ => Question::text(format!("What would make Lattice worth installing for you, {name}?")),
            }),
            3 => {
                let verdict = match (interest.as_str(), answer) {
                    ("Post-quantum crypto", Value::String(s)) if s == "ML-KEM-768" => {
                        "Correct: ML-KEM-768 (FIPS 203), with AES-256-GCM for the message itself.".to_owned()
                    }
                    ("Post-quantum crypto", _) => {
                        "Not quite: it is ML-KEM-768 (FIPS 203), which a quantum computer cannot break the way it breaks RSA or X25519.".to_owned()
                    }
                    ("Private messages", Value::Bool(true)) => "Reminder on.".to_owned(),
                    ("Private messages", _) => "No reminder, then.".to_owned(),
                    _ => "Thanks, noted.".to_owned(),
                };
                Some(Question::confirm(format!("{verdict} That was the demo, {name}. Start over?")))
            }
            _ => match answer {
                Value::Bool(true) => Some(interest_question(&name)),
                _ => None,
            },
        }?;
        // Restarting goes back to the interest question, which is round 2 of the flow.
        if round >= 4 {
            if let Some(demo) = self
                .lock()
                .conversations
                .get_mut(conversation)
                .and_then(|c| c.demo.as_mut())
            {
                demo.interest = None;
            }
        }
        let asked = self.register_demo_round(peer, conversation, next, round >= 4);
        asked.ok()
    }

    fn register_demo_round(
        &self,
        peer: &ClientId,
        conversation: &ConversationId,
        question: Question,
        restart: bool,
    ) -> Result<ServerQuestion, AskError> {
        if restart {
            // The demo flow is keyed on the round number; restart it at round 2 (name known).
            if let Some(c) = self.lock().conversations.get_mut(conversation) {
                c.round = 1;
            }
        }
        self.register(
            peer,
            question,
            Some(conversation.clone()),
            None,
            Waiter::Demo,
            Some(self.demo_timeout()),
        )
    }
}

fn interest_question(name: &str) -> Question {
    Question::choice(
        format!("Nice to meet you, {name}. What brings you to Lattice?"),
        vec![
            "Private messages".into(),
            "Post-quantum crypto".into(),
            "Just looking around".into(),
        ],
    )
}

fn clip(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn id(s: &str) -> ClientId {
        ClientId::new(s).unwrap()
    }

    #[test]
    fn demo_later_rounds_depend_on_answers() {
        let q = Questions::new(Duration::from_secs(60));
        let alice = id("alice");
        let r1 = q.start_demo(&alice).unwrap();
        assert_eq!(r1.round, Some(1));
        let r2 = q
            .answer(&alice, &r1.question_id, &json!("Ada"))
            .unwrap()
            .unwrap();
        assert_eq!(r2.round, Some(2));
        assert_eq!(r2.conversation_id, r1.conversation_id);
        assert!(r2.question.text.contains("Ada"));
        assert_eq!(r2.question.kind, Some(QuestionKind::Choice));
        // invalid choice: refused, question stays open
        assert!(matches!(
            q.answer(&alice, &r2.question_id, &json!("Bananas")),
            Err(AnswerError::Invalid(_))
        ));
        let r3 = q
            .answer(&alice, &r2.question_id, &json!("Post-quantum crypto"))
            .unwrap()
            .unwrap();
        assert_eq!(r3.round, Some(3));
        assert!(r3.question.text.contains("key-encapsulation"));
        let r4 = q
            .answer(&alice, &r3.question_id, &json!("RSA-2048"))
            .unwrap()
            .unwrap();
        assert!(r4.question.text.starts_with("Not quite"));
        assert_eq!(r4.question.kind, Some(QuestionKind::Confirm));
        // answering "no" ends the conversation
        assert_eq!(
            q.answer(&alice, &r4.question_id, &json!("no")).unwrap(),
            None
        );
        // the answered question is gone
        assert!(matches!(
            q.answer(&alice, &r4.question_id, &json!(true)),
            Err(AnswerError::Unknown(_))
        ));
    }

    #[test]
    fn demo_conversations_are_bounded_per_peer() {
        let q = Questions::new(Duration::from_secs(60));
        let alice = id("alice");
        let first = q.start_demo(&alice).unwrap();
        for _ in 1..MAX_OPEN_DEMOS_PER_PEER {
            q.start_demo(&alice).unwrap();
        }
        assert!(matches!(
            q.start_demo(&alice),
            Err(AskError::TooManyDemos(_))
        ));
        // continuing an open demo is not a new one
        let next = q.answer(&alice, &first.question_id, &json!("Ada")).unwrap();
        assert!(next.is_some());
        // another peer is not affected; a peer that left has none open
        q.start_demo(&id("bob")).unwrap();
        q.forget_demos(&alice);
        q.start_demo(&alice).unwrap();
    }

    #[test]
    fn a_demo_ends_after_its_lifetime_whatever_the_answers() {
        let mut q = Questions::new(Duration::from_secs(60));
        q.demo_lifetime = Duration::ZERO;
        let alice = id("alice");
        let r1 = q.start_demo(&alice).unwrap();
        assert_eq!(
            q.answer(&alice, &r1.question_id, &json!("Ada")).unwrap(),
            None
        );
        assert_eq!(q.pending_count(), 0, "no further round is asked");
    }

    #[test]
    fn demo_branches_differ() {
        let q = Questions::new(Duration::from_secs(60));
        let bob = id("bob");
        let r1 = q.start_demo(&bob).unwrap();
        let r2 = q
            .answer(&bob, &r1.question_id, &json!("Bob"))
            .unwrap()
            .unwrap();
        let r3 = q
            .answer(&bob, &r2.question_id, &json!("Private messages"))
            .unwrap()
            .unwrap();
        assert_eq!(r3.question.kind, Some(QuestionKind::Confirm));
        let r4 = q
            .answer(&bob, &r3.question_id, &json!(true))
            .unwrap()
            .unwrap();
        assert!(r4.question.text.starts_with("Reminder on."));
        let again = q
            .answer(&bob, &r4.question_id, &json!(true))
            .unwrap()
            .unwrap();
        assert_eq!(again.question.kind, Some(QuestionKind::Choice));
        assert_eq!(again.round, Some(2));
    }

    #[test]
    fn answers_from_another_peer_or_after_expiry_are_unknown() {
        let q = Questions::new(Duration::from_secs(60));
        let r1 = q.start_demo(&id("alice")).unwrap();
        assert!(matches!(
            q.answer(&id("mallory"), &r1.question_id, &json!("x")),
            Err(AnswerError::Unknown(_))
        ));
        let q = Questions::new(Duration::ZERO);
        let r1 = q.start_demo(&id("alice")).unwrap();
        assert!(matches!(
            q.answer(&id("alice"), &r1.question_id, &json!("x")),
            Err(AnswerError::Unknown(_))
        ));
        assert_eq!(q.expire(), 1);
        assert_eq!(q.pending_count(), 0);
    }

    #[test]
    fn admin_questions_resolve_and_continue() {
        let q = Questions::new(Duration::from_secs(60));
        let a = id("alice");
        let mut asked = q.ask(&a, Question::confirm("Deploy?"), None, None).unwrap();
        assert_eq!(
            q.answer(&a, &asked.frame.question_id, &json!("yes"))
                .unwrap(),
            None
        );
        let ans = asked.answer.take().unwrap().try_recv().unwrap();
        assert_eq!(ans.response, json!(true));
        assert_eq!(ans.round, 1);
        let next = q
            .ask(
                &a,
                Question::text("Why?"),
                asked.frame.conversation_id.clone(),
                None,
            )
            .unwrap();
        assert_eq!(next.frame.round, Some(2));
        assert!(matches!(
            q.ask(
                &id("bob"),
                Question::text("hi"),
                asked.frame.conversation_id.clone(),
                None
            ),
            Err(AskError::ForeignConversation(_))
        ));
    }

    #[test]
    fn malformed_questions_are_refused() {
        for bad in [
            Question::text(""),
            Question::choice("pick", vec!["only one".into()]),
            Question {
                text: "x".into(),
                kind: Some(QuestionKind::Text),
                options: Some(vec!["a".into()]),
            },
        ] {
            assert!(validate_question(&bad).is_err(), "{bad:?}");
        }
    }
}
