//! The web UI in a real browser: headless Chromium (Debian's `chromium` and `chromium-driver`)
//! driven over WebDriver by fantoccini, against a root with real agents on test hosts and a job of
//! `fake-rank`s running through them.
//!
//! Every page is opened, waited for until it shows values the test knows (node names, the job id,
//! a metric it set, a job counter's exact total), screenshotted into `target/webui-screenshots/`,
//! and checked for console errors and for requests to anything but the root. Chromium is started
//! so that nothing else can be reached: every host name fails to resolve and every other address
//! goes to a proxy that is not there.
//!
//! The actions and audit pages are checked on actions the test starts through the API: the list,
//! the output grouped under the folded node set (as `clush -b`), a failure's reason, a running
//! action followed live and cancelled from the page, and the audit log's lines and chain.

use anyhow::{anyhow, Context, Result};
use banyan_tests::browser::{browser_programs, Browser};
use banyan_tests::cluster::{with_cluster, Cluster};
use banyan_tests::support::{http_request, url_encode};
use banyan_tests::testnet::Testnet;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

const FAKE_RANK: &str = env!("CARGO_BIN_EXE_fake-rank");
const FORM: Duration = Duration::from_secs(45);
/// How long a request may take.
const SHOW: Duration = Duration::from_secs(30);
const CALLS: &str = "banyan_mpi_calls_total{function=\"MPI_Send\"}";
/// A job id and an alarm name that would run script or make elements if inserted as HTML.
const EVIL_JOB: &str = "w<script>window.pwned=1</script>\"'&amp;<b id=\"injected\">x</b>";
const EVIL_ALARM: &str = "<img id=\"injected2\" src=x onerror=\"window.pwned=2\"> & \"q\" '<script>window.pwned=3</script>";

// ----- What the pages show ------------------------------------------------------------------------

/// The `data-key`s of a table's rows.
const ROW_KEYS: &str = "return Array.from(document.querySelectorAll(arguments[0] + ' tbody tr[data-key]')).map(tr => tr.getAttribute('data-key'))";

/// The cells' texts of the row of `key` in table `css`, or null.
const ROW_CELLS: &str = "const tr = Array.from(document.querySelectorAll(arguments[0] + ' tbody tr[data-key]')).find(tr => tr.getAttribute('data-key') === arguments[1]);
     return tr ? Array.from(tr.cells).map(td => td.textContent) : null";

fn keys(b: &Browser, table: &str) -> Result<Vec<String>> {
    let v = b.js(ROW_KEYS, vec![json!(table)])?;
    Ok(serde_json::from_value(v)?)
}

fn spawn_rank(
    c: &mut Cluster,
    host: usize,
    job: &str,
    rank: u32,
    size: u32,
    updates: u32,
) -> Result<u32> {
    let log = c.dir().join(format!("rank-{host}-{rank}.log"));
    let (rank, size, updates) = (rank.to_string(), size.to_string(), updates.to_string());
    let count = format!("{CALLS}=5");
    let args = [
        "--job",
        job,
        "--rank",
        &rank,
        "--size",
        &size,
        "--command",
        "./stencil",
        "--updates",
        &updates,
        "--every-ms",
        "400",
        "--count",
        &count,
        "--count",
        "banyan_io_bytes_total{function=\"write\"}=4096",
        "--gauge",
        "banyan_test_level=3",
    ];
    c.testnet()
        .spawn(host, Path::new(FAKE_RANK), &args, &[], &log)
        .with_context(|| format!("starting a rank of {job:?}"))
}

#[test]
fn every_page_shows_the_live_cluster_in_chromium_and_reaches_nothing_else() -> Result<()> {
    if !Testnet::require()? {
        return Ok(());
    }
    let Some((chromium, driver)) = browser_programs()? else {
        return Ok(());
    };
    with_cluster(3, |c| {
        let names = c.names();
        c.wait_healthy(&names, FORM)?;
        c.set_metric(0, "webui_probe_level", 4242.0)?;
        check_serving(c)?;
        let b = Browser::start(c.http_addr(), &chromium, &driver)?;

        // A job of two ranks on two nodes, ~32 s, with known counts; a long one with an evil id.
        const UPDATES: u32 = 80;
        spawn_rank(c, 0, "W1", 0, 2, UPDATES)?;
        spawn_rank(c, 1, "W1", 1, 2, UPDATES)?;
        spawn_rank(c, 2, EVIL_JOB, 0, 1, 1000)?;

        // ----- Overview
        b.open("#/")?;
        b.wait_js(
            "3 nodes up",
            "return document.getElementById('ov-up').textContent === '3'",
            vec![],
        )?;
        b.wait_js(
            "both jobs running",
            "const k = Array.from(document.querySelectorAll('#ov-jobs tr[data-key]')).map(t => t.getAttribute('data-key'));
             return k.includes('W1') && k.includes(arguments[0])",
            vec![json!(EVIL_JOB)],
        )?;
        let busiest = keys(&b, "#ov-busiest")?;
        assert!(names.iter().all(|n| busiest.contains(n)), "{busiest:?}");
        // The cluster's main series over time, drawn from /job/history?job=main: two points at
        // least in each chart, and the running-jobs chart reads the two jobs.
        b.wait_js(
            "the overview's history charts",
            "const pts = (s) => Number((document.querySelector('#ov-history [data-series=\"' + s + '\"] path.line') || {getAttribute: () => 0}).getAttribute('data-points'));
             return ['cpu', 'memory', 'net_rx_bps', 'net_tx_bps', 'jobs_running'].every((s) => pts(s) >= 2)
               && document.querySelector('#ov-history [data-series=\"jobs_running\"] .cur').textContent === '2'",
            vec![],
        )?;
        b.screenshot("overview")?;
        b.check_clean("overview", &[])?;
        b.check_no_injection("overview")?;

        // ----- Jobs
        b.open("#/jobs")?;
        b.wait_js("W1 among running jobs", "return Array.from(document.querySelectorAll('#jobs-running tr[data-key]')).some(t => t.getAttribute('data-key') === 'W1')", vec![])?;
        let cells = b.wait_js(
            "the evil job's row",
            ROW_CELLS,
            vec![json!("#jobs-running"), json!(EVIL_JOB)],
        )?;
        assert_eq!(
            cells[0], EVIL_JOB,
            "the id is shown as the very text: {cells}"
        );
        let linked = b.js(
            "return Array.from(document.querySelectorAll('#jobs-running a')).some(a => a.getAttribute('href') === '#/job/' + encodeURIComponent(arguments[0]) && a.textContent === arguments[0])",
            vec![json!(EVIL_JOB)],
        )?;
        assert_eq!(
            linked,
            json!(true),
            "the evil job links to its page by its encoded id"
        );
        b.screenshot("jobs")?;
        b.check_clean("jobs", &[])?;
        b.check_no_injection("jobs")?;

        // ----- A running job: its chart grows while it runs
        b.open("#/job/W1")?;
        let points = |b: &Browser| -> Result<Value> {
            b.js(
                "const p = document.querySelector('#job-charts [data-series=\"banyan_mpi_calls_total\"] path.line');
                 return p ? Number(p.getAttribute('data-points')) : null",
                vec![],
            )
        };
        let first = b.wait_js(
            "a chart of MPI calls with points",
            "const p = document.querySelector('#job-charts [data-series=\"banyan_mpi_calls_total\"] path.line');
             const n = p ? Number(p.getAttribute('data-points')) : 0; return n >= 2 ? n : null",
            vec![],
        )?;
        let first = first.as_u64().unwrap_or(0);
        b.wait_js(
            "the chart to grow",
            "const p = document.querySelector('#job-charts [data-series=\"banyan_mpi_calls_total\"] path.line');
             return p && Number(p.getAttribute('data-points')) > arguments[0]",
            vec![json!(first)],
        )?;
        assert!(points(&b)?.as_u64().unwrap_or(0) > first);
        b.wait_js("MPI_Send in the MPI breakdown", "return Array.from(document.querySelectorAll('#job-mpi tr[data-key]')).some(t => t.getAttribute('data-key') === 'MPI_Send')", vec![])?;
        b.wait_js("write in the I/O breakdown", "return Array.from(document.querySelectorAll('#job-io tr[data-key]')).some(t => t.getAttribute('data-key') === 'write')", vec![])?;
        let dist = b.wait_js(
            "both nodes in the per-node distribution",
            "const k = Array.from(document.querySelectorAll('#job-dist tr[data-key]')).map(t => t.getAttribute('data-key')); return k.length === 2 ? k : null",
            vec![],
        )?;
        let mut dist: Vec<String> = serde_json::from_value(dist)?;
        dist.sort();
        let mut want = vec![names[0].clone(), names[1].clone()];
        want.sort();
        assert_eq!(dist, want);
        b.wait_js(
            "the state 'running'",
            "return document.getElementById('job-state').textContent === 'running'",
            vec![],
        )?;
        b.screenshot("job-running")?;
        b.check_clean("job", &[])?;

        // ----- The evil job's page: the id is text in the heading
        b.open(&format!("#/job/{}", url_encode(EVIL_JOB)))?;
        b.wait_js(
            "the evil id as the heading",
            "return document.getElementById('job-id').textContent === arguments[0]",
            vec![json!(EVIL_JOB)],
        )?;
        b.wait_js(
            "its chart",
            "return !!document.querySelector('#job-charts [data-series] path.line')",
            vec![],
        )?;
        b.screenshot("job-evil-id")?;
        b.check_clean("evil job", &[])?;
        b.check_no_injection("evil job")?;

        // ----- Nodes: the table, a node set filter, the server's error for a bad one, the heat map
        b.open("#/nodes")?;
        let rows = b.wait_js("every node in the table", "const k = Array.from(document.querySelectorAll('#nodes-table tr[data-key]')).map(t => t.getAttribute('data-key')); return k.length === 3 ? k : null", vec![])?;
        let mut rows: Vec<String> = serde_json::from_value(rows)?;
        rows.sort();
        let mut all = names.clone();
        all.sort();
        assert_eq!(rows, all);
        let cells = b.js(
            "return document.querySelectorAll('#heatmap rect').length",
            vec![],
        )?;
        assert_eq!(cells, json!(3));
        b.screenshot("nodes")?;
        let set = format!("{}[1-2]", c.prefix());
        b.fill("#node-filter", &set)?;
        b.wait_js("two nodes after filtering", "return document.querySelectorAll('#nodes-table tr[data-key]').length === 2 && document.getElementById('node-count').textContent.startsWith('2 nodes')", vec![])?;
        let bad = "cn[3-";
        let (status, body) = http_request(
            c.http_addr(),
            "GET",
            &format!("/nodes?nodes={}", url_encode(bad)),
            None,
            None,
            SHOW,
        )?;
        assert_eq!(status, 400);
        let detail = serde_json::from_slice::<Value>(&body)?["detail"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(!detail.is_empty());
        b.fill("#node-filter", bad)?;
        b.wait_js("the server's error for a bad set", "return document.getElementById('node-filter-error').textContent.includes(arguments[0])", vec![json!(detail)])?;
        b.screenshot("nodes-bad-filter")?;
        b.fill("#node-filter", "")?;
        b.wait_js(
            "every node again",
            "return document.querySelectorAll('#nodes-table tr[data-key]').length === 3",
            vec![],
        )?;
        b.check_clean("nodes", &["/nodes?nodes="])?;

        // ----- A node: its full metrics through the tree, with the value the test set
        b.open(&format!("#/node/{}", url_encode(&names[0])))?;
        let probe = b.wait_js(
            "the node's probe metric",
            ROW_CELLS,
            vec![json!("#node-metrics"), json!("webui_probe_level")],
        )?;
        assert_eq!(probe[2], "4242", "{probe}");
        b.wait_js("a CPU chart with points", "const p = document.querySelector('.chart path.line'); return p && Number(p.getAttribute('data-points')) >= 2", vec![])?;
        b.screenshot("node")?;
        b.check_clean("node", &[])?;

        // ----- Topology
        b.open("#/topology")?;
        let drawn = b.wait_js("every node in the tree", "const k = Array.from(document.querySelectorAll('#tree-svg [data-node]')).map(g => g.getAttribute('data-node')); return k.length >= 4 ? k : null", vec![])?;
        let drawn: Vec<String> = serde_json::from_value(drawn)?;
        assert!(names.iter().all(|n| drawn.contains(n)), "{drawn:?}");
        b.screenshot("topology")?;
        b.check_clean("topology", &[])?;

        // ----- Alarms: refused without the token, added and deleted with it; the name is text
        b.open("#/alarms")?;
        b.wait_js(
            "the alarm form",
            "return !!document.getElementById('alarm-form')",
            vec![],
        )?;
        b.js(
            "sessionStorage.removeItem('banyan.adminToken'); return true",
            vec![],
        )?;
        b.fill("#alarm-name", EVIL_ALARM)?;
        b.fill("#alarm-target", "main")?;
        b.fill("#alarm-metric", "webui_probe_level")?;
        b.fill("#alarm-value", "100")?;
        b.click("#alarm-add")?;
        let refused = b.wait_js("the refusal", "const t = document.getElementById('alarm-msg').textContent; return t.includes('401') ? t : null", vec![])?;
        assert!(refused.to_string().contains("token required"), "{refused}");
        b.screenshot("alarms-refused")?;
        b.fill("#admin-token", "not-the-token")?;
        b.click("#token-keep")?;
        b.click("#alarm-add")?;
        b.wait_js(
            "the refusal of a wrong token",
            "return document.getElementById('alarm-msg').textContent.includes('403')",
            vec![],
        )?;
        b.fill("#admin-token", c.admin_token())?;
        b.click("#token-keep")?;
        b.click("#alarm-add")?;
        b.wait_js(
            "the alarm added",
            "return document.getElementById('alarm-msg').textContent.startsWith('added')",
            vec![],
        )?;
        let key = format!("main\u{0}{EVIL_ALARM}");
        let row = b.wait_js(
            "the alarm's row",
            ROW_CELLS,
            vec![json!("#alarms-all"), json!(key)],
        )?;
        assert_eq!(row[1], EVIL_ALARM, "{row}");
        // 4242 > 100: raised at the next wave, and shown among the raised ones.
        b.wait_js(
            "the alarm raised",
            ROW_CELLS,
            vec![json!("#alarms-raised"), json!(key)],
        )?;
        let stored = c.http_get("/alarms/list")?;
        assert!(
            stored["main"]
                .as_array()
                .is_some_and(|l| l.iter().any(|a| a["name"] == EVIL_ALARM)),
            "{stored}"
        );
        b.screenshot("alarms")?;
        b.check_no_injection("alarms")?;
        // Deleting needs the token too.
        b.click("#token-forget")?;
        b.js(
            "const tr = Array.from(document.querySelectorAll('#alarms-all tr[data-key]')).find(t => t.getAttribute('data-key') === arguments[0]); tr.querySelector('button.del').click(); return true",
            vec![json!(key)],
        )?;
        b.wait_js("the refusal to delete", "const t = document.getElementById('alarm-msg').textContent; return t.startsWith('refused (401')", vec![])?;
        b.fill("#admin-token", c.admin_token())?;
        b.click("#token-keep")?;
        b.js(
            "const tr = Array.from(document.querySelectorAll('#alarms-all tr[data-key]')).find(t => t.getAttribute('data-key') === arguments[0]); tr.querySelector('button.del').click(); return true",
            vec![json!(key)],
        )?;
        b.wait_js("the alarm gone", "return !Array.from(document.querySelectorAll('#alarms-all tr[data-key]')).some(t => t.getAttribute('data-key') === arguments[0])", vec![json!(key)])?;
        let stored = c.http_get("/alarms/list")?;
        assert!(!stored.to_string().contains("injected2"), "{stored}");
        b.check_clean("alarms", &["/alarms/add", "/alarms/del"])?;

        // ----- The finished job: the same page from its profile, with exact totals
        let (profile, _) = c.poll("W1's profile", Duration::from_secs(90), |c| {
            Ok(c.http_get("/profiles/get?jobid=W1").ok())
        })?;
        let want_calls = 2 * UPDATES as u64 * 5;
        let calls = profile["counters"]
            .as_array()
            .and_then(|l| l.iter().find(|x| x["name"] == CALLS))
            .and_then(|x| x["ctype"]["Counter"]["value"].as_f64());
        assert_eq!(calls, Some(want_calls as f64), "{profile}");
        b.open("#/profile/W1")?;
        b.wait_js(
            "the state 'finished'",
            "return document.getElementById('job-state').textContent === 'finished'",
            vec![],
        )?;
        let mpi = b.wait_js(
            "MPI_Send's calls",
            ROW_CELLS,
            vec![json!("#job-mpi"), json!("MPI_Send")],
        )?;
        assert!(
            mpi.as_array()
                .is_some_and(|cells| cells.iter().any(|t| t == &json!(want_calls.to_string()))),
            "MPI_Send's row should show {want_calls} calls: {mpi}"
        );
        let kept = points(&b)?.as_u64().unwrap_or(0);
        assert!(
            kept >= first,
            "the profile keeps the job's history ({kept} points)"
        );
        b.wait_js("the ranks' tally", "return document.getElementById('job-kv').textContent.includes('2 started · 2 ended · 0 crashed')", vec![])?;
        b.screenshot("job-profile")?;
        b.open("#/jobs")?;
        b.wait_js("W1 among finished jobs and by command", "return Array.from(document.querySelectorAll('#jobs-finished tr[data-key]')).some(t => t.getAttribute('data-key') === 'W1') && Array.from(document.querySelectorAll('#jobs-percmd tr[data-key]')).some(t => t.getAttribute('data-key') === './stencil')", vec![])?;
        b.screenshot("jobs-finished")?;
        b.check_clean("profile", &[])?;
        Ok(())
    })
}

/// The cells' texts of the audit line of `event` for `action`, or null.
const AUDIT_ROW: &str = "const tr = Array.from(document.querySelectorAll('#audit-table tbody tr[data-key]'))
       .find(tr => tr.cells[4].textContent === arguments[0] && tr.cells[5].textContent === arguments[1]);
     return tr ? Array.from(tr.cells).map(td => td.textContent) : null";

/// The output groups of the action page, `[{nodes, pill, out: [stdout, stderr]}]`, or null if none.
const OUTPUT_GROUPS: &str = "const g = Array.from(document.querySelectorAll('#act-output .out-group')).map(g => ({
       nodes: g.querySelector('.nodes').textContent, pill: g.querySelector('.out-head .pill').textContent,
       out: Array.from(g.querySelectorAll('pre.out')).map(p => p.textContent)}));
     return g.length ? g : null";

/// Waits for the action page to show `state` with `n` targets in `card` (`act-ok`, ...).
fn wait_action(b: &Browser, state: &str, card: &str, n: usize) -> Result<()> {
    b.wait_js(
        &format!("the action {state} with {n} in #{card}"),
        "const s = document.querySelector('#act-state .pill'); const c = document.getElementById(arguments[1]);
         return !!s && s.textContent === arguments[0] && !!c && c.textContent === String(arguments[2])",
        vec![json!(state), json!(card), json!(n)],
    )
    .map(|_| ())
}

#[test]
fn actions_and_audit_pages_follow_actions_live_and_verify_the_chain() -> Result<()> {
    if !Testnet::require()? {
        return Ok(());
    }
    let Some((chromium, driver)) = browser_programs()? else {
        return Ok(());
    };
    with_cluster(3, |c| {
        let names = c.names();
        c.wait_healthy(&names, FORM)?;
        let all = c.all_nodes();
        let b = Browser::start(c.http_addr(), &chromium, &driver)?;
        let start = |task: Value, for_real: bool| -> Result<String> {
            let body =
                json!({"nodes": all, "for_real": for_real, "timeout_ms": 120_000, "task": task});
            let v = c.http_post("/actions", &body)?;
            v["id"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| anyhow!("no id in {v}"))
        };
        // The same output everywhere; a failure everywhere whose command line and output would be
        // markup if inserted as HTML; a dry run.
        let hello = start(json!({"exec": {"argv": ["echo", "hello"]}}), true)?;
        let evil = start(
            json!({"exec": {"argv": ["sh", "-c", "printf '%s\\n' \"$1\" >&2; exit 3", "sh", EVIL_JOB]}}),
            true,
        )?;
        let dry = start(json!({"exec": {"argv": ["uname", "-a"]}}), false)?;

        // ----- The list: who, kind, the command line, the folded targets, the counts
        b.open("#/actions")?;
        let row = b.wait_js(
            "the echo action, done, with its command line",
            "const tr = Array.from(document.querySelectorAll('#actions-table tbody tr[data-key]')).find(tr => tr.getAttribute('data-key') === arguments[0]);
             if (!tr) return null;
             const cells = Array.from(tr.cells).map(td => td.textContent);
             return cells[3] === 'echo hello' && cells[7] === 'done' ? cells : null",
            vec![json!(hello)],
        )?;
        assert_eq!(row[1], "admin", "{row}");
        assert_eq!(row[2], "exec", "{row}");
        assert_eq!(row[4], all.as_str(), "{row}");
        assert_eq!(row[5], "3", "{row}");
        assert_eq!(row[6], "for real", "{row}");
        assert_eq!(
            row.as_array().map(|r| r[9..13].to_vec()),
            Some(vec![json!("3"), json!("0"), json!("0"), json!("0")]),
            "ok, failed, unreachable, pending: {row}"
        );
        let evil_row = b.wait_js(
            "the evil action, failed on every node",
            "const tr = Array.from(document.querySelectorAll('#actions-table tbody tr[data-key]')).find(tr => tr.getAttribute('data-key') === arguments[0]);
             if (!tr) return null;
             const cells = Array.from(tr.cells).map(td => td.textContent);
             return cells[3].startsWith('sh -c') && cells[7] === 'done' ? cells : null",
            vec![json!(evil)],
        )?;
        // Shell-quoted, so its `'` reads `'\''`; the markup in it is there as text.
        assert!(
            evil_row[3]
                .as_str()
                .is_some_and(|w| w.contains("<script>window.pwned=1</script>")
                    && w.contains("<b id=\"injected\">x</b>")),
            "the command line is shown as text: {evil_row}"
        );
        assert_eq!(evil_row[10], "3", "{evil_row}");
        let dry_row = b.wait_js(
            "the dry run",
            ROW_CELLS,
            vec![json!("#actions-table"), json!(dry)],
        )?;
        assert_eq!(dry_row[6], "dry run", "{dry_row}");
        b.screenshot("actions")?;
        b.check_clean("actions", &[])?;
        b.check_no_injection("actions")?;

        // ----- A click on the row opens the action: one group of identical output, all nodes
        b.js(
            "Array.from(document.querySelectorAll('#actions-table tbody tr[data-key]')).find(tr => tr.getAttribute('data-key') === arguments[0]).cells[0].click(); return true",
            vec![json!(hello)],
        )?;
        b.wait_js(
            "the action's page",
            "return location.hash === '#/action/' + arguments[0] && !!document.getElementById('act-id')",
            vec![json!(hello)],
        )?;
        wait_action(&b, "done", "act-ok", names.len())?;
        let groups = b.wait_js("the grouped output", OUTPUT_GROUPS, vec![])?;
        assert_eq!(
            groups,
            json!([{"nodes": all, "pill": "ok", "out": ["hello\n"]}]),
            "one group, the folded set of every node"
        );
        let shown = b.js(
            "return {failed: document.getElementById('act-failed').textContent,
                     problems: document.getElementById('act-problems').closest('section').hidden,
                     cancel: document.getElementById('act-cancel-box').hidden,
                     answered: document.getElementById('act-answered').textContent}",
            vec![],
        )?;
        assert_eq!(
            shown,
            json!({"failed": "0", "problems": true, "cancel": true, "answered": "3 of 3 answered"})
        );
        b.screenshot("action-done")?;
        b.check_clean("action", &[])?;

        // ----- The failed one: its reason and its output, as text
        b.open(&format!("#/action/{evil}"))?;
        wait_action(&b, "done", "act-failed", names.len())?;
        let problem = b.wait_js(
            "the failure's reason",
            "const tr = document.querySelector('#act-problems tbody tr[data-key]');
             return tr ? Array.from(tr.cells).map(td => td.textContent) : null",
            vec![],
        )?;
        assert_eq!(problem, json!(["failed", "3", all, "exit 3"]));
        let groups = b.wait_js("the failure's output", OUTPUT_GROUPS, vec![])?;
        assert_eq!(
            groups,
            json!([{"nodes": all, "pill": "failed", "out": [format!("{EVIL_JOB}\n")]}])
        );
        b.screenshot("action-failed")?;
        b.check_clean("failed action", &[])?;
        b.check_no_injection("failed action")?;

        // ----- A running action, followed live, cancelled from the page with the token
        let slow = start(json!({"exec": {"argv": ["sleep", "100"]}}), true)?;
        b.js(
            "sessionStorage.removeItem('banyan.adminToken'); return true",
            vec![],
        )?;
        b.open(&format!("#/action/{slow}"))?;
        wait_action(&b, "running", "act-pending", names.len())?;
        b.wait_js(
            "the cancel button",
            "return !document.getElementById('act-cancel-box').hidden",
            vec![],
        )?;
        b.click("#act-cancel")?;
        b.wait_js(
            "the request for a token",
            "return document.getElementById('act-cancel-msg').textContent.includes('token')",
            vec![],
        )?;
        b.fill("#admin-token", c.admin_token())?;
        b.click("#token-keep")?;
        b.screenshot("action-running")?;
        // Two clicks: the first one only arms the button.
        b.click("#act-cancel")?;
        b.click("#act-cancel")?;
        wait_action(&b, "cancelled", "act-pending", 0)?;
        let cancelled = b.js(
            "return Number(document.getElementById('act-cancelled').textContent)",
            vec![],
        )?;
        assert_eq!(cancelled, json!(names.len()), "every sleep was cancelled");
        let groups = b.wait_js("the cancelled group", OUTPUT_GROUPS, vec![])?;
        assert_eq!(
            groups,
            json!([{"nodes": all, "pill": "cancelled", "out": []}])
        );
        b.screenshot("action-cancelled")?;
        b.check_clean("cancelled action", &[])?;

        // ----- The audit log: asks for a token, shows the request, verifies the chain
        b.js(
            "sessionStorage.removeItem('banyan.adminToken'); return true",
            vec![],
        )?;
        b.open("#/audit")?;
        b.wait_js(
            "the token prompt",
            "const p = document.getElementById('audit-needs-token'); return !!p && !p.hidden",
            vec![],
        )?;
        b.screenshot("audit-no-token")?;
        b.fill("#admin-token", c.admin_token())?;
        b.click("#token-keep")?;
        let line = b.wait_js(
            "the action.request line of the echo",
            AUDIT_ROW,
            vec![json!("action.request"), json!(hello)],
        )?;
        assert_eq!(line[2], "admin", "{line}");
        assert_eq!(line[6], all.as_str(), "{line}");
        assert_eq!(line[7], "for real", "{line}");
        assert!(
            line[8].as_str().is_some_and(|d| d.contains("echo hello")),
            "{line}"
        );
        b.wait_js(
            "the outcome of the cancelled action",
            AUDIT_ROW,
            vec![json!("action.outcome"), json!(slow)],
        )?;
        let linked = b.js(
            "return Array.from(document.querySelectorAll('#audit-table a')).some(a => a.getAttribute('href') === '#/action/' + arguments[0])",
            vec![json!(hello)],
        )?;
        assert_eq!(linked, json!(true), "the action id links to its page");
        b.click("#audit-verify")?;
        let verified = b.wait_js(
            "the chain verified",
            "const t = document.getElementById('audit-verify-result').textContent;
             const m = t.match(/^chain verified: (\\d+) lines?,/); return m ? Number(m[1]) : null",
            vec![],
        )?;
        let verify = http_request(
            c.http_addr(),
            "GET",
            "/audit/verify",
            Some(c.admin_token()),
            None,
            SHOW,
        )?;
        let verify: Value = serde_json::from_slice(&verify.1)?;
        assert_eq!(verify["ok"], true, "{verify}");
        // The page's count is the root's, give or take lines written since.
        let (shown, now) = (
            verified.as_u64().unwrap_or(0),
            verify["lines"].as_u64().unwrap_or(0),
        );
        assert!(shown >= 8 && shown <= now, "{shown} lines shown, {verify}");
        b.screenshot("audit")?;
        b.check_clean("audit", &[])?;
        b.check_no_injection("audit")?;
        Ok(())
    })
}

/// Response headers, names in lower case.
type Headers = Vec<(String, String)>;

/// One raw HTTP/1.1 GET: the status, the headers (lower-case names) and the body's length.
fn raw_get(addr: SocketAddr, path: &str, extra: &str) -> Result<(u16, Headers, usize)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, SHOW)?;
    s.set_read_timeout(Some(SHOW))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no header end: {text}"))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("no status: {head}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok((status, headers, body.len()))
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// The page and its files: served with a strong ETag, 304 when it matches, JSON errors otherwise;
/// the history and distribution routes refuse bad ids as the other routes do.
fn check_serving(c: &Cluster) -> Result<()> {
    for path in ["/", "/ui/app.js", "/ui/style.css"] {
        let (status, h, len) = raw_get(c.http_addr(), path, "")?;
        assert_eq!(status, 200, "{path}");
        assert!(len > 0, "{path}");
        let etag = header(&h, "etag")
            .ok_or_else(|| anyhow!("{path}: no ETag: {h:?}"))?
            .to_string();
        assert!(etag.starts_with('"') && !etag.starts_with("W/"), "{etag}");
        assert!(header(&h, "cache-control").is_some(), "{h:?}");
        assert!(
            header(&h, "content-security-policy").is_some_and(|v| v.contains("default-src 'none'")),
            "{h:?}"
        );
        let (status, _, len) = raw_get(c.http_addr(), path, &format!("If-None-Match: {etag}\r\n"))?;
        assert_eq!((status, len), (304, 0), "{path} with its ETag");
    }
    // Compressed for clients that ask, under its own tag, which still revalidates.
    let (status, h, _) = raw_get(c.http_addr(), "/ui/app.js", "Accept-Encoding: gzip\r\n")?;
    assert_eq!(status, 200);
    assert_eq!(header(&h, "content-encoding"), Some("gzip"), "{h:?}");
    let etag = header(&h, "etag").unwrap_or_default().to_string();
    assert!(etag.ends_with("-gz\""), "{etag}");
    let (status, _, _) = raw_get(
        c.http_addr(),
        "/ui/app.js",
        &format!("Accept-Encoding: gzip\r\nIf-None-Match: {etag}\r\n"),
    )?;
    assert_eq!(status, 304);
    let (status, h, _) = raw_get(c.http_addr(), "/", "")?;
    assert_eq!(status, 200);
    assert!(
        header(&h, "content-type").is_some_and(|t| t.starts_with("text/html")),
        "{h:?}"
    );
    for (path, want) in [
        ("/ui/nope.js", 404),
        ("/job/history?job=nope", 404),
        ("/job/history", 400),
        ("/job/history?job=Node:%20cn1", 400),
        ("/job/nodes?job=nope", 404),
    ] {
        let (status, body) = http_request(c.http_addr(), "GET", path, None, None, SHOW)?;
        assert_eq!(status, want, "{path}: {}", String::from_utf8_lossy(&body));
        let v: Value = serde_json::from_slice(&body).with_context(|| path.to_string())?;
        assert!(
            v["error"].is_string() && v["detail"].is_string(),
            "{path}: {v}"
        );
    }
    // `main` is no job's id: it names the cluster's own history, which the overview charts.
    let (status, body) = http_request(
        c.http_addr(),
        "GET",
        "/job/history?job=main",
        None,
        None,
        SHOW,
    )?;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let v: Value = serde_json::from_slice(&body).context("/job/history?job=main")?;
    assert!(
        v["job"] == "main" && v["running"] == true && v["history"]["points"].is_array(),
        "{v}"
    );
    Ok(())
}
