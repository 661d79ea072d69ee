//! bench-vm: what banyan adds to launching QEMU guests, beside QEMU started by hand.
//!
//! One test host runs a banyan agent under a root. For K guests at once (1, 4 and 8 by default),
//! each round times:
//! - **banyan**: from before `banyan vm launch HOST --count K --for-real` (the CLI posts the
//!   action, the root seals it, the tree carries it, the agent's manager starts the QEMUs and waits
//!   for QMP, the receipt comes back) to each guest's boot marker in its serial log, which is read
//!   on the host's disk every 5 ms (so the tree is not timed twice); and *launched*: when the CLI
//!   returned, which the agent's receipt allows once every QEMU answers QMP `running`.
//! - **by hand**: the same QEMU command lines (read from the guests' `state.json`, their paths
//!   moved to a directory of the benchmark's), started at once from this process, to the same
//!   marker in the same kind of log; *launched* is when the last of them answered QMP
//!   `query-status` with `running`, the point the agent waits for.
//!
//! The two take turns, banyan first, after one untimed warm-up launch (page cache, QEMU's
//! first start). With `--join` (the guest image holding an agent, `scripts/lib/guest image
//! DIR --agent`), the banyan runs also time the guests' own agents appearing in `/topology`.
//!
//! The agent's cost per guest: its resident set (`VmRSS`) before the launch and with the K guests
//! up, and its CPU over a 5 s window with the guests up against a window with none.
//!
//! Boots are TCG on a loaded two-core machine: their times spread by hundreds of milliseconds,
//! so the markers' difference is printed as boot noise; what banyan adds to a launch (the goal:
//! under 100 ms) is the difference of the medians of *launched*. A benchmark, not a test: it prints figures and asserts nothing about time.
//! Run it as root with `scripts/bench-vm`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use banyan_tests::cluster::{banyan_cli, Cluster, ClusterOptions};
use banyan_tests::procstat;
use banyan_tests::support::percentile;

const USAGE: &str = "\
usage: bench-vm [--counts N,N,...] [--rounds N] [--memory M] [--image DIR] [--join]
  --counts  guests launched at once on the host (default 1,4,8)
  --rounds  timed rounds per count and way (default 3), after one warm-up launch
  --memory  each guest's memory (default 128M)
  --image   the guest image directory (default target/tmp/banyan-guest)
  --join    launch with --join and time the guests' agents in /topology too
example: scripts/bench-vm --counts 1,4 --rounds 5";

const MARKER: &[u8] = b"banyan-guest: up";
/// Agents joining on a busy machine.
const FORM: Duration = Duration::from_secs(60);
/// One launch of K guests to their markers: a liveness bound only.
const BOOT_BUDGET: Duration = Duration::from_secs(300);
/// The agent's CPU window with and without guests.
const CPU_WINDOW: Duration = Duration::from_secs(5);

struct Opts {
    counts: Vec<usize>,
    rounds: usize,
    memory: String,
    image: PathBuf,
    join: bool,
}

fn parse_args() -> Result<Option<Opts>> {
    let mut o = Opts {
        counts: vec![1, 4, 8],
        rounds: 3,
        memory: "128M".into(),
        image: Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tmp/banyan-guest"),
        join: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |flag: &str| args.next().with_context(|| format!("{flag} needs a value"));
        match a.as_str() {
            "-h" | "--help" => return Ok(None),
            "--counts" => {
                o.counts = value("--counts")?
                    .split(',')
                    .map(|s| match s.trim().parse::<usize>() {
                        Ok(n) if (1..=32).contains(&n) => Ok(n),
                        _ => bail!("--counts: '{s}' is not a number of guests from 1 to 32"),
                    })
                    .collect::<Result<_>>()?;
            }
            "--rounds" => {
                let v = value("--rounds")?;
                o.rounds = match v.parse() {
                    Ok(n) if n >= 1 => n,
                    _ => bail!("--rounds: '{v}' is not a positive number"),
                };
            }
            "--memory" => o.memory = value("--memory")?,
            "--image" => o.image = PathBuf::from(value("--image")?),
            "--join" => o.join = true,
            other => bail!("unknown argument '{other}'\n{USAGE}"),
        }
    }
    Ok(Some(o))
}

/// Milliseconds since `t0` at which each log in `logs` first held the marker.
fn wait_markers(logs: &[PathBuf], t0: Instant) -> Result<Vec<f64>> {
    let mut at: Vec<Option<f64>> = vec![None; logs.len()];
    while at.iter().any(Option::is_none) {
        for (i, log) in logs.iter().enumerate() {
            if at[i].is_none()
                && fs::read(log).is_ok_and(|b| b.windows(MARKER.len()).any(|w| w == MARKER))
            {
                at[i] = Some(t0.elapsed().as_secs_f64() * 1e3);
            }
        }
        ensure!(
            t0.elapsed() < BOOT_BUDGET,
            "guests did not print their marker within {BOOT_BUDGET:?}: {logs:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(at.into_iter().flatten().collect())
}

/// What one launch of K guests measured.
#[derive(Default)]
struct Launch {
    /// Each guest's marker, ms from the start.
    markers: Vec<f64>,
    /// Launched: the CLI returned (banyan), the last QMP answered `running` (by hand).
    returned_ms: Option<f64>,
    /// Each guest's agent in /topology, ms from the start (banyan with --join).
    joined: Vec<f64>,
}

struct Bench<'a> {
    c: &'a Cluster,
    host: String,
    token: String,
    kernel: String,
    initrd: String,
    vm_dir: PathBuf,
    hand_dir: PathBuf,
    opts: &'a Opts,
}

impl Bench<'_> {
    fn cli(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["--token", &self.token];
        all.extend_from_slice(args);
        let (out, ok) = banyan_cli(self.c, &all)?;
        ensure!(ok, "banyan {}: failed:\n{out}", args.join(" "));
        Ok(out)
    }

    fn names(name: &str, k: usize) -> Vec<String> {
        if k == 1 {
            vec![name.to_string()]
        } else {
            (1..=k).map(|i| format!("{name}-{i}")).collect()
        }
    }

    /// Launches K guests through banyan and waits for their markers (and agents).
    fn banyan(&self, name: &str, k: usize) -> Result<Launch> {
        let count = k.to_string();
        let mut args = vec![
            "vm",
            "launch",
            &self.host,
            "--name",
            name,
            "--count",
            &count,
            "--cpus",
            "1",
            "--memory",
            &self.opts.memory,
            "--accel",
            "tcg",
            "--kernel",
            &self.kernel,
            "--initrd",
            &self.initrd,
            "--ttl",
            "30m",
            "--for-real",
        ];
        if self.opts.join {
            args.push("--join");
        }
        let t0 = Instant::now();
        self.cli(&args)?;
        let returned = t0.elapsed().as_secs_f64() * 1e3;
        let names = Self::names(name, k);
        let logs: Vec<PathBuf> = names
            .iter()
            .map(|n| self.vm_dir.join(n).join("serial.log"))
            .collect();
        let markers = wait_markers(&logs, t0)?;
        let mut joined = Vec::new();
        if self.opts.join {
            let want: Vec<String> = names
                .iter()
                .map(|n| format!("{}-vm-{n}", self.host))
                .collect();
            let mut at: BTreeMap<&str, f64> = BTreeMap::new();
            while at.len() < want.len() {
                let topo = self.c.topology()?;
                for w in &want {
                    if !at.contains_key(w.as_str()) && topo.is_attached(w) {
                        at.insert(w, t0.elapsed().as_secs_f64() * 1e3);
                    }
                }
                ensure!(
                    t0.elapsed() < BOOT_BUDGET,
                    "guest agents not in /topology within {BOOT_BUDGET:?}: {:?} of {want:?}",
                    at.keys()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            joined = at.into_values().collect();
        }
        Ok(Launch {
            markers,
            returned_ms: Some(returned),
            joined,
        })
    }

    fn stop_all(&self) -> Result<()> {
        self.cli(&[
            "vm",
            "stop",
            "--all",
            &self.host,
            "--timeout",
            "5s",
            "--for-real",
        ])?;
        Ok(())
    }

    /// The QEMU command lines of the guests running now, by name, from their state files.
    fn command_lines(&self, names: &[String]) -> Result<Vec<Vec<String>>> {
        names
            .iter()
            .map(|n| {
                let path = self.vm_dir.join(n).join("state.json");
                let text = fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let v: serde_json::Value = serde_json::from_str(&text)
                    .with_context(|| format!("parsing {}", path.display()))?;
                v["argv"]
                    .as_array()
                    .context("no argv in state.json")?
                    .iter()
                    .map(|a| a.as_str().map(str::to_string).context("argv not strings"))
                    .collect()
            })
            .collect()
    }

    /// Starts the same command lines by hand, in directories of the benchmark's, to the markers.
    fn by_hand(&self, names: &[String], argvs: &[Vec<String>]) -> Result<Launch> {
        let mut logs = Vec::new();
        let mut cmds = Vec::new();
        for (n, argv) in names.iter().zip(argvs) {
            let from = self.vm_dir.join(n).display().to_string();
            let to = self.hand_dir.join(n);
            let _ = fs::remove_dir_all(&to);
            fs::create_dir_all(&to).with_context(|| format!("creating {}", to.display()))?;
            let to_s = to.display().to_string();
            let argv: Vec<String> = argv.iter().map(|a| a.replace(&from, &to_s)).collect();
            // The join token file is the agent's; a hand-started guest boots without joining.
            let argv: Vec<String> = strip_fw_cfg(argv);
            logs.push(to.join("serial.log"));
            cmds.push(argv);
        }
        let t0 = Instant::now();
        let mut children: Vec<Child> = Vec::new();
        for argv in &cmds {
            let child = Command::new(&argv[0])
                .args(&argv[1..])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| format!("starting {}", argv[0]))?;
            children.push(child);
        }
        let mut ready = Vec::new();
        for argv in &cmds {
            qmp_running(&qmp_path(argv)?, t0)?;
            ready.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        let markers = wait_markers(&logs, t0);
        for mut child in children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for n in names {
            let _ = fs::remove_dir_all(self.hand_dir.join(n));
        }
        Ok(Launch {
            markers: markers?,
            // By hand, "launched" is the last QEMU answering QMP `running`, as the agent waits.
            returned_ms: ready.last().copied(),
            joined: Vec::new(),
        })
    }
}

/// The command line without its `-fw_cfg` pairs (a guest started by hand has no token).
fn strip_fw_cfg(argv: Vec<String>) -> Vec<String> {
    let mut out = Vec::with_capacity(argv.len());
    let mut skip = false;
    for a in argv {
        if skip {
            skip = false;
            continue;
        }
        if a == "-fw_cfg" {
            skip = true;
            continue;
        }
        out.push(a);
    }
    out
}

/// The agent's CPU over [`CPU_WINDOW`], as a percentage of one core, from the scheduler's own
/// account (`schedstat`: to the nanosecond, where clock ticks would round a quiet agent to 0).
fn cpu_percent(pid: u32) -> Result<f64> {
    let (cpu0, t0) = (procstat::run_time(pid)?, Instant::now());
    std::thread::sleep(CPU_WINDOW);
    let cpu = procstat::run_time(pid)?.saturating_sub(cpu0);
    Ok(100.0 * cpu.as_secs_f64() / t0.elapsed().as_secs_f64())
}

/// Waits until the QMP socket at `path` answers `query-status` with `running`.
fn qmp_running(path: &Path, t0: Instant) -> Result<()> {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixStream;
    let stream = loop {
        match UnixStream::connect(path) {
            Ok(s) => break s,
            Err(_) if t0.elapsed() < BOOT_BUDGET => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => return Err(e).with_context(|| format!("QMP at {}", path.display())),
        }
    };
    stream.set_read_timeout(Some(BOOT_BUDGET))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut w = stream;
    let mut line = String::new();
    reader.read_line(&mut line)?; // the greeting
    w.write_all(b"{\"execute\":\"qmp_capabilities\"}\n")?;
    line.clear();
    reader.read_line(&mut line)?;
    loop {
        w.write_all(b"{\"execute\":\"query-status\"}\n")?;
        // Events may come first: read to the answer.
        loop {
            line.clear();
            ensure!(
                reader.read_line(&mut line)? > 0,
                "QMP at {} closed",
                path.display()
            );
            if line.contains("\"return\"") {
                break;
            }
        }
        if line.contains("\"running\"") {
            return Ok(());
        }
        ensure!(
            t0.elapsed() < BOOT_BUDGET,
            "QMP at {}: never running",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The QMP socket's path in a QEMU command line (`-qmp unix:PATH,server=on,...`).
fn qmp_path(argv: &[String]) -> Result<PathBuf> {
    argv.windows(2)
        .find(|w| w[0] == "-qmp")
        .and_then(|w| w[1].strip_prefix("unix:"))
        .and_then(|v| v.split(',').next())
        .map(PathBuf::from)
        .context("no -qmp unix: in the command line")
}

fn ms(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    percentile(&v, p / 100.0)
}

fn main() -> Result<()> {
    let Some(opts) = parse_args()? else {
        println!("{USAGE}");
        return Ok(());
    };
    let kernel = opts.image.join("vmlinuz");
    let initrd = opts.image.join("initramfs.gz");
    ensure!(
        kernel.exists() && initrd.exists(),
        "no guest image in {}: run scripts/lib/guest image {} first (scripts/bench-vm does)",
        opts.image.display(),
        opts.image.display()
    );
    let c = Cluster::start(1, ClusterOptions::default())?;
    let names = c.names();
    c.wait_healthy(&names, FORM)?;
    let agent_pid = c.agent_pid(0).context("the agent is not running")?;
    let hand_dir = c.dir().join("by-hand");
    fs::create_dir_all(&hand_dir)?;
    let b = Bench {
        c: &c,
        host: names[0].clone(),
        token: c.admin_token().to_string(),
        kernel: kernel.display().to_string(),
        initrd: initrd.display().to_string(),
        vm_dir: c.agent_state_dir(0)?.join("vm"),
        hand_dir,
        opts: &opts,
    };

    println!(
        "bench-vm: {} guest(s) at once, {} round(s) each way, {} each, TCG, image {}{}",
        opts.counts
            .iter()
            .map(|k| k.to_string())
            .collect::<Vec<_>>()
            .join("/"),
        opts.rounds,
        opts.memory,
        opts.image.display(),
        if opts.join { ", with --join" } else { "" }
    );
    // Warm-up: one guest each way, untimed.
    b.banyan("warm", 1)?;
    let argv = b.command_lines(&["warm".to_string()])?;
    b.stop_all()?;
    b.by_hand(&["warm".to_string()], &argv)?;

    let idle = cpu_percent(agent_pid)?;

    println!();
    println!(
        "guests  way     marker ms p50 / max (all guests, all rounds)  launched ms p50  agents in tree ms p50 / max"
    );
    let mut summary = Vec::new();
    for &k in &opts.counts {
        let (mut ours, mut hand, mut returned, mut joined, mut hand_ready) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut rss_per_guest, mut cpu_per_guest) = (Vec::new(), Vec::new());
        for r in 0..opts.rounds {
            let name = format!("b{k}r{r}");
            let before = procstat::memory(agent_pid)?;
            let l = b.banyan(&name, k)?;
            let after = procstat::memory(agent_pid)?;
            let up = cpu_percent(agent_pid)?;
            rss_per_guest.push((after.rss_kib as f64 - before.rss_kib as f64) / k as f64);
            cpu_per_guest.push((up - idle) / k as f64);
            let guest_names = Bench::names(&name, k);
            let argvs = b.command_lines(&guest_names)?;
            b.stop_all()?;
            ours.extend(l.markers);
            returned.extend(l.returned_ms);
            joined.extend(l.joined);
            let h = b.by_hand(&guest_names, &argvs)?;
            hand.extend(h.markers);
            hand_ready.extend(h.returned_ms);
        }
        println!(
            "{k:>6}  banyan  {:>8.0} / {:<8.0}{:>40.0}  {}",
            ms(&ours, 50.0),
            ms(&ours, 100.0),
            ms(&returned, 50.0),
            if joined.is_empty() {
                "-".to_string()
            } else {
                format!("{:.0} / {:.0}", ms(&joined, 50.0), ms(&joined, 100.0))
            }
        );
        println!(
            "{k:>6}  hand    {:>8.0} / {:<8.0}{:>40.0}  -",
            ms(&hand, 50.0),
            ms(&hand, 100.0),
            ms(&hand_ready, 50.0)
        );
        summary.push((
            k,
            ms(&returned, 50.0) - ms(&hand_ready, 50.0),
            ms(&ours, 50.0) - ms(&hand, 50.0),
            ms(&rss_per_guest, 50.0),
            ms(&cpu_per_guest, 50.0),
        ));
    }
    println!();
    println!(
        "agent idle: {:.3}% of a core; RSS {:.1} MiB",
        idle,
        procstat::memory(agent_pid)?.rss_mib()
    );
    println!("guests  banyan - hand: launched p50 (goal < 100 ms)  marker p50 (boot noise)  agent RSS per guest (goal < 1024 KiB)  agent CPU per guest running");
    for (k, launched, marker, rss, cpu) in summary {
        println!("{k:>6}  {launched:>+44.0} ms  {marker:>+19.0} ms  {rss:>33.0} KiB  {cpu:>+23.4}% of a core");
    }
    Ok(())
}
