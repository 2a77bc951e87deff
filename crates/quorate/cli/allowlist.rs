//! `quorate allowlist list|add|remove`: keys and addresses exempt from rate limits.
//!
//! An entry is `--key GLOB` (`*` = any run of characters) or `--ip ADDR|CIDR`
//! (IPv4 or IPv6), for one policy (`--policy NAME`) or every check (no `--policy`).
//! `add` and `remove` are idempotent and print the entry as the cluster stores it
//! (CIDRs as `network/prefix`); giving both or neither of `--key` and `--ip` is a
//! usage error (exit 2).

use clap::{Args, Subcommand};
use quorate_client::Client;
use quorate_proto as proto;

use super::render::{done, table, yes_no, Failure, Outcome, Render};

#[derive(Debug, Subcommand)]
pub enum AllowlistCmd {
    /// List the entries and the cluster's bound.
    List,
    /// Add an entry: checks it matches are allowed without being charged.
    Add(EntryArgs),
    /// Remove an entry.
    Remove(EntryArgs),
}

#[derive(Debug, Args)]
pub struct EntryArgs {
    /// A key glob, e.g. 'user:admin-*'.
    #[arg(long)]
    key: Option<String>,
    /// An IPv4/IPv6 address or CIDR, e.g. 10.0.0.0/8 or 2001:db8::/32; matches keys
    /// that end in an address inside it (http:ip:10.1.2.3).
    #[arg(long)]
    ip: Option<String>,
    /// Only for this policy's checks (default: every check).
    #[arg(long)]
    policy: Option<String>,
}

impl EntryArgs {
    fn entry(self) -> Result<proto::AllowlistEntry, Failure> {
        if self.key.is_some() == self.ip.is_some() {
            return Err(Failure::Usage("give exactly one of --key and --ip"));
        }
        Ok(proto::AllowlistEntry {
            policy: self.policy,
            key: self.key,
            ip: self.ip,
        })
    }
}

/// `policy=api key user:admin-*`, `global ip 10.0.0.0/8`.
pub fn describe(e: &proto::AllowlistEntry) -> String {
    let scope = e
        .policy
        .as_ref()
        .map_or_else(|| "global".to_string(), |p| format!("policy {p}"));
    match (&e.key, &e.ip) {
        (Some(k), _) => format!("{scope} key {k}"),
        (_, Some(ip)) => format!("{scope} ip {ip}"),
        _ => scope,
    }
}

pub async fn run(client: &Client, cmd: AllowlistCmd) -> Outcome {
    match cmd {
        AllowlistCmd::List => done(client.allowlist().await?),
        AllowlistCmd::Add(a) => {
            let r = client.allow(&a.entry()?).await?;
            let what = describe(&r.entry);
            let changed = r.changed;
            yes_no(
                r,
                changed,
                format!("allowlisted: {what}"),
                format!("already allowlisted: {what}"),
            )
        }
        AllowlistCmd::Remove(a) => {
            let r = client.disallow(&a.entry()?).await?;
            let what = describe(&r.entry);
            let changed = r.changed;
            yes_no(
                r,
                changed,
                format!("removed: {what}"),
                format!("not on the allowlist: {what}"),
            )
        }
    }
}

impl Render for proto::AllowlistResponse {
    fn table(&self) -> String {
        let rows = self
            .entries
            .iter()
            .map(|e| {
                let (kind, pattern) = match (&e.key, &e.ip) {
                    (Some(k), _) => ("key", k.clone()),
                    (_, Some(ip)) => ("ip", ip.clone()),
                    _ => ("-", "-".to_string()),
                };
                vec![
                    e.policy.clone().unwrap_or_else(|| "*".into()),
                    kind.into(),
                    pattern,
                ]
            })
            .collect();
        format!(
            "{} of {} entries\n{}",
            self.entries.len(),
            self.max,
            table(&["POLICY", "KIND", "PATTERN"], rows)
        )
    }
}
