//! A small etcd v3 client over the JSON gRPC gateway (`/v3/...`), keep-alive HTTP/1.1.
//!
//! Keys and values are base64 in JSON; int64 fields come back as strings and fields
//! holding their default value (0, false, empty) are omitted by the gateway.

use serde::{Deserialize, Deserializer, Serialize};

use crate::BenchError;

/// Standard base64 (with padding), enough for keys and values.
pub fn b64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

/// Decodes standard base64 (padding optional).
pub fn unb64(s: &str) -> Result<Vec<u8>, BenchError> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            let v = val(c).ok_or_else(|| BenchError::Protocol("bad base64".into()))?;
            n |= v << (18 - 6 * i);
        }
        out.push((n >> 16) as u8);
        if chunk.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(n as u8);
        }
    }
    Ok(out)
}

/// The end of the range of every key starting with `prefix` (last byte + 1).
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn de_i64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum N {
        S(String),
        I(i64),
    }
    match N::deserialize(d)? {
        N::I(i) => Ok(i),
        N::S(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Compare {
    pub key: String,
    pub target: &'static str,
    pub result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mod_revision: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

impl Compare {
    /// `mod_revision(key) == rev` (0 means "the key does not exist").
    pub fn mod_eq(key: &str, rev: i64) -> Self {
        Self {
            key: b64(key.as_bytes()),
            target: "MOD",
            result: "EQUAL",
            mod_revision: Some(rev.to_string()),
            version: None,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RangeRequest {
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range_end: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub count_only: bool,
}

impl RangeRequest {
    pub fn key(key: &str) -> Self {
        Self {
            key: b64(key.as_bytes()),
            ..Self::default()
        }
    }

    pub fn count_prefix(prefix: &str) -> Self {
        Self {
            key: b64(prefix.as_bytes()),
            range_end: Some(b64(&prefix_end(prefix))),
            count_only: true,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PutRequest {
    pub key: String,
    pub value: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
}

impl PutRequest {
    pub fn new(key: &str, value: &[u8], lease: Option<i64>) -> Self {
        Self {
            key: b64(key.as_bytes()),
            value: b64(value),
            lease: lease.map(|l| l.to_string()),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct DeleteRequest {
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range_end: Option<String>,
}

impl DeleteRequest {
    pub fn key(key: &str) -> Self {
        Self {
            key: b64(key.as_bytes()),
            range_end: None,
        }
    }

    pub fn prefix(prefix: &str) -> Self {
        Self {
            key: b64(prefix.as_bytes()),
            range_end: Some(b64(&prefix_end(prefix))),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub enum RequestOp {
    #[serde(rename = "request_range")]
    Range(RangeRequest),
    #[serde(rename = "request_put")]
    Put(PutRequest),
    #[serde(rename = "request_delete_range")]
    Delete(DeleteRequest),
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TxnRequest {
    pub compare: Vec<Compare>,
    pub success: Vec<RequestOp>,
    pub failure: Vec<RequestOp>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Header {
    #[serde(default, deserialize_with = "de_i64")]
    pub revision: i64,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct KeyValue {
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub value: String,
    #[serde(default, deserialize_with = "de_i64")]
    pub create_revision: i64,
    #[serde(default, deserialize_with = "de_i64")]
    pub mod_revision: i64,
    #[serde(default, deserialize_with = "de_i64")]
    pub version: i64,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RangeResponse {
    #[serde(default)]
    pub kvs: Vec<KeyValue>,
    #[serde(default, deserialize_with = "de_i64")]
    pub count: i64,
}

impl RangeResponse {
    /// The first kv's decoded value.
    pub fn value(&self) -> Result<Option<Vec<u8>>, BenchError> {
        self.kvs.first().map(|kv| unb64(&kv.value)).transpose()
    }

    /// The first kv's mod_revision, 0 when absent.
    pub fn mod_revision(&self) -> i64 {
        self.kvs.first().map_or(0, |kv| kv.mod_revision)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ResponseOp {
    #[serde(default)]
    pub response_range: Option<RangeResponse>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct TxnResponse {
    #[serde(default)]
    pub header: Header,
    #[serde(default)]
    pub succeeded: bool,
    #[serde(default)]
    pub responses: Vec<ResponseOp>,
}

impl TxnResponse {
    /// The range response at `i` (an empty one if the op there was not a range).
    pub fn range(&self, i: usize) -> RangeResponse {
        self.responses
            .get(i)
            .and_then(|r| r.response_range.clone())
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone, Deserialize)]
struct LeaseGrantResponse {
    #[serde(rename = "ID", deserialize_with = "de_i64")]
    id: i64,
    #[serde(default)]
    error: String,
}

/// A connection-pooling client for one member's client URL.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    /// `base` like `http://127.0.0.1:23791`.
    pub fn new(http: reqwest::Client, base: &str) -> Self {
        Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    async fn post<B: Serialize, R: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<R, BenchError> {
        let resp = self
            .http
            .post(format!("{}{}", self.base, path))
            .json(body)
            .send()
            .await?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        if !status.is_success() {
            return Err(BenchError::Status(
                status.as_u16(),
                String::from_utf8_lossy(&bytes).chars().take(200).collect(),
            ));
        }
        serde_json::from_slice(&bytes).map_err(|e| BenchError::Protocol(format!("etcd json: {e}")))
    }

    pub async fn txn(&self, req: &TxnRequest) -> Result<TxnResponse, BenchError> {
        self.post("/v3/kv/txn", req).await
    }

    pub async fn range(&self, req: &RangeRequest) -> Result<RangeResponse, BenchError> {
        self.post("/v3/kv/range", req).await
    }

    pub async fn put(&self, key: &str, value: &[u8]) -> Result<(), BenchError> {
        let _: serde_json::Value = self
            .post("/v3/kv/put", &PutRequest::new(key, value, None))
            .await?;
        Ok(())
    }

    pub async fn delete(&self, req: &DeleteRequest) -> Result<(), BenchError> {
        let _: serde_json::Value = self.post("/v3/kv/deleterange", req).await?;
        Ok(())
    }

    pub async fn lease_grant(&self, ttl_s: i64) -> Result<i64, BenchError> {
        let r: LeaseGrantResponse = self
            .post(
                "/v3/lease/grant",
                &serde_json::json!({ "TTL": ttl_s.to_string() }),
            )
            .await?;
        if !r.error.is_empty() {
            return Err(BenchError::Protocol(format!("lease grant: {}", r.error)));
        }
        Ok(r.id)
    }

    pub async fn lease_revoke(&self, id: i64) -> Result<(), BenchError> {
        let _: serde_json::Value = self
            .post(
                "/v3/lease/revoke",
                &serde_json::json!({ "ID": id.to_string() }),
            )
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for s in [
            "",
            "a",
            "ab",
            "abc",
            "abcd",
            "sem/org:hot/c1-7",
            "\u{ff}\u{0}x",
        ] {
            let e = b64(s.as_bytes());
            assert_eq!(unb64(&e).unwrap(), s.as_bytes(), "{s}");
        }
        assert_eq!(b64(b"foo"), "Zm9v");
        assert_eq!(b64(b"fo"), "Zm8=");
        assert_eq!(b64(b"f"), "Zg==");
    }

    #[test]
    fn prefix_end_bumps_last_byte() {
        assert_eq!(prefix_end("sem/a/"), b"sem/a0".to_vec());
    }

    #[test]
    fn txn_response_with_defaults_omitted() {
        let r: TxnResponse = serde_json::from_str(
            r#"{"header":{"revision":"12"},"responses":[{"response_range":{"header":{}}},{"response_range":{"kvs":[{"key":"YQ==","mod_revision":"9","value":"MzI="}],"count":"1"}}]}"#,
        )
        .unwrap();
        assert!(!r.succeeded);
        assert_eq!(r.header.revision, 12);
        assert_eq!(r.range(0).count, 0);
        assert_eq!(r.range(1).mod_revision(), 9);
        assert_eq!(r.range(1).value().unwrap().unwrap(), b"32");
    }
}
