//! Traffic per network interface from `/proc/net/dev` (proc(5)): bytes, packets, errors and drops
//! received and transmitted, as counters since the agent started, and byte rates.
//!
//! `lo` is skipped: loopback traffic never leaves the node. An interface that disappears stops
//! being reported; its counts are remembered (up to [`MAX_GONE`] interfaces), so when it comes
//! back, re-created with counters from zero, its totals go on from where they were.

use super::counter::forget_gone;
use super::{per_second, series, CollectError, Collector, Cumulative, SourceFile};
use banyan_protocol::metric::MetricSet;
use std::collections::HashMap;
use std::path::Path;

/// The counter families, in the order of [`COLUMNS`].
pub const COUNTERS: [&str; 8] = [
    "banyan_node_network_receive_bytes_total",
    "banyan_node_network_transmit_bytes_total",
    "banyan_node_network_receive_packets_total",
    "banyan_node_network_transmit_packets_total",
    "banyan_node_network_receive_errors_total",
    "banyan_node_network_transmit_errors_total",
    "banyan_node_network_receive_drops_total",
    "banyan_node_network_transmit_drops_total",
];
/// Where each of [`COUNTERS`] is among the 16 numbers of a `/proc/net/dev` line (receive: bytes
/// packets errs drop fifo frame compressed multicast; transmit: bytes packets errs drop fifo colls
/// carrier compressed).
const COLUMNS: [usize; 8] = [0, 8, 1, 9, 2, 10, 3, 11];
const RX_BYTES: usize = 0;
const TX_BYTES: usize = 1;

/// Interfaces gone from `/proc/net/dev` whose counts are remembered; hosts that churn through
/// containers' veths would otherwise grow this map forever.
pub const MAX_GONE: usize = 64;

/// One interface's line: its name and the [`COUNTERS`] values, in that order.
pub fn parse_line(line: &str) -> Option<Result<(&str, [u64; 8]), String>> {
    // Header lines have no colon; interface names cannot contain one, so the first colon ends
    // the name (a long first number may follow it without a space).
    let (name, numbers) = line.split_once(':')?;
    let mut columns = [0u64; 16];
    let mut count = 0;
    for (slot, field) in columns.iter_mut().zip(numbers.split_ascii_whitespace()) {
        match field.parse() {
            Ok(v) => *slot = v,
            Err(_) => return Some(Err(format!("bad number {field:?} on line {line:?}"))),
        }
        count += 1;
    }
    if count < 12 {
        return Some(Err(format!("too few columns on line {line:?}")));
    }
    Some(Ok((name.trim(), COLUMNS.map(|c| columns[c]))))
}

struct Iface {
    names: [String; 8],
    rate_names: [String; 2],
    counters: [Cumulative; 8],
    /// When this interface was last read, and its byte totals then: the base of the next rate.
    prev: Option<(u64, u64, u64)>,
    seen_wave: u64,
}

impl Iface {
    fn new(name: &str) -> Iface {
        let label = [("interface", name)];
        Iface {
            names: COUNTERS.map(|family| series(family, &label)),
            rate_names: [
                series("banyan_node_network_receive_bytes_per_second", &label),
                series("banyan_node_network_transmit_bytes_per_second", &label),
            ],
            counters: Default::default(),
            prev: None,
            seen_wave: 0,
        }
    }
}

pub struct Network {
    file: SourceFile,
    ifaces: HashMap<String, Iface>,
    wave: u64,
}

impl Network {
    pub fn new(root: &Path) -> Network {
        Network {
            file: SourceFile::new(root.join("proc/net/dev")),
            ifaces: HashMap::new(),
            wave: 0,
        }
    }
}

const DESCRIBE: &[(&str, &str)] = &[
    (
        "banyan_node_network_receive_bytes_total",
        "Bytes received per interface since the agent started.",
    ),
    (
        "banyan_node_network_transmit_bytes_total",
        "Bytes transmitted per interface since the agent started.",
    ),
    (
        "banyan_node_network_receive_packets_total",
        "Packets received per interface since the agent started.",
    ),
    (
        "banyan_node_network_transmit_packets_total",
        "Packets transmitted per interface since the agent started.",
    ),
    (
        "banyan_node_network_receive_errors_total",
        "Receive errors per interface since the agent started.",
    ),
    (
        "banyan_node_network_transmit_errors_total",
        "Transmit errors per interface since the agent started.",
    ),
    (
        "banyan_node_network_receive_drops_total",
        "Received packets dropped per interface since the agent started.",
    ),
    (
        "banyan_node_network_transmit_drops_total",
        "Packets dropped on transmit per interface since the agent started.",
    ),
    (
        "banyan_node_network_receive_bytes_per_second",
        "Bytes received per second per interface over the last interval.",
    ),
    (
        "banyan_node_network_transmit_bytes_per_second",
        "Bytes transmitted per second per interface over the last interval.",
    ),
];

impl Collector for Network {
    fn name(&self) -> &'static str {
        "network"
    }

    fn describe(&self) -> &'static [(&'static str, &'static str)] {
        DESCRIBE
    }

    fn collect(&mut self, now_ms: u64, out: &mut MetricSet) -> Result<(), CollectError> {
        self.wave += 1;
        let (text, path) = self.file.read()?;
        for line in text.lines() {
            let Some(parsed) = parse_line(line) else {
                continue;
            };
            let (name, raw) = parsed.map_err(|what| CollectError::parse(path, what))?;
            if name == "lo" {
                continue;
            }
            if !self.ifaces.contains_key(name) {
                self.ifaces.insert(name.to_string(), Iface::new(name));
            }
            let Some(iface) = self.ifaces.get_mut(name) else {
                continue;
            };
            iface.seen_wave = self.wave;
            let mut totals = [0u64; 8];
            for (((total, counter), value), series) in totals
                .iter_mut()
                .zip(&mut iface.counters)
                .zip(raw)
                .zip(&iface.names)
            {
                *total = counter.update(value);
                out.set_counter(series, *total as f64);
            }
            let (rx, tx) = (totals[RX_BYTES], totals[TX_BYTES]);
            if let Some((prev_ms, prev_rx, prev_tx)) = iface.prev {
                let elapsed = now_ms.saturating_sub(prev_ms);
                for (series, delta) in iface.rate_names.iter().zip([rx - prev_rx, tx - prev_tx]) {
                    if let Some(rate) = per_second(delta, elapsed) {
                        out.set_gauge(series, rate, now_ms);
                    }
                }
            }
            iface.prev = Some((now_ms, rx, tx));
        }
        forget_gone(&mut self.ifaces, self.wave, MAX_GONE, |i| i.seen_wave);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake_tree::FakeTree;
    use super::*;
    use banyan_protocol::metric::Value;

    const HEADER: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
";

    fn dev(lines: &[(&str, u64, u64)]) -> String {
        let mut text = HEADER.to_string();
        for (name, rx, tx) in lines {
            text.push_str(&format!(
                "{name:>6}: {rx} {} 1 2 0 0 0 0 {tx} {} 3 4 0 0 0 0\n",
                rx / 100,
                tx / 100
            ));
        }
        text
    }

    fn rate(set: &MetricSet, name: &str) -> Option<f64> {
        match set.get(name) {
            Some(Value::Gauge(g)) => Some(g.last),
            _ => None,
        }
    }

    #[test]
    fn parses_proc_net_dev_lines() {
        let text = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo: 31392896   82455    0    0    0     0          0         0 31392896   82455    0    0    0     0       0          0
  eth0:136886877    7368    5    6    0     0          0         0   528911    4606    7    8    0     0       0          0
";
        let parsed: Vec<_> = text.lines().filter_map(parse_line).collect();
        assert_eq!(parsed.len(), 2);
        assert_eq!(
            parsed[1],
            Ok(("eth0", [136886877, 528911, 7368, 4606, 5, 7, 6, 8]))
        );
        assert!(parse_line("eth0: 1 2 3").unwrap().is_err());
        assert!(parse_line("eth0: 1 2 3 x 0 0 0 0 1 2 3 4 0 0 0 0")
            .unwrap()
            .is_err());
    }

    #[test]
    fn counts_since_start_with_rates_from_elapsed_time() {
        let tree = FakeTree::new();
        tree.write(
            "proc/net/dev",
            &dev(&[("lo", 500, 500), ("eth0", 10_000, 2_000)]),
        );
        let mut net = Network::new(tree.path());
        let mut first = MetricSet::new();
        net.collect(10_000, &mut first).unwrap();
        assert_eq!(
            first.counter("banyan_node_network_receive_bytes_total{interface=\"eth0\"}"),
            0.0
        );
        assert_eq!(
            rate(
                &first,
                "banyan_node_network_receive_bytes_per_second{interface=\"eth0\"}"
            ),
            None
        );
        assert!(first.values.keys().all(|k| !k.contains("\"lo\"")));

        // 2.5 s later (a late wave): 5,000 bytes in, 1,000 out.
        tree.write(
            "proc/net/dev",
            &dev(&[("lo", 900, 900), ("eth0", 15_000, 3_000)]),
        );
        let mut second = MetricSet::new();
        net.collect(12_500, &mut second).unwrap();
        assert_eq!(
            second.counter("banyan_node_network_receive_bytes_total{interface=\"eth0\"}"),
            5_000.0
        );
        assert_eq!(
            second.counter("banyan_node_network_transmit_bytes_total{interface=\"eth0\"}"),
            1_000.0
        );
        assert_eq!(
            second.counter("banyan_node_network_receive_packets_total{interface=\"eth0\"}"),
            50.0
        );
        assert_eq!(
            rate(
                &second,
                "banyan_node_network_receive_bytes_per_second{interface=\"eth0\"}"
            ),
            Some(2_000.0)
        );
        assert_eq!(
            rate(
                &second,
                "banyan_node_network_transmit_bytes_per_second{interface=\"eth0\"}"
            ),
            Some(400.0)
        );
        assert!(second.values.keys().all(|k| !k.contains("\"lo\"")));
    }

    #[test]
    fn interfaces_that_reset_come_and_go_never_count_backwards() {
        let tree = FakeTree::new();
        tree.write(
            "proc/net/dev",
            &dev(&[("eth0", 10_000, 0), ("veth1", 700, 0)]),
        );
        let mut net = Network::new(tree.path());
        net.collect(1_000, &mut MetricSet::new()).unwrap();
        tree.write(
            "proc/net/dev",
            &dev(&[("eth0", 12_000, 0), ("veth1", 900, 0)]),
        );
        net.collect(2_000, &mut MetricSet::new()).unwrap();

        // eth0 is reset (counter back to 300); veth1 disappears; ib0 appears.
        tree.write("proc/net/dev", &dev(&[("eth0", 300, 0), ("ib0", 5_000, 0)]));
        let mut set = MetricSet::new();
        net.collect(3_000, &mut set).unwrap();
        assert_eq!(
            set.counter("banyan_node_network_receive_bytes_total{interface=\"eth0\"}"),
            2_300.0
        );
        assert_eq!(
            rate(
                &set,
                "banyan_node_network_receive_bytes_per_second{interface=\"eth0\"}"
            ),
            Some(300.0)
        );
        assert!(set
            .get("banyan_node_network_receive_bytes_total{interface=\"veth1\"}")
            .is_none());
        // A new interface starts at zero like everything else.
        assert_eq!(
            set.counter("banyan_node_network_receive_bytes_total{interface=\"ib0\"}"),
            0.0
        );

        // veth1 comes back, re-created: its 100 new bytes add to the 200 it had.
        tree.write(
            "proc/net/dev",
            &dev(&[("eth0", 300, 0), ("ib0", 5_000, 0), ("veth1", 100, 0)]),
        );
        let mut set = MetricSet::new();
        net.collect(5_000, &mut set).unwrap();
        assert_eq!(
            set.counter("banyan_node_network_receive_bytes_total{interface=\"veth1\"}"),
            300.0
        );
        // Its rate is over the 3 s since it was last seen.
        assert_eq!(
            rate(
                &set,
                "banyan_node_network_receive_bytes_per_second{interface=\"veth1\"}"
            ),
            Some(100.0 / 3.0)
        );
    }

    #[test]
    fn forgets_only_beyond_the_newest_gone_interfaces() {
        let tree = FakeTree::new();
        let mut net = Network::new(tree.path());
        for i in 0..(MAX_GONE + 10) {
            tree.write(
                "proc/net/dev",
                &dev(&[("eth0", 0, 0), (&format!("veth{i}"), 0, 0)]),
            );
            net.collect(i as u64 * 1000, &mut MetricSet::new()).unwrap();
        }
        assert_eq!(net.ifaces.len(), MAX_GONE + 2);
        assert!(net.ifaces.contains_key("eth0"));
        assert!(net.ifaces.contains_key(&format!("veth{}", MAX_GONE + 9)));
        assert!(!net.ifaces.contains_key("veth0"));
    }

    /// The kernel's byte counters (received, transmitted) per interface but `lo`.
    fn kernel_counts() -> HashMap<String, (u64, u64)> {
        let text = std::fs::read_to_string("/proc/net/dev").unwrap();
        text.lines()
            .filter_map(parse_line)
            .map(Result::unwrap)
            .filter(|(name, _)| *name != "lo")
            .map(|(name, v)| (name.to_string(), (v[0], v[1])))
            .collect()
    }

    /// Samples between two reads of the kernel's counters; returns the interfaces whose counters
    /// did not move across the sample, whose value at the sample is therefore known exactly.
    fn bracketed_sample(
        net: &mut Network,
        now_ms: u64,
    ) -> (HashMap<String, (u64, u64)>, MetricSet) {
        let before = kernel_counts();
        let mut set = MetricSet::new();
        net.collect(now_ms, &mut set).unwrap();
        let after = kernel_counts();
        let still = before
            .into_iter()
            .filter(|(name, counts)| after.get(name) == Some(counts))
            .collect();
        (still, set)
    }

    #[test]
    fn live_totals_equal_the_kernels_deltas() {
        // Other tests (the testnet's) may create interfaces and send traffic at the same time:
        // every interface known exactly at both samples is checked, and the sum over them.
        for _ in 0..50 {
            let mut net = Network::new(Path::new("/"));
            let (start, _) = bracketed_sample(&mut net, 1_000);
            std::thread::sleep(std::time::Duration::from_millis(100));
            let (end, set) = bracketed_sample(&mut net, 2_000);
            let both: Vec<_> = end
                .iter()
                .filter_map(|(name, e)| Some((name, start.get(name)?, e)))
                // Deleted and re-created in between: no kernel delta to compare with.
                .filter(|(_, s, e)| e.0 >= s.0 && e.1 >= s.1)
                .collect();
            if both.is_empty() {
                continue;
            }
            let (mut rx_sum, mut kernel_rx_sum) = (0.0, 0.0);
            for (name, s, e) in both {
                let label = [("interface", name.as_str())];
                let rx = set.counter(&series("banyan_node_network_receive_bytes_total", &label));
                let tx = set.counter(&series("banyan_node_network_transmit_bytes_total", &label));
                assert_eq!(rx, (e.0 - s.0) as f64, "{name} received");
                assert_eq!(tx, (e.1 - s.1) as f64, "{name} transmitted");
                rx_sum += rx;
                kernel_rx_sum += (e.0 - s.0) as f64;
            }
            assert_eq!(rx_sum, kernel_rx_sum);
            return;
        }
        panic!("no interface but lo held still around two samples in 50 tries");
    }
}
