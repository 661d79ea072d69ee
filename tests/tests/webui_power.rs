//! The web UI's Power page and the node page's power panel in headless Chromium, against a root
//! with real agents on test hosts and sushy-tools' Redfish emulator serving one system per node
//! (basic auth, TLS with a test CA) for three of the four nodes.
//!
//! What is asserted: without a token the page asks no BMC, a wrong token shows the root's refusal;
//! with the token the status table lists every node with its BMC state beside its agent's, and
//! the node without a BMC says so. Pressing Off on a filtered set runs a dry run whose preview
//! lists each node and what would be done while sushy sees no POST; the confirmation names the
//! set and its size; confirming powers the nodes off, the progress and the table follow live
//! (every node shown in progress, then Off) and the emulator's own state is Off for each. The
//! node page shows its node's state, "no BMC configured" for the node without one, and powers its
//! node on through the same preview and confirmation. The BMCs' changes take 1-11 s and the root
//! waits for the tree after an off: the test polls and asserts final states, never times.

use anyhow::{bail, ensure, Context, Result};
use banyan_agent::bmc::{self, PowerState};
use banyan_tests::bmc::{require, Scratch, Sushy, SushyOptions};
use banyan_tests::browser::{browser_programs, Browser};
use banyan_tests::cluster::with_cluster;
use banyan_tests::support::url_encode;
use banyan_tests::testnet::Testnet;
use serde_json::{json, Value};
use std::fs;
use std::time::{Duration, Instant};

const FORM: Duration = Duration::from_secs(45);
/// A real power change: sushy applies it 1-11 s after the request, then the root gives a
/// powered-off node's agent 15 s to leave the tree (these agents stay: their power is emulated).
const CHANGE: Duration = Duration::from_secs(120);
/// One driver call to the emulator.
const CALL: Duration = Duration::from_secs(15);

/// The cells' texts of the row of `key` in table `css`, or null.
const ROW_CELLS: &str = "const tr = Array.from(document.querySelectorAll(arguments[0] + ' tbody tr[data-key]')).find(tr => tr.getAttribute('data-key') === arguments[1]);
     return tr ? Array.from(tr.cells).map(td => td.textContent) : null";

/// Every row of table `css` as `{key: [cells]}`.
const TABLE: &str = "const o = {}; for (const tr of document.querySelectorAll(arguments[0] + ' tbody tr[data-key]'))
       o[tr.getAttribute('data-key')] = Array.from(tr.cells).map(td => td.textContent);
     return o";

/// Whether the element `#id` is shown (it and none of its ancestors hidden).
const SHOWN: &str =
    "const e = document.getElementById(arguments[0]); return !!e && !e.closest('[hidden]')";

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

/// Like [`Browser::wait_js`], for `limit`: a real power change outlasts its 30 s.
fn wait_long(
    b: &Browser,
    what: &str,
    limit: Duration,
    script: &str,
    args: Vec<Value>,
) -> Result<Value> {
    let deadline = Instant::now() + limit;
    loop {
        let last = b.js(script, args.clone())?;
        if !last.is_null() && last != Value::Bool(false) {
            return Ok(last);
        }
        if Instant::now() > deadline {
            let shown = text_of(b, "view").unwrap_or_default();
            bail!(
                "the page did not show {what} within {limit:?} (last: {last}); it shows:\n{shown}"
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The POSTs sushy was sent (resets and boot overrides): a BMC call that changes something.
fn posts(sushy: &Sushy) -> Vec<String> {
    sushy
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("POST") || r.starts_with("PATCH"))
        .collect()
}

/// What sushy itself says of system `node`, asked through the driver, not through the root.
fn emulated_power(rt: &tokio::runtime::Runtime, sushy: &Sushy, node: &str) -> Result<PowerState> {
    let mut ep = sushy.endpoint(node, CALL)?;
    ep.system_id = sushy
        .systems
        .iter()
        .find(|(name, _)| name == node)
        .map(|(_, uuid)| uuid.clone());
    let bmc = bmc::connect(ep)?;
    rt.block_on(bmc.power_state())
        .with_context(|| format!("asking sushy for {node}'s power"))
}

#[test]
fn power_page_previews_a_dry_run_then_powers_nodes_off_live_in_chromium() -> Result<()> {
    if !Testnet::require()? {
        return Ok(());
    }
    let Some(tools) = require()? else {
        return Ok(());
    };
    let Some((chromium, driver)) = browser_programs()? else {
        return Ok(());
    };
    with_cluster(4, |c| {
        let names = c.names();
        c.wait_healthy(&names, FORM)?;
        let admin = c.admin_token().to_string();
        let dir = Scratch::new("webui-power")?;
        // Three nodes with a BMC, all powered on; the fourth has none.
        let with_bmc: Vec<String> = names[..3].to_vec();
        let bare = &names[3];
        let mut opts = SushyOptions::new(&with_bmc);
        for s in &mut opts.systems {
            s.power = "On";
        }
        let sushy = Sushy::start(&tools, &dir.path().join("sushy"), &opts)?;
        let ca = sushy
            .ca_file
            .clone()
            .context("a TLS emulator has a CA file")?;
        fs::write(
            c.root_state().join("root.toml"),
            format!(
                "[[bmc]]\nnodes = \"{}\"\nprotocol = \"redfish\"\naddress = \"127.0.0.1\"\nport = {}\n\
                 user = \"{}\"\npassword_file = \"{}\"\nca_file = \"{}\"\nsystem_id = \"{{name}}\"\n",
                with_bmc.join(","),
                sushy.addr.port(),
                sushy.user,
                sushy.password_file.display(),
                ca.display()
            ),
        )?;
        let set = format!("{}[1-3]", c.prefix());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let b = Browser::start(c.http_addr(), &chromium, &driver)?;

        // ----- No token: every node listed, no BMC asked
        b.open("#/power")?;
        b.wait_js(
            "every node, with no BMC asked",
            "return document.querySelectorAll('#power-table tbody tr[data-key]').length === 4
               && document.getElementById('power-asked').textContent.includes('no token')",
            vec![],
        )?;
        for (key, cells) in table(&b, "#power-table")? {
            ensure!(cells[1] == "–", "{key} was asked without a token: {cells}");
        }
        b.screenshot("power-no-token")?;

        // ----- A wrong token: the root's refusal, as it said it
        b.fill("#admin-token", "not-the-token")?;
        b.click("#token-keep")?;
        let refused = b.wait_js(
            "the refusal of a wrong token",
            "const t = document.getElementById('power-error').textContent; return t.includes('403') ? t : null",
            vec![],
        )?;
        ensure!(
            refused
                .as_str()
                .is_some_and(|t| t.starts_with("refused (403")),
            "{refused}"
        );
        b.check_clean("power with a wrong token", &["/actions"])?;

        // ----- The token: each node's BMC state beside its agent's
        b.fill("#admin-token", &admin)?;
        b.click("#token-keep")?;
        let rows = b.wait_js(
            "every BMC answered",
            "if (!document.getElementById('power-asked').textContent.startsWith('BMC states')) return null;
             const o = {}; for (const tr of document.querySelectorAll('#power-table tbody tr[data-key]'))
               o[tr.getAttribute('data-key')] = Array.from(tr.cells).map(td => td.textContent);
             return Object.keys(o).length === 4 ? o : null",
            vec![],
        )?;
        for n in &with_bmc {
            ensure!(rows[n] == json!([n, "On", "up", ""]), "{n}: {}", rows[n]);
        }
        let cells = &rows[bare.as_str()];
        ensure!(
            cells[1] == "no BMC"
                && cells[2] == "up"
                && cells[3]
                    .as_str()
                    .is_some_and(|t| t.starts_with(&format!("no BMC configured for {bare}"))),
            "{bare}: {cells}"
        );
        ensure!(
            text_of(&b, "power-error")?.is_empty(),
            "an error is still shown"
        );
        b.screenshot("power-status")?;

        // ----- The three nodes with a BMC
        let first_ask = b.js(
            "return document.getElementById('power-asked').getAttribute('data-action')",
            vec![],
        )?;
        b.fill("#power-filter", &set)?;
        b.wait_js(
            "the filtered set, asked again",
            "const k = Array.from(document.querySelectorAll('#power-table tbody tr[data-key]')).map(t => t.getAttribute('data-key'));
             const a = document.getElementById('power-asked');
             return k.length === 3 && a.textContent.startsWith('BMC states') && a.getAttribute('data-action') !== arguments[0]",
            vec![first_ask],
        )?;
        let rows = table(&b, "#power-table")?;
        for n in &with_bmc {
            ensure!(rows[n] == json!([n, "On", "up", ""]), "{n}: {}", rows[n]);
        }

        // ----- Off, forced: a dry run first, whose preview calls no BMC
        let before = posts(&sushy);
        b.click("#power-force")?;
        b.click("#power-off")?;
        b.wait_js("the confirmation", SHOWN, vec![json!("power-confirm")])?;
        let preview = table(&b, "#power-preview-table")?;
        ensure!(preview.len() == 3, "the preview lists {preview:?}");
        for n in &with_bmc {
            let cells = &preview[n.as_str()];
            ensure!(
                cells[1] == "ok"
                    && cells[2].as_str().is_some_and(
                        |t| t.starts_with("would cut the power (ForceOff) through redfish at ")
                    ),
                "{n}'s preview: {cells}"
            );
        }
        let confirm = text_of(&b, "power-confirm")?;
        ensure!(
            confirm == format!("Power off {set} (3 nodes)"),
            "the confirmation says {confirm:?}"
        );
        ensure!(
            !b.js(SHOWN, vec![json!("power-progress")])?
                .as_bool()
                .unwrap_or(true),
            "something runs before the confirmation"
        );
        ensure!(
            posts(&sushy) == before,
            "the dry run called a BMC: {:?}",
            posts(&sushy)
        );
        for n in &with_bmc {
            ensure!(
                emulated_power(&rt, &sushy, n)? == PowerState::On,
                "{n} changed in a dry run"
            );
        }
        b.screenshot("power-preview")?;

        // ----- Confirmed: progress per node, live, then every node Off
        b.click("#power-confirm")?;
        b.wait_js(
            "every node in progress, in the progress table and in the status table",
            "const p = {}; for (const tr of document.querySelectorAll('#power-progress-table tbody tr[data-key]'))
               p[tr.getAttribute('data-key')] = tr.cells[1].textContent;
             const s = Array.from(document.querySelectorAll('#power-table tbody tr[data-key]')).map(tr => tr.cells[3].textContent);
             return Object.keys(p).length === 3 && Object.values(p).every(x => x === 'pending')
               && s.length === 3 && s.every(x => x === 'power off in progress…')",
            vec![],
        )?;
        b.screenshot("power-running")?;
        let mut seen_off = Vec::new();
        let deadline = Instant::now() + CHANGE;
        let last_ask = b.js(
            "return document.getElementById('power-asked').getAttribute('data-action')",
            vec![],
        )?;
        // Rows turn Off as their nodes' results come; the action's end asks the BMCs again.
        loop {
            let rows = table(&b, "#power-table")?;
            for n in &with_bmc {
                if rows[n.as_str()][1] == "Off" && !seen_off.contains(n) {
                    seen_off.push(n.clone());
                }
            }
            let done = b.js(
                "const s = document.querySelector('#power-progress-state .pill');
                 const a = document.getElementById('power-asked');
                 return !!s && s.textContent === 'done' && a.textContent.startsWith('BMC states') && a.getAttribute('data-action') !== arguments[0]",
                vec![last_ask.clone()],
            )?;
            if done == json!(true) {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "the power off did not end within {CHANGE:?}; the page shows:\n{}",
                    text_of(&b, "view")?
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!("rows turned Off in this order: {seen_off:?}");
        ensure!(
            seen_off.len() == 3,
            "not every row was seen Off: {seen_off:?}"
        );
        let progress = table(&b, "#power-progress-table")?;
        for n in &with_bmc {
            let cells = &progress[n.as_str()];
            ensure!(
                cells[1] == "ok"
                    && cells[2]
                        .as_str()
                        .is_some_and(|t| t.starts_with("powered off (forced)")),
                "{n}'s result: {cells}"
            );
        }
        // The status asked again at the end: Off for each, the agents still up (their power is
        // only emulated), which the root points out.
        let rows = table(&b, "#power-table")?;
        for n in &with_bmc {
            let cells = &rows[n.as_str()];
            ensure!(
                cells[1] == "Off"
                    && cells[2] == "up"
                    && cells[3].as_str().is_some_and(|t| !t.is_empty()),
                "{n}: {cells}"
            );
        }
        let msg = text_of(&b, "power-msg")?;
        ensure!(msg == format!("Power off {set}: done, 3 ok"), "{msg:?}");
        // Exactly one reset per node reached the BMC, and the emulator's state is Off.
        let resets: Vec<String> = posts(&sushy)
            .into_iter()
            .skip(before.len())
            .filter(|r| r.contains("ComputerSystem.Reset"))
            .collect();
        ensure!(resets.len() == 3, "resets sent: {resets:?}");
        for n in &with_bmc {
            ensure!(
                emulated_power(&rt, &sushy, n)? == PowerState::Off,
                "{n} is not Off in the emulator"
            );
        }
        b.screenshot("power-done")?;
        b.check_clean("power", &[])?;
        b.check_no_injection("power")?;

        // ----- The node page: the node's state, and the same menu for it alone
        let one = &with_bmc[0];
        b.open(&format!("#/node/{}", url_encode(one)))?;
        b.wait_js(
            "the node's BMC state",
            "return document.getElementById('node-power').textContent === 'Off'",
            vec![],
        )?;
        b.wait_js("its power menu", SHOWN, vec![json!("power-on")])?;
        let before = posts(&sushy);
        b.click("#power-on")?;
        b.wait_js("the confirmation", SHOWN, vec![json!("power-confirm")])?;
        let preview = table(&b, "#power-preview-table")?;
        ensure!(
            preview.len() == 1
                && preview[one.as_str()][2]
                    .as_str()
                    .is_some_and(|t| t.starts_with("would power on through redfish at ")),
            "{preview:?}"
        );
        ensure!(
            text_of(&b, "power-confirm")? == format!("Power on {one} (1 node)"),
            "{}",
            text_of(&b, "power-confirm")?
        );
        ensure!(posts(&sushy) == before, "the dry run called the BMC");
        b.screenshot("node-power-preview")?;
        b.click("#power-confirm")?;
        wait_long(
            &b,
            "the node powered on, asked again",
            CHANGE,
            "const s = document.querySelector('#power-progress-state .pill');
             return !!s && s.textContent === 'done' && document.getElementById('node-power').textContent === 'On'
               && document.getElementById('node-power-note').textContent === ''",
            vec![],
        )?;
        let cells = b.js(ROW_CELLS, vec![json!("#power-progress-table"), json!(one)])?;
        ensure!(
            cells[1] == "ok"
                && cells[2]
                    .as_str()
                    .is_some_and(|t| t.starts_with("powered on")),
            "{cells}"
        );
        ensure!(
            emulated_power(&rt, &sushy, one)? == PowerState::On,
            "{one} is not On in the emulator"
        );
        b.screenshot("node-power")?;
        b.check_clean("node power", &[])?;

        // ----- A node without a BMC: said plainly, and no menu
        b.open(&format!("#/node/{}", url_encode(bare)))?;
        b.wait_js(
            "no BMC configured",
            "return document.getElementById('node-power').textContent === 'no BMC configured'",
            vec![],
        )?;
        let note = text_of(&b, "node-power-note")?;
        ensure!(
            note.contains("root.toml"),
            "the reason names the file: {note:?}"
        );
        ensure!(
            b.js(SHOWN, vec![json!("power-on")])? == json!(false),
            "a power menu for a node without a BMC"
        );
        b.screenshot("node-no-bmc")?;
        b.check_clean("node without a BMC", &[])?;
        Ok(())
    })
}
