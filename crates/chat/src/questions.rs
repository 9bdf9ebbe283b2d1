//! Server questions waiting for the user.
//!
//! A question is never answered by a plain chat line (a server that could capture the next line
//! would read, in clear, a message meant for a peer): only `/answer [#n] <text>` answers one, bound
//! to the question's id through the local number `#n` it was shown with. At most
//! [`MAX_PENDING_QUESTIONS`] wait at once; a newer one pushes the oldest out (told to the user), so
//! a server cannot grow this list without bound. A question that cannot be answered (a choice
//! without options) is shown as such and can be dismissed with `/dismiss [#n]`, like any other.

use std::collections::VecDeque;

use lattice_peer::IncomingQuestion;
use lattice_protocol::QuestionKind;

/// Questions waiting at once. A person answers one or two at a time; a few more cover a server
/// that asks in a burst, and anything beyond only serves a server trying to flood the terminal.
pub const MAX_PENDING_QUESTIONS: usize = 4;

/// The local number a question is shown with (`#n`): what `/answer #n` and `/dismiss #n` name.
pub type Tag = u32;

/// What happened to a question when it was added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Added {
    /// Its number.
    pub tag: Tag,
    /// The number of the oldest question, forgotten to keep the bound.
    pub evicted: Option<Tag>,
    /// It replaced a pending question with the same id (a server asking again).
    pub replaced: bool,
}

/// Why a question could not be picked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PickError {
    /// Nothing is pending.
    None,
    /// Several are pending and no `#n` was given: the answer must say which.
    Ambiguous(Vec<Tag>),
    /// No pending question has this number.
    Unknown(Tag),
}

impl std::fmt::Display for PickError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("no question from the server is waiting"),
            Self::Ambiguous(tags) => {
                let tags: Vec<String> = tags.iter().map(|t| format!("#{t}")).collect();
                write!(
                    f,
                    "several questions are waiting ({}): say which, e.g. /answer {} <text>",
                    tags.join(", "),
                    tags.first().map_or("#1", String::as_str)
                )
            }
            Self::Unknown(t) => write!(f, "no question #{t} is waiting"),
        }
    }
}

/// Whether `q` can be answered at all: a choice needs at least one option.
pub fn answerable(q: &IncomingQuestion) -> bool {
    !matches!(
        (q.question.kind, q.question.options.as_deref()),
        (Some(QuestionKind::Choice), None | Some([]))
    )
}

/// The pending questions, oldest first.
#[derive(Debug, Default)]
pub struct Questions {
    next: Tag,
    pending: VecDeque<(Tag, IncomingQuestion)>,
}

impl Questions {
    /// Adds `q`, keeping at most [`MAX_PENDING_QUESTIONS`].
    pub fn add(&mut self, q: IncomingQuestion) -> Added {
        self.next = self.next.wrapping_add(1).max(1);
        let tag = self.next;
        let before = self.pending.len();
        self.pending.retain(|(_, p)| p.question_id != q.question_id);
        let replaced = self.pending.len() != before;
        self.pending.push_back((tag, q));
        let mut evicted = None;
        while self.pending.len() > MAX_PENDING_QUESTIONS {
            evicted = self.pending.pop_front().map(|(t, _)| t);
        }
        Added {
            tag,
            evicted,
            replaced,
        }
    }

    /// Removes and returns question `tag`, or the only pending one without a tag.
    ///
    /// # Errors
    /// [`PickError`] if nothing fits.
    pub fn take(&mut self, tag: Option<Tag>) -> Result<(Tag, IncomingQuestion), PickError> {
        let index = self.index(tag)?;
        self.pending.remove(index).ok_or(PickError::None)
    }

    /// Puts back a question taken with [`Questions::take`] (its answer did not fit), in order.
    pub fn put_back(&mut self, tag: Tag, q: IncomingQuestion) {
        let at = self.pending.partition_point(|(t, _)| *t < tag);
        self.pending.insert(at, (tag, q));
        while self.pending.len() > MAX_PENDING_QUESTIONS {
            self.pending.pop_front();
        }
    }

    /// The pending numbers, oldest first.
    pub fn tags(&self) -> Vec<Tag> {
        self.pending.iter().map(|(t, _)| *t).collect()
    }

    fn index(&self, tag: Option<Tag>) -> Result<usize, PickError> {
        match tag {
            Some(t) => self
                .pending
                .iter()
                .position(|(p, _)| *p == t)
                .ok_or(PickError::Unknown(t)),
            None => match self.pending.len() {
                0 => Err(PickError::None),
                1 => Ok(0),
                _ => Err(PickError::Ambiguous(self.tags())),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use lattice_protocol::{Question, QuestionId};

    fn q(id: &str, kind: Option<QuestionKind>, options: Option<Vec<String>>) -> IncomingQuestion {
        IncomingQuestion {
            question_id: QuestionId::new(id).unwrap(),
            question: Question {
                text: "?".into(),
                kind,
                options,
            },
            conversation_id: None,
            round: None,
        }
    }

    #[test]
    fn questions_are_bounded_numbered_and_picked_explicitly() {
        let mut qs = Questions::default();
        assert_eq!(qs.take(None).unwrap_err(), PickError::None);
        let a = qs.add(q("a", None, None));
        assert_eq!((a.tag, a.evicted, a.replaced), (1, None, false));
        qs.add(q("b", None, None));
        assert_eq!(qs.take(None).unwrap_err(), PickError::Ambiguous(vec![1, 2]));
        assert_eq!(qs.take(Some(9)).unwrap_err(), PickError::Unknown(9));
        let (tag, taken) = qs.take(Some(2)).unwrap();
        assert_eq!((tag, taken.question_id.as_str()), (2, "b"));
        qs.put_back(tag, taken);
        assert_eq!(qs.tags(), [1, 2]);
        // The same id again replaces the pending one under a new number.
        let again = qs.add(q("a", None, None));
        assert!(again.replaced);
        assert_eq!(qs.tags(), [2, 3]);
        // A flood keeps only the newest few.
        let mut evicted = Vec::new();
        for i in 0..100 {
            if let Some(t) = qs.add(q(&format!("f{i}"), None, None)).evicted {
                evicted.push(t);
            }
        }
        assert_eq!(qs.tags().len(), MAX_PENDING_QUESTIONS);
        assert_eq!(evicted.first(), Some(&2));
        assert_eq!(qs.tags().last(), Some(&103));
    }

    #[test]
    fn a_choice_without_options_is_unanswerable() {
        assert!(!answerable(&q("a", Some(QuestionKind::Choice), None)));
        assert!(!answerable(&q(
            "a",
            Some(QuestionKind::Choice),
            Some(vec![])
        )));
        assert!(answerable(&q(
            "a",
            Some(QuestionKind::Choice),
            Some(vec!["x".into()])
        )));
        assert!(answerable(&q("a", Some(QuestionKind::Confirm), None)));
        assert!(answerable(&q("a", None, None)));
    }
}
