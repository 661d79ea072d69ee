//! The mesh with real processes: a root and 15 agents on test hosts, forming the tree, healing it
//! after a crash, a cut host and a root restart, and keeping counter totals exact through all of it.
//! Needs root (network namespaces); see `Testnet::require`.
//!
//! Each test has its own cluster and runs beside the others. Timeouts are generous upper bounds for
//! a loaded two-core machine; the assertions are about results (shape, membership, sums), never
//! about how long something took.

use std::collections::{BTreeMap, BTreeSet};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use banyan_tests::cluster::{with_cluster, Cluster, Topology};
use banyan_tests::testnet::Testnet;
use serde_json::Value;

const AGENTS: usize = 15;

/// Fifteen agents joining at once, on a machine busy with the other tests.
const FORM: Duration = Duration::from_secs(45);

/// Detection (3 s) plus the heal window and re-placement, with room for a loaded machine: the
/// promise tested is "heals within 10 s".
const HEAL: Duration = Duration::from_secs(10);

/// A restored host or a restarted root: agents may be in their join backoff (up to 5 s).
const REFORM: Duration = Duration::from_secs(30);

/// The reduction period the clusters run with (`ClusterOptions::default`).
const PERIOD: Duration = Duration::from_secs(1);

/// Name of the counter the tests write into the agents' metrics files.
const WORK: &str = "test_work_total";

/// The deepest a tree of `n` agents under the root may be: ceil(log2(n + 1)) + 2 (the root is one of
/// the n + 1 nodes, and healing may leave a level or two of slack).
fn depth_bound(n: usize) -> u32 {
    (n as u32 + 1).next_power_of_two().trailing_zeros() + 2
}

fn set_of(names: &[String]) -> BTreeSet<String> {
    names.iter().cloned().collect()
}

/// The attached agent with the largest subtree: an inner node whose children have children of their
/// own in a full tree of 15, so that losing it tests subtrees moving whole.
fn biggest_inner(topo: &Topology) -> Result<String> {
    fn size(topo: &Topology, name: &str, budget: usize) -> usize {
        if budget == 0 {
            return 0; // a cycle; `tree_problems` reports those
        }
        1 + topo
            .children_of(name)
            .iter()
            .map(|c| size(topo, c, budget - 1))
            .sum::<usize>()
    }
    topo.agents()
        .filter(|n| n.attached() && !n.children.is_empty())
        .map(|n| (size(topo, &n.name, topo.nodes.len()), n.name.clone()))
        .max()
        .map(|(_, name)| name)
        .with_context(|| format!("no inner agent in\n{}", topo.summary()))
}

/// Whether the root has given up on `gone` (lost or stale: not merely unnoticed yet) and every one
/// of `live` is attached in a sound tree.
fn healed_around(topo: &Topology, live: &[String], gone: &str) -> bool {
    matches!(topo.status_of(gone), "lost" | "stale") && topo.healthy(live)
}

/// Those of `orphans` that the root has just placed (status `joining`) under `lost_parent`.
fn placed_under(topo: &Topology, orphans: &BTreeSet<String>, lost_parent: &str) -> Vec<String> {
    orphans
        .iter()
        .filter(|o| {
            topo.node(o)
                .is_some_and(|n| n.status == "joining" && n.parent.as_deref() == Some(lost_parent))
        })
        .cloned()
        .collect()
}

/// Checks a ping report: exactly `live` answered, exactly `dead` unreachable, nothing failed.
fn check_ping(report: &Value, live: &BTreeSet<String>, dead: &BTreeSet<String>) -> Result<()> {
    let keys = |field: &str| -> BTreeSet<String> {
        report
            .get(field)
            .and_then(Value::as_object)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    };
    let unreachable: BTreeSet<String> = report
        .get("unreachable")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    ensure!(
        keys("answered") == *live,
        "ping: answered {:?}, expected {live:?}; report {report}",
        keys("answered")
    );
    ensure!(
        unreachable == *dead,
        "ping: unreachable {unreachable:?}, expected {dead:?}; report {report}"
    );
    ensure!(keys("failed").is_empty(), "ping: failures in {report}");
    Ok(())
}

/// Waits until `/topo` lists exactly the live edges of `/topology` (two requests cannot be atomic,
/// and leaves may still move between them).
fn check_topo_agrees(c: &Cluster) -> Result<()> {
    let mut last = None;
    let found = c.poll(
        "/topo to agree with /topology",
        Duration::from_secs(10),
        |c| {
            let before = c.topology()?.edges();
            let topo = c.topo_edges()?;
            let after = c.topology()?.edges();
            let agree = before == after && topo == after;
            last = Some((topo, after));
            Ok(agree.then_some(()))
        },
    );
    if let (Err(e), Some((topo, topology))) = (&found, &last) {
        bail!("{e:#}\n/topo: {topo:?}\n/topology edges: {topology:?}");
    }
    found.map(drop)
}

/// Writes a distinct `test_work_total` into each agent's metrics file: agent `i` gets
/// `100 * (i + 1) + bump * (i + 1)`. Returns the values.
fn write_work(c: &mut Cluster, agents: &[usize], bump: f64) -> Result<BTreeMap<usize, f64>> {
    let mut values = BTreeMap::new();
    for &i in agents {
        let v = 100.0 * (i as f64 + 1.0) + bump * (i as f64 + 1.0);
        c.set_metric(i, WORK, v)?;
        values.insert(i, v);
    }
    Ok(values)
}

/// Watches the tree and the total of `counter` together until `healthy` holds and then `waves` more
/// waves have reached the root, and fails if the total was ever anything but `expected`: a dead node's
/// counts must stay and a moved subtree's must not come twice, at every moment, not only in the end.
fn watch_total_through(
    c: &Cluster,
    counter: &str,
    expected: f64,
    healthy: impl Fn(&Topology) -> bool,
    timeout: Duration,
    waves: u64,
) -> Result<()> {
    let mut seen: Vec<f64> = Vec::new();
    let mut healed_at_wave: Option<u64> = None;
    let mut last_topo = None;
    let watched = c.poll(
        &format!("the tree to heal and {waves} more waves"),
        timeout,
        |c| {
            let totals = c.http_get("/totals")?;
            let wave = totals.get("wave").and_then(Value::as_u64).unwrap_or(0);
            let value = totals
                .pointer(&format!("/metrics/{counter}/Counter/value"))
                .and_then(Value::as_f64);
            if let Some(v) = value {
                if seen.last() != Some(&v) {
                    seen.push(v);
                }
            }
            if healed_at_wave.is_none() {
                let topo = c.topology()?;
                if healthy(&topo) {
                    healed_at_wave = Some(wave);
                }
                last_topo = Some(topo);
            }
            Ok(healed_at_wave
                .is_some_and(|w| wave >= w + waves)
                .then_some(()))
        },
    );
    if let Err(e) = watched {
        let topo = last_topo.map(|t| t.summary()).unwrap_or_default();
        bail!("{e:#}\nlast topology:\n{topo}totals of {counter} seen: {seen:?}");
    }
    ensure!(
        !seen.is_empty() && seen.iter().all(|v| *v == expected),
        "{counter} should have stayed at exactly {expected}; the root showed, in order: {seen:?}"
    );
    Ok(())
}

#[test]
fn fifteen_agents_form_a_binary_tree() -> Result<()> {
    if !Testnet::require()? {
        return Ok(());
    }
    with_cluster(AGENTS, |c| {
        let names = c.names();
        let took = c.wait_healthy(&names, FORM)?;
        eprintln!("{AGENTS} agents formed the tree in {took:?}");
        let topo = c.topology()?;
        let problems = topo.tree_problems();
        ensure!(
            problems.is_empty(),
            "not a binary tree: {problems:?}\n{}",
            topo.summary()
        );
        let attached: BTreeSet<String> = topo
            .agents()
            .filter(|n| n.attached())
            .map(|n| n.name.clone())
            .collect();
        ensure!(attached == set_of(&names), "attached: {attached:?}");
        ensure!(
            topo.nodes.iter().all(|n| n.children.len() <= 2),
            "a node has more than two children:\n{}",
            topo.summary()
        );
        // Fresh agents go to the shallowest free slot: breadth first, 2, 4 and 8 agents fill
        // depths 1 to 3 and the fifteenth is alone at depth 4.
        let mut per_depth = BTreeMap::new();
        for n in topo.agents().filter(|n| n.attached()) {
            *per_depth.entry(n.depth).or_insert(0usize) += 1;
        }
        ensure!(
            topo.depth() == 4 && per_depth == BTreeMap::from([(1, 2), (2, 4), (3, 8), (4, 1)]),
            "depth {}, agents per depth {per_depth:?}, not breadth first:\n{}",
            topo.depth(),
            topo.summary()
        );
        check_topo_agrees(c)?;
        let report = c.ping(&c.all_nodes())?;
        check_ping(&report, &set_of(&names), &BTreeSet::new())
    })
}

#[test]
fn killing_an_inner_agent_heals_the_tree() -> Result<()> {
    if !Testnet::require()? {
        return Ok(());
    }
    with_cluster(AGENTS, |c| {
        let names = c.names();
        c.wait_healthy(&names, FORM)?;
        let before = c.topology()?;
        let victim = biggest_inner(&before)?;
        let orphans = before.children_of(&victim);
        // What each orphan holds below it: that has to come along unchanged.
        let subtrees: BTreeMap<String, BTreeSet<String>> = orphans
            .iter()
            .map(|o| (o.clone(), before.children_of(o)))
            .collect();
        ensure!(
            subtrees.values().any(|s| !s.is_empty()),
            "{victim}'s children have no children; the tree was:\n{}",
            before.summary()
        );
        let i = c.index_of(&victim).context("victim is not an agent")?;
        c.kill_agent(i)?;

        let live: Vec<String> = names.iter().filter(|n| **n != victim).cloned().collect();
        let mut misplaced = BTreeSet::new();
        let took = c
            .wait_for(
                |t| {
                    misplaced.extend(placed_under(t, &orphans, &victim));
                    healed_around(t, &live, &victim)
                },
                HEAL,
            )
            .with_context(|| {
                format!(
                    "healing after killing {victim}; before:\n{}",
                    before.summary()
                )
            })?;
        eprintln!("healed around the killed {victim} in {took:?}");

        ensure!(
            misplaced.is_empty(),
            "the root placed {misplaced:?} under {victim}, the parent they had just reported lost"
        );
        let after = c.topology()?;
        for (orphan, kids) in &subtrees {
            ensure!(
                after.children_of(orphan) == *kids,
                "{orphan} (a child of the killed {victim}) had children {kids:?}, now {:?}\n\
                 before:\n{}after:\n{}",
                after.children_of(orphan),
                before.summary(),
                after.summary()
            );
        }
        ensure!(
            after.depth() <= depth_bound(AGENTS),
            "depth {} after healing:\n{}",
            after.depth(),
            after.summary()
        );
        check_topo_agrees(c)?;
        let report = c.ping(&c.all_nodes())?;
        check_ping(&report, &set_of(&live), &BTreeSet::from([victim.clone()]))?;

        // Started again on its state dir (its certificate), the agent joins the healed tree.
        c.restart_agent(i)?;
        c.wait_healthy(&names, REFORM)
            .with_context(|| format!("{victim} rejoining after a restart"))?;
        Ok(())
    })
}

#[test]
fn a_cut_host_comes_back() -> Result<()> {
    if !Testnet::require()? {
        return Ok(());
    }
    with_cluster(AGENTS, |c| {
        let names = c.names();
        c.wait_healthy(&names, FORM)?;
        let before = c.topology()?;
        let victim = biggest_inner(&before)?;
        let i = c.index_of(&victim).context("victim is not an agent")?;
        c.cut(i)?;

        // The cut agent is alive and believes in its children for a while; the rest of the tree has
        // to let go of it and heal around it.
        let others: Vec<String> = names.iter().filter(|n| **n != victim).cloned().collect();
        let took = c
            .wait_for(|t| healed_around(t, &others, &victim), HEAL)
            .with_context(|| format!("healing around the cut {victim}"))?;
        eprintln!("healed around the cut {victim} in {took:?}");

        c.restore(i)?;
        let took = c
            .wait_healthy(&names, REFORM)
            .with_context(|| format!("{victim} coming back after its host was restored"))?;
        eprintln!("{victim} back in the tree {took:?} after its host was restored");
        let topo = c.topology()?;
        ensure!(
            topo.depth() <= depth_bound(AGENTS),
            "depth {}:\n{}",
            topo.depth(),
            topo.summary()
        );
        let report = c.ping(&c.all_nodes())?;
        check_ping(&report, &set_of(&names), &BTreeSet::new())
    })
}

#[test]
fn restarting_the_root_reforms_the_tree() -> Result<()> {
    if !Testnet::require()? {
        return Ok(());
    }
    with_cluster(AGENTS, |c| {
        let names = c.names();
        let all: Vec<usize> = (0..AGENTS).collect();
        let work: f64 = write_work(c, &all, 0.0)?.values().sum();
        c.wait_healthy(&names, FORM)?;
        c.wait_for_counter(WORK, work, FORM)?;
        let waves_before = c
            .counter_total("banyan_agent_waves_total")?
            .context("no banyan_agent_waves_total at the root")?;
        let restart = std::time::Instant::now();

        c.stop_root()?;
        // Long enough for every depth-1 agent to notice and start rejoining, so the restart meets
        // agents in their backoff rather than links that never broke.
        thread::sleep(Duration::from_secs(4));
        c.start_root()?;

        watch_total_through(c, WORK, work, |t| t.healthy(&names), REFORM, 3)
            .context("after the root restarted")?;
        let waves_after = c
            .counter_total("banyan_agent_waves_total")?
            .context("no banyan_agent_waves_total after the restart")?;
        // Every agent samples a wave each period, attached or not: across the restart (4 s at
        // least) each one counted at least a wave more, and none more than one a period (plus
        // the waves it had not yet reported before); what the old root held is not counted twice.
        let periods = (restart.elapsed().as_secs_f64() / PERIOD.as_secs_f64()).ceil() + 2.0;
        let most = waves_before + AGENTS as f64 * periods;
        ensure!(
            waves_after >= waves_before + AGENTS as f64 && waves_after <= most,
            "banyan_agent_waves_total went from {waves_before} to {waves_after}, \
             not within [{}, {most}]",
            waves_before + AGENTS as f64
        );
        let topo = c.topology()?;
        ensure!(
            topo.depth() <= depth_bound(AGENTS),
            "depth {}:\n{}",
            topo.depth(),
            topo.summary()
        );
        Ok(())
    })
}

#[test]
fn totals_are_exact_across_a_failure() -> Result<()> {
    if !Testnet::require()? {
        return Ok(());
    }
    with_cluster(AGENTS, |c| {
        let names = c.names();
        let all: Vec<usize> = (0..AGENTS).collect();
        let first = write_work(c, &all, 0.0)?;
        let sum: f64 = first.values().sum();
        c.wait_healthy(&names, FORM)?;
        c.wait_for_counter(WORK, sum, FORM)?;

        let victim = biggest_inner(&c.topology()?)?;
        let dead = c.index_of(&victim).context("victim is not an agent")?;
        c.kill_agent(dead)?;
        let live: Vec<String> = names.iter().filter(|n| **n != victim).cloned().collect();
        // The dead agent's last value stays counted and its orphans' values are not counted again.
        watch_total_through(
            c,
            WORK,
            sum,
            |t| healed_around(t, &live, &victim),
            HEAL + REFORM,
            3,
        )
        .with_context(|| format!("after killing {victim}"))?;

        let live_idx: Vec<usize> = all.iter().copied().filter(|&i| i != dead).collect();
        let bumped = write_work(c, &live_idx, 10.0)?;
        let expected = first[&dead] + bumped.values().sum::<f64>();
        c.wait_for_counter(WORK, expected, REFORM)
            .context("after raising the live agents' counters")?;
        Ok(())
    })
}

#[test]
fn orphans_are_not_placed_back_under_the_parent_they_lost() -> Result<()> {
    if !Testnet::require()? {
        return Ok(());
    }
    // Seven agents: two under the root, four below them, one more. The test cuts one depth-1 agent
    // off from its children only; it stays attached to the root, so the root's model keeps it live
    // (with two free slots once the orphans leave) while the orphans report it lost. This is what a
    // crash looks like to the root in the moment between the orphans' detection and its own.
    with_cluster(7, |c| {
        let names = c.names();
        c.wait_healthy(&names, FORM)?;
        let before = c.topology()?;
        let parent = before
            .children_of(&before.root)
            .into_iter()
            .find(|p| before.children_of(p).len() == 2)
            .with_context(|| {
                format!("no depth-1 agent with two children:\n{}", before.summary())
            })?;
        let orphans = before.children_of(&parent);
        let p = c.index_of(&parent).context("not an agent")?;
        for o in &orphans {
            c.partition(p, c.index_of(o).context("not an agent")?)?;
        }

        // Stops at the first misplacement: with one, the orphans are sent back to a parent they
        // cannot reach, again after every refusal, and the tree never heals.
        let mut misplaced = BTreeSet::new();
        c.wait_for(
            |t| {
                misplaced.extend(placed_under(t, &orphans, &parent));
                let elsewhere = orphans.iter().all(|o| !t.children_of(&parent).contains(o));
                !misplaced.is_empty() || (t.healthy(&names) && elsewhere)
            },
            HEAL + REFORM,
        )?;
        ensure!(
            misplaced.is_empty(),
            "the root placed {misplaced:?} back under {parent}, the parent they reported lost"
        );
        Ok(())
    })
}

#[test]
fn a_root_restart_keeps_every_count_it_showed() -> Result<()> {
    if !Testnet::require()? {
        return Ok(());
    }
    // What /totals shows has been counted: a restart must not take it back. The root writes its
    // totals when a wave completes; a report that arrives after the root closed its wave (a slow
    // child) is in /totals at once but on disk only after the next wave. The test makes such a late
    // report on purpose, by freezing a child of the root across a wave boundary, and stops the root
    // (SIGTERM, a clean stop) as soon as /totals shows it.
    with_cluster(3, |c| {
        let names = c.names();
        let all: Vec<usize> = (0..3).collect();
        let first = write_work(c, &all, 0.0)?;
        let sum: f64 = first.values().sum();
        c.wait_healthy(&names, FORM)?;
        c.wait_for_counter(WORK, sum, FORM)?;

        let topo = c.topology()?;
        let slow = topo
            .children_of(&topo.root)
            .into_iter()
            .next()
            .context("the root has no child")?;
        let i = c.index_of(&slow).context("not an agent")?;
        c.pause_agent(i)?;
        c.set_metric(i, WORK, first[&i] + 1000.0)?;
        let raised = sum + 1000.0;
        // Resume a quarter period after the next wave boundary (waves start on multiples of the
        // period in wall-clock time): the root has closed that wave without this child by then.
        thread::sleep(until_wave_phase(PERIOD, PERIOD / 4));
        c.resume_agent(i)?;
        c.poll(&format!("{WORK} = {raised}"), Duration::from_secs(5), |c| {
            Ok(c.counter_total(WORK)?.filter(|v| *v == raised))
        })?;
        c.stop_root()?;
        c.start_root()?;
        watch_total_through(c, WORK, raised, |t| t.healthy(&names), REFORM, 3)
            .context("after a clean restart of the root")
    })
}

/// How long from now until `phase` past the next multiple of `period` since the Unix epoch.
fn until_wave_phase(period: Duration, phase: Duration) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let period_ms = period.as_millis().max(1);
    let target = (now / period_ms + 1) * period_ms + phase.as_millis();
    Duration::from_millis((target - now) as u64)
}
