// Generated from src-tauri/src/contract.rs by its unit test; do not edit.
// Rewrite: LATTICE_WRITE_CONTRACT=1 cargo test -p lattice-desktop --lib contract

/** Names of the events the backend emits. */
export const Event = Object.freeze({
  PEER_LIST: "peer-list",
  MESSAGE: "message",
  SERVER_QUESTION: "server-question",
  QUESTION_CLOSED: "question-closed",
  CONNECTION_STATE: "connection-state",
  ERROR: "error",
  TYPING: "typing",
  MESSAGE_REMOVED: "message-removed",
  TRANSFER: "transfer",
  DROP_HOVER: "drop-hover",
  FILES_DROPPED: "files-dropped",
  GROUP_LIST: "group-list",
  GROUP_MESSAGE: "group-message",
  GROUP_TYPING: "group-typing",
  LINK: "link",
  DEVICE_REMOVED: "device-removed",
});

/** Delivery status of a message. */
export const DeliveryStatus = Object.freeze({
  PENDING: "pending",
  SENT: "sent",
  QUEUED: "queued",
  DELIVERED: "delivered",
  RECEIVED: "received",
  FAILED: "failed",
  READ: "read",
});

/**
 * Delivery statuses in the order of progress. The backend sends statuses already merged
 * (it never moves a message backwards), so the later of two is the newer.
 */
export const DELIVERY_STATUS_ORDER = Object.freeze(["pending", "sent", "queued", "delivered", "received", "failed", "read"]);

/** Where a file attached to a message is. */
export const TransferState = Object.freeze({
  OFFERED: "offered",
  QUEUED: "queued",
  RUNNING: "running",
  PAUSED: "paused",
  COMPLETED: "completed",
  FAILED: "failed",
  CANCELLED: "cancelled",
});

/** States of the connection indicator. */
export const ConnectionState = Object.freeze({
  OFFLINE: "offline",
  CONNECTING: "connecting",
  CONNECTED: "connected",
  RECONNECTING: "reconnecting",
});

/** How a server question is answered. */
export const QuestionKind = Object.freeze({
  TEXT: "text",
  CHOICE: "choice",
  CONFIRM: "confirm",
});

/** Where linking a new device is, on the first device. */
export const LinkStage = Object.freeze({
  REQUEST: "request",
  AWAITING_APPROVAL: "awaitingApproval",
  APPROVED: "approved",
  FAILED: "failed",
});

/** The `kind` of a command error or a notice. */
export const ErrorKind = Object.freeze({
  INVALID_INPUT: "invalidInput",
  NOT_SET_UP: "notSetUp",
  STORAGE: "storage",
  PEER: "peer",
  HOSTING: "hosting",
  UNKNOWN_QUESTION: "unknownQuestion",
  INTERNAL: "internal",
  MESSAGE_FAILED: "messageFailed",
  KEY_CHANGED: "keyChanged",
  CONNECT: "connect",
  CONVERSATION_RESTARTED: "conversationRestarted",
});

/** The `code` of an error of kind `peer`. */
export const PeerErrorCode = Object.freeze({
  NOT_CONNECTED: "notConnected",
  UNREACHABLE: "unreachable",
  INVALID_URL: "invalidUrl",
  TIMEOUT: "timeout",
  QUEUE_FULL: "queueFull",
  MESSAGE_TOO_LARGE: "messageTooLarge",
  KEY_CHANGED: "keyChanged",
  KEY_MISMATCH: "keyMismatch",
  KEY_DOWNGRADE: "keyDowngrade",
  NAME_TAKEN: "nameTaken",
  PEER_NOT_FOUND: "peerNotFound",
  UNKNOWN_QUESTION: "unknownQuestion",
  RATE_LIMITED: "rateLimited",
  MAILBOX_FULL: "mailboxFull",
  REJECTED: "rejected",
  NO_KEY_PACKAGE: "noKeyPackage",
  OTHER: "other",
});

/** Messages can be edited or deleted for everyone this long after sending (ms). */
export const EDIT_WINDOW_MS = 86400000;

/** "Started typing" is sent at most this often per conversation, 1:1 or group (ms). */
export const TYPING_RESEND_MS = 3000;

/** Someone's "is typing…" in a 1:1 chat goes away this long after their last notice (ms). */
export const TYPING_SHOWN_MS = 6000;
