//! A headless Chromium driven over WebDriver (fantoccini, plain HTTP to a local chromedriver),
//! for the web UI's test and benchmark. Chromium is started so that it can reach nothing but
//! loopback: every host name fails to resolve and every other address goes to a proxy that is not
//! there. Console entries are collected (`goog:loggingPrefs`), and dropping the browser stops
//! chromedriver and every Chromium process (they run in a process group of their own).

use crate::support::{free_port, http_request, require_program};
use anyhow::{anyhow, bail, Context, Result};
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder};
use serde_json::{json, Value};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long [`Browser::wait_js`] waits for a page to show something (pages poll every 1.5 s, waves
/// come every second, and a loaded 2-core machine is slow).
pub const WAIT: Duration = Duration::from_secs(30);

/// `POST /session/{id}/se/log {"type": "browser"}`: the console entries since the last call.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _request_url: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(r#"{"type":"browser"}"#.to_string()),
        )
    }
}

/// chromedriver and the Chromium session it runs, stopped on drop.
pub struct Browser {
    rt: tokio::runtime::Runtime,
    client: Option<Client>,
    driver: Child,
    profile: PathBuf,
    /// `http://127.0.0.1:PORT`: the root, the only origin the pages may reach.
    origin: String,
    shots: PathBuf,
}

impl Browser {
    pub fn start(root: SocketAddr, chromium: &Path, chromedriver: &Path) -> Result<Browser> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let port = free_port(Ipv4Addr::LOCALHOST, false)?;
        let profile = std::env::temp_dir().join(format!(
            "banyan-webui-chromium-{}-{port}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile)?;
        let log = std::fs::File::create(profile.with_extension("driver.log"))?;
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own group: dropping the browser stops chromedriver and every Chromium process.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", chromedriver.display()))?;
        let shots = crate::support::workspace_root()
            .join("target")
            .join("webui-screenshots");
        std::fs::create_dir_all(&shots)?;
        let mut b = Browser {
            rt,
            client: None,
            driver,
            profile,
            origin: format!("http://{root}"),
            shots,
        };
        let driver_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = http_request(driver_addr, "GET", "/status", None, None, SHORT)
                .ok()
                .and_then(|(_, body)| serde_json::from_slice::<Value>(&body).ok())
                .is_some_and(|v| v["value"]["ready"] == true);
            if ready {
                break;
            }
            if Instant::now() > deadline {
                bail!("chromedriver did not answer on {driver_addr} within 20 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let args = vec![
            "--no-sandbox".to_string(),
            "--headless".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--window-size=1440,1000".into(),
            format!("--user-data-dir={}", b.profile.display()),
            // Nothing but loopback: names do not resolve, other addresses go to a dead proxy.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1".into(),
            "--proxy-server=http://127.0.0.1:9".into(),
            "--proxy-bypass-list=127.0.0.1".into(),
        ];
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({"binary": chromium, "args": args}),
        );
        caps.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
        let url = format!("http://{driver_addr}");
        let client = b.rt.block_on(async {
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(caps)
                .connect(&url)
                .await
        });
        b.client = Some(client.map_err(|e| anyhow!("starting a Chromium session: {e}"))?);
        println!("screenshots in {}", b.shots.display());
        Ok(b)
    }

    /// `http://127.0.0.1:PORT`, the root the pages come from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Where screenshots go (`target/webui-screenshots/`).
    pub fn shots(&self) -> &Path {
        &self.shots
    }

    pub fn client(&self) -> Result<&Client> {
        self.client
            .as_ref()
            .ok_or_else(|| anyhow!("no browser session"))
    }

    /// Opens the UI at `hash` (`#/nodes`), through a blank page so every page starts afresh and its
    /// resource timings are its own.
    pub fn open(&self, hash: &str) -> Result<()> {
        let url = format!("{}/{hash}", self.origin);
        self.rt.block_on(async {
            let c = self.client()?;
            c.goto("about:blank").await?;
            c.goto(&url).await?;
            Ok::<_, anyhow::Error>(())
        })
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) and returns its value.
    pub fn js(&self, script: &str, args: Vec<Value>) -> Result<Value> {
        self.rt.block_on(async {
            self.client()?
                .execute(script, args)
                .await
                .map_err(Into::into)
        })
    }

    /// Runs `script` until it returns something other than `null`/`false`, and returns that.
    pub fn wait_js(&self, what: &str, script: &str, args: Vec<Value>) -> Result<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let last = match self.js(script, args.clone()) {
                Ok(v) if !v.is_null() && v != Value::Bool(false) => return Ok(v),
                Ok(v) => v,
                Err(e) => json!(format!("{e:#}")),
            };
            if Instant::now() > deadline {
                let text = self
                    .js("return document.getElementById('view').innerText", vec![])
                    .unwrap_or_default();
                bail!("the page did not show {what} within {WAIT:?} (last: {last}); it shows:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn logs(&self) -> Result<Vec<Value>> {
        let v = self.rt.block_on(async {
            self.client()?
                .issue_cmd(BrowserLog)
                .await
                .map_err(anyhow::Error::from)
        })?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }

    pub fn screenshot(&self, name: &str) -> Result<()> {
        let png = self.rt.block_on(async {
            self.client()?
                .screenshot()
                .await
                .map_err(anyhow::Error::from)
        })?;
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).with_context(|| format!("writing {}", path.display()))
    }

    /// The page's checks: no SEVERE console entry (but those naming one of `expected`, the
    /// errors the test provoked on purpose) and no request anywhere but the root.
    pub fn check_clean(&self, page: &str, expected: &[&str]) -> Result<()> {
        let severe: Vec<String> = self
            .logs()?
            .into_iter()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| e["message"].as_str().unwrap_or_default().to_string())
            .filter(|m| !expected.iter().any(|x| m.contains(x)))
            .collect();
        if !severe.is_empty() {
            bail!("{page}: console errors: {severe:#?}");
        }
        let urls = self.js(
            "return [location.href].concat(performance.getEntriesByType('resource').map(e => e.name))",
            vec![],
        )?;
        let prefix = format!("{}/", self.origin);
        let urls: Vec<&str> = urls
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let away: Vec<&&str> = urls.iter().filter(|u| !u.starts_with(&prefix)).collect();
        if !away.is_empty() {
            bail!("{page}: requests that left the root: {away:?}");
        }
        if urls.len() < 2 {
            bail!("{page}: no request to the root was timed: {urls:?}");
        }
        Ok(())
    }

    /// Proves names were inserted as text: no element or script from them exists or ran.
    pub fn check_no_injection(&self, page: &str) -> Result<()> {
        let v = self.js(
            "return {scripts: document.scripts.length, pwned: window.pwned === undefined ? null : window.pwned,
                     injected: !!document.getElementById('injected') || !!document.getElementById('injected2'),
                     imgs: document.querySelectorAll('img').length}",
            vec![],
        )?;
        if v != json!({"scripts": 1, "pwned": null, "injected": false, "imgs": 0}) {
            bail!("{page}: a name was inserted as markup: {v}");
        }
        Ok(())
    }

    pub fn click(&self, css: &str) -> Result<()> {
        self.js(
            "const e = document.querySelector(arguments[0]); if (!e) throw new Error('no ' + arguments[0]); e.click(); return true;",
            vec![json!(css)],
        )
        .map(|_| ())
    }

    /// Sets an input's value as typing would (an `input` event follows).
    pub fn fill(&self, css: &str, value: &str) -> Result<()> {
        self.js(
            "const e = document.querySelector(arguments[0]); if (!e) throw new Error('no ' + arguments[0]);
             e.value = arguments[1]; e.dispatchEvent(new Event('input', {bubbles: true})); e.dispatchEvent(new Event('change', {bubbles: true})); return true;",
            vec![json!(css), json!(value)],
        )
        .map(|_| ())
    }
}

const SHORT: Duration = Duration::from_secs(2);

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            let _ = self
                .rt
                .block_on(async { tokio::time::timeout(Duration::from_secs(10), c.close()).await });
        }
        // The whole group: chromedriver and any Chromium it left.
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.driver.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
        let _ = std::fs::remove_file(self.profile.with_extension("driver.log"));
    }
}

/// Chromium and chromedriver, or `None` (the test is skipped) outside CI when missing.
pub fn browser_programs() -> Result<Option<(PathBuf, PathBuf)>> {
    let Some(chromium) = require_program("chromium", "chromium")? else {
        return Ok(None);
    };
    let Some(driver) = require_program("chromedriver", "chromium-driver")? else {
        return Ok(None);
    };
    Ok(Some((chromium, driver)))
}
