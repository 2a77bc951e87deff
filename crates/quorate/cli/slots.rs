//! `quorate slots show`, `acquire` and `release`: leases by hand.
//!
//! `acquire` sends the raw request (no guard): the lease outlives the command, so an
//! operator can hold a slot from a shell and release it later, or let its TTL run
//! out. A denial exits 3 with the keys that blocked it.

use clap::Subcommand;
use quorate_client::Client;
use quorate_proto as proto;

use super::render::{done, shadow_lines, table, yes_no, Outcome, Released, Render};

#[derive(Debug, Subcommand)]
pub enum SlotsCmd {
    /// Holders, fencing tokens and expiries of a key's live leases.
    Show { key: String },
}

pub async fn run(client: &Client, cmd: SlotsCmd) -> Outcome {
    match cmd {
        SlotsCmd::Show { key } => done(client.slots(&key).await?),
    }
}

/// `wait`: the request waits that long in the queue, so the call's budget grows by
/// it (each attempt may be held open that long).
pub async fn acquire(
    client: &Client,
    req: &proto::AcquireRequest,
    wait: Option<std::time::Duration>,
) -> Outcome {
    match wait {
        Some(w) if !w.is_zero() => done(client.acquire_raw_wait(req, w).await?),
        _ => done(client.acquire_raw(req).await?),
    }
}

pub async fn release(client: &Client, lease_id: String) -> Outcome {
    let released = client.release(&lease_id).await?;
    let (yes, no) = (
        format!("released {lease_id}"),
        format!("{lease_id} was not live (already released or expired)"),
    );
    yes_no(Released { released }, released, yes, no)
}

impl Render for proto::SlotsResponse {
    fn table(&self) -> String {
        let mut out = format!("{}: {}/{} slots in use", self.key, self.used, self.limit);
        if self.queue.length > 0 {
            out.push_str(&format!(", {} waiting", self.queue.length));
        }
        out.push('\n');
        if !self.leases.is_empty() {
            out.push_str(&table(
                &["LEASE", "HOLDER", "TOKEN", "EXPIRES_AT_MS"],
                self.leases
                    .iter()
                    .map(|l| {
                        vec![
                            l.lease_id.clone(),
                            l.holder.clone(),
                            l.fencing_token.to_string(),
                            l.expires_at_ms.to_string(),
                        ]
                    })
                    .collect(),
            ));
        }
        out
    }
}

impl Render for proto::AcquireGranted {
    fn table(&self) -> String {
        let waited = if self.waited_ms > 0 {
            format!(", after waiting {} ms", self.waited_ms)
        } else {
            String::new()
        };
        let head = format!(
            "granted lease {} (fencing token {}, expires at {} ms{waited})\n",
            self.lease_id, self.fencing_token, self.expires_at_ms
        );
        let slots = self
            .slots
            .iter()
            .map(|s| vec![s.key.clone(), s.used.to_string(), s.limit.to_string()])
            .collect();
        head + &table(&["KEY", "USED", "LIMIT"], slots) + &shadow_lines(&self.shadow_denied)
    }
}
