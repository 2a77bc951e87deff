//! The one output path of every operator command.
//!
//! A command returns a value that implements [`Render`]: `Serialize` gives its
//! `--json` form, [`Render::table`] its human form (aligned tables and sentences,
//! the text printed, newline-terminated), and [`Render::exit_code`] whether a
//! successful answer still means "no" (a limited rate check exits 3). [`emit`] is the
//! only function that prints a result, so `--json` cannot be forgotten by a new
//! command and errors always look the same: `error: ...` on stderr and the exit code
//! from the table in the module overview.

use quorate_client::Error as ClientError;
use serde::Serialize;

use super::ExitCode;

/// A command's successful result: printable as a table or as JSON.
pub trait Render: Serialize {
    /// The human form, newline-terminated.
    fn table(&self) -> String;

    /// Exit code when this result is printed (0 unless the answer means "denied").
    fn exit_code(&self) -> ExitCode {
        0
    }
}

/// Object-safe face of [`Render`], so the dispatcher can hold any command's result.
pub trait Output {
    fn table(&self) -> String;
    fn json(&self) -> serde_json::Result<String>;
    fn exit_code(&self) -> ExitCode;
}

impl<T: Render> Output for T {
    fn table(&self) -> String {
        Render::table(self)
    }
    fn json(&self) -> serde_json::Result<String> {
        serde_json::to_string_pretty(self)
    }
    fn exit_code(&self) -> ExitCode {
        Render::exit_code(self)
    }
}

/// Why a command produced no result.
#[derive(Debug)]
pub enum Failure {
    /// The client call failed (refused, denied, unreachable).
    Client(ClientError),
    /// Flags that clap accepts but that do not make a request (exit 2).
    Usage(&'static str),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure::Client(e)
    }
}

/// What every command returns.
pub type Outcome = Result<Box<dyn Output>, Failure>;

/// Box a result for [`emit`].
pub fn done<T: Render + 'static>(v: T) -> Outcome {
    Ok(Box::new(v))
}

/// Print a command's outcome (table, JSON or error) and return the exit code.
pub fn emit(outcome: Outcome, json: bool) -> ExitCode {
    match outcome {
        Ok(out) => {
            if json {
                match out.json() {
                    Ok(s) => println!("{s}"),
                    Err(e) => eprintln!("error: cannot encode output: {e}"),
                }
            } else {
                print!("{}", out.table());
            }
            out.exit_code()
        }
        Err(Failure::Usage(why)) => {
            eprintln!("error: {why}");
            2
        }
        Err(Failure::Client(e)) => {
            eprintln!("error: {e}");
            match e {
                ClientError::LimitExceeded { .. } => 3,
                ClientError::Unavailable(_) => 4,
                _ => 1,
            }
        }
    }
}

/// Rows as an aligned table: columns two spaces apart, trailing blanks trimmed.
pub fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: &[String]| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{:<w$}", c, w = widths[i]))
            .collect();
        format!("{}\n", s.join("  ").trim_end())
    };
    let header: Vec<String> = header.iter().map(|s| s.to_string()).collect();
    let mut out = line(&header);
    for r in &rows {
        out.push_str(&line(r));
    }
    out
}

/// `-` for absent values.
pub fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// A one-line message whose JSON form is the given value.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct Line<T: Serialize> {
    pub json: T,
    #[serde(skip)]
    pub text: String,
}

impl<T: Serialize> Render for Line<T> {
    fn table(&self) -> String {
        format!("{}\n", self.text)
    }
}

/// A yes/no answer (its JSON `json`, e.g. [`Deleted`]), printed as the sentence for
/// whichever of `yes` and `no` happened.
pub fn yes_no<T: Serialize + 'static>(json: T, happened: bool, yes: String, no: String) -> Outcome {
    let text = if happened { yes } else { no };
    done(Line { json, text })
}

/// `{"deleted": bool}` / `{"released": bool}` answers.
#[derive(Debug, Serialize)]
pub struct Deleted {
    pub deleted: bool,
}

#[derive(Debug, Serialize)]
pub struct Released {
    pub released: bool,
}

/// One line per key a shadow-mode policy would have denied (empty when none).
pub fn shadow_lines(denied: &[quorate_proto::ShadowDenial]) -> String {
    denied
        .iter()
        .map(|d| format!("shadow: policy {} would have denied {}\n", d.policy, d.key))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_trim() {
        let t = table(
            &["KEY", "LIMIT", "NOTE"],
            vec![vec!["org:acme".into(), "7".into(), String::new()]],
        );
        assert_eq!(t, "KEY       LIMIT  NOTE\norg:acme  7\n");
    }

    #[test]
    fn a_line_prints_text_and_serializes_its_value() {
        let l = Line {
            json: Deleted { deleted: true },
            text: "gone".into(),
        };
        assert_eq!(Output::table(&l), "gone\n");
        assert_eq!(serde_json::to_string(&l).unwrap(), r#"{"deleted":true}"#);
    }
}
