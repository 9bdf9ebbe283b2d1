//! Desktop notifications for messages that arrive while the window is not focused.
//!
//! Showing a notification talks to the session bus and may block, so it never runs on the
//! peer's event path: requests go through a small bounded queue to one task owned by the
//! [`Notifier`]. When the queue is full the notification is dropped — a burst of messages
//! needs one notification, not fifty.

use tauri::{AppHandle, Runtime};
use tauri_plugin_notification::NotificationExt;
use tokio::sync::mpsc;

/// Notifications waiting to be shown, at most.
const QUEUE: usize = 8;

/// Shows notifications in the background. Dropping it ends its task.
#[derive(Debug)]
pub struct Notifier {
    tx: mpsc::Sender<(String, String)>,
    task: tauri::async_runtime::JoinHandle<()>,
}

impl Notifier {
    /// Starts the notification task.
    pub fn start<R: Runtime>(app: AppHandle<R>) -> Self {
        let (tx, mut rx) = mpsc::channel::<(String, String)>(QUEUE);
        let task = tauri::async_runtime::spawn(async move {
            while let Some((title, body)) = rx.recv().await {
                let app = app.clone();
                let shown = tauri::async_runtime::spawn_blocking(move || {
                    app.notification().builder().title(title).body(body).show()
                })
                .await;
                match shown {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "cannot show a notification"),
                    Err(e) => tracing::warn!(error = %e, "notification task failed"),
                }
            }
        });
        Self { tx, task }
    }

    /// Queues a notification; dropped if the queue is full.
    pub fn show(&self, title: String, body: String) {
        if self.tx.try_send((title, body)).is_err() {
            tracing::debug!("notification dropped: queue full");
        }
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        self.task.abort();
    }
}
