//! The web UI's Cloud page (OpenStack hypervisors) and the node page's cloud panel in headless
//! Chromium, against a root with two real agents on test hosts, each running a real nova-compute
//! (fake virt driver, `host = NODE`) as a banyan service unit, and a real Keystone + Placement +
//! Nova run by `scripts/lib/openstack`.
//!
//! What is asserted, against the page and against the test's own view of Nova (plain HTTP with its
//! own token, not banyan's client) and of the processes:
//! - with the token, the status table (an empty filter: every node of the cluster) lists both
//!   nodes, and while no compute runs each row carries Nova's reason (no such compute host);
//! - Enable on the filter: a dry run whose preview lists both nodes with what would be done while
//!   nothing starts and Nova knows no host; the confirmation names the folded set and its size;
//!   confirmed, the progress shows each node's live lines, and the table ends with both rows
//!   Runs VMs? yes / Alive? yes (Nova: enabled and up, each compute running);
//! - a server booted on the first host shows in its row (#VMs 1, its name); the name is markup,
//!   shown as text there, in the preview and in the progress (no element made, no script run);
//! - Disable on the selected first row (VM timeout 60 s): the preview lists that node alone with
//!   its `[DRY ]` lines and summary, and Nova is unchanged (service enabled, the server there, the
//!   compute's pid the same); confirmed, the progress ends with the drain's lines and summary, the
//!   row ends Runs VMs? no (with the reason) / Alive? no / daemons stopped / no VM, the other row
//!   untouched; Nova shows the service disabled (reason naming the operator), then down, no
//!   server on the host, and the compute process is gone;
//! - Enable on the same row: enabled and up in Nova again, compute running, row yes / yes;
//! - the second node's page shows its cloud panel with its row.
//!
//! Every wait is for a state, with generous named liveness bounds; no time is asserted.

use anyhow::{bail, ensure, Context, Result};
use banyan_tests::browser::{browser_programs, Browser};
use banyan_tests::cluster::{Cluster, ClusterOptions};
use banyan_tests::openstack::{compute_agent_config, OpenStack};
use banyan_tests::support::url_encode;
use banyan_tests::testnet::Testnet;
use serde_json::{json, Value};
use std::fs;
use std::time::{Duration, Instant};

const FORM: Duration = Duration::from_secs(45);
/// An enable waits for Nova to see the started compute up (5-12 s, more on a loaded machine;
/// the root gives it `up_timeout`, 60 s here); a disable deletes a server and stops the compute
/// (1-7 s). Then the page asks the status again.
const CHANGE: Duration = Duration::from_secs(150);
/// A stopped compute is reported down after service_down_time (6 s).
const NOVA_SEES: Duration = Duration::from_secs(60);
/// Boot to ACTIVE (1-2 s on an idle machine).
const ACTIVE: Duration = Duration::from_secs(90);

/// The server booted on the first host: its name is markup, which the page must show as text.
const VM: &str = "webui-vm<img id=injected src=x onerror=window.pwned=1>";

fn port_base() -> u16 {
    // Nine ports from the base, spread by pid so that two runs on one machine do not collide:
    // 28000-30988, apart from tests/tests/hv.rs's 20000-27988 and below the ephemeral ports
    // (32768 up) that the clusters' own free ports come from.
    28_000 + u16::try_from(std::process::id() % 150).unwrap_or(0) * 20
}

/// Every row of table `css` as `{key: [cells' text]}`.
const TABLE: &str = "const o = {}; for (const tr of document.querySelectorAll(arguments[0] + ' tbody tr[data-key]'))
       o[tr.getAttribute('data-key')] = Array.from(tr.cells).map(td => td.textContent);
     return o";

/// Whether the element `#id` is shown (it and none of its ancestors hidden).
const SHOWN: &str =
    "const e = document.getElementById(arguments[0]); return !!e && !e.closest('[hidden]')";

/// The progress box's action state, once it is shown (`running`, `done`, ...).
const PROGRESS_STATE: &str = "const s = document.querySelector('#cloud-progress-state .pill');
     return s && !document.getElementById('cloud-progress').hidden ? s.textContent : null";

// The status table's columns.
const HYPERVISOR: usize = 2;
const RUNS_VMS: usize = 3;
const ALIVE: usize = 4;
const NOVA: usize = 5;
const AGENT: usize = 6;
const DAEMONS: usize = 7;
const NVMS: usize = 8;
const VMS: usize = 9;

fn table(b: &Browser, css: &str) -> Result<serde_json::Map<String, Value>> {
    match b.js(TABLE, vec![json!(css)])? {
        Value::Object(m) => Ok(m),
        v => bail!("{css}: not a table: {v}"),
    }
}

fn text_of(b: &Browser, id: &str) -> Result<String> {
    let v = b.js(
        "const e = document.getElementById(arguments[0]); return e ? e.textContent : null",
        vec![json!(id)],
    )?;
    v.as_str()
        .map(str::to_string)
        .with_context(|| format!("no #{id} on the page"))
}

fn cell(cells: &Value, i: usize) -> &str {
    cells[i].as_str().unwrap_or_default()
}

fn shown(b: &Browser, id: &str) -> Result<bool> {
    Ok(b.js(SHOWN, vec![json!(id)])? == json!(true))
}

/// The status row of `node` as the page shows it, once `want(cells)` holds, within `limit`.
fn wait_row(
    b: &Browser,
    what: &str,
    node: &str,
    limit: Duration,
    want: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let deadline = Instant::now() + limit;
    loop {
        let rows = table(b, "#cloud-table")?;
        if let Some(cells) = rows.get(node) {
            if want(cells) {
                return Ok(cells.clone());
            }
        }
        if Instant::now() > deadline {
            bail!(
                "the page did not show {what} within {limit:?}; rows: {rows:?}; it shows:\n{}",
                text_of(b, "view").unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Follows a real action's progress on the page until its box says `done` and every node of
/// `nodes` has a row there; whether a node was seen in progress with a live line.
fn follow_progress(b: &Browser, nodes: &[&str], limit: Duration) -> Result<Vec<String>> {
    let deadline = Instant::now() + limit;
    let mut live = Vec::new();
    loop {
        let rows = table(b, "#cloud-progress-table")?;
        for n in nodes {
            if let Some(cells) = rows.get(*n) {
                if cell(cells, 1) == "pending"
                    && cell(cells, 2).starts_with("[")
                    && !live.contains(&n.to_string())
                {
                    eprintln!("{n} in progress: {}", cell(cells, 2));
                    live.push(n.to_string());
                }
            }
        }
        let state = b.js(PROGRESS_STATE, vec![])?;
        if state == json!("done") && nodes.iter().all(|n| rows.contains_key(*n)) {
            return Ok(live);
        }
        if Instant::now() > deadline {
            bail!(
                "the action did not end within {limit:?} (state {state}); the page shows:\n{}",
                text_of(b, "view").unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn cloud_page_enables_and_drains_hypervisors_through_a_dry_run_in_chromium() -> Result<()> {
    if !Testnet::require()? {
        return Ok(());
    }
    let Some((chromium, driver)) = browser_programs()? else {
        return Ok(());
    };
    let opts = ClusterOptions {
        agent_config: Some(compute_agent_config()),
        ..ClusterOptions::default()
    };
    Cluster::with_options(2, opts, |c| {
        let names = c.names();
        c.wait_healthy(&names, FORM)?;
        let Some(os) = OpenStack::up(&c.dir().join("openstack"), port_base())? else {
            return Ok(());
        };
        for n in &names {
            os.compute_conf(n)?;
        }
        fs::write(
            c.root_state().join("root.toml"),
            format!(
                "[openstack]\nopenrc = \"{}\"\nup_timeout = \"60s\"\n",
                os.dir().join("admin-openrc").display()
            ),
        )?;
        let all = c.all_nodes();
        let (h1, h2) = (names[0].as_str(), names[1].as_str());
        let admin = c.admin_token().to_string();
        let b = Browser::start(c.http_addr(), &chromium, &driver)?;

        // ----- No token: nothing asked
        b.open("#/cloud")?;
        b.wait_js(
            "that nothing was asked without a token",
            "return document.getElementById('cloud-asked').textContent.includes('no token')",
            vec![],
        )?;
        ensure!(
            b.js(
                "const a = document.querySelector('#nav a.active'); return a ? a.getAttribute('href') : null",
                vec![]
            )? == json!("#/cloud"),
            "the nav does not show the Cloud page as the current one"
        );
        ensure!(
            b.js(
                "return document.getElementById('cloud-filter').value",
                vec![]
            )? == json!(""),
            "the filter does not default to every node (empty)"
        );

        let actions = c.http_get("/actions")?;
        ensure!(
            !actions
                .as_array()
                .into_iter()
                .flatten()
                .any(|a| a["kind"] == "hv"),
            "an hv action was sent without a token: {actions}"
        );

        // ----- The token: both nodes, unknown to Nova (no compute runs yet), with the reason
        b.fill("#admin-token", &admin)?;
        b.click("#token-keep")?;
        for n in [h1, h2] {
            let cells = wait_row(&b, &format!("{n} unknown to Nova"), n, CHANGE, |c| {
                cell(c, VMS).contains("Nova has no nova-compute service on host")
            })?;
            ensure!(
                cell(&cells, VMS).contains(&format!("on host \"{n}\"")),
                "{n}: {cells}"
            );
            ensure!(cell(&cells, RUNS_VMS) == "–", "{n}: {cells}");
            ensure!(cell(&cells, AGENT) == "up", "{n}: {cells}");
        }
        ensure!(
            table(&b, "#cloud-table")?.len() == 2,
            "the table is not both nodes"
        );
        b.screenshot("cloud-unknown")?;

        // ----- Enable the filter's set: a dry run first, which starts nothing
        b.click("#cloud-enable")?;
        wait_shown(&b, "the enable confirmation", "cloud-confirm", CHANGE)?;
        let preview = table(&b, "#cloud-preview-table")?;
        ensure!(preview.len() == 2, "the preview lists {preview:?}");
        for n in [h1, h2] {
            let cells = &preview[n];
            ensure!(
                cell(cells, 1) == "ok"
                    && cell(cells, 2)
                        .contains(&format!("[DRY ] Starting OpenStack daemons on {n}"))
                    && cell(cells, 2).contains(&format!(
                        "would start the daemons, wait for Nova to see {n} up, and enable it"
                    )),
                "{n}'s preview: {cells}"
            );
            ensure!(
                os.compute_pid(n).is_none(),
                "the dry run started {n}'s compute"
            );
            ensure!(os.service(n)?.is_none(), "Nova knows {n} after a dry run");
        }
        let confirm = text_of(&b, "cloud-confirm")?;
        ensure!(
            confirm == format!("Enable {all} (2 nodes)"),
            "the confirmation says {confirm:?}"
        );
        ensure!(
            !shown(&b, "cloud-progress")?,
            "something runs before the confirmation"
        );
        b.screenshot("cloud-enable-preview")?;

        // ----- Confirmed: each node's lines live, then both rows yes / yes
        b.click("#cloud-confirm")?;
        let live = follow_progress(&b, &[h1, h2], CHANGE)?;
        // Nova takes seconds to see a started compute up: the page shows the node in progress,
        // its daemons started, meanwhile.
        ensure!(
            live.len() == 2,
            "no live progress was seen for every node: {live:?}"
        );
        let progress = table(&b, "#cloud-progress-table")?;
        for n in [h1, h2] {
            let cells = &progress[n];
            ensure!(
                cell(cells, 1) == "ok"
                    && cell(cells, 2)
                        .contains(&format!("[ OK ] Starting OpenStack daemons on {n}"))
                    && cell(cells, 2).contains(&format!("enabled and up ({n})")),
                "{n}'s result: {cells}"
            );
        }
        for n in [h1, h2] {
            let cells = wait_row(&b, &format!("{n} enabled and alive"), n, CHANGE, |c| {
                cell(c, RUNS_VMS) == "yes" && cell(c, ALIVE) == "yes"
            })?;
            ensure!(
                cell(&cells, HYPERVISOR) == n
                    && cell(&cells, NOVA) == "up"
                    && cell(&cells, DAEMONS) == "running"
                    && cell(&cells, NVMS) == "0",
                "{n}: {cells}"
            );
            let s = os.service(n)?.context("no service after enable")?;
            ensure!(s["status"] == "enabled" && s["state"] == "up", "{n}: {s}");
            ensure!(os.compute_pid(n).is_some(), "{n}'s compute does not run");
        }
        let msg = text_of(&b, "cloud-msg")?;
        ensure!(msg == format!("Enable {all}: done, 2 ok"), "{msg:?}");
        b.screenshot("cloud-enabled")?;

        // ----- A server on h1, shown in its row
        os.discover()?;
        os.boot_on(h1, VM)?;
        os.wait_active(h1, 1, ACTIVE)?;
        b.click("#cloud-refresh")?;
        wait_row(&b, "the server on h1", h1, CHANGE, |c| {
            cell(c, NVMS) == "1" && cell(c, VMS) == format!("{VM} ACTIVE")
        })?;

        // ----- Disable the selected row: a dry run, Nova unchanged
        b.click(&format!(
            "#cloud-table input.cloud-select[data-node=\"{h1}\"]"
        ))?;
        let target = text_of(&b, "cloud-target")?;
        ensure!(
            target == format!("Acts on the selected rows: {h1} (1 node)"),
            "{target:?}"
        );
        b.fill("#cloud-vm-timeout", "60")?;
        let pid = os.compute_pid(h1).context("h1's compute does not run")?;
        b.click("#cloud-disable")?;
        wait_shown(&b, "the disable confirmation", "cloud-confirm", CHANGE)?;
        let preview = table(&b, "#cloud-preview-table")?;
        ensure!(
            preview.len() == 1 && preview.contains_key(h1),
            "the preview lists {preview:?}"
        );
        let cells = &preview[h1];
        let what = cell(cells, 2);
        ensure!(
            cell(cells, 1) == "ok"
                && what.contains(&format!("[DRY ] Disabling hypervisor {h1}"))
                && what.contains(&format!("[DRY ] would delete 1 server(s): {VM} ("))
                && what.contains(&format!(
                    "would disable {h1}, delete 1 server(s), stop the daemons"
                )),
            "h1's preview: {cells}"
        );
        let title = text_of(&b, "cloud-preview-title")?;
        ensure!(title.contains("VM timeout"), "{title:?}");
        ensure!(
            text_of(&b, "cloud-confirm")? == format!("Disable {h1} (1 node)"),
            "the confirmation says {:?}",
            text_of(&b, "cloud-confirm")?
        );
        let s = os.service(h1)?.context("no service")?;
        ensure!(s["status"] == "enabled", "the dry run changed Nova: {s}");
        ensure!(
            os.servers_on(h1)?.len() == 1,
            "the dry run deleted a server"
        );
        ensure!(
            os.compute_pid(h1) == Some(pid),
            "the dry run touched h1's compute"
        );
        ensure!(
            !shown(&b, "cloud-progress")?,
            "something runs before the confirmation"
        );
        b.check_no_injection("the disable preview")?;
        b.screenshot("cloud-disable-preview")?;

        // ----- Confirmed: the drain's progress, then the row disabled and stopped
        b.click("#cloud-confirm")?;
        let live = follow_progress(&b, &[h1], CHANGE)?;
        eprintln!("disable seen in progress for {live:?}");
        let progress = table(&b, "#cloud-progress-table")?;
        ensure!(progress.len() == 1, "the progress lists {progress:?}");
        let cells = &progress[h1];
        let said = cell(cells, 2);
        ensure!(
            cell(cells, 1) == "ok"
                && said.contains(&format!("[ OK ] Disabling hypervisor {h1}"))
                && said.contains(&format!("[ OK ] Stopping OpenStack daemons on {h1}"))
                && said.contains("disabled, 1 server(s) deleted, daemons stopped"),
            "h1's result: {cells}"
        );
        let cells = wait_row(&b, "h1 disabled and stopped", h1, CHANGE, |c| {
            cell(c, RUNS_VMS).starts_with("no")
                && cell(c, ALIVE) == "no"
                && cell(c, DAEMONS) == "stopped"
                && cell(c, NVMS) == "0"
        })?;
        ensure!(
            cell(&cells, RUNS_VMS).contains("disabled by "),
            "the row does not say why: {cells}"
        );
        // The other row is untouched (Alive? follows Nova's reports, which a loaded machine can
        // delay past service_down_time for a moment: waited for, not read once).
        wait_row(&b, "h2 still enabled and alive", h2, CHANGE, |c| {
            cell(c, RUNS_VMS) == "yes" && cell(c, ALIVE) == "yes" && cell(c, DAEMONS) == "running"
        })?;
        ensure!(os.compute_pid(h1).is_none(), "h1's compute still runs");
        ensure!(os.servers_on(h1)?.is_empty(), "servers left on h1");
        let s = os.wait_service(h1, "down", NOVA_SEES)?;
        ensure!(s["status"] == "disabled", "{s}");
        let why = s["disabled_reason"].as_str().unwrap_or_default();
        ensure!(
            why.starts_with("disabled by ") && why.contains(" with banyan at "),
            "{s}"
        );
        let msg = text_of(&b, "cloud-msg")?;
        ensure!(msg == format!("Disable {h1}: done, 1 ok"), "{msg:?}");
        b.check_no_injection("the disable's progress")?;
        b.screenshot("cloud-disabled")?;

        // ----- Enable it again through the page
        b.click("#cloud-enable")?;
        wait_shown(&b, "the enable confirmation", "cloud-confirm", CHANGE)?;
        let preview = table(&b, "#cloud-preview-table")?;
        ensure!(
            preview.len() == 1 && preview.contains_key(h1),
            "the preview lists {preview:?}"
        );
        ensure!(
            text_of(&b, "cloud-confirm")? == format!("Enable {h1} (1 node)"),
            "the confirmation says {:?}",
            text_of(&b, "cloud-confirm")?
        );
        ensure!(
            os.compute_pid(h1).is_none(),
            "the dry run started h1's compute"
        );
        b.click("#cloud-confirm")?;
        follow_progress(&b, &[h1], CHANGE)?;
        let cells = &table(&b, "#cloud-progress-table")?[h1];
        ensure!(
            cell(cells, 1) == "ok"
                && cell(cells, 2).contains(&format!("[ OK ] Enabling hypervisor {h1}")),
            "h1's result: {cells}"
        );
        wait_row(&b, "h1 enabled and alive again", h1, CHANGE, |c| {
            cell(c, RUNS_VMS) == "yes" && cell(c, ALIVE) == "yes" && cell(c, DAEMONS) == "running"
        })?;
        let s = os.wait_service(h1, "up", NOVA_SEES)?;
        ensure!(s["status"] == "enabled", "{s}");
        ensure!(os.compute_pid(h1).is_some(), "h1's compute does not run");
        b.screenshot("cloud-enabled-again")?;
        b.check_clean("cloud", &[])?;

        // ----- The node page's cloud panel
        b.open(&format!("#/node/{}", url_encode(h2)))?;
        wait_shown(&b, "h2's cloud panel", "node-cloud", CHANGE)?;
        let kv = text_of(&b, "node-cloud-kv")?;
        ensure!(
            kv.contains(&format!("hypervisor{h2}"))
                && kv.contains("runs VMs?yes")
                && kv.contains("alive?yes"),
            "h2's cloud panel: {kv:?}"
        );
        b.screenshot("node-cloud")?;
        b.check_clean("node cloud panel", &[])?;
        Ok(())
    })
}

fn wait_shown(b: &Browser, what: &str, id: &str, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !shown(b, id)? {
        if Instant::now() > deadline {
            bail!(
                "the page did not show {what} within {limit:?}; it shows:\n{}",
                text_of(b, "view").unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}
