//! Golden-script tests of the limiter state machine, run by [`goldenscript`].
//!
//! Every `tests/scripts/*.txt` is a readable session against a fresh [`State`], one
//! test per file. A script is a series of blocks: command lines, a `---` line, then
//! the expected output up to the next blank line; `#` lines are comments saying what
//! each step proves. Every reply is one line (leases and rate results add indented
//! sub-lines), and a mismatch fails the test with a diff. Strings that are not plain
//! words (`org:acme`, `org:*`, `a b`, `""`) are quoted; `\t` and `\n` work inside
//! quotes, and `{c*N}` anywhere in an argument stands for `c` repeated N times.
//!
//! `UPDATE_GOLDENFILES=1 cargo test -p quorate-core --test golden` rewrites the files
//! with the actual output, so keeping them current is cheap — but every expected line
//! is a claim about the spec and must be reviewed by hand.
//!
//! # DSL
//! Any line may start with `at MS`, which sets the script clock (kept until the next
//! `at`; it starts at 0). Ops are stamped with the clock, and the consecutive ops of a
//! block form ONE [`Command`] (so a block of several ops is a batch, as in a client
//! retry sent along with its original). Queries are answered at the clock.
//!
//! Ops:
//! - `acquire KEY... lease=ID [ttl=MS] [holder=H]` (ttl defaults to 10000)
//! - `release ID`, `renew ID ttl=MS`, `expire [leases=N] [rate=N]`, `noop`
//! - `limit set KEY N`, `limit delete KEY`
//! - `rate KEY policy=NAME [tier=T] [cost=C]` or `rate KEY limit=L period=P [burst=B]
//!   [cost=C]`; more keys, each followed by its options, add checks to the same op
//!   (burst defaults to limit, cost to 1)
//! - `policy put NAME concurrency PATTERN LIMIT`, `policy put NAME rate LIMIT PERIOD
//!   BURST`, `policy delete NAME`, `tier put NAME MILLI`, `tier delete NAME`
//! - `configure digest=N [default_limit=N] [max_limit=N] [max_ttl=MS]
//!   [max_retry_after=MS] [max_period=MS] [max_leases=N] [max_slot_keys=N]
//!   [max_rate_keys=N] [policy=...] [tier=...] [shadow=NAME]` where a policy is
//!   `"NAME,concurrency,PATTERN,LIMIT"` or `"NAME,rate,L,P,B"` and a tier `"NAME,MILLI"`;
//!   any `shadow=` makes it an `Op::ConfigureModes` with those policies in shadow mode
//! - `policy mode NAME shadow|enforce`
//! - `counter incr KEY expiry=MS [amount=N]` (amount defaults to 1), `counter clear KEY`
//! - `allow add|remove [policy=NAME] key=GLOB|ip=CIDR` (an allowlist entry; global
//!   without `policy=`), `admin limits allowlist=N audit=N`, `mark_seen NODE...`
//! - `acquire_wait KEY... lease=ID wait=MS [ttl=MS] [holder=H]` (a waiting acquire),
//!   `leave ID` (`Op::LeaveQueue`)
//!
//! After the replies of each command come the grants the queue made while applying
//! it (`State::take_queue_grants`), one `queue granted ...` line each.
//!
//! Any op may name its caller: `caller=NAME` (a client token) or `admin=NAME` (an
//! admin token) wraps it in `Op::As`; without either it is the system's own op (owner
//! `""`, admin). Listed leases show `owner=` when they have one.
//!
//! Queries: `limit get KEY`, `limits [PREFIX] [max=N]`, `usage KEY`, `lease ID`,
//! `policies`, `modes`, `counter get KEY`, `allowlist`, `audit [PREFIX] [since=N] [max=N]`,
//! `queue KEY`.
//! Commands are applied at log index 1, 2, ... in script order (the audit trail shows it).
//! Runner verbs: `digest`, `stats`, `now`, `roundtrip`.
//!
//! # Properties
//! Beyond the expected lines, every script proves two properties of the whole run:
//! replaying its commands into a fresh state reaches the same digest (determinism),
//! and after each `roundtrip` a restored copy of the state gives identical replies to
//! every later command and query and ends with the same digest (snapshots lose
//! nothing).

use std::error::Error;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use goldenscript::{Argument, ArgumentConsumer, Block, Context};
use quorate_core::command::{DEFAULT_AUDIT_ENTRIES, DEFAULT_MAX_ALLOWLIST};
use quorate_core::{
    Acquire, AdminLimits, AllowEntry, AllowPattern, Allowlisted, Caller, Command, Configuration,
    Grant, LeaseInfo, LimitInfo, LimitSource, Mode, ModedConfiguration, Op, Outcome, Policy, Query,
    RateCheck, RateDecision, RateLimitRef, RateSpec, Reply, Settings, ShadowDenial, SlotUsage,
    State,
};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// Expands `{c*N}` repetitions.
fn expand(s: &str) -> String {
    let Some((before, rest)) = s.split_once('{') else {
        return s.to_string();
    };
    let repeat = rest.split_once('}').and_then(|(inner, after)| {
        let (unit, n) = inner.rsplit_once('*')?;
        Some(unit.repeat(n.parse().ok()?) + &expand(after))
    });
    match repeat {
        Some(r) => format!("{before}{r}"),
        None => format!("{before}{{{}", expand(rest)),
    }
}

fn num<T: std::str::FromStr>(s: &str) -> Result<T> {
    s.parse().map_err(|_| format!("bad number {s:?}").into())
}

fn pos(args: &mut ArgumentConsumer) -> Result<String> {
    args.next_pos().map(expand).ok_or("missing argument".into())
}

fn key_num<T: std::str::FromStr>(args: &mut ArgumentConsumer, key: &str) -> Result<Option<T>> {
    args.take_key(key).map(num).transpose()
}

fn policy(fields: &[&str]) -> Result<Policy> {
    Ok(match fields {
        ["concurrency", pattern, limit] => Policy::Concurrency {
            pattern: expand(pattern),
            limit: num(limit)?,
        },
        ["rate", l, p, b] => Policy::Rate(RateSpec {
            limit: num(l)?,
            period_ms: num(p)?,
            burst: num(b)?,
        }),
        _ => return Err(format!("bad policy {fields:?}").into()),
    })
}

/// One script line, `at` already taken off.
enum Line {
    Op(Op),
    Query(Query),
    Digest,
    Stats,
    Now,
    Roundtrip,
}

/// Takes `caller=NAME` / `admin=NAME` off a command's arguments.
fn take_caller(cmd: &mut goldenscript::Command) -> Result<Option<Caller>> {
    let mut caller = None;
    let mut err = None;
    cmd.args.retain(|a| match a {
        Argument::KeyValue(k, v) if k == "caller" || k == "admin" => {
            if caller.is_some() {
                err = Some("at most one caller= or admin=");
            }
            caller = Some(Caller {
                name: expand(v),
                admin: k == "admin",
            });
            false
        }
        _ => true,
    });
    match err {
        Some(e) => Err(e.into()),
        None => Ok(caller),
    }
}

fn parse(cmd: &goldenscript::Command) -> Result<Line> {
    let mut cmd = cmd.clone();
    let caller = take_caller(&mut cmd)?;
    let line = parse_bare(&cmd)?;
    match (line, caller) {
        (Line::Op(op), Some(c)) => Ok(Line::Op(op.by(c))),
        (_, Some(_)) => Err("caller= and admin= apply to ops only".into()),
        (line, None) => Ok(line),
    }
}

fn parse_bare(cmd: &goldenscript::Command) -> Result<Line> {
    let mut args = cmd.consume_args();
    let a = &mut args;
    let line = match cmd.name.as_str() {
        "acquire" => Line::Op(Op::Acquire(Acquire {
            lease_id: expand(a.take_key("lease").ok_or("acquire needs lease=")?),
            holder: a.take_key("holder").map(expand).unwrap_or_default(),
            ttl_ms: key_num(a, "ttl")?.unwrap_or(10_000),
            keys: std::iter::from_fn(|| a.next_pos()).map(expand).collect(),
        })),
        "acquire_wait" => Line::Op(Op::AcquireWait {
            wait_ms: key_num(a, "wait")?.ok_or("acquire_wait needs wait=")?,
            acquire: Acquire {
                lease_id: expand(a.take_key("lease").ok_or("acquire_wait needs lease=")?),
                holder: a.take_key("holder").map(expand).unwrap_or_default(),
                ttl_ms: key_num(a, "ttl")?.unwrap_or(10_000),
                keys: std::iter::from_fn(|| a.next_pos()).map(expand).collect(),
            },
        }),
        "leave" => Line::Op(Op::LeaveQueue { lease_id: pos(a)? }),
        "queue" => Line::Query(Query::Queue { key: pos(a)? }),
        "release" => Line::Op(Op::Release { lease_id: pos(a)? }),
        "renew" => Line::Op(Op::Renew {
            lease_id: pos(a)?,
            ttl_ms: key_num(a, "ttl")?.ok_or("renew needs ttl=")?,
        }),
        "expire" => Line::Op(Op::Expire {
            max_leases: key_num(a, "leases")?.unwrap_or(1000),
            max_rate_keys: key_num(a, "rate")?.unwrap_or(1000),
        }),
        "noop" => Line::Op(Op::Noop),
        "limit" => match pos(a)?.as_str() {
            "set" => Line::Op(Op::SetLimit {
                key: pos(a)?,
                limit: num(&pos(a)?)?,
            }),
            "delete" => Line::Op(Op::DeleteLimit { key: pos(a)? }),
            "get" => Line::Query(Query::Limit { key: pos(a)? }),
            v => return Err(format!("limit set|delete|get, not {v}").into()),
        },
        "rate" => {
            // Every key (positional argument) starts a check of its own.
            let mut part = cmd.clone();
            let parts = cmd
                .args
                .chunk_by(|_, b| !matches!(b, Argument::Positional(_)));
            let checks = parts.map(|chunk| {
                part.args = chunk.to_vec();
                rate_check(&part)
            });
            return Ok(Line::Op(Op::RateCheck {
                checks: checks.collect::<Result<_>>()?,
            }));
        }
        "policy" => match pos(a)?.as_str() {
            "put" => {
                let name = pos(a)?;
                let fields: Vec<&str> = std::iter::from_fn(|| a.next_pos()).collect();
                Line::Op(Op::PutPolicy {
                    name,
                    policy: policy(&fields)?,
                })
            }
            "delete" => Line::Op(Op::DeletePolicy { name: pos(a)? }),
            "mode" => Line::Op(Op::SetPolicyMode {
                name: pos(a)?,
                mode: match pos(a)?.as_str() {
                    "shadow" => Mode::Shadow,
                    "enforce" => Mode::Enforce,
                    v => return Err(format!("mode shadow|enforce, not {v}").into()),
                },
            }),
            v => return Err(format!("policy put|delete|mode, not {v}").into()),
        },
        "tier" => match pos(a)?.as_str() {
            "put" => Line::Op(Op::PutTier {
                name: pos(a)?,
                multiplier_milli: num(&pos(a)?)?,
            }),
            "delete" => Line::Op(Op::DeleteTier { name: pos(a)? }),
            v => return Err(format!("tier put|delete, not {v}").into()),
        },
        "configure" => {
            let (config, shadow) = configuration(a)?;
            if shadow.is_empty() {
                Line::Op(Op::Configure(Box::new(config)))
            } else {
                Line::Op(Op::ConfigureModes(Box::new(ModedConfiguration {
                    config,
                    shadow,
                })))
            }
        }
        "modes" => Line::Query(Query::PolicyModes),
        "counter" => match pos(a)?.as_str() {
            "incr" => Line::Op(Op::CounterIncr {
                key: pos(a)?,
                amount: key_num(a, "amount")?.unwrap_or(1),
                expiry_ms: key_num(a, "expiry")?.ok_or("counter incr needs expiry=")?,
            }),
            "clear" => Line::Op(Op::CounterClear { key: pos(a)? }),
            "get" => Line::Query(Query::Counter { key: pos(a)? }),
            v => return Err(format!("counter incr|clear|get, not {v}").into()),
        },
        "allowlist" => Line::Query(Query::Allowlist),
        "mark_seen" => Line::Op(Op::MarkSeen {
            nodes: std::iter::from_fn(|| a.next_pos())
                .map(num)
                .collect::<Result<_>>()?,
        }),
        "audit" => Line::Query(Query::Audit {
            since: key_num(a, "since")?.unwrap_or(0),
            max: key_num(a, "max")?.unwrap_or(100),
            prefix: a.next_pos().map(expand).unwrap_or_default(),
        }),
        "allow" => {
            let verb = pos(a)?;
            let policy = a.take_key("policy").map(expand);
            let pattern = match (a.take_key("key"), a.take_key("ip")) {
                (Some(k), None) => AllowPattern::Key(expand(k)),
                (None, Some(ip)) => AllowPattern::Ip(expand(ip)),
                _ => return Err("allow needs one of key= or ip=".into()),
            };
            let e = AllowEntry { policy, pattern };
            match verb.as_str() {
                "add" => Line::Op(Op::Allow(e)),
                "remove" => Line::Op(Op::Disallow(e)),
                v => return Err(format!("allow add|remove, not {v}").into()),
            }
        }
        "admin" => match pos(a)?.as_str() {
            "limits" => Line::Op(Op::SetAdminLimits(AdminLimits {
                max_allowlist: key_num(a, "allowlist")?.unwrap_or(DEFAULT_MAX_ALLOWLIST),
                audit_entries: key_num(a, "audit")?.unwrap_or(DEFAULT_AUDIT_ENTRIES),
            })),
            v => return Err(format!("admin limits, not {v}").into()),
        },
        "limits" => Line::Query(Query::Limits {
            prefix: a.next_pos().map(expand).unwrap_or_default(),
            max: key_num(a, "max")?.unwrap_or(100),
        }),
        "usage" => Line::Query(Query::Usage { key: pos(a)? }),
        "lease" => Line::Query(Query::Lease { lease_id: pos(a)? }),
        "policies" => Line::Query(Query::Policies),
        "digest" => Line::Digest,
        "stats" => Line::Stats,
        "now" => Line::Now,
        "roundtrip" => Line::Roundtrip,
        other => return Err(format!("unknown command {other:?}").into()),
    };
    args.reject_next()?;
    Ok(line)
}

/// One check of a `rate` op: `KEY policy=... | KEY limit=...`.
fn rate_check(part: &goldenscript::Command) -> Result<RateCheck> {
    let a = &mut part.consume_args();
    let key = pos(a)?;
    let limit = match a.take_key("policy") {
        Some(name) => RateLimitRef::Policy {
            name: expand(name),
            tier: a.take_key("tier").map(expand),
        },
        None => {
            let limit = key_num(a, "limit")?.ok_or("rate needs policy= or limit=")?;
            RateLimitRef::Inline(RateSpec {
                limit,
                period_ms: key_num(a, "period")?.ok_or("inline rate needs period=")?,
                burst: key_num(a, "burst")?.unwrap_or(limit),
            })
        }
    };
    let cost = key_num(a, "cost")?.unwrap_or(1);
    a.reject_next()?;
    Ok(RateCheck { key, cost, limit })
}

fn configuration(args: &mut ArgumentConsumer) -> Result<(Configuration, Vec<String>)> {
    let mut shadow = Vec::new();
    let mut c = Configuration {
        source_digest: 0,
        settings: Settings::default(),
        policies: Vec::new(),
        tiers: Vec::new(),
    };
    let mut digest = None;
    while let Some((k, v)) = args.next_key() {
        let s = &mut c.settings;
        match k {
            "digest" => digest = Some(num(v)?),
            "default_limit" => s.default_limit = num(v)?,
            "max_limit" => s.max_limit = num(v)?,
            "max_ttl" => s.max_ttl_ms = num(v)?,
            "max_retry_after" => s.max_retry_after_ms = num(v)?,
            "max_period" => s.max_period_ms = num(v)?,
            "max_leases" => s.max_leases = num(v)?,
            "max_slot_keys" => s.max_slot_keys = num(v)?,
            "max_rate_keys" => s.max_rate_keys = num(v)?,
            "policy" => {
                let (name, rest) = v.split_once(',').ok_or("policy=NAME,KIND,...")?;
                let fields: Vec<&str> = rest.split(',').collect();
                c.policies.push((expand(name), policy(&fields)?));
            }
            "tier" => {
                let (name, m) = v.split_once(',').ok_or("tier=NAME,MILLI")?;
                c.tiers.push((expand(name), num(m)?));
            }
            "shadow" => shadow.push(expand(v)),
            _ => return Err(format!("unknown configure option {k}").into()),
        }
    }
    c.source_digest = digest.ok_or("configure needs digest=")?;
    Ok((c, shadow))
}

// ------------------------------------------------------------------------------------
// Formatting

fn slots(s: &[SlotUsage]) -> String {
    let s: Vec<String> = s
        .iter()
        .map(|s| format!("{}={}/{}", s.key, s.used, s.limit))
        .collect();
    s.join(" ")
}

fn lease(l: &LeaseInfo) -> String {
    let owner = if l.owner.is_empty() {
        String::new()
    } else {
        format!(" owner={}", l.owner)
    };
    format!(
        "lease {} token={} expires={} holder={:?} keys={}{owner}",
        l.lease_id,
        l.fencing_token,
        l.expires_at_ms,
        l.holder,
        l.keys.join(",")
    )
}

fn limit_info(l: &LimitInfo) -> String {
    let source = match &l.source {
        LimitSource::Override => "override".into(),
        LimitSource::Policy(n) => format!("policy:{n}"),
        LimitSource::Default => "default".into(),
    };
    format!(
        "{} limit={} source={source} used={}",
        l.key, l.limit, l.used
    )
}

fn format_reply(r: &Reply, out: &mut String) -> std::fmt::Result {
    let o = match r {
        Ok(o) => o,
        Err(e) => return writeln!(out, "error: {e}"),
    };
    let grant = |g: &Grant, out: &mut String| {
        writeln!(
            out,
            "granted lease={} token={} expires={}{} slots: {}",
            g.lease_id,
            g.fencing_token,
            g.expires_at_ms,
            if g.reused { " reused" } else { "" },
            slots(&g.slots)
        )
    };
    let rate = |d: &RateDecision, out: &mut String| {
        writeln!(out, "rate allowed={}", d.allowed)?;
        for r in &d.results {
            writeln!(
                out,
                "  {} allowed={} {}/{}ms burst={} remaining={} reset_after={} retry_after={}",
                r.key,
                r.allowed,
                r.limit,
                r.period_ms,
                r.burst,
                r.remaining,
                r.reset_after_ms,
                r.retry_after_ms
            )?;
        }
        Ok(())
    };
    let shadow = |s: &[ShadowDenial], out: &mut String| {
        s.iter()
            .try_for_each(|s| writeln!(out, "  shadow: policy {} would deny {}", s.policy, s.key))
    };
    let allowed = |a: &[Allowlisted], out: &mut String| {
        a.iter().try_for_each(|a| {
            writeln!(out, "  allowlisted: {} by {}", a.key, allow_entry(&a.entry))
        })
    };
    match o {
        Outcome::Granted(g) => grant(g, out),
        Outcome::Denied(d) => writeln!(
            out,
            "denied blocked_by={} retry_after={} slots: {}",
            d.blocked_by.join(","),
            d.retry_after_ms,
            slots(&d.slots)
        ),
        Outcome::Released { released } => writeln!(out, "released={released}"),
        Outcome::Renewed {
            lease_id,
            expires_at_ms,
        } => writeln!(out, "renewed {lease_id} expires={expires_at_ms}"),
        Outcome::Expired { leases, rate_keys } => {
            writeln!(out, "expired leases={leases} rate_keys={rate_keys}")
        }
        Outcome::LimitSet { key, limit } => writeln!(out, "limit set {key}={limit}"),
        Outcome::LimitDeleted { deleted } => writeln!(out, "limit deleted={deleted}"),
        Outcome::Rate(d) => rate(d, out),
        Outcome::GrantedShadow {
            grant: g,
            shadow_denied,
        } => {
            grant(g, out)?;
            shadow(shadow_denied, out)
        }
        Outcome::RateShadow {
            decision,
            shadow_denied,
        } => {
            rate(decision, out)?;
            shadow(shadow_denied, out)
        }
        Outcome::PolicyModeSet { name, mode } => writeln!(out, "policy mode {name}={mode:?}"),
        Outcome::PolicyModes { shadow } if shadow.is_empty() => writeln!(out, "shadow none"),
        Outcome::PolicyModes { shadow } => writeln!(out, "shadow {}", shadow.join(",")),
        Outcome::PolicyPut { name } => writeln!(out, "policy put {name}"),
        Outcome::PolicyDeleted { deleted } => writeln!(out, "policy deleted={deleted}"),
        Outcome::TierPut { name } => writeln!(out, "tier put {name}"),
        Outcome::TierDeleted { deleted } => writeln!(out, "tier deleted={deleted}"),
        Outcome::Configured { changed } => writeln!(out, "configured changed={changed}"),
        Outcome::Noop => writeln!(out, "noop"),
        Outcome::Usage(u) => {
            writeln!(out, "usage {} used={}/{}", u.key, u.used, u.limit)?;
            u.leases
                .iter()
                .try_for_each(|l| writeln!(out, "  {}", lease(l)))
        }
        Outcome::Limit(l) => writeln!(out, "limit {}", limit_info(l)),
        Outcome::Limits { limits, truncated } => {
            writeln!(out, "limits n={} truncated={truncated}", limits.len())?;
            limits
                .iter()
                .try_for_each(|l| writeln!(out, "  {}", limit_info(l)))
        }
        Outcome::Policies(p) => {
            let s = &p.settings;
            writeln!(
                out,
                "settings default_limit={} max_limit={} max_ttl={} max_retry_after={} max_period={} digest={}",
                s.default_limit,
                s.max_limit,
                s.max_ttl_ms,
                s.max_retry_after_ms,
                s.max_period_ms,
                p.source_digest.map_or("none".to_string(), |d| d.to_string())
            )?;
            writeln!(
                out,
                "  caps max_leases={} max_slot_keys={} max_rate_keys={}",
                s.max_leases, s.max_slot_keys, s.max_rate_keys
            )?;
            for (name, policy) in &p.policies {
                match policy {
                    Policy::Concurrency { pattern, limit } => {
                        writeln!(out, "  policy {name} concurrency {pattern} limit={limit}")
                    }
                    Policy::Rate(s) => writeln!(
                        out,
                        "  policy {name} rate {}/{}ms burst={}",
                        s.limit, s.period_ms, s.burst
                    ),
                }?;
            }
            p.tiers
                .iter()
                .try_for_each(|(n, m)| writeln!(out, "  tier {n} {m}"))
        }
        Outcome::Counter(c) => writeln!(
            out,
            "counter {} value={} expires={} ttl={}",
            c.key,
            c.value,
            c.expires_at_ms
                .map_or("none".to_string(), |e| e.to_string()),
            c.ttl_ms
        ),
        Outcome::CounterCleared { cleared } => writeln!(out, "counter cleared={cleared}"),
        Outcome::Lease(None) => writeln!(out, "lease none"),
        Outcome::Lease(Some(l)) => writeln!(out, "{}", lease(l)),
        // Descriptor decisions are tested in `descriptors::tests`; no script makes one.
        Outcome::Descriptors(d) => writeln!(out, "descriptors ok={}", d.ok),
        Outcome::DescriptorsAllowlisted {
            decision,
            allowlisted,
        } => {
            writeln!(out, "descriptors ok={}", decision.ok)?;
            allowed(allowlisted, out)
        }
        Outcome::RateAllowlisted {
            decision,
            shadow_denied,
            allowlisted,
        } => {
            rate(decision, out)?;
            shadow(shadow_denied, out)?;
            allowed(allowlisted, out)
        }
        Outcome::AllowlistChanged { changed } => writeln!(out, "allowlist changed={changed}"),
        Outcome::Allowlist { entries, max } => {
            writeln!(out, "allowlist {} of {max}", entries.len())?;
            entries
                .iter()
                .try_for_each(|e| writeln!(out, "  {}", allow_entry(e)))
        }
        Outcome::Audit {
            records,
            truncated,
            capacity,
        } => {
            writeln!(
                out,
                "audit {} of ring {capacity}{}",
                records.len(),
                if *truncated { " truncated" } else { "" }
            )?;
            let v = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
            records.iter().try_for_each(|r| {
                writeln!(
                    out,
                    "  #{} at={} {} {} {}: {} -> {}",
                    r.index,
                    r.time_ms,
                    r.caller,
                    r.op,
                    r.key,
                    v(&r.before),
                    v(&r.after)
                )
            })
        }
        Outcome::AdminLimitsSet(l) => writeln!(
            out,
            "admin limits allowlist={} audit={}",
            l.max_allowlist, l.audit_entries
        ),
        Outcome::Queued(q) => {
            let places: Vec<String> = q
                .positions
                .iter()
                .map(|p| format!("{}={}/{}", p.key, p.position, p.length))
                .collect();
            writeln!(
                out,
                "queued lease={} deadline={} places: {} slots: {}",
                q.lease_id,
                q.deadline_ms,
                places.join(" "),
                slots(&q.slots)
            )
        }
        Outcome::LeftQueue {
            left,
            position,
            grant: g,
        } => {
            let position = position.map_or("none".to_string(), |p| p.to_string());
            write!(out, "left={left} position={position}")?;
            match g {
                Some(g) => {
                    write!(out, " ")?;
                    grant(g, out)
                }
                None => writeln!(out),
            }
        }
        Outcome::Queue(v) => {
            writeln!(out, "queue {} waiters={}", v.key, v.waiters.len())?;
            v.waiters.iter().try_for_each(|w| {
                let owner = if w.owner.is_empty() {
                    String::new()
                } else {
                    format!(" owner={}", w.owner)
                };
                writeln!(
                    out,
                    "  {}. {} deadline={} holder={:?} keys={}{owner}",
                    w.position,
                    w.lease_id,
                    w.deadline_ms,
                    w.holder,
                    w.keys.join(",")
                )
            })
        }
    }
}

/// A grant the queue made, as printed after the command that made it.
fn queue_grant(g: &Grant, out: &mut String) -> std::fmt::Result {
    writeln!(
        out,
        "queue granted lease={} token={} expires={} slots: {}",
        g.lease_id,
        g.fencing_token,
        g.expires_at_ms,
        slots(&g.slots)
    )
}

/// `global ip 10.0.0.0/8`, `policy=api key user:admin-*`.
fn allow_entry(e: &AllowEntry) -> String {
    let scope = match &e.policy {
        Some(p) => format!("policy={p}"),
        None => "global".to_string(),
    };
    match &e.pattern {
        AllowPattern::Key(g) => format!("{scope} key {g}"),
        AllowPattern::Ip(n) => format!("{scope} ip {n}"),
    }
}

// ------------------------------------------------------------------------------------
// Running

/// One script's session: the state, the clock, the ops of the current batch, the
/// copies restored by each `roundtrip` (they must answer every later command exactly
/// like the original) and every command applied (replayed for the determinism check).
#[derive(Default)]
struct Session {
    state: State,
    clock: u64,
    batch: Vec<Op>,
    restored: Vec<State>,
    log: Vec<Command>,
}

/// Fails unless every restored copy gave the original's answer.
fn agree<T: PartialEq + std::fmt::Debug>(ours: &T, theirs: impl Iterator<Item = T>) -> Result<()> {
    for (i, theirs) in theirs.enumerate() {
        if theirs != *ours {
            let n = i + 1;
            return Err(format!("roundtrip #{n}'s copy gave {theirs:?}, not {ours:?}").into());
        }
    }
    Ok(())
}

impl Session {
    /// Applies the pending ops as one command, to the state and every restored copy.
    fn flush(&mut self) -> Result<String> {
        let mut out = String::new();
        if self.batch.is_empty() {
            return Ok(out);
        }
        let cmd = Command::new(self.clock, std::mem::take(&mut self.batch));
        // The command's log index: its position in the script, from 1.
        let index = self.log.len() as u64 + 1;
        let replies = self.state.apply_at(index, &cmd);
        agree(
            &replies,
            self.restored.iter_mut().map(|c| c.apply_at(index, &cmd)),
        )?;
        self.log.push(cmd);
        for r in &replies {
            format_reply(r, &mut out)?;
        }
        let grants = self.state.take_queue_grants();
        agree(
            &grants,
            self.restored.iter_mut().map(|c| c.take_queue_grants()),
        )?;
        for g in &grants {
            queue_grant(g, &mut out)?;
        }
        Ok(out)
    }
}

impl goldenscript::Runner for Session {
    type Command = goldenscript::Command;

    fn run(&mut self, cmd: &goldenscript::Command, _: &Context) -> Result<String> {
        let mut cmd = cmd.clone();
        let mut at = None;
        if cmd.name == "at" {
            let [Argument::Positional(t), Argument::Positional(verb), ..] = cmd.args.as_slice()
            else {
                return Err("at MS VERB ARGS...".into());
            };
            at = Some(num(t)?);
            cmd.name = verb.clone();
            cmd.args.drain(..2);
        }
        let line = parse(&cmd)?;
        // A new time or a non-op ends the batch: its ops are applied first.
        let mut out = String::new();
        if at.is_some() || !matches!(line, Line::Op(_)) {
            out = self.flush()?;
        }
        self.clock = at.unwrap_or(self.clock);
        match line {
            Line::Op(op) => self.batch.push(op),
            Line::Query(q) => {
                let r = self.state.query(&q, self.clock);
                agree(&r, self.restored.iter().map(|c| c.query(&q, self.clock)))?;
                format_reply(&r, &mut out)?;
            }
            Line::Digest => writeln!(out, "digest {}", self.state.digest())?,
            Line::Now => writeln!(out, "now {}", self.state.now_ms())?,
            Line::Stats => {
                let s = self.state.stats();
                writeln!(
                    out,
                    "stats leases={} slot_keys={} rate_keys={} overrides={} policies={} last_token={}{}",
                    s.leases, s.slot_keys, s.rate_keys, s.overrides, s.policies, s.last_token,
                    if s.waiters > 0 { format!(" waiters={}", s.waiters) } else { String::new() }
                )?;
            }
            Line::Roundtrip => {
                let bytes = self.state.snapshot();
                let copy = State::restore(&bytes)?;
                if copy.digest() != self.state.digest() || copy.snapshot() != bytes {
                    return Err("the restored state differs from the original".into());
                }
                let (len, digest) = (bytes.len(), copy.digest());
                writeln!(out, "roundtrip ok: {len} bytes, digest {digest}")?;
                self.restored.push(copy);
            }
        }
        Ok(out)
    }

    fn end_block(&mut self, _: &Block) -> Result<String> {
        self.flush()
    }

    /// The whole-run properties: restored copies end equal, and a replay of the log
    /// into a fresh state reaches the same digest.
    fn end_script(&mut self) -> Result<()> {
        let digest = self.state.digest();
        if let Some(i) = self.restored.iter().position(|c| c.digest() != digest) {
            return Err(format!("roundtrip #{}'s copy ends with another digest", i + 1).into());
        }
        let mut replay = State::new();
        for (i, c) in self.log.iter().enumerate() {
            replay.apply_at(i as u64 + 1, c);
        }
        if replay.digest() != digest {
            return Err("replaying the script's commands gives another digest".into());
        }
        Ok(())
    }
}

fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts")
}

macro_rules! scripts {
    ($($name:ident),* $(,)?) => {
        const SCRIPTS: &[&str] = &[$(stringify!($name)),*];
        $(
            #[test]
            fn $name() {
                let path = scripts_dir().join(concat!(stringify!($name), ".txt"));
                goldenscript::run(&mut Session::default(), &path)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            }
        )*
    };
}

scripts!(
    acquire_release,
    allowlist,
    audit,
    configure,
    counter_caps,
    counters,
    fencing,
    gcra,
    hierarchical_denial,
    idempotent_retry,
    limits,
    multi_check,
    ownership,
    purge,
    queue_caps,
    queue_deadline,
    queue_fifo,
    queue_grants,
    queue_leave,
    queue_multi_key,
    queue_retry,
    renew_expiry,
    shadow,
    state_caps,
    tiers,
    time,
    validation,
);

#[test]
fn every_script_has_a_test() {
    let mut on_disk: Vec<String> = std::fs::read_dir(scripts_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    assert_eq!(on_disk, SCRIPTS, "add new scripts to the scripts! list");
}

#[test]
fn expand_repeats() {
    assert_eq!(expand("a{x*3}b{yz*2}"), "axxxbyzyz");
    assert_eq!(expand("{x*2"), "{x*2");
    assert_eq!(expand("{x}{y*2}"), "{x}yy");
    assert_eq!(expand("org:*"), "org:*");
}
