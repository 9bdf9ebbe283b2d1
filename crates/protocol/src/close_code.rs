//! WebSocket close codes the server sends and clients act on. The 1xxx codes are RFC 6455's; the
//! 4xxx codes are Lattice's own (the range RFC 6455 leaves to applications). Defined once here so
//! the server that sends a code and the peer that reacts to it cannot drift apart.

/// Normal closure.
pub const NORMAL: u16 = 1000;
/// The server is shutting down, or the connection was idle too long.
pub const GOING_AWAY: u16 = 1001;
/// The peer broke the WebSocket protocol (RFC 6455), e.g. an unmasked or fragmented control frame.
pub const PROTOCOL_ERROR: u16 = 1002;
/// A text message that is not UTF-8.
pub const INVALID_DATA: u16 = 1007;
/// Too many invalid frames.
pub const POLICY: u16 = 1008;
/// A frame beyond the transport limit.
pub const TOO_BIG: u16 = 1009;
/// The peer did not read its frames in time.
pub const TRY_AGAIN_LATER: u16 = 1013;
/// The same identity registered on a newer connection. A client must not reconnect on its own
/// after this code: two instances of one identity would otherwise replace each other forever.
pub const REPLACED: u16 = 4000;
/// *ext*: the device was removed from its id's signed device list; it must not reconnect as
/// that device.
pub const DEVICE_REMOVED: u16 = 4001;
/// *ext*: a link relay (`register` with `linkRelay`) reached the end of its life,
/// [`crate::limits::LINK_RELAY_TTL_SECS`] after it registered; its linking code has expired too.
pub const LINK_RELAY_EXPIRED: u16 = 4002;
/// The connection did not register in time.
pub const REGISTER_TIMEOUT: u16 = 4008;
