//! The web UI's Guests page and the node page's guests panel in headless Chromium, against a root
//! with real agents on two test hosts, each running two real QEMU guests (TCG) launched with the
//! `banyan` CLI from the test guest of `scripts/lib/guest image`.
//!
//! What is asserted, against the page and against `banyan vm list` and the processes:
//! - without a token the page lists nothing and says why; a wrong token shows the root's refusal
//!   in one line;
//! - with the token the table lists exactly the four launched guests (`HOST:NAME`), each running,
//!   with its CPUs, memory, accelerator and a TTL left, and no agent (they do not join);
//! - the second host's node page lists its two guests, whose links open their Guests page entry:
//!   that guest's console log tail, which ends up showing the guest's boot marker, as text only;
//! - Stop on one row: a dry run whose preview lists that guest alone with what would be done
//!   while it keeps running; the confirmation names it; confirmed, the progress ends ok
//!   (`powered off`) and the row leaves the table;
//! - the three others selected and stopped (two actions: the hosts have different names left):
//!   the preview and the confirmation name all three, the table ends empty;
//! - `banyan vm list` lists no guest and no QEMU process of the cluster is left;
//! - the log of a guest that is no longer there fails in one line naming its host, and a host cut
//!   off the network is shown unreachable in one line (the page's list gives a host 20 s).
//!
//! Every wait is for a state, with generous named liveness bounds; no time is asserted.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use banyan_tests::browser::{browser_programs, Browser};
use banyan_tests::cluster::{banyan_cli, with_cluster, Cluster};
use banyan_tests::guest::{image, qemus_under, Reaper, MARKER};
use banyan_tests::support::url_encode;
use banyan_tests::testnet::Testnet;
use serde_json::{json, Value};

/// Agents joining on a busy machine.
const FORM: Duration = Duration::from_secs(45);
/// Four TCG guests booting at once on two cores beside Chromium (one boots in 5-8 s alone).
const BOOT: Duration = Duration::from_secs(180);
/// A stop: ACPI power off (within a second for this guest), then the page lists again.
const STOP: Duration = Duration::from_secs(120);

/// Every row of table `css` as `{key: [cells' text]}`.
const TABLE: &str = "const o = {}; for (const tr of document.querySelectorAll(arguments[0] + ' tbody tr[data-key]'))
       o[tr.getAttribute('data-key')] = Array.from(tr.cells).map(td => td.textContent);
     return o";

/// Whether the element `#id` is shown (it and none of its ancestors hidden).
const SHOWN: &str =
    "const e = document.getElementById(arguments[0]); return !!e && !e.closest('[hidden]')";

/// The stop progress box's state once it is shown (`running`, `done`, ...), as a JS function.
const PROGRESS_STATE_FN: &str =
    "() => { const s = document.querySelector('#guests-stop-progress-state .pill');
     return s && !document.getElementById('guests-stop-progress').hidden ? s.textContent : null; }";

// The Guests table's columns (the first is the checkbox).
const HOST: usize = 1;
const NAME: usize = 2;
const STATE: usize = 3;
const CPUS: usize = 4;
const MEMORY: usize = 5;
const ACCEL: usize = 6;
const TTL: usize = 8;
const AGENT: usize = 9;

fn cli(c: &Cluster, args: &[&str]) -> Result<String> {
    let (out, ok) = banyan_cli(c, args)?;
    ensure!(ok, "banyan {}: failed:\n{out}", args.join(" "));
    Ok(out)
}

/// `banyan vm list --json`: every guest as `HOST:NAME STATE`, sorted.
fn listed(c: &Cluster) -> Result<Vec<String>> {
    let out = cli(
        c,
        &[
            "--token",
            c.admin_token(),
            "vm",
            "list",
            &c.all_nodes(),
            "--json",
        ],
    )?;
    let start = out.find('{').context("no JSON in vm list")?;
    let v: Value = serde_json::Deserializer::from_str(&out[start..])
        .into_iter()
        .next()
        .context("no JSON value")?
        .with_context(|| format!("vm list --json: {out}"))?;
    let mut rows = Vec::new();
    for (host, t) in v["targets"].as_object().context("no targets")? {
        ensure!(t["state"] == "ok", "{host}: {t}");
        for g in t["result"]["vms"].as_array().context("no vms")? {
            rows.push(format!(
                "{host}:{} {}",
                g["name"].as_str().unwrap_or("?"),
                g["state"].as_str().unwrap_or("?")
            ));
        }
    }
    rows.sort();
    Ok(rows)
}

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

/// Runs `script` until it returns something other than null/false, for `limit` (longer than
/// [`banyan_tests::browser::WAIT`]); `nudge` runs between tries (a button that asks again).
fn wait_long(
    b: &Browser,
    what: &str,
    limit: Duration,
    script: &str,
    args: Vec<Value>,
    mut nudge: impl FnMut() -> Result<()>,
) -> Result<Value> {
    let deadline = Instant::now() + limit;
    loop {
        let last = b.js(script, args.clone())?;
        if !last.is_null() && last != Value::Bool(false) {
            return Ok(last);
        }
        if Instant::now() > deadline {
            bail!(
                "the page did not show {what} within {limit:?} (last: {last}); it shows:\n{}",
                text_of(b, "view").unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
        nudge()?;
    }
}

/// The Guests table once it holds exactly `keys`.
fn wait_keys(
    b: &Browser,
    keys: &[String],
    limit: Duration,
) -> Result<serde_json::Map<String, Value>> {
    let want = json!(keys);
    wait_long(
        b,
        &format!("the guests {keys:?}"),
        limit,
        "const k = Array.from(document.querySelectorAll('#guests-table tbody tr[data-key]')).map(t => t.getAttribute('data-key')).sort();
         return JSON.stringify(k) === JSON.stringify(arguments[0])",
        vec![want],
        || Ok(()),
    )?;
    table(b, "#guests-table")
}

/// Stops the guests whose stop button or selection `start` clicked: the dry run's preview must
/// list exactly `keys` (each would be stopped) while they keep running, the confirmation name
/// them; confirmed, every one ends stopped (`powered off`).
fn stop_through_page(
    b: &Browser,
    c: &Cluster,
    keys: &[String],
    start: impl FnOnce() -> Result<()>,
) -> Result<()> {
    let before = listed(c)?;
    start()?;
    b.wait_js(
        "the stop's confirmation",
        SHOWN,
        vec![json!("guests-stop-confirm")],
    )?;
    let preview = table(b, "#guests-stop-preview-table")?;
    let mut seen: Vec<&String> = preview.keys().collect();
    seen.sort();
    ensure!(
        seen == keys.iter().collect::<Vec<_>>(),
        "the preview lists {preview:?}"
    );
    for k in keys {
        let cells = &preview[k.as_str()];
        let name = k.rsplit(':').next().unwrap_or_default();
        ensure!(
            cell(cells, 1) == "ok" && cell(cells, 2) == format!("would stop {name} (running)"),
            "{k}'s preview: {cells}"
        );
    }
    let confirm = text_of(b, "guests-stop-confirm")?;
    let n = keys.len();
    let word = if n == 1 { "guest" } else { "guests" };
    ensure!(
        confirm == format!("Stop {n} {word}: {}", keys.join(", ")),
        "the confirmation says {confirm:?}"
    );
    ensure!(
        !b.js(SHOWN, vec![json!("guests-stop-progress")])?
            .as_bool()
            .unwrap_or(true),
        "something runs before the confirmation"
    );
    ensure!(listed(c)? == before, "the dry run changed the guests");
    b.screenshot(&format!("guests-stop-preview-{n}"))?;

    b.click("#guests-stop-confirm")?;
    wait_long(
        b,
        "the stop done",
        STOP,
        &format!("return ({PROGRESS_STATE_FN})() === 'done'"),
        vec![],
        || Ok(()),
    )?;
    let progress = table(b, "#guests-stop-progress-table")?;
    ensure!(progress.len() == n, "the progress lists {progress:?}");
    for k in keys {
        let cells = &progress[k.as_str()];
        ensure!(
            cell(cells, 1) == "ok" && cell(cells, 2) == "powered off",
            "{k}'s result: {cells}"
        );
    }
    let msg = text_of(b, "guests-stop-msg")?;
    ensure!(msg == format!("stopped {n} of {n} {word}"), "{msg:?}");
    Ok(())
}

#[test]
fn guests_page_lists_shows_consoles_and_stops_guests_in_chromium() -> Result<()> {
    if !Testnet::require()? {
        return Ok(());
    }
    let Some((chromium, driver)) = browser_programs()? else {
        return Ok(());
    };
    let (kernel, initrd) = image()?;
    with_cluster(2, |c| {
        let _reaper = Reaper(c.dir().to_path_buf());
        let names = c.names();
        c.wait_healthy(&names, FORM)?;
        let admin = c.admin_token().to_string();
        let all = c.all_nodes();
        let out = cli(
            c,
            &[
                "--token",
                &admin,
                "vm",
                "launch",
                &all,
                "--name",
                "g",
                "--count",
                "2",
                "--cpus",
                "1",
                "--memory",
                "128M",
                "--accel",
                "tcg",
                "--kernel",
                &kernel,
                "--initrd",
                &initrd,
                "--ttl",
                "1h",
                "--for-real",
            ],
        )?;
        ensure!(out.contains("All 2 targets succeeded."), "{out}");
        let key = |h: &str, g: &str| format!("{h}:{g}");
        let mut every: Vec<String> = names
            .iter()
            .flat_map(|h| ["g-1", "g-2"].map(|g| key(h, g)))
            .collect();
        every.sort();
        let running: Vec<String> = every.iter().map(|k| format!("{k} running")).collect();
        ensure!(listed(c)? == running, "vm list: {:?}", listed(c)?);

        let b = Browser::start(c.http_addr(), &chromium, &driver)?;

        // ----- No token: nothing listed, and the page says why
        b.open("#/guests")?;
        b.wait_js(
            "no guest listed without a token",
            "return document.getElementById('guests-asked').textContent.includes('no token')
               && document.querySelectorAll('#guests-table tbody tr[data-key]').length === 0",
            vec![],
        )?;

        // ----- A wrong token: the root's refusal, in one line
        b.fill("#admin-token", "not-the-token")?;
        b.click("#token-keep")?;
        let refused = b.wait_js(
            "the refusal of a wrong token",
            "const t = document.getElementById('guests-error').textContent; return t.includes('403') ? t : null",
            vec![],
        )?;
        ensure!(
            refused
                .as_str()
                .is_some_and(|t| t.starts_with("refused (403") && !t.contains('\n')),
            "{refused}"
        );
        b.check_clean("guests with a wrong token", &["/actions"])?;

        // ----- The token: exactly the launched guests, running
        b.fill("#admin-token", &admin)?;
        b.click("#token-keep")?;
        let rows = wait_keys(&b, &every, FORM)?;
        for k in &every {
            let cells = &rows[k.as_str()];
            let (h, g) = k.split_once(':').context("a HOST:NAME key")?;
            ensure!(
                cell(cells, HOST) == h
                    && cell(cells, NAME) == g
                    && cell(cells, STATE) == "running"
                    && cell(cells, CPUS) == "1"
                    && cell(cells, MEMORY) == "128M"
                    && cell(cells, ACCEL) == "tcg"
                    && cell(cells, TTL) != "–"
                    && cell(cells, AGENT) == "–",
                "{k}: {cells}"
            );
        }
        ensure!(
            text_of(&b, "guests-error")?.is_empty() && text_of(&b, "guests-hosts")?.is_empty(),
            "an error is still shown"
        );
        ensure!(
            text_of(&b, "guests-count")?.starts_with("4 guests on 2 hosts · 4 running"),
            "{}",
            text_of(&b, "guests-count")?
        );
        b.screenshot("guests-list")?;

        // ----- The second host's node page: its two guests, linked to their entries
        let host = &names[1];
        b.open(&format!("#/node/{}", url_encode(host)))?;
        let mine: Vec<String> = ["g-1", "g-2"].iter().map(|g| key(host, g)).collect();
        b.wait_js(
            "the node's guests",
            "const k = Array.from(document.querySelectorAll('#node-guests-table tbody tr[data-key]')).map(t => t.getAttribute('data-key')).sort();
             return JSON.stringify(k) === JSON.stringify(arguments[0])",
            vec![json!(mine)],
        )?;
        for (k, cells) in table(&b, "#node-guests-table")? {
            ensure!(cell(&cells, STATE - 1) == "running", "{k}: {cells}");
        }
        ensure!(
            b.js(SHOWN, vec![json!("node-guest-of")])? == json!(false),
            "a host shown as a guest"
        );
        b.screenshot("node-guests")?;
        b.check_clean("node guests", &[])?;
        let first = &mine[0];
        b.click(&format!(
            "#node-guests-table tr[data-key=\"{first}\"] a.guest-open"
        ))?;

        // ----- Its Guests page entry: its console log tail shows the boot marker, as text
        b.wait_js(
            "the guest's entry",
            "return location.hash === arguments[0] && document.getElementById('guests-log-title').textContent === 'Console log of ' + arguments[1]",
            vec![
                json!(format!("#/guests/{}", url_encode(first))),
                json!(first),
            ],
        )?;
        let mut asked = Instant::now();
        wait_long(
            &b,
            "the boot marker in the log",
            BOOT,
            "return document.getElementById('guests-log').textContent.includes(arguments[0])",
            vec![json!(MARKER)],
            || {
                // The log is read when opened and on request: asked again now and then.
                if asked.elapsed() > Duration::from_secs(3) {
                    asked = Instant::now();
                    b.click("#guests-log-refresh")?;
                }
                Ok(())
            },
        )?;
        let log = b.js(
            "const e = document.getElementById('guests-log'); return {kids: e.childElementCount, error: document.getElementById('guests-log-error').textContent}",
            vec![],
        )?;
        ensure!(log == json!({"kids": 0, "error": ""}), "{log}");
        b.wait_js(
            "the opened guest marked in the table",
            "const tr = document.querySelector('#guests-table tr.open'); return !!tr && tr.getAttribute('data-key') === arguments[0]",
            vec![json!(first)],
        )?;
        b.screenshot("guests-log")?;

        // ----- Stop one guest from its row
        let one = key(&names[0], "g-1");
        wait_keys(&b, &every, FORM)?;
        stop_through_page(&b, c, std::slice::from_ref(&one), || {
            b.click(&format!(
                "#guests-table tr[data-key=\"{one}\"] button.guest-stop"
            ))
        })?;
        let rest: Vec<String> = every.iter().filter(|k| **k != one).cloned().collect();
        wait_keys(&b, &rest, STOP)?;
        ensure!(
            listed(c)?
                == rest
                    .iter()
                    .map(|k| format!("{k} running"))
                    .collect::<Vec<_>>(),
            "vm list after one stop: {:?}",
            listed(c)?
        );
        b.screenshot("guests-one-stopped")?;

        // ----- The three others, selected: two actions (the hosts have different names left)
        stop_through_page(&b, c, &rest, || {
            for k in &rest {
                b.click(&format!(
                    "#guests-table tr[data-key=\"{k}\"] input.guests-select"
                ))?;
            }
            ensure!(
                text_of(&b, "guests-selected")? == "3 guests selected",
                "{}",
                text_of(&b, "guests-selected")?
            );
            b.click("#guests-stop")
        })?;
        wait_keys(&b, &[], STOP)?;
        let links = b.js(
            "return document.querySelectorAll('#guests-stop-links a').length",
            vec![],
        )?;
        ensure!(links == json!(2), "stop actions linked: {links}");
        b.screenshot("guests-all-stopped")?;
        b.check_clean("guests", &[])?;
        b.check_no_injection("guests")?;

        // ----- Nothing left: no guest listed, no QEMU
        ensure!(listed(c)?.is_empty(), "guests left: {:?}", listed(c)?);
        let left = qemus_under(c.dir());
        ensure!(left.is_empty(), "QEMU processes left: {left:?}");

        // ----- Failures, one line each: the log of a guest that is not there, a host cut off
        let gone = key(&names[0], "g-1");
        b.open(&format!("#/guests/{}", url_encode(&gone)))?;
        let line = b.wait_js(
            "the failed log read",
            "const t = document.getElementById('guests-log-error').textContent; return t || null",
            vec![],
        )?;
        let line = line.as_str().unwrap_or_default();
        ensure!(
            line.starts_with(&format!("{}: failed: ", names[0])) && !line.contains('\n'),
            "{line:?}"
        );
        c.cut(1)?;
        let line = wait_long(
            &b,
            "the cut host's line",
            STOP,
            "const e = document.querySelector('#guests-hosts [data-host=\"' + arguments[0] + '\"]'); return e ? e.textContent : null",
            vec![json!(names[1])],
            || Ok(()),
        )?;
        let line = line.as_str().unwrap_or_default();
        ensure!(
            line.starts_with(&format!("{}: unreachable: ", names[1])) && !line.contains('\n'),
            "{line:?}"
        );
        b.screenshot("guests-unreachable")?;
        c.restore(1)?;
        b.check_clean("guests' failures", &[])?;
        Ok(())
    })
}
