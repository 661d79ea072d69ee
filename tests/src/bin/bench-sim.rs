//! bench-sim: the tree simulator at 1,000 to 100,000 agents. For each size it forms the tree,
//! measures what reaches the root per wave (reports, the aggregated values, apart from everything
//! else), then kills 1% of the agents at random three times and measures detection and healing:
//! `heal` is the first instant the tree is sound (leaves the root is moving may still be on their
//! way, attached where they were), `settled` the first with no such move in flight.
//!
//! A benchmark: it prints figures and asserts nothing. Times in the tables are virtual (the
//! simulator's clock) except the columns named `wall`. Run it through `scripts/bench-sim`.

use banyan_protocol::wire::ROOT_NAME;
use banyan_tests::sim::{Ingress, Sim, SimConfig};
use rand::seq::SliceRandom;
use std::collections::HashSet;
use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Instant;

const DEFAULT_SIZES: [usize; 3] = [1_000, 10_000, 100_000];
const WAVES: usize = 10;
const ROUNDS: usize = 3;
const KILL_FRACTION: f64 = 0.01;
const JOIN_STEP_MS: u64 = 10;
const JOIN_LIMIT_MS: u64 = 300_000;
const HEAL_STEP_MS: u64 = 50;
const HEAL_LIMIT_MS: u64 = 30_000;
/// The heal time operators are promised.
const HEAL_TARGET_MS: u64 = 5_000;
/// Quiet time before failures: counters bumped just before a kill must have reached the root,
/// or the dead agent's last values could never be counted and the totals would never match.
const QUIESCE_MS: u64 = 2_500;
/// Time after a heal before the depth is read: the root compacts the tree once a second, so the
/// leaf moves a failure causes come after the heal itself.
const SETTLE_MS: u64 = 5_000;

const USAGE: &str = "\
usage: bench-sim [--sizes N,N,...] [--seed S]
  --sizes  tree sizes to simulate (default 1000,10000,100000)
  --seed   simulator seed; the same seed replays the same run (default 1)
example: scripts/bench-sim --sizes 1000,10000 --seed 7";

struct Args {
    sizes: Vec<usize>,
    seed: u64,
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut args = Args {
        sizes: DEFAULT_SIZES.to_vec(),
        seed: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        // Both `--flag value` and `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (arg.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--sizes" => {
                let v = value("--sizes")?;
                args.sizes = v
                    .split(',')
                    .map(|s| match s.trim().replace('_', "").parse::<usize>() {
                        Ok(n) if n > 0 => Ok(n),
                        _ => Err(format!("--sizes: '{s}' is not a positive number of nodes")),
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--seed" => {
                let v = value("--seed")?;
                args.seed = v
                    .parse()
                    .map_err(|_| format!("--seed: '{v}' is not a non-negative integer"))?;
            }
            other => return Err(format!("unknown argument '{other}' (try --help)")),
        }
    }
    Ok(Some(args))
}

/// Root ingress of one wave.
#[derive(Debug, Clone, Copy)]
struct Wave {
    msgs: u64,
    bytes: u64,
    report_msgs: u64,
    report_bytes: u64,
}

impl Wave {
    fn other_msgs(&self) -> u64 {
        self.msgs - self.report_msgs
    }
    fn other_bytes(&self) -> u64 {
        self.bytes - self.report_bytes
    }
}

/// One kill-and-heal round.
struct Round {
    killed: usize,
    /// Live agents whose parent was killed: they must rejoin.
    orphans: usize,
    /// Live agents below a killed one (orphans and their subtrees): cut off from the root.
    cut_off: usize,
    detect_ms: Option<u64>,
    heal_ms: Option<u64>,
    /// Healed with no leaf move of the root's in flight (the compaction after a heal can keep a
    /// few leaves moving for a while; a moving leaf is attached where it was all along).
    settled_ms: Option<u64>,
    /// Why the tree was not healed at the limit.
    heal_error: Option<String>,
    promotions: u64,
    moves: u64,
    depth_before: u32,
    depth_after: Option<u32>,
    bound_after: Option<u32>,
    wall_s: f64,
}

struct SizeResult {
    nodes: usize,
    join_ms: Option<u64>,
    join_wall_s: f64,
    depth: u32,
    bound: u32,
    waves: Vec<Wave>,
    rounds: Vec<Round>,
    total_wall_s: f64,
    /// Problems worth printing (an invariant that did not hold where it should have).
    notes: Vec<String>,
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("bench-sim: {e}");
            return ExitCode::from(2);
        }
    };
    let cfg = SimConfig::new(args.seed);
    println!(
        "bench-sim: seed {}, period {} ms, heartbeat {} ms, dead-after {} ms, latency {}-{} ms/hop",
        args.seed,
        cfg.tree.period_ms,
        cfg.tree.heartbeat_ms,
        cfg.tree.dead_after_ms,
        cfg.latency_min_ms,
        cfg.latency_max_ms
    );
    let started = Instant::now();
    let mut results = Vec::new();
    for &n in &args.sizes {
        let r = bench_size(args.seed, n);
        print_detail(&r);
        results.push(r);
    }
    print_tables(&results);
    println!(
        "bench-sim: total wall {:.1} s",
        started.elapsed().as_secs_f64()
    );
    ExitCode::SUCCESS
}

/// Progress on stderr, so a long run shows where it is without mixing into the tables.
fn progress(n: usize, what: &str) {
    eprintln!("bench-sim: {n} nodes: {what}");
}

fn bench_size(seed: u64, n: usize) -> SizeResult {
    let size_started = Instant::now();
    let mut cfg = SimConfig::new(seed);
    cfg.measure_root_ingress = true;
    // The tests check the invariants after every event; the benchmark measures the tree, not the
    // checker (its heal rounds still wait for the full `check()` to pass).
    cfg.check_every_event = false;
    let period = cfg.tree.period_ms;
    let mut sim = Sim::new(cfg);
    let mut notes = Vec::new();

    // 1. Formation.
    progress(n, "joining");
    let wall = Instant::now();
    sim.add_agents(n);
    // Every fresh join makes the root's placement rebuild its whole model (O(N) per join, so
    // O(N^2) to form the tree): at 100,000 agents forming takes hours of wall time, almost all
    // of it inside the first virtual step. Say how far it got whenever a step ends late.
    let mut last_note = Instant::now();
    let join_ms = sim.run_until_cond(JOIN_STEP_MS, JOIN_LIMIT_MS, |s| {
        if last_note.elapsed().as_secs() >= 30 {
            last_note = Instant::now();
            let attached = s
                .live()
                .into_iter()
                .filter(|&i| s.node(i).is_attached())
                .count();
            progress(
                n,
                &format!(
                    "{attached} attached at {} ms virtual, {:.0} s wall",
                    s.now(),
                    wall.elapsed().as_secs_f64()
                ),
            );
        }
        s.check(false).is_ok()
    });
    let join_wall_s = wall.elapsed().as_secs_f64();
    if join_ms.is_none() {
        let why = sim.check(false).err().unwrap_or_default();
        notes.push(format!(
            "not formed within {} s: {why}",
            JOIN_LIMIT_MS / 1000
        ));
    }
    progress(n, &format!("formed in {join_wall_s:.1} s wall"));

    // 2. Steady-state waves. Values change every wave, as real counters do. The windows are
    // centred between wave starts so each holds exactly one wave's reports (they reach the root
    // within a few hops' latency of the boundary).
    sim.bump_all(|i| (i % 7 + 1) as f64);
    sim.run_for(3 * period);
    if let Err(e) = sim.check(true) {
        notes.push(format!("before the waves: {e}"));
    }
    let next_mid = (sim.now() / period + 1) * period + period / 2;
    sim.run_for(next_mid - sim.now());
    let mut waves = Vec::with_capacity(WAVES);
    for _ in 0..WAVES {
        sim.bump_all(|i| (i % 5 + 1) as f64);
        sim.ingress = Ingress::default();
        sim.run_for(period);
        let g = &sim.ingress;
        waves.push(Wave {
            msgs: g.messages,
            bytes: g.bytes,
            report_msgs: g.report_messages,
            report_bytes: g.report_bytes,
        });
    }
    let shape = match sim.check(true) {
        Ok(s) => s,
        Err(e) => {
            notes.push(format!("after the waves: {e}"));
            sim.check(false).unwrap_or(banyan_tests::sim::TreeShape {
                live: 0,
                max_depth: 0,
                bound: 0,
                moving: 0,
            })
        }
    };
    progress(
        n,
        &format!(
            "waves measured, {:.1} s wall so far",
            size_started.elapsed().as_secs_f64()
        ),
    );

    // 3. and 4. Failures.
    let mut rounds = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        progress(n, &format!("kill round {}", round + 1));
        rounds.push(kill_round(&mut sim, &mut notes, round));
    }

    SizeResult {
        nodes: n,
        join_ms,
        join_wall_s,
        depth: shape.max_depth,
        bound: shape.bound,
        waves,
        rounds,
        total_wall_s: size_started.elapsed().as_secs_f64(),
        notes,
    }
}

fn kill_round(sim: &mut Sim, notes: &mut Vec<String>, round: usize) -> Round {
    let wall = Instant::now();
    sim.bump_all(|i| (i % 3 + 1) as f64);
    sim.run_for(QUIESCE_MS);
    let depth_before = match sim.check(true) {
        Ok(s) => s.max_depth,
        Err(e) => {
            notes.push(format!("round {}: before the kill: {e}", round + 1));
            0
        }
    };

    let mut live = sim.live();
    live.shuffle(sim.rng());
    let kills = ((live.len() as f64) * KILL_FRACTION).ceil() as usize;
    let victims: Vec<usize> = live[..kills].to_vec();
    let victim_names: HashSet<String> = victims.iter().map(|&i| Sim::name_of(i)).collect();
    let (orphans, cut_off) = count_orphans(sim, &victim_names);

    let promotions0 = sim.root().placement.promotions;
    let moves0 = sim.root().placement.rebalance_moves;
    for &i in &victims {
        sim.kill(i);
    }

    // Detection and healing are watched in the same steps: whichever comes first, the loop
    // goes on until both are seen (or the limit passes).
    let mut detect_ms = None;
    let mut heal_ms = None;
    let mut settled_ms = None;
    // Why the tree was not sound at the 5 s target, when it was not: the thing to fix next.
    let mut at_target: Option<String> = None;
    let start = sim.now();
    sim.run_until_cond(HEAL_STEP_MS, HEAL_LIMIT_MS, |s| {
        let t = s.now() - start;
        if detect_ms.is_none() && all_dropped(s, &victim_names) {
            detect_ms = Some(t);
        }
        if heal_ms.is_none() || settled_ms.is_none() {
            match s.check(true) {
                Ok(shape) => {
                    heal_ms.get_or_insert(t);
                    if shape.moving == 0 {
                        settled_ms.get_or_insert(t);
                    }
                }
                Err(e) if t >= HEAL_TARGET_MS && heal_ms.is_none() && at_target.is_none() => {
                    at_target = Some(e)
                }
                Err(_) => {}
            }
        }
        detect_ms.is_some() && heal_ms.is_some() && settled_ms.is_some()
    });
    if let Some(e) = at_target {
        notes.push(format!(
            "round {}: not sound {} s after the kills: {e}",
            round + 1,
            HEAL_TARGET_MS / 1000
        ));
    }
    let heal_error = match heal_ms {
        Some(_) => None,
        None => sim.check(true).err(),
    };

    // The depth after includes the compaction that follows a heal.
    sim.run_for(SETTLE_MS);
    let (depth_after, bound_after) = match sim.check(true) {
        Ok(s) => (Some(s.max_depth), Some(s.bound)),
        Err(e) => {
            notes.push(format!(
                "round {}: {} s after the heal: {e}",
                round + 1,
                SETTLE_MS / 1000
            ));
            (None, None)
        }
    };
    let promotions = sim.root().placement.promotions - promotions0;
    let moves = sim.root().placement.rebalance_moves - moves0;
    Round {
        killed: kills,
        orphans,
        cut_off,
        detect_ms,
        heal_ms,
        settled_ms,
        heal_error,
        promotions,
        moves,
        depth_before,
        depth_after,
        bound_after,
        wall_s: wall.elapsed().as_secs_f64(),
    }
}

/// Counts the live agents whose parent is about to die, and every live agent below one.
fn count_orphans(sim: &Sim, victims: &HashSet<String>) -> (usize, usize) {
    let mut orphans = 0;
    let mut cut_off = 0;
    for i in sim.live() {
        let name = Sim::name_of(i);
        if victims.contains(&name) {
            continue;
        }
        let node = sim.node(i);
        if node.parent().is_some_and(|p| victims.contains(&p.name)) {
            orphans += 1;
        }
        // Walk up to the root; the tree is healthy here, so the walk ends within its depth.
        let mut cur = node.parent().map(|p| p.name.clone());
        let mut guard = sim.agent_count() + 1;
        while let Some(p) = cur {
            if victims.contains(&p) {
                cut_off += 1;
                break;
            }
            guard -= 1;
            if p == ROOT_NAME || guard == 0 {
                break;
            }
            let Some(pi) = p.get(1..).and_then(|s| s.parse::<usize>().ok()) else {
                break;
            };
            cur = sim.node(pi).parent().map(|q| q.name.clone());
        }
    }
    (orphans, cut_off)
}

/// Whether every killed agent has been dropped by the node that held it (no live agent and not
/// the root lists it as a child any more).
fn all_dropped(sim: &mut Sim, victims: &HashSet<String>) -> bool {
    if sim.root().node.children().any(|c| victims.contains(c)) {
        return false;
    }
    !sim.live()
        .into_iter()
        .any(|i| sim.node(i).children().any(|c| victims.contains(c)))
}

// ----- Output ------------------------------------------------------------------------------------

fn secs(ms: Option<u64>) -> String {
    ms.map_or("-".to_string(), |ms| format!("{:.2}", ms as f64 / 1000.0))
}

fn mean(xs: impl Iterator<Item = u64>) -> f64 {
    let v: Vec<u64> = xs.collect();
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<u64>() as f64 / v.len() as f64
    }
}

/// min/median/max of the rounds that healed, with how many did not.
fn min_med_max(ms: &[Option<u64>]) -> String {
    let mut v: Vec<u64> = ms.iter().flatten().copied().collect();
    v.sort_unstable();
    if v.is_empty() {
        return "-".into();
    }
    let s = |x: u64| format!("{:.2}", x as f64 / 1000.0);
    let mut out = format!("{}/{}/{}", s(v[0]), s(v[v.len() / 2]), s(v[v.len() - 1]));
    let failed = ms.len() - v.len();
    if failed > 0 {
        let _ = write!(out, " ({failed} >{}s)", HEAL_LIMIT_MS / 1000);
    }
    out
}

fn print_detail(r: &SizeResult) {
    println!();
    println!(
        "{} nodes: formed in {} s virtual ({:.1} s wall), depth {} (bound {}), {:.1} s wall in all",
        r.nodes,
        secs(r.join_ms),
        r.join_wall_s,
        r.depth,
        r.bound,
        r.total_wall_s
    );
    println!("  wave  root msgs  root bytes  report msgs  report bytes  other msgs  other bytes");
    for (k, w) in r.waves.iter().enumerate() {
        println!(
            "  {:<4}  {:>9}  {:>10}  {:>11}  {:>12}  {:>10}  {:>11}",
            k + 1,
            w.msgs,
            w.bytes,
            w.report_msgs,
            w.report_bytes,
            w.other_msgs(),
            w.other_bytes()
        );
    }
    println!("  round  killed  orphans  cut off  detect(s)  heal(s)  settled(s)  promotions  moves  depth before->after (bound)  wall(s)");
    for (k, rd) in r.rounds.iter().enumerate() {
        println!(
            "  {:<5}  {:>6}  {:>7}  {:>7}  {:>9}  {:>7}  {:>10}  {:>10}  {:>5}  {:>27}  {:>7.1}",
            k + 1,
            rd.killed,
            rd.orphans,
            rd.cut_off,
            secs(rd.detect_ms),
            secs(rd.heal_ms),
            secs(rd.settled_ms),
            rd.promotions,
            rd.moves,
            depth_change(rd.depth_before, rd.depth_after, rd.bound_after),
            rd.wall_s
        );
        if let Some(e) = &rd.heal_error {
            println!("         not healed after {} s: {e}", HEAL_LIMIT_MS / 1000);
        }
    }
    for note in &r.notes {
        println!("  note: {note}");
    }
}

fn depth_change(before: u32, after: Option<u32>, bound: Option<u32>) -> String {
    match (after, bound) {
        (Some(a), Some(b)) => format!("{before}->{a} ({b})"),
        _ => format!("{before}->?"),
    }
}

fn print_tables(results: &[SizeResult]) {
    println!();
    println!("nodes    join(s)  wall(s)  root msgs/wave  root bytes/wave  report msgs/wave  report bytes/wave  other msgs/wave  other bytes/wave  depth/bound");
    for r in results {
        let w = &r.waves;
        println!(
            "{:<7}  {:>7}  {:>7.1}  {:>14.1}  {:>15.1}  {:>16.1}  {:>17.1}  {:>15.1}  {:>16.1}  {:>11}",
            r.nodes,
            secs(r.join_ms),
            r.join_wall_s,
            mean(w.iter().map(|x| x.msgs)),
            mean(w.iter().map(|x| x.bytes)),
            mean(w.iter().map(|x| x.report_msgs)),
            mean(w.iter().map(|x| x.report_bytes)),
            mean(w.iter().map(Wave::other_msgs)),
            mean(w.iter().map(Wave::other_bytes)),
            format!("{}/{}", r.depth, r.bound)
        );
    }
    println!();
    println!("kill 1%: nodes  killed  orphans  cut off  detect(s) min/med/max  heal(s) min/med/max  settled(s) min/med/max  promotions  moves  depth before->after (bound)");
    for r in results {
        let rounds = &r.rounds;
        let list =
            |f: &dyn Fn(&Round) -> String| rounds.iter().map(f).collect::<Vec<_>>().join("/");
        let detects: Vec<Option<u64>> = rounds.iter().map(|x| x.detect_ms).collect();
        let heals: Vec<Option<u64>> = rounds.iter().map(|x| x.heal_ms).collect();
        let settles: Vec<Option<u64>> = rounds.iter().map(|x| x.settled_ms).collect();
        let depth = match (rounds.first(), rounds.last()) {
            (Some(first), Some(last)) => {
                depth_change(first.depth_before, last.depth_after, last.bound_after)
            }
            _ => "-".into(),
        };
        println!(
            "         {:<6} {:>7}  {:>7}  {:>7}  {:>21}  {:>19}  {:>22}  {:>10}  {:>5}  {:>27}",
            r.nodes,
            list(&|x| x.killed.to_string()),
            list(&|x| x.orphans.to_string()),
            list(&|x| x.cut_off.to_string()),
            min_med_max(&detects),
            min_med_max(&heals),
            min_med_max(&settles),
            list(&|x| x.promotions.to_string()),
            list(&|x| x.moves.to_string()),
            depth
        );
    }
    // The target: what the aggregated values cost the root does not grow with N.
    if let (Some(small), Some(big)) = (
        results.iter().min_by_key(|r| r.nodes),
        results.iter().max_by_key(|r| r.nodes),
    ) {
        let rb = |r: &SizeResult| mean(r.waves.iter().map(|x| x.report_bytes));
        let all = |r: &SizeResult| mean(r.waves.iter().map(|x| x.bytes));
        let ratio = |a: f64, b: f64| if a > 0.0 { b / a } else { f64::NAN };
        println!();
        println!(
            "aggregated ingress grows x{:.2} from {} to {} nodes (report bytes/wave {:.1} -> {:.1}); all root ingress x{:.2} ({:.1} -> {:.1} bytes/wave)",
            ratio(rb(small), rb(big)),
            human(small.nodes),
            human(big.nodes),
            rb(small),
            rb(big),
            ratio(all(small), all(big)),
            all(small),
            all(big)
        );
    }
}

/// 1000 -> "1k", 100000 -> "100k", others as they are.
fn human(n: usize) -> String {
    // Not `is_multiple_of`: the workspace still promises Rust 1.85.
    let (thousands, rest) = (n / 1000, n % 1000);
    if thousands > 0 && rest == 0 {
        format!("{thousands}k")
    } else {
        n.to_string()
    }
}
