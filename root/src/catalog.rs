//! HELP texts of the metric families banyan itself produces, for the JSON API's `doc` fields and
//! the Prometheus exposition. Families from joined exporters bring their own.

use std::collections::HashMap;
use std::sync::OnceLock;

/// The HELP text of a family, if banyan knows it.
pub fn help(family: &str) -> Option<&'static str> {
    static TABLE: OnceLock<HashMap<&'static str, &'static str>> = OnceLock::new();
    TABLE
        .get_or_init(|| {
            let mut t: HashMap<&'static str, &'static str> =
                banyan_agent::collect::default_collectors(std::path::Path::new("/"))
                    .iter()
                    .flat_map(|c| c.describe().iter().copied())
                    .collect();
            t.insert(
                "banyan_agent_waves_total",
                "Waves sampled by the agent since it started",
            );
            t.insert(
                "banyan_agent_uptime_seconds",
                "Seconds since the agent started",
            );
            t.insert(
                "banyan_agent_up",
                "1 for every agent that reported in the wave",
            );
            t
        })
        .get(family)
        .copied()
}
