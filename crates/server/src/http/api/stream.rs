//! `POST /v1/stream`: decisions pipelined over one upgraded connection.
//!
//! The wire format is `quorate_proto::stream`'s. This file serves it: the upgrade
//! request has passed `authorize` like any client request (the token is checked
//! once, here, for the stream's life: tokens come from the configuration and do not
//! change while the node runs), then [`serve`] reads request frames, hands each to the
//! very handler its HTTP route uses (`slots::acquire`, `slots::release`, ...; for a
//! rate check `rate::check`, told to skip the RateLimit headers a stream does not
//! carry) with that caller, and writes each handler's status and JSON body back as an
//! answer frame. So a decision on a stream is judged, replicated, counted and traced
//! exactly as the same decision over HTTP; only the per-request HTTP machinery is gone.
//!
//! Up to [`MAX_IN_FLIGHT`] requests of a stream are decided at once, so one stream
//! can carry a whole batch; answers that are ready together go out in one write.
//! Frames are counted in `quorate_http_requests` (method `STREAM`) and open streams
//! in `quorate_api_streams`.
//!
//! Limits: an upgraded connection leaves the listener's `max_connections` count, so
//! streams have their own cap ([`Streams`], the same number); a frame above
//! `max_body_bytes` is refused (413, then the stream closes); a stream without a
//! frame for [`IDLE_TIMEOUT`] is closed. On shutdown a stream stops reading, answers
//! every request it has read and closes; the node's drain waits for that. A client
//! that closes its stream is treated as an HTTP client that disconnects: requests it
//! left in flight are dropped (a waiting acquire leaves its queue at once).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use quorate_core::Caller;
use quorate_proto::codes;
use quorate_proto::stream::{self as wire, StreamOp, LEN_BYTES, MAX_IN_FLIGHT, STREAM_PROTOCOL};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

use super::{rate, slots, ApiState};
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{parse_json, Authed, Json};

/// How long a stream may carry no frame (with nothing in flight) before the node
/// closes it. Long enough that a quiet service keeps its stream; short enough that
/// streams of clients that vanished without closing do not pile up.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Bytes read from a stream at a time.
const READ_CHUNK: usize = 16 * 1024;

/// The node's decision streams: their cap and the stop signal they obey.
#[derive(Debug, Clone)]
pub struct Streams {
    open: Arc<Semaphore>,
    max: usize,
    stop: watch::Receiver<bool>,
}

impl Streams {
    /// At most `max` open streams; each stops when `stop` turns true.
    pub fn new(max: usize, stop: watch::Receiver<bool>) -> Self {
        Self {
            open: Arc::new(Semaphore::new(max)),
            max,
            stop,
        }
    }

    /// Resolves once every stream has ended (after `stop` turned true, each answers
    /// what it has read and closes). The caller bounds the wait.
    pub async fn drained(&self) {
        let all = u32::try_from(self.max).unwrap_or(u32::MAX);
        let _ = self.open.acquire_many(all).await;
    }
}

/// The upgrade. Refuses (400) a request that does not ask for [`STREAM_PROTOCOL`],
/// and (503) a stream beyond the cap; otherwise answers 101 and serves the
/// connection on a task of its own.
pub(super) async fn stream(
    State(st): State<ApiState>,
    Authed(caller): Authed,
    mut req: Request,
) -> ApiResult<Response> {
    let asks = req.headers().get(header::UPGRADE).is_some_and(|v| {
        v.as_bytes()
            .eq_ignore_ascii_case(STREAM_PROTOCOL.as_bytes())
    });
    if !asks {
        return Err(ApiError::invalid(format!(
            "POST /v1/stream needs `Connection: Upgrade` and `Upgrade: {STREAM_PROTOCOL}`"
        )));
    }
    let Ok(permit) = st.streams.open.clone().try_acquire_owned() else {
        return Err(ApiError::unavailable(format!(
            "this node serves its maximum of {} decision streams; send HTTP requests or try another node",
            st.streams.max
        )));
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(io) => serve(st, caller, hyper_util::rt::TokioIo::new(io), permit).await,
            Err(e) => tracing::debug!(error = %e, "decision stream upgrade failed"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, STREAM_PROTOCOL)
        .body(axum::body::Body::empty())
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                codes::INTERNAL,
                e.to_string(),
            )
        })
}

/// One decided request: its id, status and JSON body.
type Answer = (u64, u16, Bytes);

/// Serve one stream until the client closes it (requests in flight are then dropped),
/// a frame is refused, it idles out or the node stops (every request read by then is
/// answered first).
pub(crate) async fn serve<S>(st: ApiState, caller: Caller, io: S, permit: OwnedSemaphorePermit)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let gauge = st.metrics.api_streams.clone();
    gauge.inc();
    let span = tracing::debug_span!("stream", node = st.config.node_id, caller = %caller.name);
    async {
        let (mut rd, mut wr) = tokio::io::split(io);
        let max_frame = st.config.max_body_bytes + wire::REQUEST_HEAD;
        let mut stop = st.streams.stop.clone();
        let mut inbuf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
        let mut chunk = vec![0u8; READ_CHUNK];
        let mut out: Vec<u8> = Vec::with_capacity(READ_CHUNK);
        let mut pending = FuturesUnordered::new();
        let mut reading = true;
        let idle = tokio::time::sleep(IDLE_TIMEOUT);
        tokio::pin!(idle);
        loop {
            // Start every whole request the buffer holds, up to the in-flight cap.
            let mut used = 0;
            while reading && pending.len() < MAX_IN_FLIGHT {
                match next_frame(&inbuf[used..], max_frame) {
                    Frame::Partial => break,
                    Frame::Whole(len) => {
                        let payload = &inbuf[used + LEN_BYTES..used + LEN_BYTES + len];
                        used += LEN_BYTES + len;
                        match wire::request(payload) {
                            Ok(r) => pending.push(decide(
                                st.clone(),
                                caller.clone(),
                                r.id,
                                r.op,
                                r.body.to_vec(),
                            )),
                            Err(short) => {
                                refuse(&mut out, StatusCode::BAD_REQUEST, codes::INVALID_REQUEST, &short.to_string());
                                reading = false;
                            }
                        }
                    }
                    Frame::TooLarge(len) => {
                        let why = format!(
                            "a frame of {len} bytes is above this node's limit of {max_frame} (max_body_bytes and the frame head)"
                        );
                        refuse(&mut out, StatusCode::PAYLOAD_TOO_LARGE, codes::PAYLOAD_TOO_LARGE, &why);
                        reading = false;
                    }
                }
            }
            inbuf.drain(..used);
            if !out.is_empty() && pending.is_empty() {
                // A refusal with nothing else to wait for: say it before closing.
                let _ = wr.write_all(&out).await;
                out.clear();
            }
            if !reading && pending.is_empty() {
                break;
            }
            tokio::select! {
                Some(first) = pending.next(), if !pending.is_empty() => {
                    put(&mut out, first);
                    // Whatever else is decided already goes out in the same write.
                    while let Some(Some(more)) = pending.next().now_or_never() {
                        put(&mut out, more);
                    }
                    if let Err(e) = wr.write_all(&out).await {
                        tracing::debug!(error = %e, "decision stream write failed");
                        return;
                    }
                    out.clear();
                    idle.as_mut().reset(tokio::time::Instant::now() + IDLE_TIMEOUT);
                }
                read = rd.read(&mut chunk), if reading && pending.len() < MAX_IN_FLIGHT => match read {
                    Ok(0) => {
                        // The client is gone, as an HTTP client that disconnects: its
                        // requests are dropped unanswered, so a waiting acquire leaves
                        // its queue now (wait.rs) instead of at its deadline.
                        tracing::debug!("client closed the decision stream");
                        return;
                    }
                    Ok(n) => {
                        inbuf.extend_from_slice(&chunk[..n]);
                        idle.as_mut().reset(tokio::time::Instant::now() + IDLE_TIMEOUT);
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "decision stream read failed");
                        return;
                    }
                },
                _ = stopped(&mut stop), if reading => {
                    tracing::debug!("node stopping: answering what was read, then closing");
                    reading = false;
                }
                () = &mut idle, if reading && pending.is_empty() => {
                    tracing::debug!("decision stream idle; closing");
                    reading = false;
                }
            }
        }
        let _ = wr.shutdown().await;
        tracing::debug!("decision stream closed");
    }
    .instrument(span)
    .await;
    gauge.dec();
    drop(permit);
}

/// Resolves when the node's stop flag turns true (never, if its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

enum Frame {
    /// Not all of the next frame has arrived.
    Partial,
    /// The next frame's payload has this many bytes and is all in the buffer.
    Whole(usize),
    /// The next frame announces a payload above the limit.
    TooLarge(usize),
}

fn next_frame(buf: &[u8], max: usize) -> Frame {
    let Some(prefix) = buf.get(..LEN_BYTES) else {
        return Frame::Partial;
    };
    let mut len = [0u8; LEN_BYTES];
    len.copy_from_slice(prefix);
    let len = wire::payload_len(len);
    if len > max {
        Frame::TooLarge(len)
    } else if buf.len() < LEN_BYTES + len {
        Frame::Partial
    } else {
        Frame::Whole(len)
    }
}

fn put(out: &mut Vec<u8>, (id, status, body): Answer) {
    wire::put_answer(out, id, status, &body);
}

/// The answer (id 0) to a frame that ends the stream.
fn refuse(out: &mut Vec<u8>, status: StatusCode, code: &'static str, why: &str) {
    tracing::info!(
        status = status.as_u16(),
        why,
        "decision stream frame refused"
    );
    let body = serde_json::to_vec(&quorate_proto::ErrorBody {
        error: code.to_owned(),
        message: why.to_owned(),
    })
    .unwrap_or_default();
    wire::put_answer(out, 0, status.as_u16(), &body);
}

/// Decide one request with its route's handler, as `observe` would trace and count it.
async fn decide(st: ApiState, caller: Caller, id: u64, op: u8, body: Vec<u8>) -> Answer {
    let op = StreamOp::from_byte(op);
    let route = op.map_or("unmatched", |op| op.route().route().path);
    let metrics = st.metrics.clone();
    let span = tracing::info_span!(
        "request",
        method = "STREAM",
        route,
        node = st.config.node_id
    );
    let start = Instant::now();
    let resp = async move {
        match op {
            None => ApiError::invalid(
                "unknown stream op; known ops are 1 (acquire), 2 (release), 3 (renew), 4 (rate check)",
            )
            .into_response(),
            Some(op) => handle(st, caller, op, &body).await,
        }
    }
    .instrument(span.clone())
    .await;
    let status = resp.status().as_u16();
    // The handlers answer with whole JSON bodies: collecting one takes its buffer.
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap_or_default();
    let secs = start.elapsed().as_secs_f64();
    span.in_scope(|| {
        if status >= 500 {
            tracing::warn!(status, latency_ms = secs * 1000.0, "request failed");
        } else {
            tracing::debug!(status, latency_ms = secs * 1000.0, "request done");
        }
    });
    metrics.http_request(route, "STREAM", status, secs);
    (id, status, body)
}

/// The HTTP route's own handler, given the frame's body as its JSON.
async fn handle(st: ApiState, caller: Caller, op: StreamOp, body: &[u8]) -> Response {
    let st = State(st);
    let who = Authed(caller);
    match op {
        StreamOp::Acquire => match parse_json(body) {
            Ok(req) => slots::acquire(st, who, Json(req)).await.into_response(),
            Err(e) => e.into_response(),
        },
        StreamOp::Release => match parse_json(body) {
            Ok(req) => slots::release(st, who, Json(req)).await.into_response(),
            Err(e) => e.into_response(),
        },
        StreamOp::Renew => match parse_json(body) {
            Ok(req) => slots::renew(st, who, Json(req)).await.into_response(),
            Err(e) => e.into_response(),
        },
        StreamOp::RateCheck => match parse_json(body) {
            Ok(req) => rate::check(st.0, who.0, req, rate::Headers::Skip)
                .await
                .into_response(),
            Err(e) => e.into_response(),
        },
    }
}
