//! The tree at scale, without sockets: 1,000 and 10,000 agents join, fail at random, flap, and the
//! root restarts; after every step the invariants hold. Seeds are fixed and printed on failure.

use banyan_tests::sim::{Sim, SimConfig};
use rand::seq::SliceRandom;
use rand::Rng;
use std::collections::BTreeSet;

/// Runs a scenario and panics with the seed and step on the first broken invariant.
fn scenario(n: usize, seed: u64, steps: usize, max_fail: f64, flaps: usize) {
    let mut sim = Sim::new(SimConfig::new(seed));
    sim.add_agents(n);
    sim.run_for(10_000);
    sim.bump_all(|i| (i % 7 + 1) as f64);
    sim.run_for(3_000);
    if let Err(e) = sim.check(true) {
        panic!("seed {seed}: after the join of {n} agents: {e}");
    }
    for step in 0..steps {
        sim.bump_all(|i| (i % 5 + 1) as f64);
        sim.run_for(2_500);
        let mut live = sim.live();
        live.shuffle(sim.rng());
        let frac = sim.rng().gen_range(0.01..=max_fail);
        let kills = ((live.len() as f64) * frac).ceil() as usize;
        for &i in live.iter().take(kills) {
            sim.kill(i);
        }
        let cut: Vec<usize> = live.iter().skip(kills).take(flaps).copied().collect();
        for &i in &cut {
            sim.set_cut(i, true);
        }
        sim.run_for(8_000);
        if let Err(e) = sim.check(true) {
            panic!("seed {seed}: step {step}: after {kills} failures and {flaps} cuts: {e}");
        }
        for &i in &cut {
            sim.set_cut(i, false);
        }
        sim.run_for(15_000);
        match sim.check(true) {
            Ok(shape) => eprintln!(
                "seed {seed} step {step}: {} live, depth {} (bound {}), {kills} killed, {flaps} flapped",
                shape.live, shape.max_depth, shape.bound
            ),
            Err(e) => panic!("seed {seed}: step {step}: after restoring {flaps} cut hosts: {e}"),
        }
    }
}

#[test]
fn a_thousand_agents_survive_failures_and_flaps() {
    for seed in [1, 2, 3] {
        scenario(1_000, seed, 6, 0.10, 5);
    }
}

#[test]
fn ten_thousand_agents_survive_failures_and_flaps() {
    scenario(10_000, 42, 3, 0.10, 10);
}

#[test]
fn the_tree_reforms_after_a_root_restart_with_totals_intact() {
    let seed = 7;
    let mut sim = Sim::new(SimConfig::new(seed));
    sim.add_agents(500);
    sim.run_for(10_000);
    for round in 0..3 {
        sim.bump_all(|i| (i % 3 + 1) as f64);
        sim.run_for(3_000);
        sim.check(true)
            .unwrap_or_else(|e| panic!("seed {seed}: round {round} before restart: {e}"));
        sim.restart_root();
        sim.run_for(15_000);
        sim.check(true)
            .unwrap_or_else(|e| panic!("seed {seed}: round {round} after restart: {e}"));
    }
}

#[test]
fn an_inner_node_killed_is_replaced_without_deepening_the_tree() {
    let seed = 11;
    let mut sim = Sim::new(SimConfig::new(seed));
    sim.add_agents(254); // a full tree of depth 7 under the root
    sim.run_for(10_000);
    sim.bump_all(|_| 1.0);
    sim.run_for(3_000);
    let before = sim
        .check(true)
        .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    // Kill one of the root's children: the biggest orphaned subtrees there can be.
    let victim = sim
        .inner_agents()
        .into_iter()
        .find(|i| sim.node(*i).depth() == 1)
        .expect("a child of the root");
    // Each orphan with its children (every orphan of a depth-1 node in a full tree has two).
    let orphans: Vec<(usize, BTreeSet<String>)> = sim
        .node(victim)
        .children()
        .map(|o| {
            let i: usize = o[1..].parse().unwrap();
            (i, sim.node(i).children().map(str::to_string).collect())
        })
        .collect();
    assert_eq!(orphans.len(), 2, "seed {seed}: {orphans:?}");
    assert!(orphans.iter().all(|(_, c)| c.len() == 2), "{orphans:?}");
    sim.kill(victim);
    let healed = sim.run_until_cond(50, 10_000, |s| s.check(true).is_ok());
    let after = sim
        .check(true)
        .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    assert!(healed.is_some(), "seed {seed}: not healed within 10 s");
    // 255 nodes fill depths 0 to 7; 254 cannot fit in fewer levels: the depth stays exactly 7.
    assert_eq!(before.max_depth, 7, "seed {seed}: the full tree");
    assert_eq!(
        after.max_depth, 7,
        "seed {seed}: depth went from {} to {}",
        before.max_depth, after.max_depth
    );
    // Subtrees intact: each orphan still has exactly the children it had (only leaves ever move,
    // and no leaf of a depth-7 tree of 254 is an orphan's child).
    for (i, before) in orphans {
        let after: BTreeSet<String> = sim.node(i).children().map(str::to_string).collect();
        assert_eq!(after, before, "seed {seed}: {}'s children", Sim::name_of(i));
    }
}

/// Whether agents `a` and `b` are parent and child.
fn adjacent(sim: &Sim, a: usize, b: usize) -> bool {
    let (na, nb) = (Sim::name_of(a), Sim::name_of(b));
    sim.node(a).parent().is_some_and(|p| p.name == nb)
        || sim.node(b).parent().is_some_and(|p| p.name == na)
}

/// Counters keep moving on every survivor while inner agents die and hosts are cut: the orphans'
/// increments that were in flight through a dying parent are neither lost nor counted twice,
/// because each orphan owes exactly the report that the surviving side of the tree kept of it.
#[test]
fn totals_stay_exact_while_counters_move_through_deaths_and_cuts() {
    for seed in [21, 22, 23] {
        let mut sim = Sim::new(SimConfig::new(seed));
        sim.add_agents(300);
        sim.run_for(10_000);
        for step in 0..4 {
            // Who will die this step stops counting now and reports its last value; everyone else
            // counts every 50 ms from here on, through the deaths and the healing.
            let mut inner = sim.inner_agents();
            inner.shuffle(sim.rng());
            // Single failures per neighbourhood: no two of them are parent and child. (When a node
            // and its parent fail together, the orphans below owe their last reports: what was in
            // flight there can be lost, never counted twice.)
            let mut doomed: Vec<usize> = Vec::new();
            for i in inner {
                if doomed.len() < 3 && doomed.iter().all(|&d| !adjacent(&sim, i, d)) {
                    doomed.push(i);
                }
            }
            let mut others = sim.live();
            others.retain(|&i| doomed.iter().all(|&d| i != d && !adjacent(&sim, i, d)));
            others.shuffle(sim.rng());
            let mut cut: Vec<usize> = Vec::new();
            for &i in &others {
                if cut.len() < 2 && cut.iter().all(|&c| !adjacent(&sim, i, c)) {
                    cut.push(i);
                }
            }
            sim.run_for(2_000);
            let mut kill_at: Vec<u64> = doomed
                .iter()
                .map(|_| sim.rng().gen_range(0..1_000))
                .collect();
            kill_at.sort_unstable();
            let start = sim.now();
            for tick in 0..240u64 {
                let t = tick * 50;
                for (k, &i) in doomed.iter().enumerate() {
                    if sim.is_alive(i) && t >= kill_at[k] {
                        sim.kill(i);
                    }
                }
                if tick == 10 {
                    for &i in &cut {
                        sim.set_cut(i, true);
                    }
                }
                if tick == 120 {
                    for &i in &cut {
                        sim.set_cut(i, false);
                    }
                }
                for i in sim.live() {
                    if !doomed.contains(&i) {
                        sim.bump(i, ((i + tick as usize) % 3 + 1) as f64);
                    }
                }
                sim.run_until(start + t + 50);
            }
            sim.run_for(8_000);
            let h = sim.handovers();
            match sim.check(true) {
                Ok(shape) => eprintln!(
                    "seed {seed} step {step}: {} live, depth {}, handovers {h:?}",
                    shape.live, shape.max_depth
                ),
                Err(e) => panic!(
                    "seed {seed}: step {step}: counters moving through 3 deaths and 2 cuts: {e}; handovers {h:?}"
                ),
            }
        }
    }
}

/// The root is killed while counters move, and restarts from totals its writer saved a little
/// earlier; one of its children died just before. Its former children, and the orphans of the
/// dead one, owe exactly the reports those totals held.
#[test]
fn a_root_restarted_from_lagging_totals_loses_nothing_while_counters_move() {
    let seed = 31;
    let mut sim = Sim::new(SimConfig::new(seed));
    sim.add_agents(200);
    sim.run_for(10_000);
    for round in 0..3 {
        // A child of the root with children of its own dies during the round; it stops counting
        // first, so the test knows what of it reached the tree.
        let victim = sim
            .inner_agents()
            .into_iter()
            .find(|i| sim.node(*i).depth() == 1)
            .expect("an inner child of the root");
        sim.run_for(2_000);
        let mut saved = sim.root_kept();
        let start = sim.now();
        for tick in 0..60u64 {
            if tick == 30 {
                sim.kill(victim);
            }
            for i in sim.live() {
                if i != victim {
                    sim.bump(i, ((i + tick as usize) % 4 + 1) as f64);
                }
            }
            // The writer saves every so often; the root dies between two saves.
            if tick % 7 == 0 {
                saved = sim.root_kept();
            }
            sim.run_until(start + (tick + 1) * 50);
        }
        sim.restart_root_from(saved);
        for tick in 0..60u64 {
            for i in sim.live() {
                sim.bump(i, 1.0);
            }
            sim.run_until(start + 3_000 + (tick + 1) * 50);
        }
        sim.run_for(15_000);
        let h = sim.handovers();
        sim.check(true)
            .unwrap_or_else(|e| panic!("seed {seed}: round {round}: {e}; handovers {h:?}"));
        eprintln!("seed {seed} round {round}: handovers {h:?}");
    }
}
