//! The mailbox writer: one thread that commits the durable path of every session together. A
//! session hands it its read batch's acknowledgements and messages for online verified peers (a
//! [`CommitRequest`]) and waits; the writer takes every request waiting (up to
//! [`WRITER_GROUP`]), commits them in one transaction ([`Mailbox::commit_group`]) and answers
//! each session, which only then writes its `message_ack`s. While one transaction commits, the
//! next requests queue up, so under load one commit serves many sessions; the queue is bounded
//! ([`WRITER_QUEUE`]): a full one makes sessions wait (backpressure).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::limits::{WRITER_GROUP, WRITER_QUEUE};
use crate::store::{CommitRequest, CommitResults, Mailbox, Quota};

type Job = (CommitRequest, oneshot::Sender<CommitResults>);

/// The handle sessions commit through; the thread ends when the last handle is dropped.
#[derive(Debug)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts the writer thread over `mailbox`, storing within `quota` for `ttl`.
    ///
    /// # Errors
    /// The thread cannot be started.
    pub fn spawn(mailbox: Arc<dyn Mailbox>, quota: Quota, ttl: Duration) -> std::io::Result<Self> {
        let (tx, mut rx) = mpsc::channel::<Job>(WRITER_QUEUE);
        std::thread::Builder::new()
            .name("mailbox-writer".into())
            .spawn(move || {
                while let Some(first) = rx.blocking_recv() {
                    let mut jobs = vec![first];
                    while jobs.len() < WRITER_GROUP {
                        match rx.try_recv() {
                            Ok(job) => jobs.push(job),
                            Err(_) => break,
                        }
                    }
                    let (requests, replies): (Vec<_>, Vec<_>) = jobs.into_iter().unzip();
                    let results = mailbox.commit_group(&requests, &quota, ttl);
                    for (reply, r) in replies.into_iter().zip(results) {
                        // A session that went away meanwhile: its rows are committed, owned by
                        // its connection, and its end gives them back to the mailbox.
                        let _ = reply.send(r);
                    }
                }
            })?;
        Ok(Self { tx })
    }

    /// Commits `request` with whatever other sessions commit now; its results once durable.
    /// `Err` gives the request back if the writer is gone (the caller commits it itself).
    pub async fn commit(&self, request: CommitRequest) -> Result<CommitResults, CommitRequest> {
        let (reply, answer) = oneshot::channel();
        if let Err(mpsc::error::SendError((request, _))) = self.tx.send((request, reply)).await {
            return Err(request);
        }
        answer.await.map_err(|_| CommitRequest::default())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use lattice_protocol::{ClientId, MessageId};

    use super::*;
    use crate::store::{Accepted, EnqueueError, MailItem, SqliteStore};

    fn live(recipient: &str, sender: &str, m: &str) -> (crate::store::MailboxKey, MailItem, u64) {
        let item = MailItem {
            message_id: MessageId::new(m).unwrap(),
            sender: ClientId::new(sender).unwrap(),
            frame: format!("{{\"m\":\"{m}\"}}"),
        };
        (
            crate::store::MailboxKey::primary(&ClientId::new(recipient).unwrap()),
            item,
            1,
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_sessions_each_get_their_own_results_once_committed() {
        let store = Arc::new(SqliteStore::in_memory().unwrap());
        let quota = Quota {
            count: 30,
            ..Quota::UNLIMITED
        };
        let writer =
            Arc::new(Writer::spawn(store.clone(), quota, Duration::from_secs(60)).unwrap());
        // 50 sessions, one message each for bob, whose quota takes 30: exactly 20 are refused,
        // each session hears about its own message
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let writer = Arc::clone(&writer);
                tokio::spawn(async move {
                    let request = CommitRequest {
                        acks: None,
                        live: vec![live("bob", &format!("s{i}"), "m")],
                    };
                    writer.commit(request).await.unwrap()
                })
            })
            .collect();
        let mut stored = 0;
        let mut full = 0;
        for t in tasks {
            let results = t.await.unwrap();
            assert_eq!(results.len(), 1);
            match &results[0] {
                Ok(Accepted::Stored) => stored += 1,
                Err(EnqueueError::Full { .. }) => full += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!((stored, full), (30, 20));
        // durable before the answer: the rows are there
        assert_eq!(
            store
                .count(&crate::store::MailboxKey::primary(
                    &ClientId::new("bob").unwrap()
                ))
                .unwrap(),
            30
        );
        // acknowledgements go through the writer too
        let acks = (0..50)
            .map(|i| {
                (
                    Some(ClientId::new(format!("s{i}")).unwrap()),
                    MessageId::new("m").unwrap(),
                )
            })
            .collect();
        let results = writer
            .commit(CommitRequest {
                acks: Some((
                    crate::store::MailboxKey::primary(&ClientId::new("bob").unwrap()),
                    acks,
                )),
                live: Vec::new(),
            })
            .await
            .unwrap();
        assert!(results.is_empty());
        assert_eq!(
            store
                .count(&crate::store::MailboxKey::primary(
                    &ClientId::new("bob").unwrap()
                ))
                .unwrap(),
            0
        );
    }
}
