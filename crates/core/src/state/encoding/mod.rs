//! Snapshot encoding: the state's primary data as bytes, and back.
//!
//! A snapshot holds only the primary data (settings, policies, overrides, leases by
//! token, rate buckets, seen nodes, descriptor tables, then named sections: shadow
//! policies, counters); the per-key sets,
//! the lease-id map, the expiry index, the owner counts and the digest sums are
//! derived and rebuilt on restore. All maps are `BTreeMap`, so the snapshot of a
//! given state is always the same bytes and its digest can be compared across nodes.
//! [`cut`] writes the same bytes in chunks while the state keeps applying; older
//! layouts are decoded by their own modules ([`v1`]) and upgraded.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::command::{AdminLimits, RateSpec, Settings};
use crate::descriptor_table::DescriptorTables;
use crate::error::CoreError;

use super::digest::entry_hash;
use super::leases::Lease;
use super::policy::ConcurrencyPolicy;
use super::State;

pub mod cut;
mod v1;

/// Snapshot format version; bumped when the layout changes. Version 2 added the
/// state caps to the settings, the owner to every lease and the seen nodes; version 1 snapshots
/// still restore (see [`v1`]). Version 3 appends the Envoy descriptor tables after
/// the version 2 fields (a trailing section, so a version 2 snapshot is a version 3
/// one without it and restores with empty tables). Version 4 appends named
/// sections after the tables ([`State::sections`]).
pub(crate) const SNAPSHOT_VERSION: u32 = 4;

/// The version a state without sections is written in: such a snapshot is exactly
/// the version 3 layout, so a cluster that uses none of the features kept in
/// sections writes snapshots that nodes of the previous release still restore.
const BASE_VERSION: u32 = 3;

/// One named section of a version 4 snapshot: a feature's data, bincode-encoded.
/// Named, so that a feature added later is one more name (not one more version), and
/// a node that meets a name it does not know refuses the snapshot rather than
/// silently dropping that feature's data.
type Section = (String, Vec<u8>);

/// The section holding the names of the policies in shadow mode.
const SHADOW: &str = "shadow";
/// The section holding the counters (`counters.rs`), key → (value, expiry). Written
/// whole, also by a chunked cut (at its start): counters are fixed windows that
/// expire and are swept, so the map stays far smaller than the bucket map.
const COUNTERS: &str = "counters";
/// The section holding the allowlist entries.
const ALLOWLIST: &str = "allowlist";
/// The section holding the audit ring.
const AUDIT: &str = "audit";
/// The section holding the admin records' bounds, when not the defaults.
const ADMIN_LIMITS: &str = "admin_limits";
/// The section holding the waiting acquires (`queue.rs`), by sequence number.
/// Written whole, also by a chunked cut (at its start), like the counters: waiters
/// are bounded by `max_leases` together with the leases and leave by their deadline.
const QUEUE: &str = "queue";

/// The snapshot format: primary data only. One field list for both directions:
/// borrowed from the state when written, owned when read (a `Cow` encodes exactly as
/// the value it holds, so the bytes are those of the plain fields).
#[derive(Serialize, Deserialize)]
pub(super) struct Snapshot<'a> {
    version: u32,
    now_ms: u64,
    last_token: u64,
    settings: Settings,
    config_digest: Option<u64>,
    overrides: Cow<'a, BTreeMap<String, u32>>,
    concurrency: Cow<'a, [ConcurrencyPolicy]>,
    rate_policies: Cow<'a, BTreeMap<String, RateSpec>>,
    tiers: Cow<'a, BTreeMap<String, u32>>,
    leases: Cow<'a, BTreeMap<u64, Lease>>,
    #[serde(deserialize_with = "bulk_map")]
    rate: Cow<'a, BTreeMap<String, u128>>,
    rate_cursor: Cow<'a, Option<String>>,
    seen: Cow<'a, BTreeSet<u64>>,
}

/// Decodes a map the way a snapshot holds it (sorted, no duplicate keys) into a
/// `BTreeMap` with full nodes. serde's own map decoding inserts entry by entry, and a
/// B-tree grown by inserts in key order keeps its nodes about half full: at a million
/// rate keys a restored node held 90 B per key instead of 54, and the half-full map
/// lived beside the rebuilt one until restore finished. Collecting the pairs first and
/// building the tree from the sorted run (`FromIterator`) avoids both. Same bytes: a
/// map and a sequence of pairs encode alike in bincode; this only changes the reader.
fn bulk_map<'de, 'a, D, K, V>(d: D) -> Result<Cow<'a, BTreeMap<K, V>>, D::Error>
where
    D: serde::Deserializer<'de>,
    K: Deserialize<'de> + Ord + Clone,
    V: Deserialize<'de> + Clone,
{
    struct Pairs<K, V>(std::marker::PhantomData<(K, V)>);
    impl<'de, K: Deserialize<'de>, V: Deserialize<'de>> serde::de::Visitor<'de> for Pairs<K, V> {
        type Value = Vec<(K, V)>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a map")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            // The size hint comes from the input: cap it, the Vec grows if needed.
            let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(0).min(1 << 20));
            while let Some(pair) = map.next_entry()? {
                pairs.push(pair);
            }
            Ok(pairs)
        }
    }
    let pairs = d.deserialize_map(Pairs(std::marker::PhantomData))?;
    Ok(Cow::Owned(pairs.into_iter().collect()))
}

impl State {
    /// The sections this state's snapshot carries: one per feature in use, in a
    /// fixed order, each only when it holds something.
    pub(crate) fn sections(&self) -> Vec<Section> {
        self.sections_with(false)
    }

    /// [`State::sections`] with the counters and the audit ring stood for by their
    /// running hashes and lengths: what the digest hashes, so the digest stays O(1) in
    /// the number of counters and a `/v1/cluster` poll does not encode a ring of many
    /// thousand records. Empty when [`State::sections`] is.
    pub(crate) fn digest_sections(&self) -> Vec<Section> {
        self.sections_with(true)
    }

    fn sections_with(&self, digest: bool) -> Vec<Section> {
        let mut out = Vec::new();
        if !self.shadow.is_empty() {
            out.push((SHADOW.to_string(), encode(&self.shadow)));
        }
        if !self.counters.is_empty() {
            let bytes = if digest {
                encode(&(self.counter_sum, self.counters.len() as u64))
            } else {
                encode(&self.counters)
            };
            out.push((COUNTERS.to_string(), bytes));
        }
        if !self.allow.is_empty() {
            out.push((ALLOWLIST.to_string(), encode(&self.allow)));
        }
        if self.admin_limits != AdminLimits::default() {
            out.push((ADMIN_LIMITS.to_string(), encode(&self.admin_limits)));
        }
        if !self.audit.is_empty() {
            let bytes = if digest {
                encode(&(self.audit_sum, self.audit.len() as u64))
            } else {
                encode(&self.audit)
            };
            out.push((AUDIT.to_string(), bytes));
        }
        if !self.queue.is_empty() {
            let bytes = if digest {
                encode(&(self.queue.sum, self.queue.len() as u64))
            } else {
                encode(&self.queue.waiters)
            };
            out.push((QUEUE.to_string(), bytes));
        }
        out
    }

    /// The version this state's snapshot is written in (see [`BASE_VERSION`]).
    pub(crate) fn snapshot_version(&self, sections: &[Section]) -> u32 {
        if sections.is_empty() {
            BASE_VERSION
        } else {
            SNAPSHOT_VERSION
        }
    }

    fn restore_section(&mut self, (name, bytes): Section) -> Result<(), CoreError> {
        use bincode::Options;
        let decode = bincode::DefaultOptions::new()
            .with_fixint_encoding()
            .reject_trailing_bytes()
            .with_limit(bytes.len() as u64 + 64);
        let corrupt =
            |e: bincode::Error| CoreError::CorruptSnapshot(format!("snapshot section {name}: {e}"));
        match name.as_str() {
            SHADOW => self.shadow = decode.deserialize(&bytes).map_err(corrupt)?,
            COUNTERS => {
                let counters: BTreeMap<String, super::Counter> =
                    decode.deserialize(&bytes).map_err(corrupt)?;
                if let Some(k) = counters
                    .keys()
                    .find(|k| crate::validate::key("key", k).is_err())
                {
                    return Err(CoreError::CorruptSnapshot(format!(
                        "snapshot section {name}: invalid counter key {k:?}"
                    )));
                }
                self.counters = counters;
                self.index_counters();
            }
            ALLOWLIST => {
                self.allow = decode.deserialize(&bytes).map_err(corrupt)?;
                self.rebuild_allow_index()?;
            }
            ADMIN_LIMITS => self.admin_limits = decode.deserialize(&bytes).map_err(corrupt)?,
            AUDIT => {
                self.audit = decode.deserialize(&bytes).map_err(corrupt)?;
                self.audit_sum = self
                    .audit
                    .iter()
                    .fold(0u64, |acc, r| acc.wrapping_add(entry_hash(r)));
            }
            QUEUE => {
                let waiters = decode.deserialize(&bytes).map_err(corrupt)?;
                self.queue = super::queue::Queue::rebuild(waiters).map_err(|e| {
                    CoreError::CorruptSnapshot(format!("snapshot section {name}: {e}"))
                })?;
            }
            _ => {
                return Err(CoreError::CorruptSnapshot(format!(
                    "unknown snapshot section {name:?} (written by a newer version?)"
                )))
            }
        }
        Ok(())
    }

    /// Serialize the primary data. Deterministic: equal states give equal bytes.
    pub fn snapshot(&self) -> Vec<u8> {
        let sections = self.sections();
        let s = Snapshot {
            version: self.snapshot_version(&sections),
            now_ms: self.now_ms,
            last_token: self.last_token,
            settings: self.settings,
            config_digest: self.config_digest,
            overrides: Cow::Borrowed(&self.overrides),
            concurrency: Cow::Borrowed(&self.concurrency[..]),
            rate_policies: Cow::Borrowed(&self.rate_policies),
            tiers: Cow::Borrowed(&self.tiers),
            leases: Cow::Borrowed(&self.leases),
            rate: Cow::Borrowed(&self.rate),
            rate_cursor: Cow::Borrowed(&self.rate_cursor),
            seen: Cow::Borrowed(&self.seen),
        };
        // Serializing plain owned data into a Vec cannot fail.
        let mut bytes = bincode::serialize(&s).unwrap_or_default();
        bytes.extend_from_slice(&encode(&self.descriptors));
        if !sections.is_empty() {
            bytes.extend_from_slice(&encode(&sections));
        }
        bytes
    }

    /// Rebuild a state from [`State::snapshot`] bytes (this version's or an earlier
    /// one's), checking its invariants.
    pub fn restore(bytes: &[u8]) -> Result<State, CoreError> {
        Self::restore_from(bytes, bytes.len() as u64)
    }

    /// [`State::restore`] reading the `len` snapshot bytes from `reader` as it goes,
    /// so that they need not all be in memory at once (the caller reads a file; a
    /// read error is reported as a corrupt snapshot).
    pub fn restore_from(reader: impl std::io::Read, len: u64) -> Result<State, CoreError> {
        use bincode::Options;
        use std::io::Read;
        let decode = bincode::DefaultOptions::new()
            .with_fixint_encoding()
            .allow_trailing_bytes()
            .with_limit(len.saturating_add(1024));
        let corrupt = |e: bincode::Error| CoreError::CorruptSnapshot(e.to_string());
        // The version is the first field: a fixed-width little-endian u32. It is
        // read ahead, then put back in front of the rest for the decoders.
        let mut reader = reader;
        let mut head = [0u8; 4];
        if reader.read_exact(&mut head).is_err() {
            return Err(CoreError::CorruptSnapshot(
                "shorter than its version".into(),
            ));
        }
        let version = u32::from_le_bytes(head);
        let mut rest = (&head[..]).chain(reader);
        let mut descriptors = DescriptorTables::default();
        let mut sections: Vec<Section> = Vec::new();
        let s: Snapshot = match version {
            2..=SNAPSHOT_VERSION => {
                let s = decode.deserialize_from(&mut rest).map_err(corrupt)?;
                if version >= 3 {
                    descriptors = decode.deserialize_from(&mut rest).map_err(corrupt)?;
                }
                if version >= 4 {
                    sections = decode.deserialize_from(&mut rest).map_err(corrupt)?;
                }
                s
            }
            1 => decode
                .deserialize_from::<_, v1::Snapshot>(&mut rest)
                .map_err(corrupt)?
                .upgrade(),
            v => {
                return Err(CoreError::CorruptSnapshot(format!(
                    "unsupported snapshot version {v}"
                )))
            }
        };
        let mut state = State {
            now_ms: s.now_ms,
            last_token: s.last_token,
            settings: s.settings,
            config_digest: s.config_digest,
            overrides: s.overrides.into_owned(),
            concurrency: s.concurrency.into_owned(),
            rate_policies: s.rate_policies.into_owned(),
            tiers: s.tiers.into_owned(),
            leases: BTreeMap::new(),
            rate: s.rate.into_owned(),
            rate_cursor: s.rate_cursor.into_owned(),
            seen: s.seen.into_owned(),
            descriptors,
            shadow: Default::default(),
            counters: BTreeMap::new(),
            allow: Default::default(),
            admin_limits: AdminLimits::default(),
            allow_index: Vec::new(),
            audit: Default::default(),
            queue: Default::default(),
            audit_sum: 0,
            log_index: 0,
            lease_sum: 0,
            rate_sum: 0,
            override_sum: 0,
            counter_sum: 0,
            counter_expiry: BTreeSet::new(),
            undo: None,
            cut_seq: 0,
            lease_ids: BTreeMap::new(),
            slots: BTreeMap::new(),
            expiry: BTreeSet::new(),
            owners: BTreeMap::new(),
        };
        state.rate_sum = state.rate.iter().fold(0u64, |acc, (k, tat)| {
            acc.wrapping_add(entry_hash(&(k, *tat)))
        });
        state.override_sum = state
            .overrides
            .iter()
            .fold(0u64, |acc, (k, l)| acc.wrapping_add(entry_hash(&(k, *l))));
        // The lease maps are built from sorted runs, not by inserting one entry at a
        // time: a B-tree grown by inserts in key order (tokens, expiry times) keeps its
        // nodes about half full, while one built from a sorted run fills them, which
        // at a million leases is about 100 MB less (`benches/apply.rs`).
        let leases = s.leases.into_owned();
        let mut built = Vec::with_capacity(leases.len());
        let mut ids = Vec::with_capacity(leases.len());
        let mut expiry = Vec::with_capacity(leases.len());
        for (token, mut lease) in leases {
            if token == 0 || token > state.last_token {
                return Err(CoreError::CorruptSnapshot(format!(
                    "lease token {token} outside 1..={}",
                    state.last_token
                )));
            }
            state.intern_and_slot(token, &mut lease);
            state.lease_sum = state.lease_sum.wrapping_add(entry_hash(&(token, &lease)));
            ids.push((lease.lease_id.clone(), token));
            expiry.push((lease.expires_at_ms, token));
            built.push((token, lease));
        }
        ids.sort_unstable();
        if let Some(pair) = ids.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(CoreError::CorruptSnapshot(format!(
                "lease id {} appears twice",
                pair[0].0
            )));
        }
        expiry.sort_unstable();
        state.lease_ids = ids.into_iter().collect();
        state.expiry = expiry.into_iter().collect();
        state.leases = built.into_iter().collect();
        for section in sections {
            state.restore_section(section)?;
        }
        Ok(state)
    }
}

/// bincode of plain data (fixed-width integers, as the whole snapshot); encoding
/// into a Vec cannot fail.
fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    bincode::serialize(value).unwrap_or_default()
}
