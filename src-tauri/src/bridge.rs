//! Forwards what the [`Messenger`](crate::messenger::Messenger) reports to the page as Tauri
//! events (`peer-list`, `message`, `server-question`, `question-closed`, `connection-state`,
//! `error`), to the tray
//! (unread count) and to the notification centre. Nothing here blocks: it runs on the peer's
//! event path, so it never waits for the main thread (emits and tray updates are posted).

use tauri::{AppHandle, Emitter, Manager, Runtime};

use crate::messenger::{Ui, Update};
use crate::notify::Notifier;
use crate::tray;
use crate::views::events;

/// The [`Ui`] of the real app.
pub struct TauriUi<R: Runtime> {
    app: AppHandle<R>,
}

impl<R: Runtime> TauriUi<R> {
    /// A bridge to `app`'s windows.
    pub fn new(app: AppHandle<R>) -> Self {
        Self { app }
    }

    fn emit<S: serde::Serialize + Clone>(&self, event: &str, payload: S) {
        if let Err(e) = self.app.emit(event, payload) {
            tracing::warn!(event, error = %e, "cannot emit an event");
        }
    }

    fn notify(&self, title: String, body: String) {
        if let Some(notifier) = self.app.try_state::<Notifier>() {
            notifier.show(title, body);
        }
    }
}

impl<R: Runtime> Ui for TauriUi<R> {
    fn send(&self, update: Update) {
        match update {
            Update::Peers(peers) => self.emit(events::PEER_LIST, peers),
            Update::Message(message) => self.emit(events::MESSAGE, message),
            Update::Question(question) => self.emit(events::SERVER_QUESTION, question),
            Update::QuestionClosed(id) => self.emit(events::QUESTION_CLOSED, id),
            Update::Connection(connection) => self.emit(events::CONNECTION_STATE, connection),
            Update::Notice(notice) => self.emit(events::ERROR, notice),
            Update::Unread(n) => tray::set_unread(&self.app, n),
            Update::Notify { title, body } => self.notify(title, body),
        }
    }
}
