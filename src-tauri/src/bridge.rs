//! Forwards what the [`Messenger`](crate::messenger::Messenger) reports to the page as Tauri
//! events (named by [`Event`]), to the tray (unread count) and to the notification centre. Nothing here blocks: it runs on the
//! session event applier, so it never waits for the main thread (emits and tray updates are posted).

use tauri::{AppHandle, Emitter, Manager, Runtime};

use crate::contract::Event;
use crate::messenger::{Ui, Update};
use crate::notify::Notifier;
use crate::tray;

/// The [`Ui`] of the real app.
pub struct TauriUi<R: Runtime> {
    app: AppHandle<R>,
}

impl<R: Runtime> TauriUi<R> {
    /// A bridge to `app`'s windows.
    pub fn new(app: AppHandle<R>) -> Self {
        Self { app }
    }

    fn emit<S: serde::Serialize + Clone>(&self, event: Event, payload: S) {
        if let Err(e) = self.app.emit(event.as_str(), payload) {
            tracing::warn!(event = event.as_str(), error = %e, "cannot emit an event");
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
            Update::Peers(peers) => self.emit(Event::PeerList, peers),
            Update::Message(message) => self.emit(Event::Message, message),
            Update::Question(question) => self.emit(Event::ServerQuestion, question),
            Update::QuestionClosed(id) => self.emit(Event::QuestionClosed, id),
            Update::Connection(connection) => self.emit(Event::ConnectionState, connection),
            Update::Notice(notice) => self.emit(Event::Error, notice),
            Update::Typing(typing) => self.emit(Event::Typing, typing),
            Update::GroupTyping(typing) => self.emit(Event::GroupTyping, typing),
            Update::Removed(removed) => self.emit(Event::MessageRemoved, removed),
            Update::Transfer(transfer) => self.emit(Event::Transfer, transfer),
            Update::DropHover(hovering) => self.emit(Event::DropHover, hovering),
            Update::FilesDropped(count) => self.emit(Event::FilesDropped, count),
            Update::Groups(groups) => self.emit(Event::GroupList, groups),
            Update::GroupMessage(line) => self.emit(Event::GroupMessage, line),
            Update::Link(view) => self.emit(Event::Link, view),
            Update::DeviceRemoved(me) => self.emit(Event::DeviceRemoved, me),
            Update::Unread(n) => tray::set_unread(&self.app, n),
            Update::Notify { title, body } => self.notify(title, body),
        }
    }
}
