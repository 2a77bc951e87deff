//! A minimal Redis client speaking RESP2 over one TCP connection.
//!
//! Deliberately simple and honest: one command in flight per connection (write the
//! command, read its whole reply, then the next), exactly like a typical blocking
//! client. No pipelining.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A decoded RESP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Value>>),
}

impl Value {
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bulk(Some(b)) => std::str::from_utf8(b).ok()?.parse().ok(),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Simple(s) => Some(s),
            Value::Bulk(Some(b)) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(Some(v)) => Some(v),
            _ => None,
        }
    }
}

/// Errors of the RESP client.
#[derive(Debug, thiserror::Error)]
pub enum RespError {
    #[error("redis i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("redis protocol: {0}")]
    Protocol(String),
    #[error("redis error reply: {0}")]
    Server(String),
}

/// Encodes a command as a RESP array of bulk strings.
pub fn encode(args: &[&[u8]], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// Parses one reply from the front of `buf`: `Ok(None)` when incomplete, otherwise the
/// value and the number of bytes it used.
pub fn parse(buf: &[u8]) -> Result<Option<(Value, usize)>, RespError> {
    let Some(line_end) = find_crlf(buf) else {
        return Ok(None);
    };
    if buf.is_empty() {
        return Ok(None);
    }
    let line = &buf[1..line_end];
    let after = line_end + 2;
    let text = || {
        std::str::from_utf8(line)
            .map(str::to_owned)
            .map_err(|_| RespError::Protocol("non-utf8 line".into()))
    };
    let int = || -> Result<i64, RespError> {
        text()?
            .parse::<i64>()
            .map_err(|_| RespError::Protocol("bad integer".into()))
    };
    match buf[0] {
        b'+' => Ok(Some((Value::Simple(text()?), after))),
        b'-' => Ok(Some((Value::Error(text()?), after))),
        b':' => Ok(Some((Value::Int(int()?), after))),
        b'$' => {
            let n = int()?;
            if n < 0 {
                return Ok(Some((Value::Bulk(None), after)));
            }
            let n = usize::try_from(n).map_err(|_| RespError::Protocol("len".into()))?;
            if buf.len() < after + n + 2 {
                return Ok(None);
            }
            Ok(Some((
                Value::Bulk(Some(buf[after..after + n].to_vec())),
                after + n + 2,
            )))
        }
        b'*' => {
            let n = int()?;
            if n < 0 {
                return Ok(Some((Value::Array(None), after)));
            }
            let mut pos = after;
            let mut items = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
            for _ in 0..n {
                match parse(&buf[pos..])? {
                    None => return Ok(None),
                    Some((v, used)) => {
                        items.push(v);
                        pos += used;
                    }
                }
            }
            Ok(Some((Value::Array(Some(items)), pos)))
        }
        other => Err(RespError::Protocol(format!(
            "unexpected type byte {other:#x}"
        ))),
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// One connection; one request at a time.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    wbuf: Vec<u8>,
    rbuf: Vec<u8>,
}

impl Conn {
    pub async fn connect(addr: &str) -> Result<Self, RespError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            wbuf: Vec::with_capacity(256),
            rbuf: Vec::with_capacity(256),
        })
    }

    /// Sends one command and waits for its reply. Error replies become `Err(Server)`.
    pub async fn cmd(&mut self, args: &[&[u8]]) -> Result<Value, RespError> {
        self.wbuf.clear();
        encode(args, &mut self.wbuf);
        self.stream.write_all(&self.wbuf).await?;
        self.rbuf.clear();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some((v, used)) = parse(&self.rbuf)? {
                if used != self.rbuf.len() {
                    return Err(RespError::Protocol("trailing bytes after reply".into()));
                }
                return match v {
                    Value::Error(e) => Err(RespError::Server(e)),
                    v => Ok(v),
                };
            }
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(RespError::Protocol("connection closed".into()));
            }
            self.rbuf.extend_from_slice(&chunk[..n]);
        }
    }

    /// `SCRIPT LOAD`, returning the SHA1.
    pub async fn script_load(&mut self, script: &str) -> Result<String, RespError> {
        let v = self.cmd(&[b"SCRIPT", b"LOAD", script.as_bytes()]).await?;
        v.as_str()
            .map(str::to_owned)
            .ok_or_else(|| RespError::Protocol("SCRIPT LOAD reply".into()))
    }

    /// `EVALSHA sha numkeys keys... args...`.
    pub async fn evalsha(
        &mut self,
        sha: &str,
        keys: &[&str],
        args: &[&str],
    ) -> Result<Value, RespError> {
        let nkeys = keys.len().to_string();
        let mut v: Vec<&[u8]> = Vec::with_capacity(3 + keys.len() + args.len());
        v.push(b"EVALSHA");
        v.push(sha.as_bytes());
        v.push(nkeys.as_bytes());
        v.extend(keys.iter().map(|k| k.as_bytes()));
        v.extend(args.iter().map(|a| a.as_bytes()));
        self.cmd(&v).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nested_and_partial() {
        let full = b"*3\r\n:1\r\n$3\r\nabc\r\n*1\r\n+OK\r\n";
        let (v, n) = parse(full).unwrap().unwrap();
        assert_eq!(n, full.len());
        assert_eq!(
            v,
            Value::Array(Some(vec![
                Value::Int(1),
                Value::Bulk(Some(b"abc".to_vec())),
                Value::Array(Some(vec![Value::Simple("OK".into())])),
            ]))
        );
        for cut in 0..full.len() {
            assert!(parse(&full[..cut]).unwrap().is_none(), "cut {cut}");
        }
        assert_eq!(parse(b"$-1\r\n").unwrap().unwrap().0, Value::Bulk(None));
        assert_eq!(
            parse(b"-ERR x\r\n").unwrap().unwrap().0,
            Value::Error("ERR x".into())
        );
    }

    #[test]
    fn encodes() {
        let mut out = Vec::new();
        encode(&[b"GET", b"k"], &mut out);
        assert_eq!(out, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
    }
}
