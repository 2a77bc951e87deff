//! `quorate policies list|set|mode|delete`: named policies and tiers.
//!
//! A concurrency policy caps live leases on every key matching its pattern; a rate
//! policy is referenced by name from rate checks. `set` checks the flags its kind
//! needs before calling the cluster (a missing one is a usage error, exit 2). `mode`
//! switches a policy between enforcing and shadow (decided and counted, never
//! denies) in one replicated change.

use clap::Subcommand;
use quorate_client::Client;
use quorate_proto as proto;

use super::render::{done, opt, table, yes_no, Deleted, Failure, Line, Outcome, Render};

#[derive(Debug, Subcommand)]
pub enum PoliciesCmd {
    /// List policies and tiers.
    List,
    /// Create or replace a policy.
    Set {
        name: String,
        /// `concurrency` (needs --pattern and --limit) or `rate` (--limit, --period-ms).
        #[arg(long, value_parser = ["concurrency", "rate"])]
        kind: String,
        #[arg(long)]
        pattern: Option<String>,
        #[arg(long)]
        limit: u32,
        #[arg(long)]
        period_ms: Option<u64>,
        #[arg(long)]
        burst: Option<u32>,
    },
    /// Switch a policy to `shadow` (decided and counted, but never denies: answers
    /// say which requests it would have denied) or back to `enforce`.
    Mode {
        name: String,
        #[arg(value_parser = ["enforce", "shadow"])]
        mode: String,
    },
    /// Delete a policy.
    Delete { name: String },
}

pub async fn run(client: &Client, cmd: PoliciesCmd) -> Outcome {
    match cmd {
        PoliciesCmd::List => done(client.policies().await?),
        PoliciesCmd::Set {
            name,
            kind,
            pattern,
            limit,
            period_ms,
            burst,
        } => {
            let spec = spec(&kind, pattern, limit, period_ms, burst)?;
            let e = client.put_policy(&name, &spec).await?;
            done(Line {
                text: format!("policy {} set", e.name),
                json: e,
            })
        }
        PoliciesCmd::Mode { name, mode } => {
            let mode = if mode == "shadow" {
                proto::PolicyMode::Shadow
            } else {
                proto::PolicyMode::Enforce
            };
            let r = client.set_policy_mode(&name, mode).await?;
            done(Line {
                text: format!("policy {} now {}", r.name, mode_name(r.mode)),
                json: r,
            })
        }
        PoliciesCmd::Delete { name } => {
            let deleted = client.delete_policy(&name).await?;
            let (yes, no) = (
                format!("policy {name} deleted"),
                format!("no policy named {name}"),
            );
            yes_no(Deleted { deleted }, deleted, yes, no)
        }
    }
}

/// The spec `--kind` describes, or the flag it is missing.
fn spec(
    kind: &str,
    pattern: Option<String>,
    limit: u32,
    period_ms: Option<u64>,
    burst: Option<u32>,
) -> Result<proto::PolicySpec, Failure> {
    if kind == "concurrency" {
        let pattern = pattern.ok_or(Failure::Usage("a concurrency policy needs --pattern"))?;
        Ok(proto::PolicySpec::Concurrency { pattern, limit })
    } else {
        let period_ms = period_ms.ok_or(Failure::Usage("a rate policy needs --period-ms"))?;
        Ok(proto::PolicySpec::Rate {
            limit,
            period_ms,
            burst,
        })
    }
}

impl Render for proto::PoliciesResponse {
    fn table(&self) -> String {
        let mut out = format!("default concurrency limit: {}\n", self.default_limit);
        out.push_str(&table(
            &[
                "POLICY",
                "KIND",
                "PATTERN",
                "LIMIT",
                "PERIOD_MS",
                "BURST",
                "MODE",
            ],
            self.policies.iter().map(policy_row).collect(),
        ));
        if !self.tiers.is_empty() {
            out.push('\n');
            out.push_str(&table(
                &["TIER", "MULTIPLIER"],
                self.tiers
                    .iter()
                    .map(|t| vec![t.name.clone(), format!("x{}", t.multiplier)])
                    .collect(),
            ));
        }
        out
    }
}

fn mode_name(m: proto::PolicyMode) -> &'static str {
    match m {
        proto::PolicyMode::Enforce => "enforce",
        proto::PolicyMode::Shadow => "shadow",
    }
}

fn policy_row(e: &proto::PolicyEntry) -> Vec<String> {
    let mut row = match &e.spec {
        proto::PolicySpec::Concurrency { pattern, limit } => vec![
            e.name.clone(),
            "concurrency".into(),
            pattern.clone(),
            limit.to_string(),
            "-".into(),
            "-".into(),
        ],
        proto::PolicySpec::Rate {
            limit,
            period_ms,
            burst,
        } => vec![
            e.name.clone(),
            "rate".into(),
            "-".into(),
            limit.to_string(),
            period_ms.to_string(),
            opt(*burst),
        ],
    };
    row.push(mode_name(e.mode).into());
    row
}
