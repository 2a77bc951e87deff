//! `quorate audit`: the replicated trail of admin changes (needs an admin token).
//!
//! Each row is one change that changed something: the log index that carried it,
//! cluster time, the caller (token name, `open` or `system`), the op, what changed
//! and its value before and after (`-`: absent). `--since N` shows changes after log
//! index N (pass the last index seen to follow the trail), `--key PREFIX` filters by
//! what changed (`limit:org:`, `policy:`, `allowlist:`).

use clap::Args;
use quorate_client::Client;
use quorate_proto as proto;

use super::render::{done, opt, table, Outcome, Render};

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only changes with a log index above this.
    #[arg(long, default_value_t = 0)]
    since: u64,
    /// Only changes whose key starts with this.
    #[arg(long, default_value = "")]
    key: String,
    /// Most rows (server default 1000).
    #[arg(long)]
    max: Option<u32>,
}

pub async fn run(client: &Client, a: AuditArgs) -> Outcome {
    done(client.audit(a.since, &a.key, a.max).await?)
}

impl Render for proto::AuditResponse {
    fn table(&self) -> String {
        let rows = self
            .records
            .iter()
            .map(|r| {
                vec![
                    r.index.to_string(),
                    r.time_ms.to_string(),
                    r.caller.clone(),
                    r.op.clone(),
                    r.key.clone(),
                    opt(r.before.as_ref()),
                    opt(r.after.as_ref()),
                ]
            })
            .collect();
        let mut out = table(
            &["INDEX", "TIME_MS", "CALLER", "OP", "KEY", "BEFORE", "AFTER"],
            rows,
        );
        out.push_str(&format!(
            "{} change(s) shown; the trail keeps the last {}{}\n",
            self.records.len(),
            self.capacity,
            if self.truncated {
                " (more: ask again with --since the last index)"
            } else {
                ""
            }
        ));
        out
    }
}
