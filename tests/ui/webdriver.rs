//! A minimal W3C WebDriver client over reqwest, driving Debian's headless Chromium
//! through `chromedriver` (packages `chromium` and `chromium-driver`).
//!
//! [`Browser::launch`] starts `chromedriver` on a free port, waits (polling `/status`
//! with a deadline) until it is ready, and opens a session with a throwaway profile
//! and browser console logging on. Dropping the [`Browser`] ends the session and
//! kills the `chromedriver` process it started (which takes Chromium with it).
//!
//! When the binaries are missing the launch fails with the install command, so the
//! test cannot pass by not running; `QUORATE_SKIP_BROWSER=1` is the one explicit way
//! to skip it (reported on stderr). `QUORATE_CHROMIUM` and `QUORATE_CHROMEDRIVER`
//! point at other binaries.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Why a browser could not be had.
#[derive(Debug)]
pub enum Unavailable {
    /// The caller opted out with `QUORATE_SKIP_BROWSER=1`.
    Skipped,
}

pub struct Browser {
    http: reqwest::Client,
    base: String,
    session: String,
    driver: Child,
    _profile: tempfile::TempDir,
}

fn binary(env: &str, default: &str) -> PathBuf {
    std::env::var_os(env).map_or_else(|| PathBuf::from(default), PathBuf::from)
}

impl Browser {
    /// Start chromedriver and a headless Chromium session with a `width`×`height`
    /// window.
    pub async fn launch(width: u32, height: u32) -> Result<Browser, Unavailable> {
        let chromium = binary("QUORATE_CHROMIUM", "/usr/lib/chromium/chromium");
        let driver = binary("QUORATE_CHROMEDRIVER", "/usr/bin/chromedriver");
        if std::env::var_os("QUORATE_SKIP_BROWSER").is_some_and(|v| v == "1") {
            eprintln!("QUORATE_SKIP_BROWSER=1: the browser test is SKIPPED");
            return Err(Unavailable::Skipped);
        }
        for (what, path) in [("Chromium", &chromium), ("chromedriver", &driver)] {
            assert!(
                path.exists(),
                "{what} not found at {} — install it with `apt-get install -y chromium \
                 chromium-driver` (or point QUORATE_CHROMIUM / QUORATE_CHROMEDRIVER at it; \
                 QUORATE_SKIP_BROWSER=1 skips this test explicitly)",
                path.display()
            );
        }
        let port = free_port();
        let child = Command::new(&driver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", driver.display()));
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("http client");
        let base = format!("http://127.0.0.1:{port}");
        let profile = tempfile::Builder::new()
            .prefix("quorate-chromium-")
            .tempdir()
            .expect("profile dir");
        let mut b = Browser {
            http,
            base,
            session: String::new(),
            driver: child,
            _profile: profile,
        };
        b.wait_for_driver().await;
        b.session = b.new_session(&chromium, width, height).await;
        Ok(b)
    }

    async fn wait_for_driver(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = match self.http.get(format!("{}/status", self.base)).send().await {
                Ok(r) => r
                    .json::<Value>()
                    .await
                    .is_ok_and(|v| v["value"]["ready"] == json!(true)),
                Err(_) => false,
            };
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not become ready in 20 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn new_session(&self, chromium: &Path, width: u32, height: u32) -> String {
        let args = [
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-extensions".into(),
            "--force-device-scale-factor=1".into(),
            "--hide-scrollbars".into(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", self._profile.path().display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let v = self
            .call(reqwest::Method::POST, "/session", Some(caps))
            .await;
        v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id in {v}"))
            .to_string()
    }

    /// One WebDriver command; panics with the driver's error.
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("webdriver {path}: {e}"));
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "webdriver {path}: {status} {v}");
        v["value"].clone()
    }

    fn at(&self, path: &str) -> String {
        format!("/session/{}{path}", self.session)
    }

    pub async fn goto(&self, url: &str) {
        self.call(
            reqwest::Method::POST,
            &self.at("/url"),
            Some(json!({ "url": url })),
        )
        .await;
    }

    /// Run `script` (a function body; `return` its answer) in the page.
    pub async fn eval(&self, script: &str) -> Value {
        let body = json!({"script": script, "args": []});
        self.call(reqwest::Method::POST, &self.at("/execute/sync"), Some(body))
            .await
    }

    /// Evaluate `script` until `done` accepts its value; panics with the last value
    /// at the deadline.
    pub async fn wait_for(
        &self,
        what: &str,
        deadline: Duration,
        script: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let until = Instant::now() + deadline;
        loop {
            let v = self.eval(script).await;
            if done(&v) {
                return v;
            }
            assert!(
                Instant::now() < until,
                "the page did not show {what} within {deadline:?}; last seen: {v}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The WebDriver id of the element `css` selects.
    async fn element(&self, css: &str) -> String {
        let body = json!({"using": "css selector", "value": css});
        let v = self
            .call(reqwest::Method::POST, &self.at("/element"), Some(body))
            .await;
        v["element-6066-11e4-a52e-4f735466cecf"]
            .as_str()
            .unwrap_or_else(|| panic!("no element for {css}: {v}"))
            .to_string()
    }

    /// Type `text` into the element `css` selects, as a user would.
    pub async fn type_into(&self, css: &str, text: &str) {
        let e = self.element(css).await;
        let body = json!({ "text": text });
        self.call(
            reqwest::Method::POST,
            &self.at(&format!("/element/{e}/value")),
            Some(body),
        )
        .await;
    }

    /// Click the element `css` selects.
    pub async fn click(&self, css: &str) {
        let e = self.element(css).await;
        self.call(
            reqwest::Method::POST,
            &self.at(&format!("/element/{e}/click")),
            Some(json!({})),
        )
        .await;
    }

    /// The browser console's entries since the last call (`level`, `message`, ...).
    pub async fn console(&self) -> Vec<Value> {
        let body = json!({"type": "browser"});
        let v = self
            .call(reqwest::Method::POST, &self.at("/se/log"), Some(body))
            .await;
        v.as_array().cloned().unwrap_or_default()
    }

    /// Save a PNG of the viewport to `path`.
    pub async fn screenshot(&self, path: &Path) {
        let v = self
            .call(reqwest::Method::GET, &self.at("/screenshot"), None)
            .await;
        let png = decode_base64(v.as_str().expect("base64 screenshot"));
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("artifact dir");
        }
        std::fs::write(path, png).expect("write screenshot");
        eprintln!("screenshot: {}", path.display());
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ending the session makes chromedriver close Chromium (killing chromedriver
        // alone would leave Chromium running). Drop cannot await, so this one request
        // is plain blocking HTTP/1.1.
        if !self.session.is_empty() {
            let _ = end_session(&self.base, &self.session);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn end_session(base: &str, session: &str) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let mut conn = std::net::TcpStream::connect(addr)?;
    conn.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(
        conn,
        "DELETE /session/{session} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n\
         Connection: close\r\n\r\n"
    )?;
    // The answer comes once Chromium has closed; chromedriver may keep the
    // connection open after it, so read the first bytes only.
    let mut answer = [0u8; 1024];
    let _ = conn.read(&mut answer)?;
    Ok(())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Standard base64 (with padding), as WebDriver sends screenshots.
fn decode_base64(s: &str) -> Vec<u8> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter_map(value) {
        acc = (acc << 6) | c;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

#[test]
fn base64_decodes_padded_input() {
    assert_eq!(decode_base64("aGVsbG8="), b"hello");
    assert_eq!(decode_base64("aGk="), b"hi");
    assert_eq!(decode_base64("YWJj"), b"abc");
}
