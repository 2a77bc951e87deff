//! A peer stream: one upgraded connection to a peer that carries request frames and
//! their answers (`protocol`'s [frames](super::protocol#frames)), one exchange at a
//! time.
//!
//! A stream is opened by one signed `POST /raft/stream` ([`PeerClient::open_stream`]),
//! so it passes every check a peer request passes; after that an exchange is a frame
//! written and a frame read, with no HTTP on either side. Two owners use streams: the
//! leader's replication (`raft_network`, a stream per follower for appends) and a
//! follower's forwarding (`raft::forwarder`, a few pooled streams to the leader for
//! forwarded writes).
//!
//! **Contract for owners.** Take a stream out of wherever it is kept for one exchange
//! and put it back only after [`PeerStream::exchange`] returned an answer. A failed,
//! timed-out or cancelled exchange then drops its stream with it, and no stream is
//! ever left holding the late answer to an older request. The two ways an exchange
//! fails say what the peer may have done ([`ExchangeError`]), which a caller whose
//! requests are not idempotent needs.

use std::time::Duration;

use tokio::io::BufStream;

use super::client::{PeerClient, PeerError};
use super::protocol::{paths, read_frame, write_frame};

/// An open stream to a peer.
#[derive(Debug)]
pub struct PeerStream {
    /// Buffered both ways: a frame is one write, and its answer usually one read.
    io: BufStream<reqwest::Upgraded>,
}

/// How an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The request frame was not written whole: the peer cannot have read it, so it
    /// decided nothing.
    #[error("stream write failed: {0}")]
    NotSent(std::io::Error),
    /// The frame was written but no whole answer came back: the peer may or may not
    /// have decided it.
    #[error("no answer on the stream: {0}")]
    NoAnswer(String),
}

impl PeerStream {
    /// Open a stream to peer `peer` (at `addr` unless overridden), within `timeout`.
    /// A peer that does not serve streams answers `PeerError::Status(404, ..)`.
    pub async fn open(
        client: &PeerClient,
        peer: u64,
        addr: &str,
        timeout: Duration,
    ) -> Result<Self, PeerError> {
        let io = client
            .open_stream(peer, addr, paths::STREAM, timeout)
            .await?;
        Ok(Self {
            io: BufStream::new(io),
        })
    }

    /// Whether this idle stream can no longer carry a request, seen without waiting:
    /// the peer closed it (it restarted, or closed an idle stream) or sent something
    /// nobody asked for. One non-blocking read; a stream that fails it is dropped.
    pub fn is_stale(&mut self) -> bool {
        use futures::FutureExt;
        use tokio::io::AsyncReadExt;
        let mut byte = [0u8; 1];
        self.io.read(&mut byte).now_or_never().is_some()
    }

    /// Send one request frame and read its answer frame.
    pub async fn exchange(&mut self, frame: &[u8]) -> Result<Vec<u8>, ExchangeError> {
        write_frame(&mut self.io, frame)
            .await
            .map_err(ExchangeError::NotSent)?;
        match read_frame(&mut self.io).await {
            Ok(Some(answer)) => Ok(answer),
            Ok(None) => Err(ExchangeError::NoAnswer("the peer closed the stream".into())),
            Err(e) => Err(ExchangeError::NoAnswer(e.to_string())),
        }
    }
}
