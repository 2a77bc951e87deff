//! A quorate decision stream (`quorate_proto::stream`) as the bench drives it: one
//! upgraded connection per client, one request in flight, like every other system's
//! connection in the run. Plain TCP only (the bench's clusters run without TLS).

use quorate_proto::stream::{self as wire, StreamOp, LEN_BYTES, STREAM_PROTOCOL};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::BenchError;

#[derive(Debug)]
pub struct StreamConn {
    rd: BufReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
    next_id: u64,
    out: Vec<u8>,
    payload: Vec<u8>,
}

impl StreamConn {
    /// Opens a stream on the node at `base` (`http://host:port`). Returns it and the
    /// leader hint of the upgrade's answer.
    pub async fn open(base: &str) -> Result<(Self, Option<String>), BenchError> {
        let authority = base
            .strip_prefix("http://")
            .ok_or_else(|| {
                BenchError::Protocol(format!("streams need an http:// node, not {base}"))
            })?
            .trim_end_matches('/');
        let tcp = TcpStream::connect(authority).await?;
        tcp.set_nodelay(true)?;
        let (rd, mut wr) = tcp.into_split();
        let mut rd = BufReader::new(rd);
        let req = format!(
            "POST /v1/stream HTTP/1.1\r\nHost: {authority}\r\nConnection: Upgrade\r\nUpgrade: {STREAM_PROTOCOL}\r\nContent-Length: 0\r\n\r\n"
        );
        wr.write_all(req.as_bytes()).await?;
        let mut status = String::new();
        rd.read_line(&mut status).await?;
        let mut leader = None;
        loop {
            let mut line = String::new();
            if rd.read_line(&mut line).await? == 0 {
                return Err(BenchError::Protocol(
                    "stream upgrade: connection closed".into(),
                ));
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case(quorate_proto::LEADER_HEADER) {
                    leader = Some(value.trim().trim_end_matches('/').to_owned());
                }
            }
        }
        if status.split_whitespace().nth(1) != Some("101") {
            return Err(BenchError::Protocol(format!(
                "stream upgrade refused: {}",
                status.trim_end()
            )));
        }
        let conn = Self {
            rd,
            wr,
            next_id: 1,
            out: Vec::with_capacity(512),
            payload: Vec::with_capacity(512),
        };
        Ok((conn, leader))
    }

    /// Sends one request and waits for its answer: (status, JSON body).
    pub async fn call(&mut self, op: StreamOp, body: &[u8]) -> Result<(u16, &[u8]), BenchError> {
        let id = self.next_id;
        self.next_id += 1;
        self.out.clear();
        wire::put_request(&mut self.out, id, op, body);
        self.wr.write_all(&self.out).await?;
        let mut prefix = [0u8; LEN_BYTES];
        self.rd.read_exact(&mut prefix).await?;
        let len = wire::payload_len(prefix);
        self.payload.resize(len, 0);
        self.rd.read_exact(&mut self.payload).await?;
        let a = wire::answer(&self.payload).map_err(|e| BenchError::Protocol(e.to_string()))?;
        if a.id != id {
            return Err(BenchError::Protocol(format!(
                "stream answer for request {} while {id} was in flight (status {})",
                a.id, a.status
            )));
        }
        Ok((a.status, a.body))
    }
}
