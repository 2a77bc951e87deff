//! `quorate rate check`: check (and charge, if allowed) one request.
//!
//! A check names a policy (and optionally a tier), or gives an inline limit and
//! period. A limited request is a successful answer that means "no": it prints the
//! decision like an allowed one and exits 3.

use clap::Subcommand;
use quorate_client::Client;
use quorate_proto as proto;

use super::render::{done, shadow_lines, Failure, Outcome, Render};
use super::ExitCode;

#[derive(Debug, Subcommand)]
pub enum RateCmd {
    /// Check (and charge, if allowed) one request.
    Check {
        key: String,
        #[arg(long, conflicts_with_all = ["limit", "period_ms", "burst"])]
        policy: Option<String>,
        #[arg(long, requires = "policy")]
        tier: Option<String>,
        #[arg(long)]
        cost: Option<u32>,
        #[arg(long, requires = "period_ms")]
        limit: Option<u32>,
        #[arg(long, requires = "limit")]
        period_ms: Option<u64>,
        #[arg(long, requires = "limit")]
        burst: Option<u32>,
    },
}

pub async fn run(client: &Client, cmd: RateCmd) -> Outcome {
    let RateCmd::Check {
        key,
        policy,
        tier,
        cost,
        limit,
        period_ms,
        burst,
    } = cmd;
    if policy.is_none() && limit.is_none() {
        return Err(Failure::Usage("give --policy, or --limit and --period-ms"));
    }
    let req = proto::RateCheckRequest {
        key: Some(key),
        policy,
        tier,
        cost,
        limit,
        period_ms,
        burst,
        checks: None,
    };
    done(client.check_rates(&req).await?)
}

impl Render for proto::RateCheckResponse {
    fn table(&self) -> String {
        format!(
            "{}: limit {}, remaining {}, reset in {} ms{}\n",
            if self.allowed {
                "allowed"
            } else {
                "rate limited"
            },
            self.limit,
            self.remaining,
            self.reset_after_ms,
            if self.allowed {
                String::new()
            } else {
                format!(", retry in {} ms", self.retry_after_ms)
            }
        ) + &shadow_lines(&self.shadow_denied)
            + &self
                .results
                .iter()
                .filter(|r| r.allowlisted)
                .map(|r| format!("allowlisted: {} (not charged)\n", r.key))
                .collect::<String>()
    }

    fn exit_code(&self) -> ExitCode {
        if self.allowed {
            0
        } else {
            3
        }
    }
}
