//! The WebSocket transport of a session: the HTTP/1.1 upgrade (RFC 6455 §4.2) and a server-side
//! frame codec over buffers the connection owns.
//!
//! Why not tungstenite's codec (which axum's `WebSocket` wraps): its read buffer grows to the
//! largest frame read *plus* its read size, and keeps that capacity for the life of the
//! connection. Every client's first frame is `register` (4.3 KB with the key as a JSON byte
//! array), so every idle connection held ~8.4 KiB it never used again: over half of its memory
//! (docs/scaling.md). Here both buffers are the connection's own and are let go whenever they are
//! empty: the read buffer when the socket has nothing more to give (the task is about to sleep),
//! the write buffer once flushed. An idle connection holds no buffer at all; a busy one reads
//! [`READ_CHUNK`] at a time, so a batch of frames still costs one `read`.
//!
//! What it implements, as a server: masked client frames only; no extensions (RSV bits must be
//! clear); fragmented messages reassembled; control frames at most 125 bytes and never
//! fragmented; text checked as UTF-8 once whole; a ping answered with a pong (written with the
//! next write or read), a close answered with a close. Bounds: a frame or message over
//! [`MAX_TRANSPORT_MESSAGE`] is refused when its header arrives ([`WsError::TooBig`]), without
//! buffering it, and the rest of it is skipped so the closing handshake can still be read; what
//! waits to be written is bounded by [`MAX_WRITE_BUFFER`].
//!
//! **Large messages** (over [`LARGE_MESSAGE`], the ordinary frame cap: in practice a
//! `group_commit` of a big MLS group) are read only with a slot of the server's
//! [`LargeMessages`] budget ([`LARGE_MESSAGES_IN_FLIGHT`] at once): one per connection at a time,
//! taken when the message's header shows its size and given back when the session asks for the
//! next message (it has handled this one). Without a free slot the socket is not read further:
//! the sender's TCP window closes and only it waits (backpressure on the offender), while its
//! own small frames already read and every other connection go on. An idle connection holds no
//! slot and no buffer.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use bytes::{Buf as _, Bytes, BytesMut};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

use crate::limits::{
    LARGE_MESSAGES_IN_FLIGHT, MAX_TRANSPORT_MESSAGE, MAX_WRITE_BUFFER, READ_CHUNK, WRITE_BUFFER,
};

/// Largest payload of a control frame (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;
/// Largest frame header a client sends: 2 bytes, a 64-bit length, the mask key.
const MAX_HEADER: usize = 14;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Why the transport failed. After any of these the stream yields no more messages; after
/// [`WsError::TooBig`] it still reads (and skips) so the peer's close can arrive.
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    /// A frame or message larger than [`MAX_TRANSPORT_MESSAGE`].
    #[error("message of {size} bytes exceeds the transport limit of {max} bytes")]
    TooBig {
        /// Its size as announced (a frame) or reached (a message).
        size: u64,
        /// The limit.
        max: usize,
    },
    /// The peer broke RFC 6455.
    #[error("WebSocket protocol violation: {0}")]
    Protocol(&'static str),
    /// A text message that is not UTF-8.
    #[error("text message is not valid UTF-8")]
    InvalidUtf8,
    /// More than [`MAX_WRITE_BUFFER`] bytes waiting to be written.
    #[error("write buffer full ({0} bytes)")]
    WriteBufferFull(usize),
    /// A frame sent after the close frame.
    #[error("the connection is closing")]
    Closed,
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A parsed frame header.
#[derive(Clone, Copy)]
struct Header {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    /// Header bytes before the payload.
    len: usize,
    payload: u64,
}

/// Parses the header at the start of `buf`; `None` until all of it is there.
fn parse_header(buf: &[u8]) -> Result<Option<Header>, WsError> {
    let (Some(&b0), Some(&b1)) = (buf.first(), buf.get(1)) else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(WsError::Protocol("reserved bits set without an extension"));
    }
    if b1 & 0x80 == 0 {
        return Err(WsError::Protocol("unmasked frame from a client"));
    }
    let (payload, ext) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 2),
            None => return Ok(None),
        },
        127 => match buf.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            Some(b) => (u64::from_be_bytes(b), 8),
            None => return Ok(None),
        },
        n => (u64::from(n), 0),
    };
    let Some(mask) = buf
        .get(2 + ext..6 + ext)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
    else {
        return Ok(None);
    };
    let header = Header {
        fin: b0 & 0x80 != 0,
        opcode: b0 & 0x0F,
        mask,
        len: 6 + ext,
        payload,
    };
    match header.opcode {
        OP_CONTINUATION | OP_TEXT | OP_BINARY => {}
        OP_CLOSE | OP_PING | OP_PONG => {
            if !header.fin {
                return Err(WsError::Protocol("fragmented control frame"));
            }
            if payload > MAX_CONTROL_PAYLOAD as u64 {
                return Err(WsError::Protocol("control frame longer than 125 bytes"));
            }
        }
        _ => return Err(WsError::Protocol("unknown opcode")),
    }
    Ok(Some(header))
}

/// Unmasks `data` in place (RFC 6455 §5.3), eight bytes at a time.
fn unmask(data: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Appends one unmasked (server) frame to `out`.
fn encode_frame(out: &mut Vec<u8>, opcode: u8, payload: &[&[u8]]) {
    let len: usize = payload.iter().map(|p| p.len()).sum();
    out.reserve(len + 10);
    out.push(0x80 | opcode);
    if len < 126 {
        // fits: checked just above
        out.push(len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        out.push(126);
        out.extend_from_slice(&short.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    for p in payload {
        out.extend_from_slice(p);
    }
}

/// A fragmented message being reassembled (rare: boxed, so it costs nothing when absent).
struct Partial {
    text: bool,
    data: BytesMut,
}

/// One server-side WebSocket over `S`: a [`Stream`] of the client's messages and a [`Sink`] for
/// the server's, with axum's [`Message`] type so the session code does not depend on the codec.
pub struct WsStream<S> {
    io: S,
    /// Read and not yet parsed. Capacity 0 whenever the task sleeps with nothing buffered.
    rbuf: BytesMut,
    /// Bytes still to skip of a frame refused as too big.
    skip: u64,
    partial: Option<Box<Partial>>,
    /// Framed and not yet written; `wpos` bytes of it are written.
    wbuf: Vec<u8>,
    wpos: usize,
    /// The peer's close arrived (and ours is queued or sent).
    close_received: bool,
    /// Our close frame is queued or sent: nothing more may be sent.
    close_sent: bool,
    /// No more messages: end of stream or a socket error.
    read_done: bool,
    /// After a protocol violation: what arrives is read and dropped (never parsed) until the
    /// peer closes, so our close frame is not lost to a reset caused by unread input.
    discard: bool,
    /// The server's budget of large messages being read.
    budget: LargeMessages,
    /// This connection's slot of it, or the wait for one (boxed: absent on nearly every turn).
    large: Option<Box<LargeSlot>>,
}

/// Messages above this many bytes need a slot of [`LargeMessages`]: the ordinary frame cap, so
/// every frame but a big `group_commit` is read as before.
pub const LARGE_MESSAGE: usize = lattice_protocol::limits::MAX_FRAME_BYTES;

type Acquire =
    Pin<Box<dyn std::future::Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// A connection's claim on the large-message budget.
enum LargeSlot {
    /// Waiting for a free slot: the socket is not read meanwhile.
    Waiting(Acquire),
    /// Reading (or handing out) one large message.
    Held {
        _permit: OwnedSemaphorePermit,
        /// The message was handed to the session: the slot goes back on the next read.
        handed_out: bool,
    },
}

/// The server-wide bound on large messages being read at once (each at most
/// [`MAX_TRANSPORT_MESSAGE`] bytes): a cheap `Clone`, one per server.
#[derive(Clone, Debug)]
pub struct LargeMessages(Arc<Semaphore>);

impl LargeMessages {
    /// A budget of `slots` large messages at once.
    pub fn new(slots: usize) -> Self {
        Self(Arc::new(Semaphore::new(slots)))
    }

    /// Slots free now (for tests and metrics).
    pub fn available(&self) -> usize {
        self.0.available_permits()
    }
}

impl Default for LargeMessages {
    fn default() -> Self {
        Self::new(LARGE_MESSAGES_IN_FLIGHT)
    }
}

impl<S> std::fmt::Debug for WsStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsStream")
            .field("buffered_in", &self.rbuf.len())
            .field("buffered_out", &(self.wbuf.len() - self.wpos))
            .field("close_sent", &self.close_sent)
            .finish_non_exhaustive()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    /// A WebSocket over an upgraded connection (the handshake is done), reading large messages
    /// within `budget`.
    pub fn new(io: S, budget: LargeMessages) -> Self {
        Self {
            budget,
            large: None,
            io,
            rbuf: BytesMut::new(),
            skip: 0,
            partial: None,
            wbuf: Vec::new(),
            wpos: 0,
            close_received: false,
            close_sent: false,
            read_done: false,
            discard: false,
        }
    }

    /// Bytes of buffer capacity the connection holds now (read + write), for tests and metrics.
    pub fn buffered_capacity(&self) -> usize {
        self.rbuf.capacity() + self.wbuf.capacity()
    }

    /// Takes (or waits for) a slot of the large-message budget for the message being read;
    /// `Ready(Ok)` once this connection holds one. `Err`: the budget was closed.
    fn poll_large_slot(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), AcquireError>> {
        loop {
            match self.large.as_deref_mut() {
                Some(LargeSlot::Held { .. }) => return Poll::Ready(Ok(())),
                Some(LargeSlot::Waiting(acquire)) => {
                    let permit = ready!(acquire.as_mut().poll(cx))?;
                    self.large = Some(Box::new(LargeSlot::Held {
                        _permit: permit,
                        handed_out: false,
                    }));
                }
                None => {
                    let acquire: Acquire = Box::pin(Arc::clone(&self.budget.0).acquire_owned());
                    self.large = Some(Box::new(LargeSlot::Waiting(acquire)));
                }
            }
        }
    }

    /// Whether this connection holds a slot of the large-message budget (tests).
    pub fn holds_large_slot(&self) -> bool {
        matches!(self.large.as_deref(), Some(LargeSlot::Held { .. }))
    }

    /// Writes what is buffered; `Ready(Ok)` once all of it is in the socket. The buffer is then
    /// let go.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        while self.wpos < self.wbuf.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.wbuf[self.wpos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into()));
            }
            self.wpos += n;
        }
        self.wbuf = Vec::new();
        self.wpos = 0;
        Poll::Ready(Ok(()))
    }

    /// Queues a frame; refuses it past [`MAX_WRITE_BUFFER`].
    fn queue(&mut self, opcode: u8, payload: &[&[u8]]) -> Result<(), WsError> {
        let len: usize = payload.iter().map(|p| p.len()).sum();
        let pending = self.wbuf.len() - self.wpos;
        if pending + len > MAX_WRITE_BUFFER {
            return Err(WsError::WriteBufferFull(pending + len));
        }
        if self.wbuf.capacity() == 0 {
            // A batch usually follows: start at the batch size rather than growing frame by frame.
            self.wbuf.reserve(WRITE_BUFFER.max(len + MAX_HEADER));
        }
        encode_frame(&mut self.wbuf, opcode, payload);
        Ok(())
    }

    /// Takes one whole message out of `rbuf` if it is there. `Ok(None)`: read more.
    fn parse(&mut self) -> Result<Option<Message>, WsError> {
        loop {
            if self.skip > 0 {
                let n = usize::try_from(self.skip)
                    .unwrap_or(usize::MAX)
                    .min(self.rbuf.len());
                self.rbuf.advance(n);
                self.skip -= n as u64;
                if self.skip > 0 {
                    return Ok(None);
                }
            }
            let Some(h) = parse_header(&self.rbuf)? else {
                return Ok(None);
            };
            let so_far = self.partial.as_ref().map_or(0, |p| p.data.len() as u64);
            if h.payload.saturating_add(so_far) > MAX_TRANSPORT_MESSAGE as u64 {
                // Skip the rest of it so the peer's close, after it, can still be read.
                self.partial = None;
                self.rbuf.advance(h.len);
                self.skip = h.payload;
                return Err(WsError::TooBig {
                    size: h.payload.saturating_add(so_far),
                    max: MAX_TRANSPORT_MESSAGE,
                });
            }
            // At most MAX_TRANSPORT_MESSAGE: checked just above.
            let payload_len = h.payload as usize;
            if self.rbuf.len() < h.len + payload_len {
                return Ok(None);
            }
            self.rbuf.advance(h.len);
            let mut payload = self.rbuf.split_to(payload_len);
            unmask(&mut payload, h.mask);
            match h.opcode {
                OP_TEXT | OP_BINARY => {
                    if self.partial.is_some() {
                        return Err(WsError::Protocol("new message inside a fragmented one"));
                    }
                    let text = h.opcode == OP_TEXT;
                    if h.fin {
                        return whole(text, payload.freeze()).map(Some);
                    }
                    self.partial = Some(Box::new(Partial {
                        text,
                        data: payload,
                    }));
                }
                OP_CONTINUATION => {
                    let Some(mut p) = self.partial.take() else {
                        return Err(WsError::Protocol("continuation without a message"));
                    };
                    p.data.extend_from_slice(&payload);
                    if h.fin {
                        return whole(p.text, p.data.freeze()).map(Some);
                    }
                    self.partial = Some(p);
                }
                OP_PING => {
                    if !self.close_sent {
                        self.queue(OP_PONG, &[&payload])?;
                    }
                    return Ok(Some(Message::Ping(payload.freeze())));
                }
                OP_PONG => return Ok(Some(Message::Pong(payload.freeze()))),
                _ => return self.on_close(payload.freeze()).map(Some),
            }
        }
    }

    /// The peer's close frame: answer it (once) and hand it up.
    fn on_close(&mut self, payload: Bytes) -> Result<Message, WsError> {
        self.close_received = true;
        let frame = match payload.len() {
            0 => None,
            1 => return Err(WsError::Protocol("close frame of one byte")),
            _ => {
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                let reason =
                    Utf8Bytes::try_from(payload.slice(2..)).map_err(|_| WsError::InvalidUtf8)?;
                Some(CloseFrame { code, reason })
            }
        };
        if !self.close_sent {
            self.close_sent = true;
            let code = frame.as_ref().map(|f| f.code.to_be_bytes());
            self.queue(OP_CLOSE, &[code.as_ref().map_or(&[][..], |c| &c[..])])?;
        }
        Ok(Message::Close(frame))
    }
}

/// A whole data message.
fn whole(text: bool, data: Bytes) -> Result<Message, WsError> {
    if text {
        Utf8Bytes::try_from(data)
            .map(Message::Text)
            .map_err(|_| WsError::InvalidUtf8)
    } else {
        Ok(Message::Binary(data))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream for WsStream<S> {
    type Item = Result<Message, WsError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        // Owed control frames (a pong, the close answer) go out with the next read, as
        // tungstenite does; a socket that cannot take them now gets them with the next flush.
        if this.wpos < this.wbuf.len() {
            match this.poll_write_out(cx) {
                Poll::Ready(Ok(())) => {
                    let _ = Pin::new(&mut this.io).poll_flush(cx);
                }
                Poll::Ready(Err(e)) => {
                    this.read_done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Pending => {}
            }
        }
        // The session asks for the next message: the large one handed out before is handled.
        if matches!(
            this.large.as_deref(),
            Some(LargeSlot::Held {
                handed_out: true,
                ..
            })
        ) {
            this.large = None;
        }
        loop {
            if this.read_done || (this.close_received && this.skip == 0) {
                return Poll::Ready(None);
            }
            if this.discard {
                this.rbuf.clear();
            } else {
                match this.parse() {
                    Ok(Some(m)) => {
                        if let Some(LargeSlot::Held { handed_out, .. }) = this.large.as_deref_mut()
                        {
                            *handed_out = true;
                        }
                        return Poll::Ready(Some(Ok(m)));
                    }
                    Ok(None) => {}
                    Err(e) => {
                        // Too big: skipped, and the stream goes on. Anything else: nothing after
                        // it can be parsed.
                        if !matches!(e, WsError::TooBig { .. }) {
                            this.discard = true;
                            this.rbuf.clear();
                        }
                        return Poll::Ready(Some(Err(e)));
                    }
                }
            }
            // Room for what the current frame still needs, at least READ_CHUNK.
            let (missing, message) = match parse_header(&this.rbuf) {
                Ok(Some(h)) if this.skip == 0 && !this.discard => {
                    let so_far = this.partial.as_ref().map_or(0, |p| p.data.len());
                    (
                        (h.len + h.payload as usize).saturating_sub(this.rbuf.len()),
                        so_far + h.payload as usize,
                    )
                }
                _ => (
                    MAX_HEADER,
                    this.partial.as_ref().map_or(0, |p| p.data.len()),
                ),
            };
            // A large message is read only with a slot of the server's budget.
            if message > LARGE_MESSAGE && ready!(this.poll_large_slot(cx)).is_err() {
                this.read_done = true;
                return Poll::Ready(None);
            }
            if this.rbuf.capacity() - this.rbuf.len() < missing.min(READ_CHUNK) {
                this.rbuf.reserve(missing.max(READ_CHUNK));
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.io), cx, &mut this.rbuf) {
                Poll::Pending => {
                    // About to sleep: an empty buffer is not kept across it.
                    if this.rbuf.is_empty() {
                        this.rbuf = BytesMut::new();
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Ok(0)) => {
                    this.read_done = true;
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => {
                    this.read_done = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Sink<Message> for WsStream<S> {
    type Error = WsError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        let this = self.get_mut();
        if this.wbuf.len() - this.wpos >= WRITE_BUFFER {
            ready!(this.poll_write_out(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, msg: Message) -> Result<(), WsError> {
        let this = self.get_mut();
        if this.close_sent {
            // A close after the close (the answer to the peer's is already queued) says nothing
            // new; anything else is refused.
            return match msg {
                Message::Close(_) => Ok(()),
                _ => Err(WsError::Closed),
            };
        }
        match msg {
            Message::Text(t) => this.queue(OP_TEXT, &[t.as_bytes()]),
            Message::Binary(b) => this.queue(OP_BINARY, &[&b]),
            Message::Ping(p) | Message::Pong(p) if p.len() > MAX_CONTROL_PAYLOAD => {
                Err(WsError::Protocol("control frame longer than 125 bytes"))
            }
            Message::Ping(p) => this.queue(OP_PING, &[&p]),
            Message::Pong(p) => this.queue(OP_PONG, &[&p]),
            Message::Close(frame) => {
                this.close_sent = true;
                match frame {
                    None => this.queue(OP_CLOSE, &[]),
                    Some(f) => {
                        let reason = truncate_utf8(f.reason.as_str(), MAX_CONTROL_PAYLOAD - 2);
                        this.queue(OP_CLOSE, &[&f.code.to_be_bytes(), reason.as_bytes()])
                    }
                }
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.io).poll_flush(cx).map_err(Into::into)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.get_mut().io)
            .poll_shutdown(cx)
            .map_err(Into::into)
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncate_utf8(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A request to open a WebSocket (RFC 6455 §4.2.1), checked; [`Upgrade::accept`] answers it.
#[derive(Debug)]
pub struct Upgrade {
    key: HeaderValue,
    on_upgrade: hyper::upgrade::OnUpgrade,
}

/// Why a request is not a WebSocket upgrade.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeRejection {
    /// Not `GET` over HTTP/1.1.
    #[error("a WebSocket upgrade is a GET over HTTP/1.1")]
    Method,
    /// `Connection: upgrade` and `Upgrade: websocket` missing.
    #[error("missing Connection: upgrade / Upgrade: websocket")]
    NotUpgrade,
    /// `Sec-WebSocket-Version` is not 13.
    #[error("unsupported Sec-WebSocket-Version (13 is required)")]
    Version,
    /// No `Sec-WebSocket-Key`.
    #[error("missing Sec-WebSocket-Key")]
    Key,
    /// The HTTP connection cannot be upgraded.
    #[error("connection not upgradable")]
    NotUpgradable,
}

impl IntoResponse for UpgradeRejection {
    fn into_response(self) -> Response {
        let status = match self {
            Self::Version => StatusCode::UPGRADE_REQUIRED,
            Self::NotUpgradable => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        };
        (status, self.to_string()).into_response()
    }
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = UpgradeRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        if parts.method != Method::GET || parts.version != Version::HTTP_11 {
            return Err(UpgradeRejection::Method);
        }
        if !header_has_token(&parts.headers, header::CONNECTION, "upgrade")
            || !header_has_token(&parts.headers, header::UPGRADE, "websocket")
        {
            return Err(UpgradeRejection::NotUpgrade);
        }
        if parts
            .headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_none_or(|v| v.as_bytes() != b"13")
        {
            return Err(UpgradeRejection::Version);
        }
        let key = parts
            .headers
            .get(header::SEC_WEBSOCKET_KEY)
            .ok_or(UpgradeRejection::Key)?
            .clone();
        let on_upgrade = parts
            .extensions
            .remove::<hyper::upgrade::OnUpgrade>()
            .ok_or(UpgradeRejection::NotUpgradable)?;
        Ok(Self { key, on_upgrade })
    }
}

/// The socket a session runs over once upgraded.
pub type Socket = WsStream<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>;

impl Upgrade {
    /// Answers `101 Switching Protocols` and, once the client has it, hands the socket to
    /// `on_socket` (or `None` if the upgrade failed) on a new task.
    pub fn accept<F, Fut>(self, budget: LargeMessages, on_socket: F) -> Response
    where
        F: FnOnce(Option<Socket>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let accept =
            tokio_tungstenite::tungstenite::handshake::derive_accept_key(self.key.as_bytes());
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            let socket = on_upgrade
                .await
                .ok()
                .map(|io| WsStream::new(hyper_util::rt::TokioIo::new(io), budget));
            on_socket(socket).await;
        });
        (
            StatusCode::SWITCHING_PROTOCOLS,
            [
                (header::CONNECTION, HeaderValue::from_static("upgrade")),
                (header::UPGRADE, HeaderValue::from_static("websocket")),
            ],
            [(header::SEC_WEBSOCKET_ACCEPT, accept)],
        )
            .into_response()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};

    use super::*;

    /// A client frame: masked with a fixed key.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= 0xFFFF {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn pair() -> (WsStream<DuplexStream>, DuplexStream) {
        let (a, b) = tokio::io::duplex(1 << 20);
        (WsStream::new(a, LargeMessages::default()), b)
    }

    async fn read_frame(client: &mut DuplexStream) -> (u8, Vec<u8>) {
        let mut h = [0u8; 2];
        client.read_exact(&mut h).await.unwrap();
        let len = match h[1] & 0x7F {
            126 => usize::from(client.read_u16().await.unwrap()),
            127 => usize::try_from(client.read_u64().await.unwrap()).unwrap(),
            n => usize::from(n),
        };
        assert_eq!(h[1] & 0x80, 0, "server frames are not masked");
        let mut p = vec![0; len];
        client.read_exact(&mut p).await.unwrap();
        (h[0], p)
    }

    /// Two connections share a budget of one large message: the second one's large message is
    /// not read while the first holds the slot (its small frame before it is), and is read as
    /// soon as the first asks for its next message. Counted, never timed.
    #[tokio::test]
    async fn large_messages_wait_for_a_slot_of_the_shared_budget() {
        use futures_util::FutureExt as _;
        let budget = LargeMessages::new(1);
        let (a_io, mut a_client) = tokio::io::duplex(1 << 21);
        let (b_io, mut b_client) = tokio::io::duplex(1 << 21);
        let mut a = WsStream::new(a_io, budget.clone());
        let mut b = WsStream::new(b_io, budget.clone());
        let big = "g".repeat(LARGE_MESSAGE + 1);
        a_client
            .write_all(&client_frame(true, OP_TEXT, big.as_bytes()))
            .await
            .unwrap();
        let mut b_bytes = client_frame(true, OP_TEXT, b"small");
        b_bytes.extend(client_frame(true, OP_TEXT, big.as_bytes()));
        b_client.write_all(&b_bytes).await.unwrap();

        assert_eq!(
            a.next().await.unwrap().unwrap(),
            Message::Text(big.clone().into())
        );
        assert!(a.holds_large_slot());
        assert_eq!(budget.available(), 0);
        // b reads its small frame; its large one waits, however often it is polled
        assert_eq!(
            b.next().await.unwrap().unwrap(),
            Message::Text("small".into())
        );
        for _ in 0..3 {
            assert!(b.next().now_or_never().is_none());
        }
        assert!(!b.holds_large_slot());
        // a asks for more (it handled its message): the slot goes to b
        assert!(a.next().now_or_never().is_none());
        assert!(!a.holds_large_slot());
        assert_eq!(b.next().await.unwrap().unwrap(), Message::Text(big.into()));
        assert!(b.holds_large_slot());
        assert!(b.next().now_or_never().is_none());
        assert_eq!(budget.available(), 1);
        // ordinary frames never take a slot
        a_client
            .write_all(&client_frame(true, OP_TEXT, &vec![b'x'; LARGE_MESSAGE]))
            .await
            .unwrap();
        assert!(matches!(a.next().await, Some(Ok(Message::Text(_)))));
        assert!(!a.holds_large_slot());
    }

    #[tokio::test]
    async fn a_large_frame_is_read_whole_and_its_buffer_let_go() {
        let (mut ws, mut client) = pair();
        let text = "k".repeat(4300);
        let mut bytes = client_frame(true, OP_TEXT, text.as_bytes());
        bytes.extend(client_frame(true, OP_TEXT, b"second"));
        client.write_all(&bytes).await.unwrap();
        let m = ws.next().await.unwrap().unwrap();
        assert_eq!(m, Message::Text(text.into()));
        let m = ws.next().await.unwrap().unwrap();
        assert_eq!(m, Message::Text("second".into()));
        // nothing more to read: the task would sleep, and holds no buffer while it does
        assert!(futures_util::FutureExt::now_or_never(ws.next()).is_none());
        assert_eq!(ws.buffered_capacity(), 0);
    }

    #[tokio::test]
    async fn fragments_are_reassembled_around_a_ping_which_is_answered() {
        let (mut ws, mut client) = pair();
        let mut bytes = client_frame(false, OP_TEXT, b"hel");
        bytes.extend(client_frame(true, OP_PING, b"p"));
        bytes.extend(client_frame(false, OP_CONTINUATION, b"lo "));
        bytes.extend(client_frame(true, OP_CONTINUATION, "wörld".as_bytes()));
        client.write_all(&bytes).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::Ping(Bytes::from_static(b"p"))
        );
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::Text("hello wörld".into())
        );
        assert_eq!(
            read_frame(&mut client).await,
            (0x80 | OP_PONG, b"p".to_vec())
        );
    }

    #[tokio::test]
    async fn a_frame_over_the_limit_is_refused_skipped_and_the_close_still_read() {
        let (mut ws, mut client) = pair();
        let big = MAX_TRANSPORT_MESSAGE + 1;
        let writer = tokio::spawn(async move {
            let mut bytes = client_frame(true, OP_BINARY, &vec![7; big]);
            bytes.extend(client_frame(true, OP_CLOSE, &1000u16.to_be_bytes()));
            client.write_all(&bytes).await.unwrap();
            client
        });
        let e = ws.next().await.unwrap().unwrap_err();
        assert!(matches!(e, WsError::TooBig { .. }), "{e}");
        // the peer's close after it is still read (the closing handshake completes)
        let close = ws.next().await.unwrap().unwrap();
        assert!(
            matches!(close, Message::Close(Some(ref f)) if f.code == 1000),
            "{close:?}"
        );
        // never buffered whole
        assert!(ws.rbuf.capacity() < big);
        let mut client = writer.await.unwrap();
        assert!(ws.next().await.is_none());
        // the close was answered
        assert_eq!(read_frame(&mut client).await.0, 0x80 | OP_CLOSE);
    }

    #[tokio::test]
    async fn fragments_adding_up_past_the_limit_are_refused() {
        let (mut ws, mut client) = pair();
        let half = MAX_TRANSPORT_MESSAGE / 2 + 1;
        let writer = tokio::spawn(async move {
            let mut bytes = client_frame(false, OP_BINARY, &vec![1; half]);
            bytes.extend(client_frame(true, OP_CONTINUATION, &vec![1; half]));
            client.write_all(&bytes).await.unwrap();
            client
        });
        let e = ws.next().await.unwrap().unwrap_err();
        assert!(matches!(e, WsError::TooBig { .. }), "{e}");
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn protocol_violations_end_the_stream_with_an_error() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                {
                    let mut f = client_frame(true, OP_TEXT, b"x");
                    f[1] &= 0x7F; // unmasked
                    f.truncate(2);
                    f.push(b'x');
                    f
                },
                "unmasked",
            ),
            (
                {
                    let mut f = client_frame(true, OP_TEXT, b"x");
                    f[0] |= 0x40; // RSV1
                    f
                },
                "reserved",
            ),
            (client_frame(true, 0x3, b"x"), "opcode"),
            (client_frame(false, OP_PING, b"x"), "fragmented control"),
            (client_frame(true, OP_PING, &[0; 126]), "125"),
            (client_frame(true, OP_CONTINUATION, b"x"), "continuation"),
            (client_frame(true, OP_TEXT, &[0xC3, 0x28]), "UTF-8"),
        ];
        for (bytes, what) in cases {
            let (mut ws, mut client) = pair();
            client.write_all(&bytes).await.unwrap();
            // what follows is read and dropped, never parsed, until the peer closes
            client
                .write_all(&client_frame(true, OP_TEXT, b"after"))
                .await
                .unwrap();
            let e = ws.next().await.unwrap().unwrap_err();
            assert!(e.to_string().contains(what), "{what}: {e}");
            assert!(
                futures_util::FutureExt::now_or_never(ws.next()).is_none(),
                "{what}: nothing more is parsed"
            );
            drop(client);
            assert!(ws.next().await.is_none(), "{what}: the stream ends");
        }
    }

    #[tokio::test]
    async fn frames_written_are_unmasked_batched_and_the_buffer_let_go() {
        let (mut ws, mut client) = pair();
        let long = "z".repeat(70_000);
        ws.feed(Message::Text("hi".into())).await.unwrap();
        ws.feed(Message::Text(long.clone().into())).await.unwrap();
        ws.feed(Message::Binary(vec![9; 300].into())).await.unwrap();
        ws.flush().await.unwrap();
        assert_eq!(ws.buffered_capacity(), 0);
        assert_eq!(read_frame(&mut client).await, (0x81, b"hi".to_vec()));
        assert_eq!(read_frame(&mut client).await, (0x81, long.into_bytes()));
        assert_eq!(read_frame(&mut client).await, (0x82, vec![9; 300]));
        ws.send(Message::Close(Some(CloseFrame {
            code: 1009,
            reason: "é".repeat(100).into(),
        })))
        .await
        .unwrap();
        let (op, payload) = read_frame(&mut client).await;
        assert_eq!(op, 0x88);
        assert!(payload.len() <= MAX_CONTROL_PAYLOAD);
        assert_eq!(&payload[..2], &1009u16.to_be_bytes());
        assert!(std::str::from_utf8(&payload[2..]).is_ok());
        // nothing after the close
        assert!(matches!(
            ws.send(Message::Text("late".into())).await,
            Err(WsError::Closed)
        ));
    }

    #[test]
    fn unmask_matches_the_bytewise_definition() {
        let mask = [0xA1, 0x02, 0xF3, 0x44];
        for len in 0..40 {
            let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut fast = data.clone();
            unmask(&mut fast, mask);
            let slow: Vec<u8> = data
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            assert_eq!(fast, slow, "length {len}");
        }
    }
}
