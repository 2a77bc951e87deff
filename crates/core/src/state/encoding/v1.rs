//! The version 1 snapshot layout (before state caps and lease owners), decoded only
//! to upgrade: its settings get the default caps and its leases the system owner
//! `""` (they were acquired before ownership existed, so nobody is locked out).

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Deserialize;

use super::{ConcurrencyPolicy, RateSpec};

#[derive(Deserialize)]
struct Settings {
    default_limit: u32,
    max_limit: u32,
    max_ttl_ms: u64,
    max_retry_after_ms: u64,
    max_period_ms: u64,
}

#[derive(Deserialize)]
struct Lease {
    lease_id: String,
    holder: String,
    keys: Vec<String>,
    expires_at_ms: u64,
}

#[derive(Deserialize)]
pub(super) struct Snapshot {
    version: u32,
    now_ms: u64,
    last_token: u64,
    settings: Settings,
    config_digest: Option<u64>,
    overrides: BTreeMap<String, u32>,
    concurrency: Vec<ConcurrencyPolicy>,
    rate_policies: BTreeMap<String, RateSpec>,
    tiers: BTreeMap<String, u32>,
    leases: BTreeMap<u64, Lease>,
    rate: BTreeMap<String, u128>,
    rate_cursor: Option<String>,
}

impl Snapshot {
    pub(super) fn upgrade(self) -> super::Snapshot<'static> {
        let s = self.settings;
        let leases = self
            .leases
            .into_iter()
            .map(|(token, l)| {
                let lease = super::Lease {
                    lease_id: l.lease_id.into(),
                    holder: l.holder.into(),
                    keys: l.keys.into_iter().map(std::sync::Arc::from).collect(),
                    expires_at_ms: l.expires_at_ms,
                    owner: std::sync::Arc::from(""),
                };
                (token, lease)
            })
            .collect();
        super::Snapshot {
            version: self.version,
            now_ms: self.now_ms,
            last_token: self.last_token,
            settings: super::Settings {
                default_limit: s.default_limit,
                max_limit: s.max_limit,
                max_ttl_ms: s.max_ttl_ms,
                max_retry_after_ms: s.max_retry_after_ms,
                max_period_ms: s.max_period_ms,
                ..super::Settings::default()
            },
            config_digest: self.config_digest,
            overrides: Cow::Owned(self.overrides),
            concurrency: Cow::Owned(self.concurrency),
            rate_policies: Cow::Owned(self.rate_policies),
            tiers: Cow::Owned(self.tiers),
            leases: Cow::Owned(leases),
            rate: Cow::Owned(self.rate),
            rate_cursor: Cow::Owned(self.rate_cursor),
            // Filled by the leader within a housekeeping interval of the upgrade.
            seen: Cow::Owned(std::collections::BTreeSet::new()),
        }
    }
}
