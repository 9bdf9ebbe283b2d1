// The Tauri commands the page may call: the one list that `build.rs` (the app manifest, one
// `allow-<command>` permission each) and the capability test (`tests/capabilities.rs`) include.
// `lib.rs` registers the same commands with `generate_handler!`.
pub const COMMAND_NAMES: &[&str] = &[
    "bootstrap",
    "complete_setup",
    "load_messages",
    "send_message",
    "mark_read",
    "answer_question",
    "dismiss_question",
    "update_settings",
    "accept_key_change",
    "set_verified",
    "reconnect",
    "demo_question",
    "search_messages",
    "load_draft",
    "save_draft",
    "open_link",
    "edit_message",
    "delete_message",
    "react",
    "message_versions",
    "typing",
];
