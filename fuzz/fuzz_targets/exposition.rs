//! The Prometheus text parser, as a scrape of an exporter feeds it. No panic; what parses becomes
//! a metric set that renders a valid exposition, with and without the root's extra labels, and
//! what that parses to renders validly again.
#![no_main]

use banyan_protocol::exposition::{parse_document, render, to_metric_set};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(doc) = parse_document(text) else {
        return;
    };
    let set = to_metric_set(&doc.samples, 1);
    // As the root serves it: with extra labels (a series' own `node` becomes `exported_node`).
    let served = render(&set, &|_| None, &[("node", "cn1"), ("banyan_job", "main")]);
    if let Err(e) = parse_document(&served) {
        panic!("rendered text does not parse: {e}\n{served}");
    }
    let once = render(&set, &|_| None, &[]);
    let back = parse_document(&once)
        .unwrap_or_else(|e| panic!("rendered text does not parse: {e}\n{once}"));
    // Not a fixed point in general: a hostile untyped `x_sum` with a `quantile` label renders
    // untyped and comes back as a summary's. What comes back must still render validly.
    let twice = render(&to_metric_set(&back.samples, 1), &|_| None, &[]);
    if let Err(e) = parse_document(&twice) {
        panic!("re-rendered text does not parse: {e}\n{twice}");
    }
});
