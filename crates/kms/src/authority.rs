//! Normalisation of the HTTP/2 `:authority` pseudo-header sent by older kube-apiservers.
//!
//! kube-apiserver releases without the fix for kubernetes#126929 (up to 1.31, and k3s builds
//! of them) dial the KMS plugin with the unix socket path as the gRPC target, so every request
//! carries `:authority: /var/run/kmsplugin/socket.sock`. h2 0.4 (under tonic 0.14) rejects such
//! a request as "malformed authority" and resets the stream with PROTOCOL_ERROR, and it has no
//! switch to relax that check. Newer apiservers send `localhost`.
//!
//! [`AuthorityRewrite`] therefore sits between the accepted socket and h2 and edits the
//! client→server byte stream: it follows the HTTP/2 framing, HPACK-decodes every header block,
//! replaces an `:authority` that is not a valid URI authority with `localhost`, and re-encodes
//! the block. Because both HPACK dynamic tables are stateful, *every* block is decoded (with the
//! client's compression context) and re-encoded (with a context that the h2 server's decoder
//! mirrors); copying only some blocks verbatim would desynchronise the tables. All other frames
//! pass through byte for byte, without being buffered.
//!
//! Assumption: the h2 server advertises the default SETTINGS_HEADER_TABLE_SIZE of 4096 (tonic
//! and hyper do unless `header_table_size` is configured). A client may then shrink but never
//! grow its table beyond 4096, which is what our decoder enforces, and our encoder may use the
//! full 4096 that the server's decoder starts with.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Size of an HTTP/2 frame header.
const FRAME_HEAD_LEN: usize = 9;

const TYPE_HEADERS: u8 = 0x1;
const TYPE_PUSH_PROMISE: u8 = 0x5;
const TYPE_CONTINUATION: u8 = 0x9;

const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// Stream dependency (4 bytes) plus weight (1 byte) carried by a HEADERS frame with PRIORITY.
const PRIORITY_LEN: usize = 5;

/// Largest compressed header block (HEADERS + CONTINUATION fragments, padding and priority
/// removed) that we are willing to buffer. Real apiserver blocks are ~100 bytes; this only
/// bounds the memory a hostile client can make us hold.
const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// Cap on any frame length. The length field has 24 bits, so no frame can reach it; the check
/// documents the bound and stays correct if the parsing ever changes. Frames we do not buffer
/// are streamed through regardless of length, and the ones we buffer are capped far lower by
/// [`MAX_HEADERS_FRAME_LEN`] and [`MAX_HEADER_BLOCK`].
const MAX_FRAME_LEN: usize = 16 * 1024 * 1024;
/// Largest HEADERS frame payload that can still carry a fragment within [`MAX_HEADER_BLOCK`]:
/// pad-length byte, priority fields and up to 255 bytes of padding on top. Checked from the
/// frame header, before anything is buffered.
const MAX_HEADERS_FRAME_LEN: usize = MAX_HEADER_BLOCK + 1 + PRIORITY_LEN + 255;
/// Cap on the decoded header list (RFC 9113 §6.5.2 size: name + value + 32 per field). HPACK
/// lets a 64 KiB block reference a 4 KiB table entry thousands of times; without this cap each
/// reference would cost us a 4 KiB comparison in the re-encoder. 1 MiB is 64 times what hyper
/// (under tonic) accepts by default, so no request h2 would serve is refused here.
const MAX_DECODED_LIST: usize = 1024 * 1024;
/// Frame size we emit: the SETTINGS_MAX_FRAME_SIZE default, which every HTTP/2 server accepts
/// whatever it advertised.
const OUT_MAX_FRAME: usize = 16_384;
/// HPACK dynamic table size, the HTTP/2 default the h2 server advertises (see module docs).
const HPACK_TABLE_SIZE: usize = 4096;
/// Read size used while the adapter has to look at the bytes.
const READ_CHUNK: usize = 16 * 1024;
/// Value substituted for an unusable `:authority`; it is what fixed apiservers send.
const REPLACEMENT_AUTHORITY: &[u8] = b"localhost";
/// How much of the offending authority goes into the debug log.
const MAX_LOGGED_AUTHORITY: usize = 256;

/// Server-side IO adapter that normalises the HTTP/2 `:authority` sent by older kube-apiservers.
///
/// Wrap each accepted connection (e.g. a `tokio::net::UnixStream`) before handing it to the
/// HTTP/2 server. Reads (client→server) are rewritten as described in the module docs; writes
/// (server→client) pass straight through. A protocol violation in the header-block framing, an
/// HPACK decoding error, a compressed header block over 64 KiB or a decoded header list over
/// 1 MiB makes `poll_read` return an [`io::ErrorKind::InvalidData`] error (and keep returning
/// it), so the connection closes. Input that does not start with the HTTP/2 client preface is
/// passed through untouched, so h2 reports it.
pub struct AuthorityRewrite<S> {
    inner: S,
    rewriter: Rewriter,
    /// Bytes read from `inner` that the rewriter has not consumed yet: `scratch[raw_pos..raw_len]`.
    /// Allocated on first use, so a connection that never sends anything costs nothing.
    scratch: Vec<u8>,
    raw_pos: usize,
    raw_len: usize,
    /// Rewritten frames owed to the reader: `out[out_pos..]`. They must be delivered before any
    /// later input, so nothing else is processed while this is non-empty.
    out: Vec<u8>,
    out_pos: usize,
    /// Set once `poll_read` has failed with InvalidData; the message is repeated on every later
    /// read so the stream never resumes in an inconsistent state.
    failed: Option<String>,
}

impl<S> AuthorityRewrite<S> {
    /// Wraps `inner`; count rewrites with [`AuthorityRewrite::rewritten`].
    pub fn new(inner: S) -> Self {
        Self::build(inner, None)
    }

    /// Wraps `inner` and also adds every rewrite to `counter`, so a metric can be shared by all
    /// connections.
    pub fn with_counter(inner: S, counter: Arc<AtomicU64>) -> Self {
        Self::build(inner, Some(counter))
    }

    fn build(inner: S, counter: Option<Arc<AtomicU64>>) -> Self {
        Self {
            inner,
            rewriter: Rewriter::new(counter),
            scratch: Vec::new(),
            raw_pos: 0,
            raw_len: 0,
            out: Vec::new(),
            out_pos: 0,
            failed: None,
        }
    }

    /// The wrapped stream, e.g. to read the peer credentials of a unix socket.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Number of `:authority` values replaced with `localhost` on this connection.
    pub fn rewritten(&self) -> u64 {
        self.rewriter.rewritten
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for AuthorityRewrite<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let start = buf.filled().len();
        loop {
            // Rewritten frames first: they precede everything still unprocessed.
            if let Some(pending) = this.out.get(this.out_pos..).filter(|p| !p.is_empty()) {
                let n = pending.len().min(buf.remaining());
                if let Some(chunk) = pending.get(..n) {
                    buf.put_slice(chunk);
                }
                this.out_pos += n;
                if this.out_pos < this.out.len() {
                    return Poll::Ready(Ok(()));
                }
                this.out.clear();
                this.out_pos = 0;
            }
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if let Some(msg) = &this.failed {
                return Poll::Ready(Err(invalid(msg.clone())));
            }
            if let Some(raw) = this
                .scratch
                .get(this.raw_pos..this.raw_len)
                .filter(|r| !r.is_empty())
            {
                match this.rewriter.step(raw, buf.remaining(), &mut this.out) {
                    Ok(Step { consumed, pass }) => {
                        if pass {
                            if let Some(chunk) = raw.get(..consumed) {
                                buf.put_slice(chunk);
                            }
                        }
                        this.raw_pos += consumed;
                    }
                    Err(msg) => {
                        // Drop any half-built output and everything after the bad frame.
                        this.out.clear();
                        this.out_pos = 0;
                        this.raw_pos = this.raw_len;
                        this.failed = Some(msg.clone());
                        return Poll::Ready(Err(invalid(msg)));
                    }
                }
                continue;
            }
            if buf.filled().len() > start {
                // Deliver what we have rather than wait for more input.
                return Poll::Ready(Ok(()));
            }
            if this.rewriter.is_passthrough() {
                // Not HTTP/2 (or not any more of our business): no copying at all.
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            if this.scratch.is_empty() {
                this.scratch = vec![0; READ_CHUNK];
            }
            let mut raw = ReadBuf::new(&mut this.scratch);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut raw))?;
            let n = raw.filled().len();
            if n == 0 {
                // EOF. An incomplete frame is simply dropped: h2 sees the connection end, as it
                // would have without us.
                return Poll::Ready(Ok(()));
            }
            this.raw_pos = 0;
            this.raw_len = n;
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for AuthorityRewrite<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Outcome of one [`Rewriter::step`].
struct Step {
    /// Input bytes used up.
    consumed: usize,
    /// Whether those bytes go to the reader verbatim (otherwise they were absorbed, and any
    /// replacement has been appended to `out`).
    pass: bool,
}

/// A parsed frame header.
#[derive(Clone, Copy)]
struct FrameHead {
    len: usize,
    ty: u8,
    flags: u8,
    stream: u32,
}

impl FrameHead {
    fn parse(b: &[u8; FRAME_HEAD_LEN]) -> Self {
        Self {
            len: (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]),
            ty: b[3],
            flags: b[4],
            // The reserved high bit must be ignored on receipt (RFC 9113 §4.1).
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }

    /// Encodes a frame header; `len` is at most [`OUT_MAX_FRAME`], so it fits in 24 bits.
    fn encode(len: usize, ty: u8, flags: u8, stream: u32) -> [u8; FRAME_HEAD_LEN] {
        let l = (len as u32).to_be_bytes();
        let s = stream.to_be_bytes();
        [l[1], l[2], l[3], ty, flags, s[0], s[1], s[2], s[3]]
    }
}

/// Parser position in the client→server byte stream.
#[derive(Clone, Copy)]
enum State {
    /// Matching the connection preface; holds the number of bytes matched so far.
    Preface(usize),
    /// Reading a frame header (possibly split across reads, see `Rewriter::head`).
    Head,
    /// Passing this many more payload bytes of a non-header frame through.
    Skip(usize),
    /// Absorbing this many more payload bytes of a HEADERS/CONTINUATION frame.
    Collect(usize),
    /// Not (or no longer) parsing: everything passes through.
    Passthrough,
}

/// A header block whose HEADERS frame has arrived but whose END_HEADERS has not.
struct OpenBlock {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; PRIORITY_LEN]>,
}

/// The IO-independent part of the adapter: framing state plus both HPACK contexts.
struct Rewriter {
    state: State,
    /// Frame header bytes collected while a header straddles reads.
    head: [u8; FRAME_HEAD_LEN],
    head_len: usize,
    /// Header of the HEADERS/CONTINUATION frame being collected.
    cur: FrameHead,
    open: Option<OpenBlock>,
    /// Compressed header block being accumulated (fragments only).
    block: Vec<u8>,
    /// Re-encoded block, reused between blocks to avoid reallocating.
    encoded: Vec<u8>,
    /// The client's compression context.
    decoder: loona_hpack::Decoder<'static>,
    /// Our compression context, mirrored by the h2 server's decoder.
    encoder: loona_hpack::Encoder<'static>,
    rewritten: u64,
    counter: Option<Arc<AtomicU64>>,
}

impl Rewriter {
    fn new(counter: Option<Arc<AtomicU64>>) -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        // Constant, not client-controlled: `set_max_table_size` asserts against this bound, and a
        // client's size update above it becomes a decoding error instead.
        decoder.set_max_allowed_table_size(HPACK_TABLE_SIZE);
        let mut encoder = loona_hpack::Encoder::new();
        encoder.set_max_table_size(HPACK_TABLE_SIZE);
        Self {
            state: State::Preface(0),
            head: [0; FRAME_HEAD_LEN],
            head_len: 0,
            cur: FrameHead {
                len: 0,
                ty: 0,
                flags: 0,
                stream: 0,
            },
            open: None,
            block: Vec::new(),
            encoded: Vec::new(),
            decoder,
            encoder,
            rewritten: 0,
            counter,
        }
    }

    fn is_passthrough(&self) -> bool {
        matches!(self.state, State::Passthrough)
    }

    /// Consumes a prefix of `input` (non-empty; `room` > 0 is the space the reader has left).
    /// Verbatim bytes are reported as `pass` and never exceed `room`; absorbed bytes may append
    /// rewritten frames to `out`, which the caller must deliver before calling again. Always
    /// makes progress. Errors are the message for an InvalidData error.
    fn step(&mut self, input: &[u8], room: usize, out: &mut Vec<u8>) -> Result<Step, String> {
        match self.state {
            State::Passthrough => Ok(Step {
                consumed: input.len().min(room),
                pass: true,
            }),
            State::Preface(matched) => {
                let want = PREFACE.get(matched..).unwrap_or_default();
                let n = want.len().min(input.len()).min(room);
                if input.get(..n) == want.get(..n) {
                    self.state = if matched + n == PREFACE.len() {
                        State::Head
                    } else {
                        State::Preface(matched + n)
                    };
                    Ok(Step {
                        consumed: n,
                        pass: true,
                    })
                } else {
                    // Not an HTTP/2 prior-knowledge client: hand h2 the raw bytes so it reports
                    // the problem itself.
                    self.state = State::Passthrough;
                    Ok(Step {
                        consumed: input.len().min(room),
                        pass: true,
                    })
                }
            }
            State::Head => {
                // Fast path: a whole frame header in this read, forwarded in place.
                if self.head_len == 0 && room >= FRAME_HEAD_LEN {
                    if let Some(h) = input.first_chunk::<FRAME_HEAD_LEN>() {
                        let pass = self.on_head(FrameHead::parse(h), out)?;
                        return Ok(Step {
                            consumed: FRAME_HEAD_LEN,
                            pass,
                        });
                    }
                }
                // Split header (or tiny read buffer): collect it, and if the frame is to be
                // forwarded, emit the header from `out`.
                let take = (FRAME_HEAD_LEN - self.head_len).min(input.len());
                if let (Some(dst), Some(src)) = (
                    self.head.get_mut(self.head_len..self.head_len + take),
                    input.get(..take),
                ) {
                    dst.copy_from_slice(src);
                }
                self.head_len += take;
                if self.head_len == FRAME_HEAD_LEN {
                    self.head_len = 0;
                    let head = self.head;
                    if self.on_head(FrameHead::parse(&head), out)? {
                        out.extend_from_slice(&head);
                    }
                }
                Ok(Step {
                    consumed: take,
                    pass: false,
                })
            }
            State::Skip(remaining) => {
                let n = remaining.min(input.len()).min(room);
                self.state = if n == remaining {
                    State::Head
                } else {
                    State::Skip(remaining - n)
                };
                Ok(Step {
                    consumed: n,
                    pass: true,
                })
            }
            State::Collect(remaining) => {
                let n = remaining.min(input.len());
                self.block
                    .extend_from_slice(input.get(..n).unwrap_or_default());
                if n == remaining {
                    self.state = State::Head;
                    self.end_frame(out)?;
                } else {
                    self.state = State::Collect(remaining - n);
                }
                Ok(Step {
                    consumed: n,
                    pass: false,
                })
            }
        }
    }

    /// Decides what to do with a frame once its header is known; returns whether the header is
    /// forwarded verbatim.
    fn on_head(&mut self, head: FrameHead, out: &mut Vec<u8>) -> Result<bool, String> {
        if head.len > MAX_FRAME_LEN {
            return Err(format!(
                "HTTP/2 frame length {} exceeds the {MAX_FRAME_LEN}-byte cap",
                head.len
            ));
        }
        if let Some(open) = &self.open {
            // RFC 9113 §6.10: nothing but CONTINUATION frames of the same stream may follow a
            // HEADERS frame without END_HEADERS. h2 would fail the connection too; we cannot
            // forward anything because the HEADERS frame has already been absorbed.
            if head.ty != TYPE_CONTINUATION || head.stream != open.stream {
                return Err(format!(
                    "HTTP/2 frame of type {:#x} on stream {} inside the header block of stream {} \
                     (expected CONTINUATION)",
                    head.ty, head.stream, open.stream
                ));
            }
            if head.len > MAX_HEADER_BLOCK.saturating_sub(self.block.len()) {
                return Err(format!(
                    "HTTP/2 header block on stream {} exceeds {MAX_HEADER_BLOCK} bytes",
                    head.stream
                ));
            }
            return self.begin_collect(head, out).map(|()| false);
        }
        match head.ty {
            TYPE_HEADERS => {
                if head.len > MAX_HEADERS_FRAME_LEN {
                    return Err(format!(
                        "HTTP/2 HEADERS frame length {} on stream {} exceeds the \
                         {MAX_HEADER_BLOCK}-byte header block cap",
                        head.len, head.stream
                    ));
                }
                self.begin_collect(head, out).map(|()| false)
            }
            TYPE_CONTINUATION => Err(format!(
                "HTTP/2 CONTINUATION frame on stream {} without a preceding HEADERS frame",
                head.stream
            )),
            // Only servers push; a client PUSH_PROMISE is a connection error (RFC 9113 §8.4), and
            // its header block would desynchronise our decoder if forwarded.
            TYPE_PUSH_PROMISE => Err(format!(
                "HTTP/2 PUSH_PROMISE frame from the client on stream {}",
                head.stream
            )),
            _ => {
                self.state = if head.len == 0 {
                    State::Head
                } else {
                    State::Skip(head.len)
                };
                Ok(true)
            }
        }
    }

    fn begin_collect(&mut self, head: FrameHead, out: &mut Vec<u8>) -> Result<(), String> {
        self.cur = head;
        if head.len == 0 {
            self.state = State::Head;
            self.end_frame(out)
        } else {
            self.state = State::Collect(head.len);
            Ok(())
        }
    }

    /// A HEADERS or CONTINUATION payload is complete in `self.block`.
    fn end_frame(&mut self, out: &mut Vec<u8>) -> Result<(), String> {
        let head = self.cur;
        if head.ty == TYPE_HEADERS {
            // A HEADERS frame always starts a block, so `block` holds exactly its payload.
            let payload = self.block.as_slice();
            let (pad, rest) = if head.flags & FLAG_PADDED != 0 {
                match payload.split_first() {
                    Some((&pad, rest)) => (usize::from(pad), rest),
                    None => return Err(self.malformed_headers("PADDED without a pad length")),
                }
            } else {
                (0, payload)
            };
            let (priority, rest) = if head.flags & FLAG_PRIORITY != 0 {
                match rest.split_first_chunk::<PRIORITY_LEN>() {
                    Some((priority, rest)) => (Some(*priority), rest),
                    None => return Err(self.malformed_headers("PRIORITY fields truncated")),
                }
            } else {
                (None, rest)
            };
            let Some(fragment_len) = rest.len().checked_sub(pad) else {
                return Err(self.malformed_headers("padding longer than the payload"));
            };
            let fragment_start = payload.len() - rest.len();
            self.block.truncate(fragment_start + fragment_len);
            self.block.drain(..fragment_start);
            if self.block.len() > MAX_HEADER_BLOCK {
                return Err(format!(
                    "HTTP/2 header block on stream {} exceeds {MAX_HEADER_BLOCK} bytes",
                    head.stream
                ));
            }
            self.open = Some(OpenBlock {
                stream: head.stream,
                end_stream: head.flags & FLAG_END_STREAM != 0,
                priority,
            });
        }
        if head.flags & FLAG_END_HEADERS != 0 {
            self.end_block(out)?;
        }
        Ok(())
    }

    fn malformed_headers(&self, what: &str) -> String {
        format!(
            "malformed HTTP/2 HEADERS frame on stream {}: {what}",
            self.cur.stream
        )
    }

    /// Decodes the complete block with the client's context, re-encodes it with ours (fixing
    /// `:authority` on the way) and appends the resulting frames to `out`.
    fn end_block(&mut self, out: &mut Vec<u8>) -> Result<(), String> {
        let Some(open) = self.open.take() else {
            return Err("HTTP/2 header block ended without a HEADERS frame".to_owned());
        };
        let log_first = self.rewritten == 0;
        let Self {
            decoder,
            encoder,
            block,
            encoded,
            ..
        } = self;
        encoded.clear();
        let mut rewrites = 0u64;
        let mut first_bad: Option<String> = None;
        let mut encode_error: Option<io::Error> = None;
        let mut list_size = 0usize;
        let decoded = decoder.decode_with_cb(block, |name, value| {
            list_size = list_size.saturating_add(name.len() + value.len() + 32);
            if list_size > MAX_DECODED_LIST {
                // The callback cannot abort decoding; just stop doing work for it.
                return;
            }
            let value: &[u8] = if name.as_ref() == b":authority"
                && http::uri::Authority::try_from(value.as_ref()).is_err()
            {
                rewrites += 1;
                if log_first && first_bad.is_none() {
                    first_bad = Some(loggable(&value));
                }
                REPLACEMENT_AUTHORITY
            } else {
                &value
            };
            // Writing into a Vec cannot fail, but don't rely on it silently.
            if let Err(e) = encoder.encode_header_into((&name, value), encoded) {
                encode_error.get_or_insert(e);
            }
        });
        block.clear();
        if let Err(e) = decoded {
            return Err(format!(
                "HPACK decoding of the header block on stream {} failed: {e}",
                open.stream
            ));
        }
        if list_size > MAX_DECODED_LIST {
            return Err(format!(
                "decoded header list on stream {} exceeds {MAX_DECODED_LIST} bytes",
                open.stream
            ));
        }
        if let Some(e) = encode_error {
            return Err(format!(
                "HPACK re-encoding of the header block on stream {} failed: {e}",
                open.stream
            ));
        }
        if rewrites > 0 {
            if log_first {
                tracing::debug!(
                    stream_id = open.stream,
                    authority = first_bad.as_deref().unwrap_or_default(),
                    "rewrote HTTP/2 :authority that is not a valid URI authority to localhost \
                     (kube-apiserver without the kubernetes#126929 fix); later rewrites on this \
                     connection are counted, not logged"
                );
            }
            self.rewritten += rewrites;
            if let Some(counter) = &self.counter {
                counter.fetch_add(rewrites, Ordering::Relaxed);
            }
        }
        write_block(out, &open, &self.encoded);
        Ok(())
    }
}

/// Lossy, length-limited rendering of an authority value for the log.
fn loggable(value: &[u8]) -> String {
    let shown = value.get(..MAX_LOGGED_AUTHORITY).unwrap_or(value);
    String::from_utf8_lossy(shown).into_owned()
}

/// Emits `block` as one HEADERS frame (END_STREAM and PRIORITY as received, never PADDED) plus
/// CONTINUATION frames when it does not fit in [`OUT_MAX_FRAME`].
fn write_block(out: &mut Vec<u8>, open: &OpenBlock, block: &[u8]) {
    let mut flags = if open.end_stream { FLAG_END_STREAM } else { 0 };
    let priority: &[u8] = match &open.priority {
        Some(p) => {
            flags |= FLAG_PRIORITY;
            p
        }
        None => &[],
    };
    let (first, mut rest) = block.split_at(block.len().min(OUT_MAX_FRAME - priority.len()));
    if rest.is_empty() {
        flags |= FLAG_END_HEADERS;
    }
    out.reserve(
        block.len() + priority.len() + FRAME_HEAD_LEN * (1 + rest.len() / OUT_MAX_FRAME + 1),
    );
    out.extend_from_slice(&FrameHead::encode(
        priority.len() + first.len(),
        TYPE_HEADERS,
        flags,
        open.stream,
    ));
    out.extend_from_slice(priority);
    out.extend_from_slice(first);
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(rest.len().min(OUT_MAX_FRAME));
        rest = tail;
        let flags = if rest.is_empty() { FLAG_END_HEADERS } else { 0 };
        out.extend_from_slice(&FrameHead::encode(
            chunk.len(),
            TYPE_CONTINUATION,
            flags,
            open.stream,
        ));
        out.extend_from_slice(chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixStream;
    use tokio::sync::mpsc;

    /// What a pre-1.32 kube-apiserver sends.
    const PATH_AUTHORITY: &str = "/var/run/kmsplugin/socket.sock";
    const TIMEOUT: Duration = Duration::from_secs(10);

    type HeaderList = Vec<(Vec<u8>, Vec<u8>)>;

    // ---------- frame and header helpers ----------

    fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap();
        assert!(len < 1 << 24);
        let l = len.to_be_bytes();
        let mut f = vec![l[1], l[2], l[3], ty, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// Just a frame header claiming `len` payload bytes.
    fn head_only(len: u32, ty: u8, flags: u8, stream: u32) -> Vec<u8> {
        let l = len.to_be_bytes();
        let mut f = vec![l[1], l[2], l[3], ty, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f
    }

    fn settings() -> Vec<u8> {
        // SETTINGS_ENABLE_PUSH = 0, SETTINGS_INITIAL_WINDOW_SIZE = 4 MiB
        let mut p = vec![0, 2, 0, 0, 0, 0];
        p.extend_from_slice(&[0, 4, 0, 0x40, 0, 0]);
        frame(0x4, 0, 0, &p)
    }

    fn hl(pairs: &[(&str, &str)]) -> HeaderList {
        pairs
            .iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    /// The block grpc-go in kube-apiserver sends for a KMS v2 call.
    fn grpc_request(authority: &str, method: &str, timeout_us: u64) -> HeaderList {
        let path = format!("/v2.KeyManagementService/{method}");
        let timeout = format!("{timeout_us}u");
        hl(&[
            (":method", "POST"),
            (":scheme", "http"),
            (":path", &path),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("user-agent", "grpc-go/1.65.0"),
            ("te", "trailers"),
            ("grpc-timeout", &timeout),
        ])
    }

    fn with_authority(headers: &HeaderList, authority: &str) -> HeaderList {
        headers
            .iter()
            .map(|(n, v)| {
                if n == b":authority" {
                    (n.clone(), authority.as_bytes().to_vec())
                } else {
                    (n.clone(), v.clone())
                }
            })
            .collect()
    }

    /// Client-side HPACK encoder that indexes every header it has not sent before (literal
    /// name, incremental indexing) and refers to earlier ones by dynamic-table index, as Go's
    /// encoder in kube-apiserver does for `:authority`. (loona's encoder would send `:authority`
    /// as a never-indexed literal, leaving the dynamic-table path untested.)
    struct ClientHpack {
        /// Newest first, as HPACK numbers them.
        table: std::collections::VecDeque<(Vec<u8>, Vec<u8>)>,
        size: usize,
        max: usize,
    }

    impl ClientHpack {
        fn new() -> Self {
            Self {
                table: Default::default(),
                size: 0,
                max: 4096,
            }
        }

        fn int(out: &mut Vec<u8>, mut value: usize, prefix_bits: u32, flags: u8) {
            let max_prefix = (1usize << prefix_bits) - 1;
            if value < max_prefix {
                out.push(flags | value as u8);
                return;
            }
            out.push(flags | max_prefix as u8);
            value -= max_prefix;
            while value >= 128 {
                out.push((value % 128) as u8 | 0x80);
                value /= 128;
            }
            out.push(value as u8);
        }

        fn evict(&mut self) {
            while self.size > self.max {
                let (n, v) = self.table.pop_back().unwrap();
                self.size -= n.len() + v.len() + 32;
            }
        }

        /// Changes the table size and returns the size-update instruction announcing it.
        fn resize(&mut self, max: usize) -> Vec<u8> {
            self.max = max;
            self.evict();
            let mut out = Vec::new();
            Self::int(&mut out, max, 5, 0x20);
            out
        }

        fn encode(&mut self, headers: &HeaderList) -> Vec<u8> {
            let mut out = Vec::new();
            for (n, v) in headers {
                if let Some(i) = self.table.iter().position(|(tn, tv)| tn == n && tv == v) {
                    Self::int(&mut out, 62 + i, 7, 0x80);
                    continue;
                }
                out.push(0x40);
                Self::int(&mut out, n.len(), 7, 0);
                out.extend_from_slice(n);
                Self::int(&mut out, v.len(), 7, 0);
                out.extend_from_slice(v);
                self.size += n.len() + v.len() + 32;
                self.table.push_front((n.clone(), v.clone()));
                self.evict();
            }
            out
        }
    }

    #[derive(Debug, Clone, PartialEq)]
    struct Frame {
        ty: u8,
        flags: u8,
        stream: u32,
        payload: Vec<u8>,
    }

    /// Splits adapter output into preface + frames, asserting it is well formed.
    fn parse_output(bytes: &[u8]) -> Vec<Frame> {
        let mut rest = bytes.strip_prefix(PREFACE.as_slice()).expect("preface");
        let mut frames = Vec::new();
        while !rest.is_empty() {
            let (h, tail) = rest.split_first_chunk::<9>().expect("frame header");
            let head = FrameHead::parse(h);
            let (payload, tail) = tail.split_at(head.len);
            frames.push(Frame {
                ty: head.ty,
                flags: head.flags,
                stream: head.stream,
                payload: payload.to_vec(),
            });
            rest = tail;
        }
        frames
    }

    #[derive(Debug, PartialEq)]
    struct Block {
        stream: u32,
        end_stream: bool,
        priority: Option<[u8; 5]>,
        headers: HeaderList,
    }

    /// Decodes the header blocks in adapter output the way the h2 server would (fresh 4096-byte
    /// context), checking the invariants the adapter promises for emitted frames.
    fn decode_output(frames: &[Frame]) -> Vec<Block> {
        let mut decoder = loona_hpack::Decoder::new();
        let mut blocks = Vec::new();
        let mut open: Option<(Block, Vec<u8>)> = None;
        for f in frames {
            assert!(f.payload.len() <= OUT_MAX_FRAME, "emitted frame too large");
            match f.ty {
                TYPE_HEADERS => {
                    assert!(open.is_none());
                    assert_eq!(f.flags & FLAG_PADDED, 0, "PADDED must be cleared");
                    let (priority, fragment) = if f.flags & FLAG_PRIORITY != 0 {
                        let (p, rest) = f.payload.split_first_chunk::<5>().unwrap();
                        (Some(*p), rest.to_vec())
                    } else {
                        (None, f.payload.clone())
                    };
                    let block = Block {
                        stream: f.stream,
                        end_stream: f.flags & FLAG_END_STREAM != 0,
                        priority,
                        headers: Vec::new(),
                    };
                    open = Some((block, fragment));
                }
                TYPE_CONTINUATION => {
                    let (block, fragment) = open.as_mut().expect("CONTINUATION inside a block");
                    assert_eq!(block.stream, f.stream);
                    fragment.extend_from_slice(&f.payload);
                }
                _ => {
                    assert!(open.is_none(), "frame interleaved in emitted block");
                    continue;
                }
            }
            if f.flags & FLAG_END_HEADERS != 0 {
                let (mut block, fragment) = open.take().unwrap();
                block.headers = decoder.decode(&fragment).expect("adapter output decodes");
                blocks.push(block);
            }
        }
        assert!(open.is_none(), "unterminated block in output");
        blocks
    }

    // ---------- in-memory IO driven by hand ----------

    /// Inner stream that hands out `chunk` bytes per read and swallows writes.
    struct Scripted {
        data: Vec<u8>,
        pos: usize,
        chunk: usize,
    }

    impl AsyncRead for Scripted {
        fn poll_read(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            let n = this
                .chunk
                .min(buf.remaining())
                .min(this.data.len() - this.pos);
            buf.put_slice(&this.data[this.pos..this.pos + n]);
            this.pos += n;
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Scripted {
        fn poll_write(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn scripted(data: &[u8], chunk: usize) -> AuthorityRewrite<Scripted> {
        AuthorityRewrite::new(Scripted {
            data: data.to_vec(),
            pos: 0,
            chunk,
        })
    }

    /// One `poll_read` into a fresh buffer of `bufsize` bytes.
    fn read_once<S: AsyncRead + AsyncWrite + Unpin>(
        a: &mut AuthorityRewrite<S>,
        bufsize: usize,
    ) -> io::Result<Vec<u8>> {
        let mut storage = vec![0u8; bufsize];
        let mut buf = ReadBuf::new(&mut storage);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match Pin::new(a).poll_read(&mut cx, &mut buf) {
            Poll::Ready(Ok(())) => Ok(buf.filled().to_vec()),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => panic!("Scripted never blocks"),
        }
    }

    struct Run {
        out: Vec<u8>,
        err: Option<io::Error>,
        rewritten: u64,
    }

    /// Pushes `input` through the adapter, `chunk` bytes per inner read and `bufsize` bytes
    /// per outer read, until EOF or the first error.
    fn run(input: &[u8], chunk: usize, bufsize: usize) -> Run {
        let mut a = scripted(input, chunk);
        let mut out = Vec::new();
        // Generous bound so a livelock shows up as a failure rather than a hang.
        for _ in 0..(input.len() * 4 + 1000) {
            match read_once(&mut a, bufsize) {
                Ok(bytes) if bytes.is_empty() => {
                    return Run {
                        out,
                        err: None,
                        rewritten: a.rewritten(),
                    }
                }
                Ok(bytes) => out.extend_from_slice(&bytes),
                Err(e) => {
                    return Run {
                        out,
                        err: Some(e),
                        rewritten: a.rewritten(),
                    }
                }
            }
        }
        panic!("adapter made no progress");
    }

    fn run_ok(input: &[u8], chunk: usize, bufsize: usize) -> Run {
        let r = run(input, chunk, bufsize);
        if let Some(e) = &r.err {
            panic!("unexpected error (chunk {chunk}, buf {bufsize}): {e}");
        }
        r
    }

    fn expect_invalid(input: &[u8], needle: &str) {
        for (chunk, bufsize) in [(usize::MAX, 1 << 16), (1, 1 << 16), (3, 7)] {
            let r = run(input, chunk, bufsize);
            let err = r
                .err
                .unwrap_or_else(|| panic!("expected an error mentioning {needle:?}"));
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            assert!(
                err.to_string().contains(needle),
                "error {err:?} does not mention {needle:?}"
            );
        }
    }

    fn preface_and_settings() -> Vec<u8> {
        let mut v = PREFACE.to_vec();
        v.extend(settings());
        v
    }

    // ---------- byte-level tests ----------

    #[test]
    fn rewrites_only_invalid_authorities() {
        let mut c = ClientHpack::new();
        let mut input = preface_and_settings();
        let cases = [
            (PATH_AUTHORITY, "localhost"),
            ("localhost", "localhost"),
            ("127.0.0.1:1234", "127.0.0.1:1234"),
            ("[::1]:8080", "[::1]:8080"),
            ("", "localhost"),
            (PATH_AUTHORITY, "localhost"),
            ("unix:///var/run/kmsplugin/socket.sock", "localhost"),
        ];
        let mut expected = Vec::new();
        for (i, (sent, seen)) in cases.iter().enumerate() {
            let stream = 1 + 2 * i as u32;
            let h = grpc_request(sent, "Status", 2_999_965 - i as u64);
            let block = c.encode(&h);
            if i == 5 {
                // The repeated path-form authority is only a dynamic-table reference now.
                assert!(!block.windows(8).any(|w| w == b"/var/run"));
            }
            input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, stream, &block));
            input.extend(frame(0x0, FLAG_END_STREAM, stream, b"\0\0\0\0\0"));
            expected.push(with_authority(&h, seen));
        }
        let r = run_ok(&input, usize::MAX, 1 << 16);
        assert_eq!(r.rewritten, 4);
        let frames = parse_output(&r.out);
        // Non-header frames are untouched, in order.
        assert_eq!(frames[0], parse_output(&preface_and_settings())[0]);
        let data: Vec<_> = frames.iter().filter(|f| f.ty == 0x0).collect();
        assert_eq!(data.len(), cases.len());
        assert!(data
            .iter()
            .all(|f| f.payload == b"\0\0\0\0\0" && f.flags == 1));
        let blocks = decode_output(&frames);
        let got: Vec<_> = blocks.iter().map(|b| b.headers.clone()).collect();
        assert_eq!(got, expected);
        assert!(blocks.iter().all(|b| !b.end_stream && b.priority.is_none()));
    }

    #[test]
    fn many_requests_keep_hpack_contexts_in_sync() {
        // Enough traffic to fill and churn the 4096-byte tables, plus client size updates.
        let mut c = ClientHpack::new();
        let mut input = preface_and_settings();
        let mut expected = Vec::new();
        for i in 0..300u32 {
            let stream = 1 + 2 * i;
            let authority = match i % 3 {
                0 => PATH_AUTHORITY,
                1 => "localhost",
                _ => "127.0.0.1:1234",
            };
            let mut h = grpc_request(
                authority,
                ["Encrypt", "Decrypt", "Status"][i as usize % 3],
                u64::from(i),
            );
            if i % 7 == 0 {
                // Large, unique values force evictions on both sides.
                h.push((
                    b"x-filler".to_vec(),
                    vec![b'a' + (i % 26) as u8; 700 + i as usize],
                ));
            }
            let mut block = Vec::new();
            if i == 100 {
                // Client shrinks its table to 256 bytes ...
                block.extend(c.resize(256));
            }
            if i == 150 {
                // ... and grows it back to 4096.
                block.extend(c.resize(4096));
            }
            block.extend(c.encode(&h));
            input.extend(frame(
                TYPE_HEADERS,
                FLAG_END_HEADERS | FLAG_END_STREAM,
                stream,
                &block,
            ));
            expected.push(with_authority(
                &h,
                if i % 3 == 0 { "localhost" } else { authority },
            ));
        }
        let r = run_ok(&input, usize::MAX, 1 << 16);
        assert_eq!(r.rewritten, 100);
        let blocks = decode_output(&parse_output(&r.out));
        assert_eq!(blocks.len(), 300);
        for (i, (b, e)) in blocks.iter().zip(&expected).enumerate() {
            assert_eq!(&b.headers, e, "request {i}");
            assert!(b.end_stream);
        }
    }

    /// HEADERS(PADDED|PRIORITY) + CONTINUATION + CONTINUATION(END_HEADERS) carrying one block.
    fn split_padded_priority_request(
        c: &mut ClientHpack,
        stream: u32,
        headers: &HeaderList,
    ) -> Vec<u8> {
        let block = c.encode(headers);
        let (a, rest) = block.split_at(block.len() / 3);
        let (b, d) = rest.split_at(rest.len() / 2);
        let mut payload = vec![7u8]; // pad length
        payload.extend_from_slice(&[0, 0, 0, 0, 200]); // depends on stream 0, weight 201
        payload.extend_from_slice(a);
        payload.extend_from_slice(&[0; 7]);
        let mut v = frame(
            TYPE_HEADERS,
            FLAG_PADDED | FLAG_PRIORITY | FLAG_END_STREAM,
            stream,
            &payload,
        );
        v.extend(frame(TYPE_CONTINUATION, 0, stream, b));
        v.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, stream, d));
        v
    }

    #[test]
    fn continuation_padding_and_priority() {
        let mut c = ClientHpack::new();
        let mut input = preface_and_settings();
        let h1 = grpc_request(PATH_AUTHORITY, "Decrypt", 2_999_965);
        let h2 = grpc_request(PATH_AUTHORITY, "Encrypt", 2_999_964);
        input.extend(split_padded_priority_request(&mut c, 1, &h1));
        // Padded only, no priority; block split in two.
        let block = c.encode(&h2);
        let (a, b) = block.split_at(2);
        let mut payload = vec![3u8];
        payload.extend_from_slice(a);
        payload.extend_from_slice(&[0; 3]);
        input.extend(frame(TYPE_HEADERS, FLAG_PADDED, 3, &payload));
        input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 3, b));
        // Zero-length CONTINUATION ending a block is legal too.
        let block = c.encode(&h1);
        input.extend(frame(TYPE_HEADERS, FLAG_END_STREAM, 5, &block));
        input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 5, &[]));

        let r = run_ok(&input, usize::MAX, 1 << 16);
        assert_eq!(r.rewritten, 3);
        let frames = parse_output(&r.out);
        let header_frames: Vec<_> = frames.iter().filter(|f| f.ty != 0x4).collect();
        assert_eq!(
            header_frames.len(),
            3,
            "each block becomes a single HEADERS frame"
        );
        assert_eq!(
            header_frames[0].flags,
            FLAG_PRIORITY | FLAG_END_STREAM | FLAG_END_HEADERS
        );
        assert_eq!(header_frames[1].flags, FLAG_END_HEADERS);
        let blocks = decode_output(&frames);
        assert_eq!(
            blocks,
            vec![
                Block {
                    stream: 1,
                    end_stream: true,
                    priority: Some([0, 0, 0, 0, 200]),
                    headers: with_authority(&h1, "localhost"),
                },
                Block {
                    stream: 3,
                    end_stream: false,
                    priority: None,
                    headers: with_authority(&h2, "localhost"),
                },
                Block {
                    stream: 5,
                    end_stream: true,
                    priority: None,
                    headers: with_authority(&h1, "localhost"),
                },
            ]
        );
    }

    #[test]
    fn large_block_is_reemitted_with_continuations() {
        let mut c = ClientHpack::new();
        let mut h = grpc_request(PATH_AUTHORITY, "Encrypt", 1);
        h.push((b"x-big".to_vec(), vec![b'z'; 40_000]));
        let block = c.encode(&h);
        let mut input = preface_and_settings();
        let mut payload = vec![0, 0, 0, 0, 15];
        payload.extend_from_slice(&block);
        // One oversized client frame is fine for the adapter (h2 would judge the frame size).
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_PRIORITY | FLAG_END_HEADERS,
            1,
            &payload,
        ));
        let r = run_ok(&input, usize::MAX, 1 << 16);
        let frames = parse_output(&r.out);
        let kinds: Vec<_> = frames
            .iter()
            .map(|f| (f.ty, f.flags, f.payload.len()))
            .collect();
        assert_eq!(kinds[1], (TYPE_HEADERS, FLAG_PRIORITY, OUT_MAX_FRAME));
        assert_eq!(kinds[2], (TYPE_CONTINUATION, 0, OUT_MAX_FRAME));
        assert_eq!(kinds[3].0, TYPE_CONTINUATION);
        assert_eq!(kinds[3].1, FLAG_END_HEADERS);
        assert_eq!(kinds.len(), 4);
        let blocks = decode_output(&frames);
        assert_eq!(blocks[0].headers, with_authority(&h, "localhost"));
        assert_eq!(blocks[0].priority, Some([0, 0, 0, 0, 15]));
    }

    /// Preface, settings, assorted frames, and requests in every shape the parser handles.
    fn mixed_stream() -> Vec<u8> {
        let mut c = ClientHpack::new();
        let mut v = preface_and_settings();
        v.extend(frame(0x8, 0, 0, &[0, 0x0f, 0, 0])); // WINDOW_UPDATE
        v.extend(frame(0x6, 0, 0, b"pingpong")); // PING
        for i in 0..12u32 {
            let stream = 1 + 2 * i;
            let authority = if i % 2 == 0 {
                PATH_AUTHORITY
            } else {
                "localhost"
            };
            let h = grpc_request(authority, "Decrypt", 2_999_965 - u64::from(i));
            if i % 3 == 0 {
                v.extend(split_padded_priority_request(&mut c, stream, &h));
            } else {
                v.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, stream, &c.encode(&h)));
                v.extend(frame(0x0, 0, stream, &[]));
                v.extend(frame(0x0, FLAG_END_STREAM, stream, &vec![i as u8; 3000]));
            }
            v.extend(frame(0xfe, 0, 0, b"unknown extension frame"));
        }
        v.extend(frame(0x3, 0, 23, &[0, 0, 0, 8])); // RST_STREAM
        v.extend(frame(0x7, 0, 0, &[0, 0, 0, 23, 0, 0, 0, 0])); // GOAWAY
        v
    }

    #[test]
    fn partial_reads_and_small_buffers_give_identical_output() {
        let input = mixed_stream();
        let reference = run_ok(&input, usize::MAX, 1 << 20);
        assert_eq!(reference.rewritten, 6);
        let blocks = decode_output(&parse_output(&reference.out));
        assert_eq!(blocks.len(), 12);
        assert!(blocks.iter().all(|b| b
            .headers
            .contains(&(b":authority".to_vec(), b"localhost".to_vec()))));
        for chunk in [1, 2, 3, 5, 8, 9, 10, 17, 4096] {
            for bufsize in [1, 2, 7, 9, 10, 64, 16_384] {
                let r = run_ok(&input, chunk, bufsize);
                assert!(
                    r.out == reference.out,
                    "output differs for chunk {chunk}, buf {bufsize}"
                );
                assert_eq!(r.rewritten, 6);
            }
        }
    }

    #[test]
    fn non_http2_input_passes_through_untouched() {
        let http1 = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        let mut near_miss = b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n".to_vec();
        // After the mismatch even a would-be HEADERS frame must pass as is.
        near_miss.extend(frame(TYPE_HEADERS, 0, 1, &[0xff; 20]));
        for input in [http1, near_miss] {
            for (chunk, bufsize) in [(usize::MAX, 1 << 16), (1, 1 << 16), (5, 3)] {
                let r = run_ok(&input, chunk, bufsize);
                assert_eq!(r.out, input);
            }
        }
    }

    #[test]
    fn data_frames_are_streamed_without_buffering() {
        // A maximal-length DATA frame with only 100 payload bytes so far: they must come out
        // immediately instead of being held until the frame is complete.
        let mut input = preface_and_settings();
        input.extend(head_only(0xff_ffff, 0x0, 0, 1));
        input.extend(vec![0xab; 100]);
        let r = run_ok(&input, 7, 1 << 16);
        assert_eq!(r.out, input);
    }

    // ---------- hostile input ----------

    #[test]
    fn oversized_header_block_is_rejected() {
        let mut input = preface_and_settings();
        input.extend(frame(TYPE_HEADERS, 0, 1, &[0x82; 16_384]));
        for _ in 0..3 {
            input.extend(frame(TYPE_CONTINUATION, 0, 1, &[0x82; 16_384]));
        }
        // 64 KiB accumulated exactly; one more byte is over the cap. Only the header of that
        // frame is supplied: the cap must be enforced before its payload is read.
        input.extend(head_only(1, TYPE_CONTINUATION, FLAG_END_HEADERS, 1));
        expect_invalid(&input, "header block on stream 1 exceeds 65536 bytes");
    }

    #[test]
    fn huge_headers_frame_is_rejected_from_its_header() {
        let mut input = preface_and_settings();
        input.extend(head_only(0xff_ffff, TYPE_HEADERS, FLAG_END_HEADERS, 1));
        expect_invalid(&input, "HEADERS frame length 16777215");
        // Just above what a 64 KiB block plus padding and priority can need.
        let mut input = preface_and_settings();
        input.extend(head_only(
            (MAX_HEADERS_FRAME_LEN + 1) as u32,
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            1,
        ));
        expect_invalid(&input, "exceeds the 65536-byte header block cap");
    }

    #[test]
    fn frame_length_field_cannot_exceed_the_frame_cap() {
        // The 16 MiB frame cap holds by construction: the largest encodable length is below it.
        let h = FrameHead::parse(&[0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 1]);
        assert_eq!(h.len, MAX_FRAME_LEN - 1);
    }

    #[test]
    fn garbage_hpack_is_rejected() {
        let cases: [&[u8]; 6] = [
            &[0xbe],                                     // index 62: empty dynamic table
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f], // integer with too many octets
            &[0x40, 0x7f, 0x10],                         // literal longer than the block
            &[0x40, 0x81, 0xff, 0x01, b'v'],             // invalid Huffman (EOS inside)
            &[0x3f, 0xe2, 0x1f],                         // size update to 4097 > 4096
            &[0x20],                                     // size update at the end of a block
        ];
        for block in cases {
            let mut input = preface_and_settings();
            input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, block));
            expect_invalid(
                &input,
                "HPACK decoding of the header block on stream 1 failed",
            );
        }
        // A table size update above 4096 followed by a real header is refused too (loona's
        // set_max_table_size would assert; the decoder must report an error instead).
        let mut block = vec![0x3f, 0xe1, 0xff, 0x03];
        block.extend(ClientHpack::new().encode(&grpc_request("localhost", "Status", 1)));
        let mut input = preface_and_settings();
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &block));
        expect_invalid(&input, "HPACK decoding");
    }

    #[test]
    fn header_list_amplification_is_rejected() {
        // One 4000-byte entry, then ~270 one-byte references to it: a 4.3 KB block that
        // decodes to over 1 MiB.
        let mut c = ClientHpack::new();
        let big = hl(&[("x-amp", &"a".repeat(4000))]);
        let mut block = c.encode(&big);
        for _ in 0..270 {
            block.extend(c.encode(&big));
        }
        assert!(block.len() < 5000);
        let mut input = preface_and_settings();
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &block));
        expect_invalid(
            &input,
            "decoded header list on stream 1 exceeds 1048576 bytes",
        );
        // Just under the cap is accepted and re-encoded compactly.
        let mut c = ClientHpack::new();
        let mut block = Vec::new();
        for _ in 0..250 {
            block.extend(c.encode(&big));
        }
        let mut input = preface_and_settings();
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &block));
        let r = run_ok(&input, usize::MAX, 1 << 16);
        let blocks = decode_output(&parse_output(&r.out));
        assert_eq!(blocks[0].headers.len(), 250);
        assert!(r.out.len() < 6000);
    }

    #[test]
    fn framing_violations_are_rejected() {
        let block = ClientHpack::new().encode(&grpc_request(PATH_AUTHORITY, "Status", 1));
        let with = |frames: &[Vec<u8>]| {
            let mut v = preface_and_settings();
            for f in frames {
                v.extend_from_slice(f);
            }
            v
        };
        expect_invalid(
            &with(&[frame(TYPE_HEADERS, 0, 1, &block), frame(0x0, 0, 1, b"data")]),
            "inside the header block of stream 1",
        );
        expect_invalid(
            &with(&[
                frame(TYPE_HEADERS, 0, 1, &block),
                frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 3, &[]),
            ]),
            "inside the header block of stream 1",
        );
        expect_invalid(
            &with(&[frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &block)]),
            "without a preceding HEADERS frame",
        );
        expect_invalid(
            &with(&[frame(TYPE_PUSH_PROMISE, FLAG_END_HEADERS, 1, &[0, 0, 0, 2])]),
            "PUSH_PROMISE",
        );
        expect_invalid(
            &with(&[frame(
                TYPE_HEADERS,
                FLAG_PADDED | FLAG_END_HEADERS,
                1,
                &[5, 1, 2],
            )]),
            "padding longer than the payload",
        );
        expect_invalid(
            &with(&[frame(TYPE_HEADERS, FLAG_PADDED | FLAG_END_HEADERS, 1, &[])]),
            "PADDED without a pad length",
        );
        expect_invalid(
            &with(&[frame(
                TYPE_HEADERS,
                FLAG_PRIORITY | FLAG_END_HEADERS,
                1,
                &[0, 0, 0],
            )]),
            "PRIORITY fields truncated",
        );
    }

    #[test]
    fn errors_are_sticky() {
        let mut input = preface_and_settings();
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &[0xbe]));
        input.extend(frame(0x6, 0, 0, b"pingpong"));
        let mut a = scripted(&input, usize::MAX);
        let mut saw_error = 0;
        for _ in 0..5 {
            match read_once(&mut a, 1 << 16) {
                Ok(bytes) => {
                    assert_eq!(saw_error, 0, "data after the error");
                    assert!(!bytes.is_empty(), "EOF before the error");
                }
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
                    saw_error += 1;
                }
            }
        }
        assert!(saw_error >= 3);
    }

    #[test]
    fn random_input_never_panics() {
        // xorshift64*: deterministic, no extra dependency.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rand = move || {
            seed ^= seed >> 12;
            seed ^= seed << 25;
            seed ^= seed >> 27;
            seed.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        let valid = mixed_stream();
        let (mut errors, mut clean) = (0, 0);
        for i in 0..3000 {
            let mut input = if i % 2 == 0 {
                // Mutate a valid stream after the preface.
                let mut v = valid.clone();
                for _ in 0..1 + rand() % 4 {
                    let at = PREFACE.len() + (rand() as usize) % (v.len() - PREFACE.len());
                    v[at] = rand() as u8;
                }
                v
            } else {
                // Random frames, biased towards the types the parser interprets.
                let mut v = PREFACE.to_vec();
                for _ in 0..rand() % 6 {
                    let ty =
                        [0x0, 0x1, 0x1, 0x5, 0x9, 0x9, 0x4, rand() as u8][(rand() % 8) as usize];
                    let flags = rand() as u8;
                    let stream = (rand() % 4) as u32;
                    let payload: Vec<u8> = (0..rand() % 48).map(|_| rand() as u8).collect();
                    v.extend(frame(ty, flags, stream, &payload));
                }
                if rand() % 3 == 0 {
                    v.extend((0..rand() % 20).map(|_| rand() as u8));
                }
                v
            };
            if i % 5 == 0 {
                input.truncate(
                    PREFACE.len() + (rand() as usize) % (input.len() - PREFACE.len() + 1),
                );
            }
            let chunk = 1 + (rand() as usize) % 40;
            let bufsize = 1 + (rand() as usize) % 64;
            match run(&input, chunk, bufsize).err {
                Some(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
                    errors += 1;
                }
                None => clean += 1,
            }
        }
        println!("random input: {errors} rejected, {clean} accepted");
        // Both outcomes must occur, or the generator is not exercising anything.
        assert!(
            errors > 100 && clean > 100,
            "errors {errors}, clean {clean}"
        );
    }

    #[test]
    fn shared_counter_accumulates_across_connections() {
        let counter = Arc::new(AtomicU64::new(0));
        let mut input = preface_and_settings();
        let mut c = ClientHpack::new();
        for i in 0..3u32 {
            let h = grpc_request(PATH_AUTHORITY, "Status", u64::from(i));
            input.extend(frame(
                TYPE_HEADERS,
                FLAG_END_HEADERS,
                1 + 2 * i,
                &c.encode(&h),
            ));
        }
        for _ in 0..2 {
            let mut a = AuthorityRewrite::with_counter(
                Scripted {
                    data: input.clone(),
                    pos: 0,
                    chunk: usize::MAX,
                },
                counter.clone(),
            );
            while !read_once(&mut a, 1 << 16).unwrap().is_empty() {}
            assert_eq!(a.rewritten(), 3);
        }
        assert_eq!(counter.load(Ordering::Relaxed), 6);
    }

    #[test]
    fn adapter_is_usable_as_a_tonic_connection() {
        fn assert_io<T: AsyncRead + AsyncWrite + Send + Unpin + 'static>() {}
        assert_io::<AuthorityRewrite<UnixStream>>();
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let wrapped = AuthorityRewrite::new(UnixStream::from_std(a).unwrap());
        assert!(wrapped.get_ref().peer_cred().is_ok());
    }

    // ---------- end to end against a real h2 server ----------

    /// What the h2 server saw for one request.
    #[derive(Debug)]
    struct Seen {
        authority: String,
        path: String,
        headers: http::HeaderMap,
        body_len: usize,
    }

    /// A minimal h2 server answering 200 with the authority it saw echoed in a header.
    async fn serve<T>(io: T, seen: mpsc::UnboundedSender<Seen>)
    where
        T: AsyncRead + AsyncWrite + Unpin,
    {
        let Ok(mut conn) = h2::server::handshake(io).await else {
            return;
        };
        while let Some(Ok((req, mut respond))) = conn.accept().await {
            let authority = req
                .uri()
                .authority()
                .map(|a| a.to_string())
                .unwrap_or_default();
            let path = req.uri().path().to_owned();
            let (parts, mut body) = req.into_parts();
            let mut body_len = 0;
            // Body frames are read while the connection keeps being driven by `accept`.
            let seen = seen.clone();
            let response = http::Response::builder()
                .status(200)
                .header("x-seen-authority", authority.clone())
                .body(())
                .unwrap();
            tokio::spawn(async move {
                while let Some(Ok(chunk)) = body.data().await {
                    body_len += chunk.len();
                    let _ = body.flow_control().release_capacity(chunk.len());
                }
                let _ = seen.send(Seen {
                    authority,
                    path,
                    headers: parts.headers,
                    body_len,
                });
                let _ = respond.send_response(response, true);
            });
        }
    }

    #[derive(Debug, PartialEq)]
    enum Outcome {
        Response(Vec<(String, String)>),
        Reset(u32),
        GoAway(u32),
    }

    /// Hand-rolled HTTP/2 client: h2's own client derives `:authority` from a `Uri` and so
    /// cannot send the path form the old apiservers send.
    struct RawClient {
        io: UnixStream,
        hpack: ClientHpack,
        decoder: loona_hpack::Decoder<'static>,
    }

    impl RawClient {
        async fn start(mut io: UnixStream) -> Self {
            io.write_all(&preface_and_settings()).await.unwrap();
            Self {
                io,
                hpack: ClientHpack::new(),
                decoder: loona_hpack::Decoder::new(),
            }
        }

        async fn send_raw(&mut self, bytes: &[u8]) {
            self.io.write_all(bytes).await.unwrap();
        }

        async fn request(&mut self, stream: u32, headers: &HeaderList) {
            let block = self.hpack.encode(headers);
            let f = frame(
                TYPE_HEADERS,
                FLAG_END_HEADERS | FLAG_END_STREAM,
                stream,
                &block,
            );
            self.send_raw(&f).await;
        }

        /// Reads server frames until something final happens to `stream`.
        async fn outcome(&mut self, stream: u32) -> Outcome {
            tokio::time::timeout(TIMEOUT, self.outcome_inner(stream))
                .await
                .expect("server answered in time")
        }

        async fn outcome_inner(&mut self, stream: u32) -> Outcome {
            loop {
                let mut h = [0u8; 9];
                self.io.read_exact(&mut h).await.unwrap();
                let head = FrameHead::parse(&h);
                let mut payload = vec![0u8; head.len];
                self.io.read_exact(&mut payload).await.unwrap();
                let code = |p: &[u8]| u32::from_be_bytes(p.try_into().unwrap());
                match head.ty {
                    0x4 if head.flags & 0x1 == 0 => {
                        self.send_raw(&frame(0x4, 0x1, 0, &[])).await;
                    }
                    TYPE_HEADERS => {
                        // h2 neither pads nor splits these small responses.
                        assert_ne!(head.flags & FLAG_END_HEADERS, 0);
                        let headers = self.decoder.decode(&payload).unwrap();
                        if head.stream == stream {
                            return Outcome::Response(
                                headers
                                    .into_iter()
                                    .map(|(n, v)| {
                                        (
                                            String::from_utf8(n).unwrap(),
                                            String::from_utf8(v).unwrap(),
                                        )
                                    })
                                    .collect(),
                            );
                        }
                    }
                    0x3 if head.stream == stream => return Outcome::Reset(code(&payload)),
                    0x7 => return Outcome::GoAway(code(&payload[4..8])),
                    _ => {}
                }
            }
        }
    }

    fn header<'a>(o: &'a Outcome, name: &str) -> Option<&'a str> {
        match o {
            Outcome::Response(h) => h.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str()),
            _ => None,
        }
    }

    /// Inner stream that returns at most one byte per read, to exercise partial reads end to end.
    struct OneByteReads(UnixStream);

    impl AsyncRead for OneByteReads {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let mut one = [0u8; 1];
            let mut small = ReadBuf::new(&mut one);
            ready!(Pin::new(&mut self.get_mut().0).poll_read(cx, &mut small))?;
            buf.put_slice(small.filled());
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for OneByteReads {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
        }
        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().0).poll_flush(cx)
        }
        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
        }
    }

    #[tokio::test]
    async fn h2_server_resets_path_authority_without_adapter() {
        let (client, server) = UnixStream::pair().unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let srv = tokio::spawn(serve(server, tx));
        let mut c = RawClient::start(client).await;
        c.request(1, &grpc_request(PATH_AUTHORITY, "Status", 2_999_965))
            .await;
        // PROTOCOL_ERROR (0x1): h2's "malformed authority".
        assert_eq!(c.outcome(1).await, Outcome::Reset(0x1));
        // The same connection still serves a request with a valid authority.
        c.request(3, &grpc_request("localhost", "Status", 2_999_965))
            .await;
        let o = c.outcome(3).await;
        assert_eq!(header(&o, ":status"), Some("200"), "{o:?}");
        drop(c);
        srv.await.unwrap();
        let seen: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(
            seen.len(),
            1,
            "the path-form request must never reach the service"
        );
    }

    async fn path_authority_through_adapter<T>(wrap: impl FnOnce(UnixStream) -> T)
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (client, server) = UnixStream::pair().unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let counter = Arc::new(AtomicU64::new(0));
        let adapter = AuthorityRewrite::with_counter(wrap(server), counter.clone());
        let srv = tokio::spawn(serve(adapter, tx));
        let mut c = RawClient::start(client).await;
        let mut stream = 1;
        let mut expected = Vec::new();
        // Several requests on one connection: from the second on, the client's blocks refer to
        // dynamic-table entries (including the path-form authority) by index.
        for i in 0..8u64 {
            let method = ["Status", "Encrypt", "Decrypt"][i as usize % 3];
            let authority = match i {
                3 => "localhost",
                5 => "127.0.0.1:1234",
                _ => PATH_AUTHORITY,
            };
            let h = grpc_request(authority, method, 2_999_965 - i);
            if i == 4 {
                let bytes = split_padded_priority_request(&mut c.hpack, stream, &h);
                c.send_raw(&bytes).await;
            } else {
                c.request(stream, &h).await;
            }
            let o = c.outcome(stream).await;
            assert_eq!(header(&o, ":status"), Some("200"), "request {i}: {o:?}");
            let want = if authority == PATH_AUTHORITY {
                "localhost"
            } else {
                authority
            };
            assert_eq!(header(&o, "x-seen-authority"), Some(want));
            expected.push((want, format!("/v2.KeyManagementService/{method}")));
            stream += 2;
        }
        // A block larger than one frame, sent as HEADERS + CONTINUATION by the client and
        // re-emitted as HEADERS + CONTINUATION by the adapter.
        let mut big = grpc_request(PATH_AUTHORITY, "Encrypt", 1);
        big.push((b"x-big".to_vec(), vec![b'q'; 20_000]));
        let block = c.hpack.encode(&big);
        let (a, b) = block.split_at(10_000);
        let mut bytes = frame(TYPE_HEADERS, FLAG_END_STREAM, stream, a);
        bytes.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, stream, b));
        c.send_raw(&bytes).await;
        let o = c.outcome(stream).await;
        assert_eq!(header(&o, ":status"), Some("200"), "{o:?}");
        expected.push(("localhost", "/v2.KeyManagementService/Encrypt".to_owned()));

        drop(c);
        tokio::time::timeout(TIMEOUT, srv).await.unwrap().unwrap();
        let seen: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        let got: Vec<_> = seen
            .iter()
            .map(|s| (s.authority.as_str(), s.path.clone()))
            .collect();
        assert_eq!(got, expected);
        for s in &seen {
            assert_eq!(s.headers["content-type"], "application/grpc");
            assert_eq!(s.headers["user-agent"], "grpc-go/1.65.0");
            assert_eq!(s.headers["te"], "trailers");
        }
        assert_eq!(seen[1].headers["grpc-timeout"], "2999964u");
        assert_eq!(seen[8].headers["x-big"].len(), 20_000);
        assert_eq!(counter.load(Ordering::Relaxed), 7);
    }

    #[tokio::test]
    async fn h2_server_accepts_path_authority_with_adapter() {
        path_authority_through_adapter(|s| s).await;
    }

    #[tokio::test]
    async fn h2_server_accepts_path_authority_with_one_byte_reads() {
        path_authority_through_adapter(OneByteReads).await;
    }

    #[tokio::test]
    async fn real_h2_client_authorities_pass_unchanged() {
        // h2's client encodes with Huffman coding and its own indexing choices, and sends
        // request bodies as DATA frames: all must survive decoding and re-encoding.
        let (client, server) = UnixStream::pair().unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let adapter = AuthorityRewrite::new(server);
        let srv = tokio::spawn(serve(adapter, tx));
        let (mut h2c, conn) = h2::client::handshake(client).await.unwrap();
        tokio::spawn(conn);
        let uris = [
            "http://localhost/v2.KeyManagementService/Status",
            "http://127.0.0.1:1234/v2.KeyManagementService/Encrypt",
            "http://localhost/v2.KeyManagementService/Decrypt",
        ];
        let mut expected = Vec::new();
        for i in 0..9usize {
            let uri = uris[i % 3];
            let req = http::Request::builder()
                .method("POST")
                .uri(uri)
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .header("grpc-timeout", format!("{}u", 2_999_965 - i))
                .body(())
                .unwrap();
            h2c = h2c.ready().await.unwrap();
            let (resp, mut body) = h2c.send_request(req, false).unwrap();
            body.send_data(bytes::Bytes::from(vec![7u8; 100 * i + 5]), true)
                .unwrap();
            let resp = tokio::time::timeout(TIMEOUT, resp).await.unwrap().unwrap();
            assert_eq!(resp.status(), 200);
            let authority = uri
                .parse::<http::Uri>()
                .unwrap()
                .authority()
                .unwrap()
                .to_string();
            assert_eq!(resp.headers()["x-seen-authority"], authority.as_str());
            expected.push((authority, 100 * i + 5, format!("{}u", 2_999_965 - i)));
        }
        drop(h2c);
        let seen: Vec<_> = tokio::time::timeout(TIMEOUT, async {
            let mut v = Vec::new();
            while v.len() < expected.len() {
                v.push(rx.recv().await.unwrap());
            }
            v
        })
        .await
        .unwrap();
        let got: Vec<_> = seen
            .iter()
            .map(|s| {
                (
                    s.authority.clone(),
                    s.body_len,
                    s.headers["grpc-timeout"].to_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(got, expected);
        srv.abort();
    }

    // ---------- micro-benchmark ----------

    /// Cost of decoding + re-encoding one typical apiserver header block, frame parsing and
    /// copying included. Run with
    /// `cargo test --release -p coffer-kms authority::tests::bench -- --ignored --nocapture`.
    #[test]
    #[ignore = "timing only; run in release"]
    fn bench_rewrite_per_header_block() {
        const N: u32 = 200_000;
        // Steady state: one long-lived connection, grpc-timeout differing on every call as it
        // does in practice, so each block carries one new literal.
        let mut c = ClientHpack::new();
        let mut input = preface_and_settings();
        for i in 0..N {
            let h = grpc_request(PATH_AUTHORITY, "Decrypt", 2_999_965 - u64::from(i % 1000));
            input.extend(frame(
                TYPE_HEADERS,
                FLAG_END_HEADERS,
                1 + 2 * i,
                &c.encode(&h),
            ));
        }
        let mut a = scripted(&input, usize::MAX);
        let t = Instant::now();
        let mut out = 0;
        loop {
            let bytes = read_once(&mut a, 1 << 16).unwrap();
            if bytes.is_empty() {
                break;
            }
            out += bytes.len();
        }
        let per = t.elapsed() / N;
        assert_eq!(a.rewritten(), u64::from(N));
        println!(
            "steady state: {per:?} per header block ({} in, {} out bytes per block)",
            (input.len() - 24) / N as usize,
            out / N as usize
        );

        // Cold: first block on a fresh connection (all literals, empty tables).
        let mut input = preface_and_settings();
        let h = grpc_request(PATH_AUTHORITY, "Decrypt", 2_999_965);
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            1,
            &ClientHpack::new().encode(&h),
        ));
        const COLD: u32 = 50_000;
        let t = Instant::now();
        for _ in 0..COLD {
            let mut a = scripted(&input, usize::MAX);
            while !read_once(&mut a, 1 << 16).unwrap().is_empty() {}
        }
        println!(
            "cold (new connection + first block, incl. setup): {:?}",
            t.elapsed() / COLD
        );
    }
}
