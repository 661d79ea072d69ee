//! HELP texts of the metric families banyan itself produces, for the JSON API's `doc` fields and
//! the Prometheus exposition. Families from joined exporters bring their own.

/// The HELP text of a family, if banyan knows it.
pub fn help(family: &str) -> Option<&'static str> {
    match family {
        "banyan_agent_waves_total" => Some("Waves sampled by the agent since it started"),
        "banyan_agent_uptime_seconds" => Some("Seconds since the agent started"),
        "banyan_agent_up" => Some("1 for every agent that reported in the wave"),
        _ => None,
    }
}
