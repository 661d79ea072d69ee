//! A real Keystone + Placement + Nova (api, conductor, scheduler; fake virt driver) for the
//! hypervisor tests, run by `scripts/lib/openstack` under one directory, and a plain HTTP view of
//! it that does not go through banyan's own client: what the tests compare banyan's answers with.
//!
//! The control plane listens on the testnet bridge's address (198.18.0.1), so that each test
//! host's nova-compute, started there by the host's banyan agent, reaches RabbitMQ and Placement.
//! Installing: `scripts/test` runs `scripts/lib/openstack install`; missing packages are an error
//! (unless BANYAN_TEST_LENIENT=1, then the skip is noted and the test returns).

use crate::support::{note_skip, strict, workspace_root};
use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The compute microversion the test's own view asks for.
const MICROVERSION: &str = "compute 2.79";

/// One OpenStack control plane; stopped (every process under its directory) when dropped.
pub struct OpenStack {
    dir: PathBuf,
    ports: BTreeMap<String, String>,
    agent: ureq::Agent,
    /// The test's own admin token (renewed after [`OpenStack::revoke_tokens`]).
    token: std::sync::Mutex<String>,
}

/// The agent config of a cluster whose hosts run a nova-compute each: the `nova-compute` unit
/// started by the script [`OpenStack::compute_conf`] writes, for an OpenStack brought up in
/// `<cluster dir>/openstack` (`{dir}` and `{name}` are the cluster's substitutions).
pub fn compute_agent_config() -> String {
    r#"
[service]
allow = ["nova-compute"]

[service.units.nova-compute]
start = ["{dir}/openstack/compute/{name}/start"]
pid_file = "{dir}/openstack/compute/{name}/pid"
"#
    .to_string()
}

fn script() -> PathBuf {
    workspace_root().join("scripts/lib/openstack")
}

fn run_script(args: &[&str]) -> Result<String> {
    let out = Command::new(script())
        .args(args)
        .output()
        .with_context(|| format!("running {}", script().display()))?;
    if !out.status.success() {
        bail!(
            "scripts/lib/openstack {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether the packages are there (`scripts/lib/openstack install` puts them there).
fn installed() -> bool {
    Path::new("/usr/lib/python3/dist-packages/nova/virt/fake.py").is_file()
        && Path::new("/usr/lib/python3/dist-packages/keystone").is_dir()
        && Path::new("/var/cache/banyan/nova-common").is_dir()
}

impl OpenStack {
    /// Brings one up in `dir` on the bridge address, with ports from `port_base`. `Ok(None)`: not
    /// installed and lenient (the skip is noted).
    pub fn up(dir: &Path, port_base: u16) -> Result<Option<OpenStack>> {
        if !installed() {
            let why = "OpenStack (python3-nova, python3-keystone, ...) is not installed: run scripts/lib/openstack install";
            if strict() {
                bail!("{why} (BANYAN_TEST_LENIENT=1 skips instead)");
            }
            note_skip(why);
            return Ok(None);
        }
        let d = dir.to_str().ok_or_else(|| anyhow!("non-UTF-8 directory"))?;
        let said = run_script(&["up", d, "--port-base", &port_base.to_string()])?;
        eprintln!("{}", said.trim());
        let text = std::fs::read_to_string(dir.join("ports"))
            .with_context(|| format!("reading {}/ports", dir.display()))?;
        let ports = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| {
                (
                    k.trim().to_string(),
                    v.trim().trim_matches('\'').trim_matches('"').to_string(),
                )
            })
            .collect();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let token = run_script(&["token", d])?.trim().to_string();
        ensure!(
            !token.is_empty(),
            "scripts/lib/openstack token printed nothing"
        );
        Ok(Some(OpenStack {
            dir: dir.to_path_buf(),
            ports,
            agent,
            token: std::sync::Mutex::new(token),
        }))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A value of DIR/ports (`NOVA_URL`, `IMAGE_ID`, `FLAVOR_ID`, ...).
    pub fn port(&self, key: &str) -> Result<&str> {
        self.ports
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| anyhow!("{}/ports has no {key}", self.dir.display()))
    }

    /// Writes a test host's nova-compute config and start script; the agent's unit config.
    pub fn compute_conf(&self, host: &str) -> Result<()> {
        run_script(&["compute-conf", self.dir.to_str().unwrap_or_default(), host])?;
        Ok(())
    }

    /// The nova-compute start script and pid file of `host` (the agent's `[service.units]`).
    pub fn compute_files(&self, host: &str) -> (PathBuf, PathBuf) {
        let d = self.dir.join("compute").join(host);
        (d.join("start"), d.join("pid"))
    }

    /// The pid of `host`'s nova-compute while it runs.
    pub fn compute_pid(&self, host: &str) -> Option<i32> {
        let (_, pid) = self.compute_files(host);
        let pid: i32 = std::fs::read_to_string(pid).ok()?.trim().parse().ok()?;
        // A zombie has stopped running; only its parent's wait is missing.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let state = stat.rsplit_once(") ")?.1.chars().next()?;
        (state != 'Z' && state != 'X').then_some(pid)
    }

    fn token(&self) -> String {
        self.token.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Makes every token Keystone issued so far invalid (new fernet keys; Nova caches no
    /// validation), then gives the test a new one.
    pub fn revoke_tokens(&self) -> Result<()> {
        let d = self.dir.to_str().unwrap_or_default();
        run_script(&["revoke-tokens", d])?;
        let fresh = run_script(&["token", d])?.trim().to_string();
        if let Ok(mut t) = self.token.lock() {
            *t = fresh;
        }
        Ok(())
    }

    /// The HTTP status Nova answers `GET /os-services` with, given `token`.
    pub fn status_with_token(&self, token: &str) -> Result<u16> {
        let url = format!("{}/os-services", self.port("NOVA_URL")?);
        let req = ureq::http::Request::builder()
            .method("GET")
            .uri(&url)
            .header("X-Auth-Token", token)
            .body(String::new())?;
        Ok(self
            .agent
            .run(req)
            .with_context(|| format!("GET {url}"))?
            .status()
            .as_u16())
    }

    /// The test's current token.
    pub fn current_token(&self) -> String {
        self.token()
    }

    /// Maps new computes into the cell at once.
    pub fn discover(&self) -> Result<()> {
        run_script(&["discover", self.dir.to_str().unwrap_or_default()])?;
        Ok(())
    }

    fn call(
        &self,
        base_key: &str,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value> {
        let url = format!("{}{path}", self.port(base_key)?);
        let req = ureq::http::Request::builder()
            .method(method)
            .uri(&url)
            .header("X-Auth-Token", self.token())
            .header("OpenStack-API-Version", MICROVERSION)
            .header("Content-Type", "application/json")
            .body(body.map(Value::to_string).unwrap_or_default())?;
        let mut resp = self
            .agent
            .run(req)
            .with_context(|| format!("{method} {url}"))?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        ensure!(
            (200..300).contains(&status),
            "{method} {url}: HTTP {status}: {text}"
        );
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).with_context(|| format!("{method} {url}: {text}"))
    }

    /// A Nova request (compute microversion 2.79), its JSON answer.
    pub fn nova(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        self.call("NOVA_URL", method, path, body)
    }

    pub fn placement(&self, path: &str) -> Result<Value> {
        self.call("PLACEMENT_URL", "GET", path, None)
    }

    /// Nova's nova-compute service of `host`, if it has one.
    pub fn service(&self, host: &str) -> Result<Option<Value>> {
        let v = self.nova("GET", "/os-services?binary=nova-compute", None)?;
        Ok(v["services"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["host"] == host)
            .cloned())
    }

    /// Waits until Nova can place servers on each of `hosts`: its compute node is listed in
    /// os-hypervisors, mapped into the cell (discovered), and Placement holds its inventory.
    pub fn wait_schedulable(&self, hosts: &[String], timeout: Duration) -> Result<()> {
        let until = std::time::Instant::now() + timeout;
        loop {
            let hyp = self.nova("GET", "/os-hypervisors/detail", None)?;
            let listed = hosts.iter().all(|h| {
                hyp["hypervisors"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|x| x["service"]["host"] == h.as_str())
            });
            if listed {
                self.discover()?;
                let providers = self.placement("/resource_providers")?;
                let mut ready = true;
                for h in hosts {
                    let uuid = providers["resource_providers"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|p| p["name"] == h.as_str())
                        .and_then(|p| p["uuid"].as_str().map(str::to_string));
                    ready &= match uuid {
                        Some(u) => !self
                            .placement(&format!("/resource_providers/{u}/inventories"))?
                            ["inventories"]["VCPU"]
                            .is_null(),
                        None => false,
                    };
                }
                if ready {
                    return Ok(());
                }
            }
            if std::time::Instant::now() >= until {
                bail!("{hosts:?} are not all schedulable after {timeout:?}: {hyp}");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Disables `host`'s compute service directly through Nova (not through banyan).
    pub fn disable_service(&self, host: &str, reason: &str) -> Result<()> {
        let s = self
            .service(host)?
            .with_context(|| format!("Nova has no service on {host}"))?;
        let id = s["id"].as_str().unwrap_or_default();
        let body = serde_json::json!({"status": "disabled", "disabled_reason": reason});
        self.nova("PUT", &format!("/os-services/{id}"), Some(&body))?;
        Ok(())
    }

    /// Every server on `host`, every project's.
    pub fn servers_on(&self, host: &str) -> Result<Vec<Value>> {
        let v = self.nova(
            "GET",
            &format!("/servers/detail?all_tenants=1&host={host}"),
            None,
        )?;
        Ok(v["servers"].as_array().cloned().unwrap_or_default())
    }

    /// Boots one server on `host` directly through Nova (not through banyan); its id.
    pub fn boot_on(&self, host: &str, name: &str) -> Result<String> {
        let body = serde_json::json!({"server": {
            "name": name, "flavorRef": self.port("FLAVOR_ID")?, "imageRef": self.port("IMAGE_ID")?,
            "networks": "none", "host": host}});
        let v = self.nova("POST", "/servers", Some(&body))?;
        v["server"]["id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("no server id in {v}"))
    }

    /// Waits until every server on `host` is ACTIVE and there are `n` of them.
    pub fn wait_active(&self, host: &str, n: usize, timeout: Duration) -> Result<()> {
        let until = std::time::Instant::now() + timeout;
        loop {
            let s = self.servers_on(host)?;
            if s.len() == n && s.iter().all(|x| x["status"] == "ACTIVE") {
                return Ok(());
            }
            if std::time::Instant::now() >= until {
                bail!("{host} did not get {n} ACTIVE servers within {timeout:?}: {s:?}");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Waits until `host`'s compute service is `state` (`up`, `down`).
    pub fn wait_service(&self, host: &str, state: &str, timeout: Duration) -> Result<Value> {
        let until = std::time::Instant::now() + timeout;
        loop {
            let s = self.service(host)?;
            if let Some(s) = s.as_ref().filter(|s| s["state"] == state) {
                return Ok(s.clone());
            }
            if std::time::Instant::now() >= until {
                bail!("{host}'s nova-compute is not {state} after {timeout:?}: {s:?}");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Kills one control-plane service (`nova-api`, ...: DIR/run/NAME.pid) and its workers: it
    /// was started in a session of its own, so its process group is all of it.
    pub fn kill_service(&self, name: &str) -> Result<()> {
        let p = self.dir.join("run").join(format!("{name}.pid"));
        let pid: i32 = std::fs::read_to_string(&p)
            .with_context(|| format!("reading {}", p.display()))?
            .trim()
            .parse()
            .with_context(|| format!("{} holds no pid", p.display()))?;
        nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .with_context(|| format!("killing {name}'s process group {pid}"))?;
        Ok(())
    }
}

impl Drop for OpenStack {
    fn drop(&mut self) {
        if let Some(d) = self.dir.to_str() {
            if let Err(e) = run_script(&["down", d]) {
                eprintln!("stopping OpenStack: {e}");
            }
        }
    }
}
