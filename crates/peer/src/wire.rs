//! Small helpers over the wire format shared by the components: base64, fresh ids, and the
//! errors for answers that are not what a request expected.

use std::time::{SystemTime, UNIX_EPOCH};

use lattice_protocol::{ErrorPayload, FrameBody as _, MessageId, RequestId, ServerFrame};

use crate::PeerError;

/// The base64 alphabet of every binary field on the wire.
pub(crate) const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

// A UUID is 36 printable ASCII characters, so it always passes the id rules: the expects below
// cannot fire.
#[allow(clippy::expect_used)]
pub(crate) fn new_request_id() -> RequestId {
    RequestId::new(uuid::Uuid::new_v4().to_string()).expect("a UUID is a valid request id")
}

#[allow(clippy::expect_used)]
pub(crate) fn new_message_id() -> MessageId {
    MessageId::new(uuid::Uuid::new_v4().to_string()).expect("a UUID is a valid message id")
}

/// An answer of another type than the request expects.
pub(crate) fn unexpected(request: &str, got: &ServerFrame) -> PeerError {
    PeerError::Protocol(format!(
        "expected an answer to {request}, got {}",
        got.type_name()
    ))
}

/// The server's `error` as a [`PeerError`].
pub(crate) fn server_error(e: ErrorPayload) -> PeerError {
    PeerError::Server {
        error_type: e.error_type,
        details: e.details,
        request_id: e.request_id,
    }
}

/// The first inner format version (text only, `kind` and `v` unsigned): still read, no longer
/// sent. The current one is [`crate::content::CONTENT_VERSION`].
pub(crate) const INNER_VERSION_1: u32 = 1;

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
