//! bench-nodeset: expanding and folding node sets, banyan's `NodeSet` beside ClusterShell's
//! `nodeset -f` (the tool operators use today) on the same expressions, in the same run.
//! Prints figures, asserts nothing but that both tools fold to the same number of names.
//!
//! The expressions are the shapes an operator or a hostile caller of `GET /nodeset` can send: one
//! long range, two- and three-level products, padded ranges, and names that share nothing (written
//! out one by one, as a query string of 400 KB would carry them).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use banyan_protocol::nodeset::NodeSet;

fn main() {
    let runs: usize = std::env::args()
        .skip_while(|a| a != "--runs")
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let scattered: Vec<String> = (0..40_000u64)
        .map(|i| format!("h{}x{}", i * 7919 % 1_000_003, i))
        .collect();
    let cases: Vec<(&str, String)> = vec![
        ("one range, 1M names", "n[1-1000000]".to_owned()),
        ("racks x nodes, 360k", "r[1-600]n[1-600]".to_owned()),
        ("three levels, 360k", "x[1-100]y[1-60]z[1-60]".to_owned()),
        ("padded, 100k", "cn[000001-100000]".to_owned()),
        ("40k unrelated names", scattered.join(",")),
    ];
    println!(
        "{:<24} {:>9} {:>14} {:>14} {:>8}",
        "expression", "names", "banyan (med)", "nodeset -f", "ratio"
    );
    for (label, expr) in &cases {
        let mut ours = Vec::new();
        let mut set = NodeSet::new();
        for _ in 0..runs {
            let t = Instant::now();
            set = match NodeSet::parse(expr) {
                Ok(set) => set,
                Err(e) => {
                    eprintln!("bench-nodeset: {label}: {e}");
                    std::process::exit(1);
                }
            };
            let folded = set.fold();
            ours.push(t.elapsed());
            std::hint::black_box(folded);
        }
        ours.sort();
        let med = ours[ours.len() / 2];
        let count = set.len();
        let (peer, ratio) = match clustershell(expr, &set) {
            Peer::Took(t) => (
                secs(t),
                format!("{:.1}x", t.as_secs_f64() / med.as_secs_f64()),
            ),
            Peer::TimedOut => (
                format!("> {} s", PEER_LIMIT.as_secs()),
                format!("> {:.0}x", PEER_LIMIT.as_secs_f64() / med.as_secs_f64()),
            ),
            Peer::Missing => ("n/a".to_owned(), "-".to_owned()),
        };
        println!(
            "{label:<24} {count:>9} {:>14} {peer:>14} {ratio:>8}",
            secs(med)
        );
    }
}

/// How long ClusterShell gets per expression; some shapes take it minutes.
const PEER_LIMIT: Duration = Duration::from_secs(60);

enum Peer {
    Took(Duration),
    TimedOut,
    Missing,
}

/// One run of ClusterShell's `nodeset -f`, the expression on its standard input (a 400 KB
/// argument is past Linux's limit for one argument). Its answer must be the same set as banyan's.
fn clustershell(expr: &str, ours: &NodeSet) -> Peer {
    use std::io::Write as _;
    let t = Instant::now();
    let Ok(mut child) = Command::new("nodeset")
        .arg("-f")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
    else {
        return Peer::Missing;
    };
    // One expression per line, as nodeset reads its input.
    let input = format!("{expr}\n");
    let mut stdin = child.stdin.take();
    let writer = std::thread::spawn(move || {
        if let Some(stdin) = stdin.as_mut() {
            let _ = stdin.write_all(input.as_bytes());
        }
    });
    let mut stdout = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        if let Some(s) = stdout.as_mut() {
            let _ = std::io::Read::read_to_string(s, &mut out);
        }
        out
    });
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if t.elapsed() > PEER_LIMIT => {
                let _ = child.kill();
                let _ = child.wait();
                return Peer::TimedOut;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(_) => return Peer::Missing,
        }
    }
    let took = t.elapsed();
    let _ = writer.join();
    let out = reader.join().unwrap_or_default();
    match NodeSet::parse(out.trim()) {
        Ok(theirs) if &theirs == ours => Peer::Took(took),
        _ => {
            eprintln!(
                "bench-nodeset: nodeset -f folded {} names into a different set",
                ours.len()
            );
            std::process::exit(1);
        }
    }
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}
