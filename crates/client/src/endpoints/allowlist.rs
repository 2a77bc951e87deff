//! The allowlist (keys and addresses exempt from rate limits) and the audit trail of
//! admin changes. Allowlist reads need a client token, changes and the audit trail an
//! admin token. An entry is exactly one of a key glob
//! ([`AllowlistEntry::key`]) or an address/CIDR ([`AllowlistEntry::ip`]), scoped to
//! one policy or (no policy) global; the server answers with its canonical form.
//!
//! [`AllowlistEntry::key`]: quorate_proto::AllowlistEntry::key
//! [`AllowlistEntry::ip`]: quorate_proto::AllowlistEntry::ip

use quorate_proto::{self as proto, routes::RouteId};

use crate::transport::Request;
use crate::{Client, Error};

impl Client {
    /// Every entry and the cluster's bound.
    pub async fn allowlist(&self) -> Result<proto::AllowlistResponse, Error> {
        self.call(Request::new(RouteId::Allowlist)).await
    }

    /// Add an entry (idempotent: `changed` is false when it was there).
    pub async fn allow(
        &self,
        entry: &proto::AllowlistEntry,
    ) -> Result<proto::AllowlistChange, Error> {
        self.call(Request::new(RouteId::Allow).json(entry)?).await
    }

    /// Remove an entry (idempotent: `changed` is false when there was none).
    pub async fn disallow(
        &self,
        entry: &proto::AllowlistEntry,
    ) -> Result<proto::AllowlistChange, Error> {
        let mut query = Vec::new();
        for (name, value) in [
            ("policy", &entry.policy),
            ("key", &entry.key),
            ("ip", &entry.ip),
        ] {
            if let Some(v) = value {
                query.push((name, v.as_str()));
            }
        }
        self.call(Request::new(RouteId::Disallow).query(&query))
            .await
    }
}

impl Client {
    /// The audit trail (admin token): changes with a log index above `since` whose
    /// key starts with `key_prefix`, oldest first, at most `max` (server default 1000).
    pub async fn audit(
        &self,
        since: u64,
        key_prefix: &str,
        max: Option<u32>,
    ) -> Result<proto::AuditResponse, Error> {
        let since = since.to_string();
        let max = max.map(|m| m.to_string());
        let mut query = vec![("since", since.as_str()), ("key", key_prefix)];
        if let Some(m) = &max {
            query.push(("max", m));
        }
        self.call(Request::new(RouteId::Audit).query(&query)).await
    }
}
