//! Helpers shared by the chat tests.

pub mod chat;
