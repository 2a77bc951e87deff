//! The decision stream, client side: decisions as frames on one upgraded connection.
//!
//! With `ClientConfig::decision_stream` on, the transport sends acquires
//! (waiting ones too), releases, renewals and rate checks as frames of the
//! `quorate-api/1` protocol ([`quorate_proto::stream`] is the byte layout) instead of
//! one HTTP request each. Everything else about a call stays the transport's: which
//! node it goes to (leader hint first), failover, backoff, the deadline; and the
//! answer, a status and the route's JSON body, is mapped by the same code as an HTTP
//! answer (`error.rs`), so a 429 or a 404 means the same whichever way it came.
//!
//! A client holds one stream at a time ([`Streams`]), opened lazily to the node the
//! transport is about to send to, shared by every task using the client, and
//! replaced when it broke or when the transport moves to another node. A stream is
//! a [`Conn`] with two tasks: a writer that alone writes to the socket (callers hand
//! it whole frames over a channel, so frames are never interleaved and a caller that
//! gives up cannot leave half a frame on the wire), and a reader that hands each
//! answer to the caller waiting on its id (answers come in any order).
//!
//! A stream's failures keep HTTP's guarantees, because each waiting request records
//! whether its frame may have left: the writer marks it, under the same lock that
//! a broken stream takes to give up, just before writing it, and writes nothing once
//! the stream is broken. So a request that got no answer was either
//! - not sent (an `https://` node, the upgrade refused, the stream broke before its
//!   frame was written, no place left for another waiting acquire):
//!   [`Miss::Fallback`], and the transport sends it as an HTTP request to the same
//!   node at once — it cannot be decided twice;
//! - or the node failed (no connection to it, or the frame may have left and the
//!   stream broke or the attempt's time ran out before the answer): [`Miss::Failed`],
//!   an unknown outcome, which the transport treats as it treats an HTTP request
//!   whose response was lost (the next node gets the same body; the lease id in it
//!   makes an acquire, release or renew safe to repeat).
//!
//! Only `http://` nodes get a stream: it is plain TCP, connected directly (not
//! through an HTTP proxy); TLS stays reqwest's. A node that answers the upgrade with
//! anything but 101 — an older release's 404, 405 or 400, a 503 at its stream cap,
//! a 401 for the token — gets HTTP requests for [`REFUSAL_MEMORY`] before the next
//! upgrade is tried, so a refusing node costs one extra round trip per period, not
//! per call (and its HTTP answer says what is wrong, typed as always).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use quorate_proto::routes::RouteId;
use quorate_proto::stream::{self as wire, StreamOp, LEN_BYTES, MAX_IN_FLIGHT, STREAM_PROTOCOL};
use quorate_proto::LEADER_HEADER;
use reqwest::{StatusCode, Url};
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Notify, Semaphore};
use tokio::time::Instant;

use crate::error::Answer;
use crate::request::{url, Request};

/// How long a node's refusal of the upgrade is remembered: long enough that a
/// cluster of older nodes costs one failed upgrade per node every so often, short
/// enough that an upgraded node gets streams soon after its restart.
pub(crate) const REFUSAL_MEMORY: Duration = Duration::from_secs(30);

/// Waiting acquires one stream carries at once. The node works on at most
/// [`MAX_IN_FLIGHT`] requests of a stream and a waiting acquire holds its place for
/// the whole wait, so without this bound a crowd of waiters would stall every other
/// decision on the stream; beyond it waiters go as HTTP requests.
const MAX_HELD_OPEN: usize = MAX_IN_FLIGHT / 2;

/// Largest answer payload taken: decision answers are small JSON bodies, so a length
/// beyond this is a broken stream, not an answer to buffer.
const MAX_ANSWER: usize = 16 << 20;

/// Largest upgrade answer head read before giving up on the node.
const MAX_HEAD: u64 = 16 << 10;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The op a route's requests travel as on a stream, if they may.
pub(crate) fn op_for(route: RouteId) -> Option<StreamOp> {
    StreamOp::ALL.into_iter().find(|op| op.route() == route)
}

/// Why a request got no answer over a stream, which says what the transport does.
#[derive(Debug)]
pub(crate) enum Miss {
    /// The request was not sent on a stream: send it as an HTTP request to the same
    /// node now (it cannot have been decided).
    Fallback(String),
    /// The node failed: no stream could be opened to it, or the frame may have been
    /// written and no answer came. Failover takes over, as after a lost HTTP response.
    Failed(String),
}

/// A client's decision stream: the one open [`Conn`] and what is remembered about
/// nodes that could not give one.
pub(crate) struct Streams {
    token: Option<String>,
    /// False when the token cannot be a header value; then every call is HTTP's
    /// (whose own error then says what is wrong).
    token_ok: bool,
    connect_timeout: Duration,
    /// The stream, if one was opened; it may have broken since. Held only to read
    /// or replace it, never across an await.
    current: Mutex<Option<Arc<Conn>>>,
    /// Held while a stream is opened, so that the callers of a burst open one stream
    /// and share it rather than each opening their own.
    opening: tokio::sync::Mutex<()>,
    /// The last failed open: callers that queued behind it give up at once instead
    /// of each waiting out its own connect timeout on the same dead node.
    last_failure: Mutex<Option<(Url, Instant, String)>>,
    /// Nodes that refused the upgrade, until when they get HTTP requests only.
    refused: Mutex<HashMap<Url, Instant>>,
    /// When the leader hint was last refreshed for the stream (by its upgrade's
    /// answer or a check of the transport's).
    hint_checked: Mutex<Instant>,
}

impl Streams {
    pub fn new(token: Option<String>, connect_timeout: Duration) -> Self {
        let token_ok = token
            .as_deref()
            .is_none_or(|t| t.bytes().all(|b| (0x20..0x7f).contains(&b)));
        Self {
            token,
            token_ok,
            connect_timeout,
            current: Mutex::new(None),
            opening: tokio::sync::Mutex::new(()),
            last_failure: Mutex::new(None),
            refused: Mutex::new(HashMap::new()),
            hint_checked: Mutex::new(Instant::now()),
        }
    }

    /// True (and the check counted as done now) when the leader hint was last
    /// refreshed `every` ago or longer.
    pub fn recheck_due(&self, every: Duration) -> bool {
        let mut checked = lock(&self.hint_checked);
        let due = checked.elapsed() >= every;
        if due {
            *checked = Instant::now();
        }
        due
    }

    /// One request on the stream to `base`, answered within `timeout` (which covers
    /// opening the stream, as an HTTP attempt's covers connecting). `held_open`
    /// marks a request the node holds open (a waiting acquire). `follow` gets the
    /// leader hint of a new stream's upgrade answer (stream answers carry none).
    pub async fn call(
        &self,
        base: &Url,
        op: StreamOp,
        body: &[u8],
        held_open: bool,
        timeout: Duration,
        follow: &(dyn Fn(&[u8]) + Send + Sync),
    ) -> Result<Answer, Miss> {
        if base.scheme() != "http" {
            return Err(Miss::Fallback(format!(
                "{base}: decision streams are plain TCP; an https node gets HTTP requests"
            )));
        }
        if !self.token_ok {
            return Err(Miss::Fallback(
                "the token is not a valid header value".into(),
            ));
        }
        if self.refused_now(base) {
            return Err(Miss::Fallback(format!(
                "{base} refused the decision stream recently"
            )));
        }
        match tokio::time::timeout(timeout, self.call_within(base, op, body, held_open, follow))
            .await
        {
            Ok(r) => r,
            Err(_) => Err(Miss::Failed(format!(
                "{base}: decision stream: no answer within {timeout:?}"
            ))),
        }
    }

    async fn call_within(
        &self,
        base: &Url,
        op: StreamOp,
        body: &[u8],
        held_open: bool,
        follow: &(dyn Fn(&[u8]) + Send + Sync),
    ) -> Result<Answer, Miss> {
        let conn = self.conn_to(base, follow).await?;
        let _place = match held_open {
            true => Some(conn.held_open.clone().try_acquire_owned().map_err(|_| {
                Miss::Fallback(format!(
                    "{MAX_HELD_OPEN} waiting acquires already wait on the stream to {base}"
                ))
            })?),
            false => None,
        };
        match conn.ask(op, body).await {
            Outcome::Answer(a) => Ok(a),
            Outcome::Broken {
                refused: true, why, ..
            } => {
                // The node refused a frame and answered all it had read before
                // closing: the requests left unanswered were not read, so not
                // decided. HTTP gives this one its proper answer (a 413, say).
                self.refuse(base, &why);
                Err(Miss::Fallback(why))
            }
            Outcome::Broken {
                written: false,
                why,
                ..
            } => Err(Miss::Fallback(why)),
            Outcome::Broken { why, .. } => Err(Miss::Failed(why)),
        }
    }

    /// The open stream to `base`, or a new one (replacing a stream to another node
    /// or a broken one; requests still waiting on the old one keep it until they
    /// are answered).
    async fn conn_to(
        &self,
        base: &Url,
        follow: &(dyn Fn(&[u8]) + Send + Sync),
    ) -> Result<Arc<Conn>, Miss> {
        if let Some(c) = self.live(base) {
            return Ok(c);
        }
        let asked = Instant::now();
        let _opening = self.opening.lock().await;
        if let Some(c) = self.live(base) {
            return Ok(c);
        }
        if let Some((node, at, why)) = &*lock(&self.last_failure) {
            if node == base && *at >= asked {
                return Err(Miss::Failed(why.clone()));
            }
        }
        if self.refused_now(base) {
            return Err(Miss::Fallback(format!(
                "{base} refused the decision stream just now"
            )));
        }
        match open(base, self.token.as_deref(), self.connect_timeout).await {
            Ok((conn, hint)) => {
                if let Some(h) = hint {
                    follow(&h);
                }
                let conn = Arc::new(conn);
                tracing::debug!(node = %base, "decision stream open");
                *lock(&self.hint_checked) = Instant::now();
                *lock(&self.current) = Some(conn.clone());
                Ok(conn)
            }
            Err(Open::Refused(why)) => {
                self.refuse(base, &why);
                Err(Miss::Fallback(why))
            }
            Err(Open::Failed(why)) => {
                *lock(&self.last_failure) = Some((base.clone(), Instant::now(), why.clone()));
                Err(Miss::Failed(why))
            }
        }
    }

    fn live(&self, base: &Url) -> Option<Arc<Conn>> {
        lock(&self.current)
            .as_ref()
            .filter(|c| &c.base == base && !c.shared.is_broken())
            .cloned()
    }

    fn refused_now(&self, base: &Url) -> bool {
        let mut refused = lock(&self.refused);
        match refused.get(base) {
            Some(until) if Instant::now() < *until => true,
            Some(_) => {
                refused.remove(base);
                false
            }
            None => false,
        }
    }

    fn refuse(&self, base: &Url, why: &str) {
        tracing::info!(node = %base, %why, "no decision stream; sending HTTP requests to this node for {REFUSAL_MEMORY:?}");
        lock(&self.refused).insert(base.clone(), Instant::now() + REFUSAL_MEMORY);
    }
}

/// What became of one request on a stream.
#[derive(Debug)]
enum Outcome {
    Answer(Answer),
    Broken {
        /// Its frame may have left (the writer took it before the break).
        written: bool,
        /// The node refused a frame of this stream (an id-0 answer) before closing.
        refused: bool,
        why: String,
    },
}

/// One open stream to one node.
struct Conn {
    base: Url,
    /// Request ids; 0 is the node's for "the frame that ends the stream".
    next_id: AtomicU64,
    /// Whole frames to the writer task, with their ids.
    frames: mpsc::UnboundedSender<(u64, Vec<u8>)>,
    shared: Arc<Shared>,
    /// Places for waiting acquires ([`MAX_HELD_OPEN`]).
    held_open: Arc<Semaphore>,
    reader: tokio::task::AbortHandle,
    writer: tokio::task::AbortHandle,
}

impl Drop for Conn {
    /// Nobody waits on this stream any more (waiters hold the `Conn`): close it.
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

/// What the callers, the writer and the reader of a stream share.
#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the writer when the reader found the stream broken.
    broke: Notify,
}

#[derive(Default)]
struct State {
    /// Once set, nothing more is written and every waiter has its outcome.
    broken: bool,
    /// Why the node refused a frame (an id-0 answer), if it did.
    refused: Option<String>,
    waiting: HashMap<u64, Waiter>,
}

struct Waiter {
    answer: oneshot::Sender<Outcome>,
    written: bool,
}

impl Shared {
    fn is_broken(&self) -> bool {
        lock(&self.state).broken
    }

    /// The stream is done: every waiter learns it, with whether its frame may have
    /// left, and no frame is written after this.
    fn break_off(&self, why: String) {
        let mut st = lock(&self.state);
        if st.broken {
            return;
        }
        st.broken = true;
        let refused = st.refused.clone();
        for (_, w) in st.waiting.drain() {
            let _ = w.answer.send(Outcome::Broken {
                written: w.written,
                refused: refused.is_some(),
                why: refused.clone().unwrap_or_else(|| why.clone()),
            });
        }
        drop(st);
        self.broke.notify_one();
    }
}

/// A caller's claim on an answer; dropping it (answered, or the caller gave up)
/// withdraws the claim, so an unwritten frame is not written and a late answer is
/// dropped like a late HTTP response.
struct Claim<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        lock(&self.shared.state).waiting.remove(&self.id);
    }
}

impl Conn {
    /// Send one request and wait for its outcome (no timeout here: the caller's).
    async fn ask(&self, op: StreamOp, body: &[u8]) -> Outcome {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut frame = Vec::with_capacity(LEN_BYTES + wire::REQUEST_HEAD + body.len());
        wire::put_request(&mut frame, id, op, body);
        let (tx, rx) = oneshot::channel();
        {
            let mut st = lock(&self.shared.state);
            if st.broken {
                return Outcome::Broken {
                    written: false,
                    refused: st.refused.is_some(),
                    why: format!("{}: decision stream closed", self.base),
                };
            }
            st.waiting.insert(
                id,
                Waiter {
                    answer: tx,
                    written: false,
                },
            );
        }
        let _claim = Claim {
            shared: &self.shared,
            id,
        };
        if self.frames.send((id, frame)).is_err() {
            // The writer is gone, so it never took this frame.
            return Outcome::Broken {
                written: false,
                refused: false,
                why: format!("{}: decision stream writer gone", self.base),
            };
        }
        // Every path that removes a waiter sends its outcome first; should one ever
        // not, the frame may have left: assume the worst.
        rx.await.unwrap_or_else(|_| Outcome::Broken {
            written: true,
            refused: false,
            why: format!("{}: decision stream dropped the request", self.base),
        })
    }
}

/// The writer task: takes frames (whatever is queued goes out in one write), marks
/// them written under the state lock, writes them; stops when the stream broke or
/// every sender is gone.
async fn write_frames<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut frames: mpsc::UnboundedReceiver<(u64, Vec<u8>)>,
    shared: Arc<Shared>,
    base: String,
) {
    let mut batch = Vec::new();
    let mut out = Vec::new();
    loop {
        let first = tokio::select! {
            f = frames.recv() => f,
            () = shared.broke.notified() => None,
        };
        let Some(first) = first else { break };
        batch.push(first);
        while batch.len() < MAX_IN_FLIGHT {
            match frames.try_recv() {
                Ok(f) => batch.push(f),
                Err(_) => break,
            }
        }
        out.clear();
        {
            let mut st = lock(&shared.state);
            if st.broken {
                break;
            }
            for (id, frame) in batch.drain(..) {
                // A caller that gave up before its frame left withdrew it: skip it.
                if let Some(w) = st.waiting.get_mut(&id) {
                    w.written = true;
                    out.extend_from_slice(&frame);
                }
            }
        }
        if out.is_empty() {
            continue;
        }
        if let Err(e) = wr.write_all(&out).await {
            shared.break_off(format!("{base}: decision stream write failed: {e}"));
            break;
        }
    }
    let _ = wr.shutdown().await;
}

/// The reader task: hands each answer to its waiter until the stream ends, then
/// breaks the stream off (every waiter left learns it).
async fn read_answers<R: AsyncBufRead + Unpin>(mut rd: R, shared: Arc<Shared>, base: String) {
    let mut payload = Vec::new();
    let why = loop {
        let mut prefix = [0u8; LEN_BYTES];
        if let Err(e) = rd.read_exact(&mut prefix).await {
            break match e.kind() {
                std::io::ErrorKind::UnexpectedEof => "closed by the node".to_string(),
                _ => format!("read failed: {e}"),
            };
        }
        let len = wire::payload_len(prefix);
        if len > MAX_ANSWER {
            break format!("an answer of {len} bytes is above {MAX_ANSWER}");
        }
        payload.resize(len, 0);
        if let Err(e) = rd.read_exact(&mut payload).await {
            break format!("read failed mid-answer: {e}");
        }
        let a = match wire::answer(&payload) {
            Ok(a) => a,
            Err(e) => break e.to_string(),
        };
        let Ok(status) = StatusCode::from_u16(a.status) else {
            break format!("an answer with status {}", a.status);
        };
        if a.id == 0 {
            // The node refused a frame of ours (too large, say); it answers what it
            // read before it and closes. Waiters left then were never read.
            let why = format!(
                "{base}: the node refused a decision stream frame ({status}: {})",
                String::from_utf8_lossy(a.body)
                    .chars()
                    .take(200)
                    .collect::<String>()
            );
            tracing::warn!(%why, "decision stream refused");
            lock(&shared.state).refused = Some(why);
            continue;
        }
        let waiter = lock(&shared.state).waiting.remove(&a.id);
        if let Some(w) = waiter {
            let _ = w.answer.send(Outcome::Answer(Answer {
                status,
                body: a.body.to_vec(),
            }));
        }
    };
    tracing::debug!(node = %base, %why, "decision stream ended");
    shared.break_off(format!("{base}: decision stream {why}"));
}

/// Why no stream was opened.
#[derive(Debug)]
enum Open {
    /// The node answered the upgrade with another status.
    Refused(String),
    /// No answer: connection refused or reset, timeout, not HTTP.
    Failed(String),
}

/// Connect to `base`, ask for the upgrade, and start the stream's tasks. Returns
/// the stream and the leader hint of the 101.
async fn open(
    base: &Url,
    token: Option<&str>,
    connect_timeout: Duration,
) -> Result<(Conn, Option<Vec<u8>>), Open> {
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        Open::Failed(format!("{base}: decision stream {what}: {e}"))
    };
    let path = url(base, &Request::new(RouteId::Stream))
        .map_err(|e| failed("address", &e))?
        .path()
        .to_string();
    let host = base
        .host_str()
        .ok_or_else(|| failed("address", &"no host"))?;
    let port = base.port_or_known_default().unwrap_or(80);
    // An IPv6 host is written `[::1]` in a URL and a Host header, bare to connect.
    let ip_host = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = tokio::time::timeout(connect_timeout, TcpStream::connect((ip_host, port)))
        .await
        .map_err(|_| failed("connect", &format!("timed out after {connect_timeout:?}")))?
        .map_err(|e| failed("connect", &e))?;
    // Frames are small and latency is the point: no Nagle delay.
    tcp.set_nodelay(true).map_err(|e| failed("connect", &e))?;
    let (rd, mut wr) = tcp.into_split();
    let mut rd = BufReader::new(rd);
    let host_header = match base.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {host_header}\r\nConnection: Upgrade\r\n\
         Upgrade: {STREAM_PROTOCOL}\r\nContent-Length: 0\r\n"
    );
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    wr.write_all(req.as_bytes())
        .await
        .map_err(|e| failed("upgrade", &e))?;
    let (status, leader) = read_head(&mut rd)
        .await
        .map_err(|e| failed("upgrade", &e))?;
    if status != 101 {
        return Err(Open::Refused(format!(
            "{base} answered the decision stream upgrade with {status}"
        )));
    }
    let shared = Arc::new(Shared::default());
    let (tx, rx) = mpsc::unbounded_channel();
    let reader = tokio::spawn(read_answers(rd, shared.clone(), base.to_string()));
    let writer = tokio::spawn(write_frames(wr, rx, shared.clone(), base.to_string()));
    let conn = Conn {
        base: base.clone(),
        next_id: AtomicU64::new(1),
        frames: tx,
        shared,
        held_open: Arc::new(Semaphore::new(MAX_HELD_OPEN)),
        reader: reader.abort_handle(),
        writer: writer.abort_handle(),
    };
    Ok((conn, leader))
}

/// Read an HTTP answer's head: its status and the leader hint header, if any.
/// Nothing after the head is consumed (on a 101 the frames follow).
async fn read_head<R: AsyncBufRead + Unpin>(rd: &mut R) -> Result<(u16, Option<Vec<u8>>), String> {
    let mut rd = rd.take(MAX_HEAD);
    let mut status = None;
    let mut leader = None;
    loop {
        let mut line = Vec::new();
        let n = rd
            .read_until(b'\n', &mut line)
            .await
            .map_err(|e| e.to_string())?;
        if n == 0 || line.last() != Some(&b'\n') {
            return Err("the answer's head ended early (closed, or too long)".into());
        }
        let line = line.trim_ascii_end();
        if line.is_empty() {
            break;
        }
        if status.is_none() {
            let code = std::str::from_utf8(line)
                .ok()
                .filter(|l| l.starts_with("HTTP/1."))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|c| c.parse::<u16>().ok())
                .ok_or_else(|| format!("not an HTTP answer: {}", String::from_utf8_lossy(line)))?;
            status = Some(code);
            continue;
        }
        if let Some(colon) = line.iter().position(|b| *b == b':') {
            let (name, value) = line.split_at(colon);
            if name.eq_ignore_ascii_case(LEADER_HEADER.as_bytes()) {
                leader = Some(value[1..].trim_ascii().to_vec());
            }
        }
    }
    status
        .map(|s| (s, leader))
        .ok_or_else(|| "an empty answer".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Client, ClientConfig, Error, FailurePolicy};
    use quorate_proto as proto;
    use tokio::net::TcpListener;

    #[test]
    fn exactly_the_decisions_travel_on_a_stream() {
        assert_eq!(op_for(RouteId::Acquire), Some(StreamOp::Acquire));
        assert_eq!(op_for(RouteId::Release), Some(StreamOp::Release));
        assert_eq!(op_for(RouteId::Renew), Some(StreamOp::Renew));
        assert_eq!(op_for(RouteId::RateCheck), Some(StreamOp::RateCheck));
        for id in [
            RouteId::Slots,
            RouteId::Cluster,
            RouteId::Stream,
            RouteId::PutLimit,
        ] {
            assert_eq!(op_for(id), None, "{id:?}");
        }
    }

    #[test]
    fn a_break_tells_each_waiter_whether_its_frame_may_have_left() {
        let shared = Shared::default();
        let (sent_tx, mut sent_rx) = oneshot::channel();
        let (queued_tx, mut queued_rx) = oneshot::channel();
        {
            let mut st = lock(&shared.state);
            st.waiting.insert(
                1,
                Waiter {
                    answer: sent_tx,
                    written: true,
                },
            );
            st.waiting.insert(
                2,
                Waiter {
                    answer: queued_tx,
                    written: false,
                },
            );
        }
        shared.break_off("gone".into());
        assert!(shared.is_broken());
        assert!(matches!(
            sent_rx.try_recv(),
            Ok(Outcome::Broken {
                written: true,
                refused: false,
                ..
            })
        ));
        assert!(matches!(
            queued_rx.try_recv(),
            Ok(Outcome::Broken {
                written: false,
                refused: false,
                ..
            })
        ));
        assert!(lock(&shared.state).waiting.is_empty());
    }

    #[tokio::test]
    async fn the_writer_writes_nothing_after_a_break_and_skips_withdrawn_frames() {
        let shared = Arc::new(Shared::default());
        let (tx, rx) = mpsc::unbounded_channel();
        let (ours, mut theirs) = tokio::io::duplex(1 << 16);
        let writer = tokio::spawn(write_frames(ours, rx, shared.clone(), "test".into()));
        let (a_tx, _a_rx) = oneshot::channel();
        lock(&shared.state).waiting.insert(
            1,
            Waiter {
                answer: a_tx,
                written: false,
            },
        );
        // Frame 2 has no waiter: its caller gave up before the writer took it.
        tx.send((2, b"withdrawn".to_vec())).unwrap();
        tx.send((1, b"wanted".to_vec())).unwrap();
        let mut got = [0u8; 6];
        theirs.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"wanted");
        assert!(lock(&shared.state).waiting[&1].written);
        shared.break_off("reader saw the end".into());
        // A frame queued after the break is never written: the writer stops and
        // shuts its side, so the peer reads the end of the stream next.
        let _ = tx.send((3, b"late".to_vec()));
        writer.await.unwrap();
        let mut rest = Vec::new();
        theirs.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "{rest:?}");
    }

    /// What a fake node does with `POST /v1/stream`.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Upgrade {
        /// 101, then answer frames; every `batch` frames are answered in reverse
        /// order (answers out of order, as a real node's may be).
        Accept { batch: usize },
        /// 404, as a release without streams answers.
        Refuse,
        /// 101, read one frame, close without answering (a crash after the write).
        DropAfterOneFrame,
        /// 101, read frames, never answer (a node that hangs).
        Silent,
    }

    /// What a fake node saw.
    #[derive(Debug, Default)]
    struct Seen {
        upgrades: usize,
        frames: Vec<(u8, Vec<u8>)>,
        http: Vec<(String, Vec<u8>)>,
    }

    /// A fake node: decides like [`decide`] over HTTP and over streams. Returns its
    /// base URL and what it saw.
    async fn fake_node(upgrade: Upgrade) -> (String, Arc<Mutex<Seen>>) {
        fake_node_naming(upgrade, None).await
    }

    /// [`fake_node`] whose `/healthz` answers name `leader` as the leader.
    async fn fake_node_naming(
        upgrade: Upgrade,
        leader: Option<String>,
    ) -> (String, Arc<Mutex<Seen>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Seen::default()));
        let s = seen.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve_fake(conn, upgrade, s.clone(), leader.clone()));
            }
        });
        (base, seen)
    }

    async fn serve_fake(
        conn: TcpStream,
        upgrade: Upgrade,
        seen: Arc<Mutex<Seen>>,
        leader: Option<String>,
    ) {
        let (rd, mut wr) = conn.into_split();
        let mut rd = BufReader::new(rd);
        let mut head = Vec::new();
        loop {
            let mut line = Vec::new();
            if rd.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
                return;
            }
            if line == b"\r\n" {
                break;
            }
            head.extend_from_slice(&line);
        }
        let head = String::from_utf8_lossy(&head).to_string();
        let path = head
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string();
        if path == "/v1/stream" {
            lock(&seen).upgrades += 1;
            if upgrade == Upgrade::Refuse {
                let body = r#"{"error":"not_found","message":"no route"}"#;
                let resp = format!(
                    "HTTP/1.1 404 Not Found\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = wr.write_all(resp.as_bytes()).await;
                return;
            }
            wr.write_all(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: quorate-api/1\r\n\r\n")
                .await
                .unwrap();
            let batch = match upgrade {
                Upgrade::Accept { batch } => batch,
                _ => usize::MAX,
            };
            let mut held = Vec::new();
            loop {
                let mut prefix = [0u8; LEN_BYTES];
                if rd.read_exact(&mut prefix).await.is_err() {
                    return;
                }
                let mut payload = vec![0u8; wire::payload_len(prefix)];
                rd.read_exact(&mut payload).await.unwrap();
                let r = wire::request(&payload).unwrap();
                lock(&seen).frames.push((r.op, r.body.to_vec()));
                match upgrade {
                    Upgrade::DropAfterOneFrame => return,
                    Upgrade::Silent => continue,
                    _ => {}
                }
                let op = StreamOp::from_byte(r.op).unwrap();
                held.push((r.id, decide(op.route(), r.body)));
                if held.len() == batch {
                    let mut out = Vec::new();
                    for (id, (status, body)) in held.drain(..).rev() {
                        wire::put_answer(&mut out, id, status, body.as_bytes());
                    }
                    wr.write_all(&out).await.unwrap();
                }
            }
        }
        let len = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        rd.read_exact(&mut body).await.unwrap();
        if path == "/healthz" {
            // The transport's leader checks: not a decision, not recorded.
            let hint = leader
                .map(|l| format!("x-quorate-leader: {l}\r\n"))
                .unwrap_or_default();
            let resp =
                format!("HTTP/1.1 200 OK\r\n{hint}content-length: 0\r\nconnection: close\r\n\r\n");
            let _ = wr.write_all(resp.as_bytes()).await;
            return;
        }
        lock(&seen).http.push((path.clone(), body.clone()));
        let route = [
            RouteId::Acquire,
            RouteId::Release,
            RouteId::Renew,
            RouteId::RateCheck,
        ]
        .into_iter()
        .find(|r| r.route().path == path)
        .unwrap();
        let (status, body) = decide(route, &body);
        let resp = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = wr.write_all(resp.as_bytes()).await;
    }

    /// The fake's decisions: keys named `full` are at their limit, `forbidden` is a
    /// key this caller may not use, lease `gone` is not live, rate key `busy` is
    /// limited; everything else is granted or allowed.
    fn decide(route: RouteId, body: &[u8]) -> (u16, String) {
        match route {
            RouteId::Acquire => {
                let r: proto::AcquireRequest = serde_json::from_slice(body).unwrap();
                if r.keys.iter().any(|k| k == "full") {
                    let d = proto::AcquireDenied {
                        granted: false,
                        error: "limit_exceeded".into(),
                        message: "full".into(),
                        blocked_by: vec!["full".into()],
                        slots: vec![proto::SlotUsage {
                            key: "full".into(),
                            used: 1,
                            limit: 1,
                        }],
                        retry_after_ms: 1234,
                        queue_position: r.wait_ms.map(|_| 3),
                    };
                    (429, json(&d))
                } else if r.keys.iter().any(|k| k == "forbidden") {
                    (403, r#"{"error":"forbidden","message":"not yours"}"#.into())
                } else {
                    let g = proto::AcquireGranted {
                        granted: true,
                        lease_id: r.lease_id.unwrap_or_default(),
                        fencing_token: 42,
                        expires_at_ms: 1000,
                        slots: vec![],
                        shadow_denied: vec![],
                        waited_ms: 0,
                    };
                    (200, json(&g))
                }
            }
            RouteId::Release => (200, r#"{"released":true}"#.into()),
            RouteId::Renew => {
                let r: proto::RenewRequest = serde_json::from_slice(body).unwrap();
                if r.lease_id == "gone" {
                    (
                        404,
                        r#"{"error":"lease_not_found","message":"no lease gone"}"#.into(),
                    )
                } else {
                    let a = proto::RenewResponse {
                        lease_id: r.lease_id,
                        expires_at_ms: 2000,
                    };
                    (200, json(&a))
                }
            }
            RouteId::RateCheck => {
                let r: proto::RateCheckRequest = serde_json::from_slice(body).unwrap();
                let busy = r.key.as_deref() == Some("busy");
                let a = proto::RateCheckResponse {
                    allowed: !busy,
                    error: busy.then(|| "rate_limited".into()),
                    message: None,
                    limit: 5,
                    remaining: if busy { 0 } else { 4 },
                    reset_after_ms: 100,
                    retry_after_ms: if busy { 100 } else { 0 },
                    results: vec![],
                    shadow_denied: vec![],
                    allowlisted: false,
                };
                (if busy { 429 } else { 200 }, json(&a))
            }
            other => panic!("the fake does not serve {other:?}"),
        }
    }

    fn json<T: serde::Serialize>(v: &T) -> String {
        serde_json::to_string(v).unwrap()
    }

    fn client(nodes: &[&str], stream: bool) -> Client {
        let mut cfg = ClientConfig::new(nodes.iter().copied()).decision_stream(stream);
        cfg.deadline = Duration::from_secs(5);
        cfg.request_timeout = Duration::from_secs(2);
        Client::new(cfg).unwrap()
    }

    /// Every decision the fake makes, as the client reports it.
    async fn every_outcome(c: &Client) -> Vec<String> {
        let acquire = |keys: &[&str], wait: Option<u64>| proto::AcquireRequest {
            keys: keys.iter().map(|k| k.to_string()).collect(),
            lease_id: Some("lease-1".into()),
            ttl_ms: Some(60_000),
            holder: None,
            wait_ms: wait,
        };
        let full_wait = c
            .acquire_raw_wait(&acquire(&["full"], Some(50)), Duration::from_millis(50))
            .await;
        vec![
            format!("{:?}", c.acquire_raw(&acquire(&["org:a"], None)).await),
            format!("{:?}", c.acquire_raw(&acquire(&["full"], None)).await),
            format!("{full_wait:?}"),
            format!("{:?}", c.acquire_raw(&acquire(&["forbidden"], None)).await),
            format!("{:?}", c.release("lease-1").await),
            format!("{:?}", c.renew("lease-1", Duration::from_secs(9)).await),
            format!("{:?}", c.renew("gone", Duration::from_secs(9)).await),
            format!("{:?}", c.check_rate("user:1", "user", None).await),
            format!("{:?}", c.check_rate("busy", "user", None).await),
        ]
    }

    #[tokio::test]
    async fn a_stream_answers_exactly_as_http_does() {
        let (base, seen) = fake_node(Upgrade::Accept { batch: 1 }).await;
        let over_http = every_outcome(&client(&[&base], false)).await;
        assert_eq!(lock(&seen).http.len(), over_http.len());
        assert_eq!(lock(&seen).upgrades, 0);
        let streamed = client(&[&base], true);
        let over_stream = every_outcome(&streamed).await;
        assert_eq!(over_stream, over_http);
        {
            let seen = lock(&seen);
            assert_eq!(seen.upgrades, 1, "one stream for every call");
            assert_eq!(seen.frames.len(), over_stream.len());
            assert_eq!(
                seen.http.len(),
                over_http.len(),
                "no HTTP request for a decision"
            );
        }
        // The typed mapping, not only equality: a 429 is the denial, a 404 the lost
        // lease, a 403 the API error, a limited rate check an answer.
        let denied = streamed
            .acquire(&["full"], Duration::from_secs(60))
            .await
            .unwrap_err();
        assert!(
            matches!(&denied, Error::LimitExceeded { blocked_by, retry_after_ms: 1234, .. } if blocked_by == &["full"]),
            "{denied:?}"
        );
        assert!(matches!(
            streamed.renew("gone", Duration::from_secs(1)).await,
            Err(Error::LeaseNotFound(_))
        ));
        assert!(matches!(
            streamed
                .acquire(&["forbidden"], Duration::from_secs(60))
                .await,
            Err(Error::Api { status: 403, .. })
        ));
        let limited = streamed.check_rate("busy", "user", None).await.unwrap();
        assert!(
            !limited.allowed && limited.retry_after_ms == 100,
            "{limited:?}"
        );
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_stream_and_get_their_own_answers() {
        const CALLERS: usize = 16;
        let (base, seen) = fake_node(Upgrade::Accept { batch: CALLERS }).await;
        let c = client(&[&base], true);
        // The fake answers only once all of them are in, last first: every answer
        // reaches its caller only if the reader dispatches by id.
        let calls = (0..CALLERS).map(|i| {
            let c = c.clone();
            tokio::spawn(async move {
                let lease = format!("lease-{i}");
                let req = proto::AcquireRequest {
                    keys: vec![format!("k{i}")],
                    lease_id: Some(lease.clone()),
                    ttl_ms: Some(1000),
                    holder: None,
                    wait_ms: None,
                };
                (lease, c.acquire_raw(&req).await)
            })
        });
        for call in calls.collect::<Vec<_>>() {
            let (lease, got) = call.await.unwrap();
            assert_eq!(got.unwrap().lease_id, lease);
        }
        let seen = lock(&seen);
        assert_eq!(
            seen.upgrades, 1,
            "the callers opened one stream between them"
        );
        assert_eq!(seen.frames.len(), CALLERS);
        assert!(seen.http.is_empty(), "{:?}", seen.http);
    }

    #[tokio::test]
    async fn a_refused_upgrade_falls_back_to_http_and_is_remembered() {
        let (base, seen) = fake_node(Upgrade::Refuse).await;
        let c = client(&[&base], true);
        for _ in 0..3 {
            assert!(c.check_rate("user:1", "user", None).await.unwrap().allowed);
        }
        let seen = lock(&seen);
        assert_eq!(seen.upgrades, 1, "the refusal is remembered");
        assert_eq!(seen.http.len(), 3);
        assert!(seen.frames.is_empty());
    }

    #[tokio::test]
    async fn an_answer_lost_with_the_stream_is_retried_on_the_next_node_with_the_same_lease() {
        let (broken, broken_seen) = fake_node(Upgrade::DropAfterOneFrame).await;
        let (good, good_seen) = fake_node(Upgrade::Accept { batch: 1 }).await;
        let c = client(&[&broken, &good], true);
        let guard = c
            .acquire_with_id(&["org:a"], Duration::from_secs(60), "the-lease")
            .await
            .unwrap();
        assert_eq!(guard.fencing_token(), Some(42));
        let lease_of = |body: &[u8]| {
            serde_json::from_slice::<proto::AcquireRequest>(body)
                .unwrap()
                .lease_id
        };
        {
            let broken = lock(&broken_seen);
            // The frame left before the stream broke: its outcome is unknown, so it is
            // not resent to that node over HTTP but failed over, like a lost response.
            assert_eq!(broken.frames.len(), 1);
            assert!(broken.http.is_empty(), "{:?}", broken.http);
            assert_eq!(lease_of(&broken.frames[0].1).as_deref(), Some("the-lease"));
            let good = lock(&good_seen);
            assert_eq!(good.frames.len(), 1);
            assert_eq!(lease_of(&good.frames[0].1).as_deref(), Some("the-lease"));
        }
        guard.release().await.unwrap();
        assert_eq!(
            lock(&good_seen).frames.len(),
            2,
            "the release went on the stream"
        );
        assert_eq!(lock(&good_seen).upgrades, 1);
    }

    #[tokio::test]
    async fn a_stream_without_answers_times_out_and_the_failure_policy_applies() {
        let (silent, seen) = fake_node(Upgrade::Silent).await;
        let mut cfg = ClientConfig::new([silent.as_str()]).decision_stream(true);
        cfg.request_timeout = Duration::from_millis(100);
        cfg.deadline = Duration::from_millis(300);
        let closed = Client::new(cfg.clone()).unwrap();
        let started = Instant::now();
        let err = closed.check_rate("user:1", "user", None).await.unwrap_err();
        assert!(matches!(err, Error::Unavailable(_)), "{err}");
        // The deadline bounds the call (one attempt may overrun it by one attempt's
        // timeout, as over HTTP); generous slack for a loaded machine.
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert!(!lock(&seen).frames.is_empty());
        assert!(
            lock(&seen).http.is_empty(),
            "a sent frame is never resent over HTTP"
        );

        cfg.failure_policy = FailurePolicy::Open;
        let open = Client::new(cfg).unwrap();
        let g = open.acquire(&["k"], Duration::from_secs(5)).await.unwrap();
        assert!(g.is_degraded());
        assert_eq!(open.fail_open_count(), 1);
    }

    #[tokio::test]
    async fn a_stream_on_a_follower_moves_to_the_leader_its_node_names() {
        let (leader, leader_seen) = fake_node(Upgrade::Accept { batch: 1 }).await;
        // The follower's upgrade names no leader (as during an election); only the
        // transport's background check of the stream's node learns it.
        let (follower, follower_seen) =
            fake_node_naming(Upgrade::Accept { batch: 1 }, Some(leader.clone())).await;
        let c = client(&[&follower], true);
        let give_up = Instant::now() + Duration::from_secs(10);
        while lock(&leader_seen).frames.is_empty() {
            assert!(
                Instant::now() < give_up,
                "the stream never left the follower"
            );
            assert!(c.check_rate("user:1", "user", None).await.unwrap().allowed);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(c.leader_hint().as_deref(), Some(leader.as_str()));
        let on_follower = lock(&follower_seen).frames.len();
        for _ in 0..3 {
            assert!(c.check_rate("user:1", "user", None).await.unwrap().allowed);
        }
        assert_eq!(lock(&follower_seen).frames.len(), on_follower);
        assert_eq!(lock(&leader_seen).frames.len(), 4);
        assert_eq!(lock(&leader_seen).upgrades, 1);
        assert!(lock(&leader_seen).http.is_empty() && lock(&follower_seen).http.is_empty());
    }

    #[tokio::test]
    async fn https_nodes_never_get_a_stream() {
        let s = Streams::new(None, Duration::from_secs(1));
        let base = Url::parse("https://127.0.0.1:9").unwrap();
        let r = s
            .call(
                &base,
                StreamOp::RateCheck,
                b"{}",
                false,
                Duration::from_secs(1),
                &|_| {},
            )
            .await;
        assert!(matches!(r, Err(Miss::Fallback(_))), "{r:?}");
        assert!(lock(&s.current).is_none());
    }

    #[tokio::test]
    async fn the_upgrade_head_is_read_to_its_end_and_no_further() {
        let mut rd: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nX-Quorate-Leader: http://10.0.0.2:7101\r\n\r\nFRAMES";
        let (status, leader) = read_head(&mut rd).await.unwrap();
        assert_eq!(status, 101);
        assert_eq!(leader.as_deref(), Some(&b"http://10.0.0.2:7101"[..]));
        assert_eq!(rd, b"FRAMES");
        let mut bad: &[u8] = b"SSH-2.0-OpenSSH\r\n\r\n";
        assert!(read_head(&mut bad).await.is_err());
        let mut cut: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\n";
        assert!(read_head(&mut cut).await.is_err());
    }
}
