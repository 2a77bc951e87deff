//! `quorate limits set|get|list|delete`: per-key concurrency limits.
//!
//! A key's effective limit comes from a per-key override, else the first matching
//! concurrency policy, else the cluster default; the SOURCE column says which
//! (`override`, `policy:<name>`, `default`).

use clap::Subcommand;
use quorate_client::Client;
use quorate_proto as proto;
use serde::Serialize;

use super::render::{done, table, yes_no, Deleted, Outcome, Render};

#[derive(Debug, Subcommand)]
pub enum LimitsCmd {
    /// Set a per-key override.
    Set { key: String, limit: u32 },
    /// Show a key's effective limit and where it comes from.
    Get { key: String },
    /// List overrides and keys in use.
    List {
        #[arg(long, default_value = "")]
        prefix: String,
        /// Also show the used column (always fetched; this only widens the table).
        #[arg(long)]
        with_usage: bool,
        #[arg(long)]
        max: Option<u32>,
    },
    /// Delete a per-key override.
    Delete { key: String },
}

pub async fn run(client: &Client, cmd: LimitsCmd) -> Outcome {
    match cmd {
        LimitsCmd::Set { key, limit } => done(client.set_limit(&key, limit).await?),
        LimitsCmd::Get { key } => done(client.get_limit(&key).await?),
        LimitsCmd::List {
            prefix,
            with_usage,
            max,
        } => done(LimitList {
            list: client.list_limits(&prefix, max).await?,
            with_usage,
        }),
        LimitsCmd::Delete { key } => {
            let deleted = client.delete_limit(&key).await?;
            let (yes, no) = (
                format!("override of {key} deleted"),
                format!("{key} had no override"),
            );
            yes_no(Deleted { deleted }, deleted, yes, no)
        }
    }
}

impl Render for proto::PutLimitResponse {
    fn table(&self) -> String {
        format!("limit of {} set to {}\n", self.key, self.limit)
    }
}

impl Render for proto::LimitEntry {
    fn table(&self) -> String {
        table(
            &["KEY", "LIMIT", "USED", "SOURCE"],
            vec![vec![
                self.key.clone(),
                self.limit.to_string(),
                self.used.to_string(),
                source(self),
            ]],
        )
    }
}

/// `limits list`: the answer, and whether the table shows the USED column (the JSON
/// always has it).
#[derive(Debug, Serialize)]
#[serde(transparent)]
struct LimitList {
    list: proto::ListLimitsResponse,
    #[serde(skip)]
    with_usage: bool,
}

impl Render for LimitList {
    fn table(&self) -> String {
        let rows = self
            .list
            .limits
            .iter()
            .map(|e| {
                let mut row = vec![e.key.clone(), e.limit.to_string(), source(e)];
                if self.with_usage {
                    row.push(e.used.to_string());
                }
                row
            })
            .collect();
        let mut out = if self.with_usage {
            table(&["KEY", "LIMIT", "SOURCE", "USED"], rows)
        } else {
            table(&["KEY", "LIMIT", "SOURCE"], rows)
        };
        if self.list.truncated {
            out.push_str("(more rows matched; raise --max)\n");
        }
        out
    }
}

/// Where a key's limit comes from, as the SOURCE column shows it.
fn source(e: &proto::LimitEntry) -> String {
    match (&e.source, &e.policy) {
        (proto::LimitSource::Policy, Some(p)) => format!("policy:{p}"),
        (proto::LimitSource::Policy, None) => "policy".into(),
        (proto::LimitSource::Override, _) => "override".into(),
        (proto::LimitSource::Default, _) => "default".into(),
    }
}
