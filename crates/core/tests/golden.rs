//! Golden-script tests of the limiter state machine (toydb style).
//!
//! Every `tests/scripts/*.txt` is a readable session against a fresh [`State`]: lines
//! starting with `>` are commands in the tiny DSL below, the lines after each command
//! (up to the next blank, `>` or `#` line) are its expected output, `#` lines are
//! comments explaining what each step proves. The runner applies every command, formats
//! every reply on one line (indented sub-lines for leases and rate results) and compares
//! with the file; a mismatch fails with the file, the line and a diff.
//!
//! `UPDATE_GOLDEN=1 cargo test -p quorate-core --test golden` rewrites the files with
//! the actual output, so keeping them current is cheap — but every expected line is a
//! claim about the spec and must be reviewed by hand.
//!
//! Beyond the expected lines, every script also proves two properties of the whole run:
//! replaying its commands into a fresh state reaches the same digest (determinism), and
//! after each `roundtrip` a restored copy of the state gives byte-identical replies to
//! every later command and ends with the same digest (snapshots lose nothing).
//!
//! # DSL
//! `[at MS] VERB ARGS [;; VERB ARGS ...]` — `at` sets the script clock (kept until the
//! next `at`; it starts at 0); ops are applied as one [`Command`] stamped with the clock,
//! `;;` puts several ops in one command; queries are answered at the clock.
//!
//! Ops: `acquire K1,K2 lease=ID [ttl=MS] [holder=H]` (`-` = no keys; ttl defaults to
//! 10000), `release ID`, `renew ID ttl=MS`, `expire [leases=N] [rate=N]`, `noop`,
//! `limit set KEY N`, `limit delete KEY`, `rate KEY policy=NAME [tier=T] [cost=C] | KEY
//! limit=L period=P [burst=B] [cost=C] | ...` (burst defaults to limit, cost to 1),
//! `policy put NAME concurrency PATTERN LIMIT`, `policy put NAME rate LIMIT PERIOD
//! BURST`, `policy delete NAME`, `tier put NAME MILLI`, `tier delete NAME`,
//! `configure digest=N [default_limit=N] [max_limit=N] [max_ttl=MS] [max_retry_after=MS]
//! [max_period=MS] [policy=NAME,concurrency,PATTERN,LIMIT] [policy=NAME,rate,L,P,B]
//! [tier=NAME,MILLI]`.
//!
//! Queries: `limit get KEY`, `limits PREFIX [max=N]` (`-` = empty prefix), `usage KEY`,
//! `lease ID`, `policies`. Runner verbs: `digest`, `stats`, `now`, `roundtrip`.
//!
//! In any argument `{c*N}` expands to `c` repeated N times and `\s`, `\t`, `\n` to a
//! space, tab and newline, so invalid inputs can be written down.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use quorate_core::{
    Acquire, Command, Configuration, CoreError, LeaseInfo, LimitInfo, LimitSource, Op, Outcome,
    Policy, Query, RateCheck, RateLimitRef, RateSpec, Reply, Settings, State,
};

/// One parsed line of the script with its expected output.
struct Block {
    /// 1-based line number of the `>` line.
    line: usize,
    command: String,
    expected: Vec<String>,
}

/// A script file split into its verbatim lines and the command blocks found in it.
struct Script {
    /// Lines that are not expected output (commands, comments, blanks), with the index
    /// of the block whose output follows a command line.
    skeleton: Vec<(String, Option<usize>)>,
    blocks: Vec<Block>,
}

fn parse_script(text: &str) -> Script {
    let mut skeleton = Vec::new();
    let mut blocks: Vec<Block> = Vec::new();
    let mut in_output = false;
    for (i, line) in text.lines().enumerate() {
        if let Some(cmd) = line.strip_prefix('>') {
            blocks.push(Block {
                line: i + 1,
                command: cmd.trim().to_string(),
                expected: Vec::new(),
            });
            skeleton.push((line.to_string(), Some(blocks.len() - 1)));
            in_output = true;
        } else if line.trim().is_empty() || line.starts_with('#') {
            skeleton.push((line.to_string(), None));
            in_output = false;
        } else if in_output {
            // Expected output of the last command.
            if let Some(b) = blocks.last_mut() {
                b.expected.push(line.to_string());
            }
        } else {
            // A stray line outside any block: keep it so a rewrite does not lose it,
            // and let the comparison flag it (it is never produced as output).
            skeleton.push((line.to_string(), None));
        }
    }
    Script { skeleton, blocks }
}

/// Expands `{c*N}` repetitions and `\s` `\t` `\n` escapes.
fn expand(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    'outer: while let Some(c) = rest.chars().next() {
        if let Some(body) = rest.strip_prefix('{') {
            if let Some((inner, after)) = body.split_once('}') {
                if let Some((unit, n)) = inner.rsplit_once('*') {
                    if let Ok(n) = n.parse::<usize>() {
                        out.push_str(&unit.repeat(n));
                        rest = after;
                        continue;
                    }
                }
            }
        }
        for (esc, rep) in [("\\s", ' '), ("\\t", '\t'), ("\\n", '\n')] {
            if let Some(r) = rest.strip_prefix(esc) {
                out.push(rep);
                rest = r;
                continue 'outer;
            }
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// Parsed `name=value` options plus positional arguments.
struct Args {
    positional: Vec<String>,
    options: Vec<(String, String)>,
}

impl Args {
    /// The first `n_positional` tokens are positional whatever they contain (keys may
    /// contain `=`); the rest are `name=value` options.
    fn parse(tokens: &[&str], n_positional: usize) -> Result<Args, String> {
        let mut positional = Vec::new();
        let mut options = Vec::new();
        for (i, t) in tokens.iter().enumerate() {
            if i < n_positional {
                positional.push(expand(t));
            } else {
                let (k, v) = t
                    .split_once('=')
                    .ok_or_else(|| format!("expected name=value, got {t:?}"))?;
                options.push((k.to_string(), expand(v)));
            }
        }
        if positional.len() < n_positional {
            return Err(format!("expected {n_positional} positional arguments"));
        }
        Ok(Args {
            positional,
            options,
        })
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.options
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn num<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, String> {
        self.get(name)
            .map(|v| v.parse::<T>().map_err(|_| format!("bad number {name}={v}")))
            .transpose()
    }

    fn check_known(&self, known: &[&str]) -> Result<(), String> {
        for (k, _) in &self.options {
            if !known.contains(&k.as_str()) {
                return Err(format!("unknown option {k}"));
            }
        }
        Ok(())
    }
}

fn num<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.parse::<T>().map_err(|_| format!("bad number {s:?}"))
}

fn key_list(s: &str) -> Vec<String> {
    if s == "-" {
        Vec::new()
    } else {
        s.split(',').map(expand).collect()
    }
}

/// One DSL statement.
enum Stmt {
    Ops(Vec<Op>),
    Query(Query),
    Digest,
    Stats,
    Now,
    Roundtrip,
}

fn parse_op(words: &[&str]) -> Result<Op, String> {
    let (verb, rest) = words.split_first().ok_or("empty op")?;
    Ok(match *verb {
        "acquire" => {
            let a = Args::parse(rest, 1)?;
            a.check_known(&["lease", "ttl", "holder"])?;
            Op::Acquire(Acquire {
                keys: key_list(&a.positional[0]),
                lease_id: a.get("lease").ok_or("acquire needs lease=")?.to_string(),
                holder: a.get("holder").unwrap_or("").to_string(),
                ttl_ms: a.num("ttl")?.unwrap_or(10_000),
            })
        }
        "release" => {
            let a = Args::parse(rest, 1)?;
            Op::Release {
                lease_id: a.positional[0].clone(),
            }
        }
        "renew" => {
            let a = Args::parse(rest, 1)?;
            a.check_known(&["ttl"])?;
            Op::Renew {
                lease_id: a.positional[0].clone(),
                ttl_ms: a.num("ttl")?.ok_or("renew needs ttl=")?,
            }
        }
        "expire" => {
            let a = Args::parse(rest, 0)?;
            a.check_known(&["leases", "rate"])?;
            Op::Expire {
                max_leases: a.num("leases")?.unwrap_or(1000),
                max_rate_keys: a.num("rate")?.unwrap_or(1000),
            }
        }
        "noop" => Op::Noop,
        "limit" => match rest {
            ["set", key, n] => Op::SetLimit {
                key: expand(key),
                limit: num(n)?,
            },
            ["delete", key] => Op::DeleteLimit { key: expand(key) },
            _ => return Err("limit set KEY N | limit delete KEY | limit get KEY".into()),
        },
        "rate" if rest.is_empty() => Op::RateCheck { checks: Vec::new() },
        "rate" => {
            let mut checks = Vec::new();
            for part in rest.split(|w| *w == "|") {
                let a = Args::parse(part, 1)?;
                a.check_known(&["policy", "tier", "cost", "limit", "period", "burst"])?;
                let limit = match a.get("policy") {
                    Some(name) => RateLimitRef::Policy {
                        name: name.to_string(),
                        tier: a.get("tier").map(str::to_string),
                    },
                    None => {
                        let limit = a.num("limit")?.ok_or("rate needs policy= or limit=")?;
                        RateLimitRef::Inline(RateSpec {
                            limit,
                            period_ms: a.num("period")?.ok_or("inline rate needs period=")?,
                            burst: a.num("burst")?.unwrap_or(limit),
                        })
                    }
                };
                checks.push(RateCheck {
                    key: a.positional[0].clone(),
                    cost: a.num("cost")?.unwrap_or(1),
                    limit,
                });
            }
            Op::RateCheck { checks }
        }
        "policy" => match rest {
            ["put", name, "concurrency", pattern, limit] => Op::PutPolicy {
                name: expand(name),
                policy: Policy::Concurrency {
                    pattern: expand(pattern),
                    limit: num(limit)?,
                },
            },
            ["put", name, "rate", limit, period, burst] => Op::PutPolicy {
                name: expand(name),
                policy: Policy::Rate(RateSpec {
                    limit: num(limit)?,
                    period_ms: num(period)?,
                    burst: num(burst)?,
                }),
            },
            ["delete", name] => Op::DeletePolicy { name: expand(name) },
            _ => return Err("bad policy statement".into()),
        },
        "tier" => match rest {
            ["put", name, milli] => Op::PutTier {
                name: expand(name),
                multiplier_milli: num(milli)?,
            },
            ["delete", name] => Op::DeleteTier { name: expand(name) },
            _ => return Err("bad tier statement".into()),
        },
        "configure" => {
            let a = Args::parse(rest, 0)?;
            let mut settings = Settings::default();
            let mut policies = Vec::new();
            let mut tiers = Vec::new();
            let mut digest = None;
            for (k, v) in &a.options {
                match k.as_str() {
                    "digest" => digest = Some(num(v)?),
                    "default_limit" => settings.default_limit = num(v)?,
                    "max_limit" => settings.max_limit = num(v)?,
                    "max_ttl" => settings.max_ttl_ms = num(v)?,
                    "max_retry_after" => settings.max_retry_after_ms = num(v)?,
                    "max_period" => settings.max_period_ms = num(v)?,
                    "policy" => {
                        let f: Vec<&str> = v.split(',').collect();
                        let p = match f.as_slice() {
                            [name, "concurrency", pattern, limit] => (
                                name.to_string(),
                                Policy::Concurrency {
                                    pattern: pattern.to_string(),
                                    limit: num(limit)?,
                                },
                            ),
                            [name, "rate", l, p, b] => (
                                name.to_string(),
                                Policy::Rate(RateSpec {
                                    limit: num(l)?,
                                    period_ms: num(p)?,
                                    burst: num(b)?,
                                }),
                            ),
                            _ => return Err(format!("bad policy {v}")),
                        };
                        policies.push(p);
                    }
                    "tier" => {
                        let (name, m) = v.split_once(',').ok_or("tier=NAME,MILLI")?;
                        tiers.push((name.to_string(), num(m)?));
                    }
                    _ => return Err(format!("unknown configure option {k}")),
                }
            }
            Op::Configure(Box::new(Configuration {
                source_digest: digest.ok_or("configure needs digest=")?,
                settings,
                policies,
                tiers,
            }))
        }
        other => return Err(format!("unknown op {other:?}")),
    })
}

fn parse_stmt(words: &[&str]) -> Result<Stmt, String> {
    match words {
        ["digest"] => Ok(Stmt::Digest),
        ["stats"] => Ok(Stmt::Stats),
        ["now"] => Ok(Stmt::Now),
        ["roundtrip"] => Ok(Stmt::Roundtrip),
        ["policies"] => Ok(Stmt::Query(Query::Policies)),
        ["limit", "get", key] => Ok(Stmt::Query(Query::Limit { key: expand(key) })),
        ["usage", key] => Ok(Stmt::Query(Query::Usage { key: expand(key) })),
        ["lease", id] => Ok(Stmt::Query(Query::Lease {
            lease_id: expand(id),
        })),
        ["limits", rest @ ..] => {
            let a = Args::parse(rest, 1)?;
            a.check_known(&["max"])?;
            let prefix = if a.positional[0] == "-" {
                String::new()
            } else {
                a.positional[0].clone()
            };
            Ok(Stmt::Query(Query::Limits {
                prefix,
                max: a.num("max")?.unwrap_or(100),
            }))
        }
        _ => {
            let mut ops = Vec::new();
            for part in words.split(|w| *w == ";;") {
                ops.push(parse_op(part)?);
            }
            Ok(Stmt::Ops(ops))
        }
    }
}

// ------------------------------------------------------------------------------------
// Formatting

fn source(s: &LimitSource) -> String {
    match s {
        LimitSource::Override => "override".into(),
        LimitSource::Policy(n) => format!("policy:{n}"),
        LimitSource::Default => "default".into(),
    }
}

fn lease_line(l: &LeaseInfo) -> String {
    format!(
        "  lease {} token={} expires={} holder={:?} keys={}",
        l.lease_id,
        l.fencing_token,
        l.expires_at_ms,
        l.holder,
        l.keys.join(",")
    )
}

fn limit_info(l: &LimitInfo) -> String {
    format!(
        "{} limit={} source={} used={}",
        l.key,
        l.limit,
        source(&l.source),
        l.used
    )
}

fn policy_line(name: &str, p: &Policy) -> String {
    match p {
        Policy::Concurrency { pattern, limit } => {
            format!("  policy {name} concurrency {pattern} limit={limit}")
        }
        Policy::Rate(s) => format!(
            "  policy {name} rate {}/{}ms burst={}",
            s.limit, s.period_ms, s.burst
        ),
    }
}

fn format_reply(r: &Reply, out: &mut Vec<String>) {
    let o = match r {
        Ok(o) => o,
        Err(e) => {
            out.push(format!("error: {e}"));
            return;
        }
    };
    let slots = |s: &[quorate_core::SlotUsage]| {
        s.iter()
            .map(|s| format!("{}={}/{}", s.key, s.used, s.limit))
            .collect::<Vec<_>>()
            .join(" ")
    };
    match o {
        Outcome::Granted(g) => out.push(format!(
            "granted lease={} token={} expires={}{} slots: {}",
            g.lease_id,
            g.fencing_token,
            g.expires_at_ms,
            if g.reused { " reused" } else { "" },
            slots(&g.slots)
        )),
        Outcome::Denied(d) => out.push(format!(
            "denied blocked_by={} retry_after={} slots: {}",
            d.blocked_by.join(","),
            d.retry_after_ms,
            slots(&d.slots)
        )),
        Outcome::Released { released } => out.push(format!("released={released}")),
        Outcome::Renewed {
            lease_id,
            expires_at_ms,
        } => out.push(format!("renewed {lease_id} expires={expires_at_ms}")),
        Outcome::Expired { leases, rate_keys } => {
            out.push(format!("expired leases={leases} rate_keys={rate_keys}"))
        }
        Outcome::LimitSet { key, limit } => out.push(format!("limit set {key}={limit}")),
        Outcome::LimitDeleted { deleted } => out.push(format!("limit deleted={deleted}")),
        Outcome::Rate(d) => {
            out.push(format!("rate allowed={}", d.allowed));
            for r in &d.results {
                out.push(format!(
                    "  {} allowed={} {}/{}ms burst={} remaining={} reset_after={} retry_after={}",
                    r.key,
                    r.allowed,
                    r.limit,
                    r.period_ms,
                    r.burst,
                    r.remaining,
                    r.reset_after_ms,
                    r.retry_after_ms
                ));
            }
        }
        Outcome::PolicyPut { name } => out.push(format!("policy put {name}")),
        Outcome::PolicyDeleted { deleted } => out.push(format!("policy deleted={deleted}")),
        Outcome::TierPut { name } => out.push(format!("tier put {name}")),
        Outcome::TierDeleted { deleted } => out.push(format!("tier deleted={deleted}")),
        Outcome::Configured { changed } => out.push(format!("configured changed={changed}")),
        Outcome::Noop => out.push("noop".into()),
        Outcome::Usage(u) => {
            out.push(format!("usage {} used={}/{}", u.key, u.used, u.limit));
            out.extend(u.leases.iter().map(lease_line));
        }
        Outcome::Limit(l) => out.push(format!("limit {}", limit_info(l))),
        Outcome::Limits { limits, truncated } => {
            out.push(format!("limits n={} truncated={truncated}", limits.len()));
            out.extend(limits.iter().map(|l| format!("  {}", limit_info(l))));
        }
        Outcome::Policies(p) => {
            let s = &p.settings;
            out.push(format!(
                "settings default_limit={} max_limit={} max_ttl={} max_retry_after={} max_period={} digest={}",
                s.default_limit,
                s.max_limit,
                s.max_ttl_ms,
                s.max_retry_after_ms,
                s.max_period_ms,
                p.source_digest.map_or("none".to_string(), |d| d.to_string())
            ));
            out.extend(p.policies.iter().map(|(n, p)| policy_line(n, p)));
            out.extend(p.tiers.iter().map(|(n, m)| format!("  tier {n} {m}")));
        }
        Outcome::Lease(None) => out.push("lease none".into()),
        Outcome::Lease(Some(l)) => out.push(lease_line(l).trim_start().to_string()),
    }
}

// ------------------------------------------------------------------------------------
// Running

/// Runs one script. Returns the actual output of every block, or a runner error (a
/// malformed command, or a broken roundtrip/determinism property) with its line.
struct Runner {
    state: State,
    clock: u64,
    /// Restored copies made by `roundtrip`: they must answer every later command
    /// exactly like the original.
    shadows: Vec<(usize, State)>,
    /// Every command applied, to replay for the determinism check.
    log: Vec<Command>,
}

impl Runner {
    fn new() -> Self {
        Runner {
            state: State::new(),
            clock: 0,
            shadows: Vec::new(),
            log: Vec::new(),
        }
    }

    fn run(&mut self, line: usize, command: &str) -> Result<Vec<String>, String> {
        let mut words: Vec<&str> = command.split_whitespace().collect();
        if let ["at", t, ..] = words.as_slice() {
            self.clock = num(t)?;
            words.drain(..2);
        }
        let mut out = Vec::new();
        match parse_stmt(&words)? {
            Stmt::Ops(ops) => {
                let cmd = Command::new(self.clock, ops);
                let replies = self.state.apply(&cmd);
                for (from, shadow) in &mut self.shadows {
                    let theirs = shadow.apply(&cmd);
                    if theirs != replies {
                        return Err(format!(
                            "state restored at line {from} replied {theirs:?}, original {replies:?}"
                        ));
                    }
                }
                self.log.push(cmd);
                for r in &replies {
                    format_reply(r, &mut out);
                }
            }
            Stmt::Query(q) => {
                let r = self.state.query(&q, self.clock);
                for (from, shadow) in &self.shadows {
                    let theirs = shadow.query(&q, self.clock);
                    if theirs != r {
                        return Err(format!(
                            "state restored at line {from} answered {theirs:?}, original {r:?}"
                        ));
                    }
                }
                format_reply(&r, &mut out);
            }
            Stmt::Digest => out.push(format!("digest {}", self.state.digest())),
            Stmt::Now => out.push(format!("now {}", self.state.now_ms())),
            Stmt::Stats => {
                let s = self.state.stats();
                out.push(format!(
                    "stats leases={} slot_keys={} rate_keys={} overrides={} policies={} last_token={}",
                    s.leases, s.slot_keys, s.rate_keys, s.overrides, s.policies, s.last_token
                ));
            }
            Stmt::Roundtrip => {
                let bytes = self.state.snapshot();
                let restored = State::restore(&bytes).map_err(|e| e.to_string())?;
                if restored.digest() != self.state.digest() || restored.snapshot() != bytes {
                    return Err("restored state has a different digest".into());
                }
                out.push(format!(
                    "roundtrip ok: {} bytes, digest {}",
                    bytes.len(),
                    restored.digest()
                ));
                self.shadows.push((line, restored));
            }
        }
        Ok(out)
    }

    /// End-of-script checks: shadows agree, and a replay reaches the same digest.
    fn finish(&self) -> Result<(), String> {
        let digest = self.state.digest();
        for (from, shadow) in &self.shadows {
            if shadow.digest() != digest {
                return Err(format!(
                    "state restored at line {from} ends with another digest"
                ));
            }
        }
        let mut replay = State::new();
        for c in &self.log {
            replay.apply(c);
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

fn diff(expected: &[String], actual: &[String]) -> String {
    let mut s = String::new();
    for e in expected {
        let _ = writeln!(s, "    - {e}");
    }
    for a in actual {
        let _ = writeln!(s, "    + {a}");
    }
    s
}

/// Runs one file; returns failure messages (empty if all good). Rewrites the file when
/// `update` is set.
fn run_file(path: &Path, update: bool) -> Vec<String> {
    let name = path.file_name().unwrap().to_string_lossy().to_string();
    let text = std::fs::read_to_string(path).unwrap();
    let script = parse_script(&text);
    let mut runner = Runner::new();
    let mut failures = Vec::new();
    let mut actual_all = Vec::new();
    for b in &script.blocks {
        let actual = match runner.run(b.line, &b.command) {
            Ok(a) => a,
            Err(e) => {
                failures.push(format!("{name}:{}: `{}`: {e}", b.line, b.command));
                vec![format!("!! runner error: {e}")]
            }
        };
        if actual != b.expected && !update {
            failures.push(format!(
                "{name}:{}: `{}` gave other output:\n{}",
                b.line,
                b.command,
                diff(&b.expected, &actual)
            ));
        }
        actual_all.push(actual);
    }
    if let Err(e) = runner.finish() {
        failures.push(format!("{name}: {e}"));
    }
    for (i, (line, block)) in script.skeleton.iter().enumerate() {
        let stray = block.is_none()
            && !line.trim().is_empty()
            && !line.starts_with('#')
            && !line.starts_with('>');
        if stray {
            failures.push(format!(
                "{name}: stray line {i} outside any block: {line:?}"
            ));
        }
    }
    if update {
        let mut new = String::new();
        for (line, block) in &script.skeleton {
            new.push_str(line);
            new.push('\n');
            if let Some(i) = block {
                for a in &actual_all[*i] {
                    new.push_str(a);
                    new.push('\n');
                }
            }
        }
        if new != text {
            std::fs::write(path, new).unwrap();
            eprintln!("updated {name}");
        }
    }
    failures
}

#[test]
fn golden_scripts() {
    let update = std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(scripts_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    paths.sort();
    assert!(
        !paths.is_empty(),
        "no scripts in {}",
        scripts_dir().display()
    );
    let mut failures = Vec::new();
    for p in &paths {
        failures.extend(run_file(p, update));
    }
    assert!(
        failures.is_empty(),
        "{} golden failure(s) (set UPDATE_GOLDEN=1 to accept actual output, then review \
         it by hand):\n\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn expand_escapes() {
    assert_eq!(expand("a{x*3}b"), "axxxb");
    assert_eq!(expand("a\\sb\\tc"), "a b\tc");
    assert_eq!(expand("{x*2"), "{x*2");
    assert_eq!(expand("org:*"), "org:*");
    // Errors keep the Display of CoreError.
    let e = CoreError::LeaseNotFound {
        lease_id: "x".into(),
    };
    assert_eq!(
        e.to_string(),
        "lease x not found (expired, released or never granted)"
    );
}
