//! The tree at scale, without sockets: 1,000 and 10,000 agents join, fail at random, flap, and the
//! root restarts; after every step the invariants hold. Seeds are fixed and printed on failure.

use banyan_tests::sim::{Sim, SimConfig};
use rand::seq::SliceRandom;
use rand::Rng;

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
    let orphans: Vec<String> = sim.node(victim).children().map(str::to_string).collect();
    sim.kill(victim);
    let healed = sim.run_until_cond(50, 10_000, |s| s.check(true).is_ok());
    let after = sim
        .check(true)
        .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    assert!(healed.is_some(), "seed {seed}: not healed within 10 s");
    assert!(
        after.max_depth <= before.max_depth,
        "seed {seed}: depth grew from {} to {}",
        before.max_depth,
        after.max_depth
    );
    // Subtrees intact: each orphan still has the children it had.
    for o in orphans {
        let i: usize = o[1..].parse().unwrap();
        assert!(sim.node(i).children().count() > 0, "{o} lost its subtree");
    }
}
