//! The BMC drivers (`banyan_agent::bmc`) against real emulators and hostile servers: sushy-tools'
//! Redfish (eight systems, basic auth, TLS with a test CA), `ipmi_sim` whose chassis really stops
//! and starts a process, and tiny HTTP servers that answer garbage, HTML, 500s, redirect loops
//! and trickles; BMCs inside a test host reachable from there only, and serial over LAN.
//!
//! The drivers run on a current-thread tokio runtime, as in the agent: the hostile servers run on
//! that same thread, so a driver that blocked the runtime would starve them and fail the test.
//! Sushy applies a new power state 1 to 11 s after a reset, and only when read: the tests poll
//! until a generous liveness deadline and assert final states, never times.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use banyan_agent::bmc::{
    self, Bmc, BmcError, BootDevice, Endpoint, ErrorKind, PowerState, Protocol, ResetKind, Secret,
    Tls,
};
use banyan_tests::bmc::{require, IpmiOptions, IpmiSim, Scratch, Site, Sushy, SushyOptions};
use banyan_tests::support::free_port;
use banyan_tests::testnet::Testnet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// Longest wait for a BMC to report a new power state (sushy: up to 11 s, on a loaded machine).
const POWER_DEADLINE: Duration = Duration::from_secs(60);
const POLL_EVERY: Duration = Duration::from_millis(500);
/// One driver operation's timeout against the emulators.
const CALL: Duration = Duration::from_secs(15);

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building a tokio runtime")
}

/// Polls `bmc` until it reports `want`.
async fn wait_power(bmc: &dyn Bmc, want: PowerState) -> Result<()> {
    let deadline = Instant::now() + POWER_DEADLINE;
    loop {
        let last = bmc.power_state().await;
        if last.as_ref() == Ok(&want) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{}: power state still {last:?}, not {want}, after {}s",
                bmc.endpoint().node,
                POWER_DEADLINE.as_secs()
            );
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Runs `op` on every BMC at once; the results in the order of `bmcs`.
async fn on_all<T, F, Fut>(bmcs: &[Arc<dyn Bmc>], op: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(Arc<dyn Bmc>) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let mut set = JoinSet::new();
    for (i, b) in bmcs.iter().enumerate() {
        let fut = op(b.clone());
        set.spawn(async move { (i, fut.await) });
    }
    let mut out: Vec<Option<T>> = (0..bmcs.len()).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        if let Ok((i, v)) = joined {
            out[i] = Some(v);
        }
    }
    out.into_iter()
        .map(|v| v.expect("every task answers"))
        .collect()
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{prefix}{i}")).collect()
}

/// The message of an error, checked to name the node and the BMC's address.
fn message_of(e: &BmcError, ep: &Endpoint) -> Result<String> {
    let text = e.to_string();
    // Shown with --no-capture: what an operator would read.
    eprintln!("error: {text}");
    ensure!(
        text.contains(&ep.node) && text.contains(&ep.address()),
        "the error does not name node {} and BMC {}: {text}",
        ep.node,
        ep.address()
    );
    ensure!(
        !text.contains(ep.password.expose()),
        "the error shows the password: {text}"
    );
    Ok(text)
}

#[test]
fn redfish_powers_eight_systems_over_tls_with_basic_auth() -> Result<()> {
    let Some(tools) = require()? else {
        return Ok(());
    };
    let scratch = Scratch::new("redfish")?;
    let nodes = names("rf", 8);
    let sushy = Sushy::start(&tools, scratch.path(), &SushyOptions::new(&nodes))?;
    let rt = runtime()?;
    rt.block_on(async {
        // No system_id: each driver finds its system among eight by Name (their Ids are UUIDs).
        let bmcs: Vec<Arc<dyn Bmc>> = nodes
            .iter()
            .map(|n| Ok(bmc::connect(sushy.endpoint(n, CALL)?)?))
            .collect::<Result<_>>()?;

        let reports = on_all(&bmcs, |b| async move { b.check().await }).await;
        for (report, node) in reports.into_iter().zip(&nodes) {
            let report = report.map_err(|e| anyhow!("check: {e}"))?;
            ensure!(report.power == PowerState::Off, "{node}: {report:?}");
            ensure!(
                report.resets.contains(&ResetKind::GracefulShutdown)
                    && report.resets.contains(&ResetKind::ForceOff)
                    && !report.resets.contains(&ResetKind::PowerCycle),
                "{node}: sushy advertises no PowerCycle, and the rest: {report:?}"
            );
        }

        // on: every node.
        for r in on_all(&bmcs, |b| async move { b.reset(ResetKind::On).await }).await {
            r.map_err(|e| anyhow!("on: {e}"))?;
        }
        for r in on_all(
            &bmcs,
            |b| async move { wait_power(&*b, PowerState::On).await },
        )
        .await
        {
            r?;
        }

        // off: graceful for three, forced for three; reset for two (they stay on).
        let kinds = [
            ResetKind::GracefulShutdown,
            ResetKind::GracefulShutdown,
            ResetKind::GracefulShutdown,
            ResetKind::ForceOff,
            ResetKind::ForceOff,
            ResetKind::ForceOff,
            ResetKind::ForceRestart,
            ResetKind::GracefulRestart,
        ];
        let mut set = JoinSet::new();
        for (b, kind) in bmcs.iter().cloned().zip(kinds) {
            set.spawn(async move {
                b.reset(kind).await?;
                Ok::<_, BmcError>((b, kind))
            });
        }
        let mut waits = JoinSet::new();
        while let Some(joined) = set.join_next().await {
            let (b, kind) = joined?.map_err(|e| anyhow!("reset: {e}"))?;
            waits.spawn(async move { wait_power(&*b, kind.final_state()).await });
        }
        while let Some(joined) = waits.join_next().await {
            joined??;
        }

        // PowerCycle is not advertised: refused with what is, and nothing is sent.
        let posts_before = count(&sushy, "POST ");
        let err = bmcs[0]
            .reset(ResetKind::PowerCycle)
            .await
            .expect_err("PowerCycle is not offered by sushy");
        let text = message_of(&err, bmcs[0].endpoint())?;
        ensure!(
            matches!(err.kind, ErrorKind::Unsupported(_))
                && text.contains("does not offer ResetType PowerCycle")
                && text.contains("ForceOff"),
            "{text}"
        );
        ensure!(count(&sushy, "POST ") == posts_before, "a POST was sent");

        // Next boot: a Boot override PATCH.
        bmcs[0].set_next_boot(BootDevice::Pxe).await?;
        ensure!(
            sushy
                .requests()
                .iter()
                .any(|r| r.starts_with("PATCH ") && r.ends_with(" 204")),
            "no PATCH answered 204: {:?}",
            sushy.requests()
        );

        // A system named by id: sushy answers /Systems/NAME with a 307 to its UUID path, which
        // is followed (with the credentials, to the same BMC).
        let mut ep = sushy.endpoint(&nodes[2], CALL)?;
        ep.node = "renamed".into();
        ep.system_id = Some(nodes[2].clone());
        let named = bmc::connect(ep)?;
        ensure!(named.power_state().await? == PowerState::Off);
        ensure!(
            sushy
                .requests()
                .iter()
                .any(|r| r.contains(&format!("/Systems/{} 307", nodes[2]))),
            "the 307 was not seen"
        );

        // insecure = true talks TLS without checking; a CA that did not sign the BMC's
        // certificate is refused with a TLS error.
        let mut ep = sushy.endpoint(&nodes[0], CALL)?;
        ep.tls = Tls::Insecure;
        ensure!(bmc::connect(ep)?.power_state().await.is_ok());
        let other_ca = scratch.path().join("other-ca.pem");
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        std::fs::write(&other_ca, params.self_signed(&key)?.pem())?;
        let mut ep = sushy.endpoint(&nodes[0], CALL)?;
        ep.tls = Tls::Verify {
            ca_file: other_ca.clone(),
        };
        let err = bmc::connect(ep.clone())?
            .power_state()
            .await
            .expect_err("a foreign CA must not be trusted");
        let text = message_of(&err, &ep)?;
        ensure!(
            matches!(err.kind, ErrorKind::Tls(_)) && text.contains("ca_file"),
            "{text}"
        );
        Ok(())
    })
}

/// How many requests sushy logged that start with `prefix`.
fn count(sushy: &Sushy, prefix: &str) -> usize {
    sushy
        .requests()
        .iter()
        .filter(|r| r.starts_with(prefix))
        .count()
}

#[test]
fn redfish_wrong_password_and_dead_bmc_fail_their_node_only() -> Result<()> {
    let Some(tools) = require()? else {
        return Ok(());
    };
    let scratch = Scratch::new("redfish-bad")?;
    let nodes = names("rb", 2);
    let sushy = Sushy::start(&tools, scratch.path(), &SushyOptions::new(&nodes))?;
    let rt = runtime()?;
    rt.block_on(async {
        let good = sushy.endpoint(&nodes[0], CALL)?;
        let mut wrong = sushy.endpoint(&nodes[1], CALL)?;
        wrong.password = Secret::new("not-the-password");
        // Nothing listens on a port just found free: a BMC that is not running.
        let mut dead = sushy.endpoint("rb-dead", CALL)?;
        dead.port = free_port(Ipv4Addr::LOCALHOST, false)?;
        let eps = [good, wrong, dead];
        let bmcs: Vec<Arc<dyn Bmc>> = eps
            .iter()
            .map(|ep| bmc::connect(ep.clone()))
            .collect::<Result<_, _>>()?;
        let started = Instant::now();
        let results = on_all(&bmcs, |b| async move { b.power_state().await }).await;
        ensure!(results[0] == Ok(PowerState::Off), "{:?}", results[0]);

        let err = results[1].clone().expect_err("a wrong password must fail");
        let text = message_of(&err, &eps[1])?;
        ensure!(
            matches!(err.kind, ErrorKind::Credentials(_))
                && text.contains("HTTP 401")
                && text.contains("password_file"),
            "{text}"
        );

        let err = results[2].clone().expect_err("a dead BMC must fail");
        let text = message_of(&err, &eps[2])?;
        ensure!(
            matches!(err.kind, ErrorKind::Unreachable(_)) && text.contains("connection refused"),
            "{text}"
        );
        // Liveness only: none of them waited for its timeout.
        ensure!(started.elapsed() < CALL, "took {:?}", started.elapsed());
        Ok(())
    })
}

#[test]
fn ipmi_chassis_stops_and_starts_the_node_process() -> Result<()> {
    let Some(tools) = require()? else {
        return Ok(());
    };
    if !Testnet::require()? {
        return Ok(());
    }
    let scratch = Scratch::new("ipmi")?;
    // One BMC on the loopback, one inside a test host (port 623 of the host's address), each
    // powering a sleep.
    let net = Testnet::up(1)?;
    let mut sims = Vec::new();
    let mut opts = IpmiOptions::new("ipmi-local");
    sims.push(IpmiSim::start(&tools, &scratch.path().join("a"), &opts)?);
    opts.name = "ipmi-host".into();
    opts.site = Site::Host {
        host: net.hosts()[0].clone(),
        only_inside: false,
    };
    sims.push(IpmiSim::start(&tools, &scratch.path().join("b"), &opts)?);

    let rt = runtime()?;
    rt.block_on(async {
        for sim in &sims {
            let ep = sim.endpoint(CALL)?;
            ensure!(ep.protocol == Protocol::Ipmi);
            let b = bmc::connect(ep.clone())?;
            let report = b.check().await?;
            ensure!(report.power == PowerState::Off, "{report:?}");
            ensure!(
                sim.node_pid().is_none(),
                "{}: a node process runs while off",
                sim.name
            );

            b.reset(ResetKind::On).await?;
            wait_power(&*b, PowerState::On).await?;
            let first = sim.node_pid().context("on, yet no node process")?;

            b.reset(ResetKind::GracefulShutdown).await?;
            wait_power(&*b, PowerState::Off).await?;
            ensure!(
                sim.node_pid().is_none(),
                "soft off left the process running"
            );

            b.reset(ResetKind::On).await?;
            wait_power(&*b, PowerState::On).await?;
            let second = sim.node_pid().context("on again, yet no node process")?;
            ensure!(second != first);

            // cycle: off, then on about a second later, as a new process.
            b.reset(ResetKind::PowerCycle).await?;
            let deadline = Instant::now() + POWER_DEADLINE;
            while sim.node_pid().is_none_or(|p| p == second) {
                ensure!(Instant::now() < deadline, "cycle did not restart the node");
                tokio::time::sleep(POLL_EVERY).await;
            }
            wait_power(&*b, PowerState::On).await?;

            b.reset(ResetKind::ForceOff).await?;
            wait_power(&*b, PowerState::Off).await?;
            ensure!(sim.node_pid().is_none(), "off left the process running");

            b.set_next_boot(BootDevice::Pxe).await?;
            ensure!(sim.boot_device().as_deref() == Some("pxe"));

            let err = b
                .reset(ResetKind::GracefulRestart)
                .await
                .expect_err("IPMI has no graceful restart");
            ensure!(matches!(err.kind, ErrorKind::Unsupported(_)), "{err}");

            let calls = sim.chassis_calls();
            for want in [
                "set power 1",
                "set shutdown 1",
                "set power 0",
                "set boot pxe",
            ] {
                ensure!(calls.iter().any(|c| c == want), "no {want:?} in {calls:?}");
            }

            // A wrong password: refused, told apart from a dead BMC.
            let mut wrong = ep.clone();
            wrong.password = Secret::new("wrong-pw");
            let err = bmc::connect(wrong.clone())?
                .power_state()
                .await
                .expect_err("a wrong password must fail");
            let text = message_of(&err, &wrong)?;
            ensure!(
                matches!(err.kind, ErrorKind::Credentials(_)) && text.contains("password_file"),
                "{text}"
            );
        }

        // A BMC that is not running: no answer on its UDP port, within the timeout.
        let mut dead = sims[0].endpoint(CALL)?;
        dead.node = "ipmi-dead".into();
        dead.port = free_port(Ipv4Addr::LOCALHOST, true)?;
        let err = bmc::connect(dead.clone())?
            .power_state()
            .await
            .expect_err("a dead BMC must fail");
        let text = message_of(&err, &dead)?;
        ensure!(matches!(err.kind, ErrorKind::Unreachable(_)), "{text}");
        Ok(())
    })
}

/// How a hostile server answers every request.
#[derive(Clone, Copy, Debug)]
enum Hostile {
    GarbageJson,
    Html,
    ServerError,
    RedirectLoop,
    RedirectElsewhere,
    Trickle,
    Huge,
    NotHttp,
}

impl Hostile {
    /// Whether `kind` is the error this server deserves.
    fn expected(self, kind: &ErrorKind) -> bool {
        match self {
            Hostile::ServerError => matches!(kind, ErrorKind::Failed(_)),
            Hostile::Trickle => matches!(kind, ErrorKind::Timeout(_)),
            // Not HTTP at all: ureq may call it a protocol error or a broken connection.
            Hostile::NotHttp => matches!(kind, ErrorKind::BadAnswer(_) | ErrorKind::Unreachable(_)),
            _ => matches!(kind, ErrorKind::BadAnswer(_)),
        }
    }

    /// Words the error's message must hold.
    fn words(self) -> &'static str {
        match self {
            Hostile::GarbageJson => "not JSON",
            Hostile::Html => "HTML page",
            Hostile::ServerError => "firmware fell over",
            Hostile::RedirectLoop => "redirect loop",
            Hostile::RedirectElsewhere => "credentials are sent to",
            Hostile::Trickle => "no complete answer within 2s",
            Hostile::Huge => "larger than",
            Hostile::NotHttp => "",
        }
    }
}

/// A server on 127.0.0.1 that answers every connection as `mode` says; runs on the test's runtime.
async fn hostile_server(mode: Hostile) -> Result<SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(answer(stream, mode));
        }
    });
    Ok(addr)
}

async fn answer(mut stream: TcpStream, mode: Hostile) {
    // The request's head (the drivers send no body on GET).
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let path = String::from_utf8_lossy(&head)
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_string();
    let reply = |status: &str, ctype: &str, body: &str| {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let text = match mode {
        Hostile::GarbageJson => reply("200 OK", "application/json", "{\"Members\": [1, 2,,, }"),
        Hostile::Html => reply(
            "200 OK",
            "text/html",
            "<!doctype html><html><head><title>BMC Login</title></head><body>Log in</body></html>",
        ),
        Hostile::ServerError => reply(
            "500 Internal Server Error",
            "application/json",
            "{\"error\": {\"message\": \"firmware fell over\"}}",
        ),
        Hostile::RedirectLoop => {
            let next = if path.ends_with("/a") { "/loop/b" } else { "/loop/a" };
            format!("HTTP/1.1 307 Temporary Redirect\r\nLocation: {next}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        }
        Hostile::RedirectElsewhere => "HTTP/1.1 302 Found\r\nLocation: http://198.51.100.7/steal\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string(),
        Hostile::Trickle => {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
                .await;
            // One byte every 100 ms, for at most a minute: never a whole answer in time.
            for _ in 0..600 {
                if stream.write_all(b" ").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            return;
        }
        Hostile::Huge => {
            let body = format!("{{\"pad\": \"{}\"}}", "x".repeat(3 * 1024 * 1024));
            reply("200 OK", "application/json", &body)
        }
        Hostile::NotHttp => "SSH-2.0-OpenSSH_9.2\r\n".to_string(),
    };
    let _ = stream.write_all(text.as_bytes()).await;
    let _ = stream.shutdown().await;
}

#[test]
fn hostile_http_servers_fail_clearly_within_the_timeout() -> Result<()> {
    // The drivers' own timeout here; the bound below is a liveness bound with slack for a loaded
    // machine, which only turns a hang into a failure.
    const TIMEOUT: Duration = Duration::from_secs(2);
    const BOUND: Duration = Duration::from_secs(8);
    let scratch = Scratch::new("hostile")?;
    let password_file = scratch.path().join("pw");
    banyan_tests::bmc::write_secret(&password_file, "hostile-pw")?;
    let rt = runtime()?;
    rt.block_on(async {
        let cases = [
            Hostile::GarbageJson,
            Hostile::Html,
            Hostile::ServerError,
            Hostile::RedirectLoop,
            Hostile::RedirectElsewhere,
            Hostile::Trickle,
            Hostile::Huge,
            Hostile::NotHttp,
        ];
        let mut set = JoinSet::new();
        for (i, mode) in cases.iter().enumerate() {
            let addr = hostile_server(*mode).await?;
            let ep = Endpoint {
                node: format!("hostile{i}"),
                protocol: Protocol::Redfish,
                host: addr.ip().to_string(),
                port: addr.port(),
                user: "admin".into(),
                password: Secret::from_file(&password_file)?,
                tls: Tls::Plain,
                system_id: None,
                timeout: TIMEOUT,
            };
            let b = bmc::connect(ep)?;
            set.spawn(async move {
                let started = Instant::now();
                let result = b.power_state().await;
                (i, b, result, started.elapsed())
            });
        }
        while let Some(joined) = set.join_next().await {
            let (i, b, result, took) = joined?;
            let mode = cases[i];
            let want = mode.words();
            let err = result
                .clone()
                .err()
                .with_context(|| format!("{mode:?}: no error but {result:?}"))?;
            let text = message_of(&err, b.endpoint())?;
            ensure!(mode.expected(&err.kind), "{mode:?}: {text}");
            ensure!(text.contains(want), "{mode:?}: {text:?} lacks {want:?}");
            ensure!(took < BOUND, "{mode:?}: took {took:?}: {text}");
        }
        Ok(())
    })
}

#[test]
fn ipmitool_never_sees_the_password_in_its_arguments() -> Result<()> {
    // A stand-in ipmitool that writes its argv and its IPMI_PASSWORD where the test reads them.
    let scratch = Scratch::new("argv")?;
    let tool = scratch.path().join("ipmitool");
    let seen = scratch.path().join("seen");
    std::fs::write(
        &tool,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$*\" > {0}\necho \"env=$IPMI_PASSWORD\" >> {0}\necho 'Chassis Power is on'\n",
            seen.display()
        ),
    )?;
    std::fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let ep = Endpoint {
        node: "n1".into(),
        protocol: Protocol::Ipmi,
        host: "127.0.0.1".into(),
        port: 6230,
        user: "admin".into(),
        password: Secret::new("pa55-in-env"),
        tls: Tls::Plain,
        system_id: None,
        timeout: CALL,
    };
    let driver = bmc::ipmi::Ipmi::new(ep).with_program(tool);
    let state = runtime()?.block_on(driver.power_state())?;
    ensure!(state == PowerState::On);
    let text = std::fs::read_to_string(&seen)?;
    let (argv, env) = text.split_once('\n').context("two lines")?;
    ensure!(!argv.contains("pa55-in-env"), "password in argv: {argv}");
    ensure!(argv.contains("-E") && argv.contains("-I lanplus"), "{argv}");
    ensure!(env.trim() == "env=pa55-in-env", "{env}");
    Ok(())
}

#[test]
fn bmcs_inside_a_test_host_answer_only_there() -> Result<()> {
    let Some(tools) = require()? else {
        return Ok(());
    };
    if !Testnet::require()? {
        return Ok(());
    }
    let scratch = Scratch::new("inside")?;
    // A management network only one host reaches: both emulators on that host's own loopback.
    let net = Testnet::up(1)?;
    let site = Site::Host {
        host: net.hosts()[0].clone(),
        only_inside: true,
    };
    let mut opts = SushyOptions::new(&["inside-rf"]);
    opts.site = site.clone();
    let sushy = Sushy::start(&tools, &scratch.path().join("rf"), &opts)?;
    let mut opts = IpmiOptions::new("inside-ipmi");
    opts.site = site;
    let sim = IpmiSim::start(&tools, &scratch.path().join("ipmi"), &opts)?;

    // From inside the host both answer, with the credentials and (Redfish) through the test CA.
    ensure!(sim
        .ipmitool(&["chassis", "power", "status"])?
        .contains("Chassis Power is off"));
    let ca = sushy.ca_file.clone().context("TLS is on")?;
    let probe = "import base64, ssl, sys, urllib.request\n\
                 url, ca, user, pw = sys.argv[1:5]\n\
                 auth = base64.b64encode((user + ':' + open(pw).read().strip()).encode()).decode()\n\
                 req = urllib.request.Request(url + '/redfish/v1/Systems', headers={'Authorization': 'Basic ' + auth})\n\
                 print(urllib.request.urlopen(req, context=ssl.create_default_context(cafile=ca), timeout=10).status)\n";
    let out = net.exec(
        0,
        &[
            "python3",
            "-c",
            probe,
            &sushy.url(),
            ca.to_str().context("UTF-8 path")?,
            &sushy.user,
            sushy.password_file.to_str().context("UTF-8 path")?,
        ],
    )?;
    ensure!(
        String::from_utf8_lossy(&out.stdout).trim() == "200",
        "Redfish from inside the host: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // From the machine's own namespace neither is there.
    runtime()?.block_on(async {
        for ep in [sushy.endpoint("inside-rf", CALL)?, sim.endpoint(CALL)?] {
            let err = bmc::connect(ep.clone())?
                .power_state()
                .await
                .expect_err("a BMC inside a host is not reachable from outside");
            let text = message_of(&err, &ep)?;
            ensure!(matches!(err.kind, ErrorKind::Unreachable(_)), "{text}");
        }
        Ok(())
    })
}

#[test]
fn ipmi_sim_serves_serial_over_lan_from_a_tcp_port() -> Result<()> {
    use std::io::{Read, Write};
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let Some(tools) = require()? else {
        return Ok(());
    };
    let scratch = Scratch::new("sol")?;
    // The node's serial port: a TCP listener that answers each line upper-cased.
    let console = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let console_addr = console.local_addr()?;
    std::thread::spawn(move || {
        if let Ok((mut stream, _)) = console.accept() {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
            let mut buf = [0u8; 256];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let reply = format!("ECHO:{}", String::from_utf8_lossy(&buf[..n]).to_uppercase());
                if stream.write_all(reply.as_bytes()).is_err() {
                    break;
                }
            }
        }
    });
    let mut opts = IpmiOptions::new("sol-node");
    opts.sol = Some(console_addr);
    // A node already running when its BMC starts (as a test host's agent would be).
    opts.powered_on = true;
    let sim = IpmiSim::start(&tools, scratch.path(), &opts)?;
    ensure!(
        sim.node_pid().is_some(),
        "powered_on started no node process"
    );
    ensure!(sim
        .ipmitool(&["chassis", "power", "status"])?
        .contains("Chassis Power is on"));

    // ipmitool's SOL wants a terminal: `script` gives it one. The password stays in the
    // environment.
    let password = Secret::from_file(&sim.password_file)?;
    let command = format!(
        "{} -I lanplus -C 3 -R 1 -N 1 -E -H {} -p {} -U {} sol activate",
        tools.ipmitool.display(),
        sim.addr.ip(),
        sim.addr.port(),
        sim.user
    );
    let mut child = Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .env("IPMI_PASSWORD", password.expose())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .context("running script(1) from util-linux")?;
    let pid = child.id();
    let mut stdin = child.stdin.take().context("stdin")?;
    let stdout = child.stdout.take().context("stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Raw chunks: a console's prompt and echo end in '\r', not in a line end.
        let mut stdout = stdout;
        let mut buf = [0u8; 1024];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    let mut wait_for = |want: &str| -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(chunk) = rx.recv_timeout(Duration::from_millis(200)) {
                seen.push_str(&String::from_utf8_lossy(&chunk));
            }
            if seen.contains(want) {
                return Ok(());
            }
        }
        bail!("no {want:?} from the SOL session: {seen:?}")
    };
    let outcome = (|| -> Result<()> {
        wait_for("SOL Session operational")?;
        stdin.write_all(b"hello\r")?;
        stdin.flush()?;
        wait_for("ECHO:HELLO")?;
        // ipmitool's escape: `~.` leaves the session.
        stdin.write_all(b"~.")?;
        stdin.flush()?;
        wait_for("terminated ipmitool")
    })();
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = child.wait();
    outcome
}
