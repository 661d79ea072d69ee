//! Alarms: a threshold on one series of `main` or of a job, evaluated at every wave, raised and
//! cleared with timestamps, kept in `<state>/alarms.json` across restarts.
//!
//! The shapes are the Metric Proxy's (`/alarms`, `/alarms/list`, `/alarms/add`, `/alarms/del`):
//! an alarm has a `name`, a `target` (`main` or a job id), a `metric` (a series key, labels
//! included), an `operator` (`{"More": 33}`, `{"Less": ..}`, `{"Equal": ..}`), the `current` value
//! and whether it is `active` (raised), with a one-line `pretty` text. Ours adds when it was
//! raised and cleared and a short history of both.
//!
//! The value compared is what an operator reads for the series: a counter's value, a gauge's
//! mean over what was merged (for `main`: the mean over the nodes, e.g. the cluster's mean load),
//! a histogram's mean observation. A series that is absent (a job not running, a metric not yet
//! reported) leaves the alarm as it was, with `current` null.

use banyan_protocol::job::{self, check_job_id};
use banyan_protocol::metric::{MetricSet, Value};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tracing::{info, warn};

/// Alarms one root keeps at most.
pub const MAX_ALARMS: usize = 1000;
/// Raise and clear events kept per alarm.
pub const HISTORY: usize = 50;

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
pub enum Operator {
    More(f64),
    Less(f64),
    Equal(f64),
}

impl Operator {
    fn holds(self, v: f64) -> bool {
        match self {
            Operator::More(t) => v > t,
            Operator::Less(t) => v < t,
            Operator::Equal(t) => v == t,
        }
    }

    fn text(self) -> String {
        match self {
            Operator::More(t) => format!("> {t}"),
            Operator::Less(t) => format!("< {t}"),
            Operator::Equal(t) => format!("= {t}"),
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Change {
    /// Unix milliseconds.
    pub at: u64,
    pub raised: bool,
    pub value: f64,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Alarm {
    pub name: String,
    pub target: String,
    pub metric: String,
    pub operator: Operator,
    pub current: Option<f64>,
    pub active: bool,
    pub pretty: String,
    /// When it was last raised / cleared (unix ms).
    pub raised_at: Option<u64>,
    pub cleared_at: Option<u64>,
    pub history: Vec<Change>,
}

/// `POST /alarms/add`, as the Metric Proxy takes it.
#[derive(Deserialize, Debug)]
pub struct AddRequest {
    pub name: String,
    pub target: String,
    pub metric: String,
    /// `>`, `<` or `=`.
    pub operation: String,
    pub value: f64,
}

fn check_text(what: &str, s: &str, max: usize) -> Result<(), String> {
    if s.is_empty() || s.len() > max {
        return Err(format!("{what} must be 1 to {max} bytes"));
    }
    if s.chars().any(char::is_control) {
        return Err(format!("{what} {s:?} has a control character"));
    }
    Ok(())
}

/// The value an alarm compares for `v` (see the module documentation).
pub fn reading(v: &Value) -> f64 {
    match v {
        Value::Counter(c) => c.value,
        Value::Gauge(g) => g.mean(),
        Value::Histogram(h) => {
            if h.count == 0 {
                0.0
            } else {
                h.sum / h.count as f64
            }
        }
    }
}

pub struct AlarmBook {
    file: Option<PathBuf>,
    /// By `(target, name)`.
    alarms: BTreeMap<(String, String), Alarm>,
}

impl AlarmBook {
    pub fn open(state_dir: Option<&Path>) -> AlarmBook {
        let file = state_dir.map(|d| d.join("alarms.json"));
        let mut alarms = BTreeMap::new();
        if let Some(f) = &file {
            match std::fs::read(f) {
                Ok(bytes) => match serde_json::from_slice::<Vec<Alarm>>(&bytes) {
                    Ok(list) => {
                        for a in list {
                            alarms.insert((a.target.clone(), a.name.clone()), a);
                        }
                    }
                    Err(e) => {
                        warn!(file = %f.display(), error = %e, "alarms.json is unreadable; starting with no alarms")
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => warn!(file = %f.display(), error = %e, "cannot read alarms.json"),
            }
        }
        AlarmBook { file, alarms }
    }

    /// Adds (or replaces) an alarm.
    pub fn add(&mut self, req: AddRequest) -> Result<Alarm, String> {
        check_text("the alarm name", &req.name, 128)?;
        check_text("the metric", &req.metric, 512)?;
        if req.target != "main" {
            check_job_id(&req.target)
                .map_err(|e| format!("target must be main or a job id: {e}"))?;
        }
        let bare = req.metric.split('{').next().unwrap_or(&req.metric);
        if !banyan_protocol::exposition::is_metric_name(bare) {
            return Err(format!("{:?} is not a metric name", req.metric));
        }
        if !req.value.is_finite() {
            return Err("the value must be a finite number".into());
        }
        let operator = match req.operation.trim() {
            ">" => Operator::More(req.value),
            "<" => Operator::Less(req.value),
            "=" | "==" => Operator::Equal(req.value),
            other => return Err(format!("operation {other:?}: use \">\", \"<\" or \"=\"")),
        };
        let key = (req.target.clone(), req.name.clone());
        if !self.alarms.contains_key(&key) && self.alarms.len() >= MAX_ALARMS {
            return Err(format!("{MAX_ALARMS} alarms already; delete some first"));
        }
        let alarm = Alarm {
            pretty: String::new(),
            name: req.name,
            target: req.target,
            metric: req.metric,
            operator,
            current: None,
            active: false,
            raised_at: None,
            cleared_at: None,
            history: Vec::new(),
        };
        let mut alarm = alarm;
        alarm.pretty = pretty(&alarm);
        self.alarms.insert(key, alarm.clone());
        self.save();
        Ok(alarm)
    }

    pub fn delete(&mut self, target: &str, name: &str) -> Result<Alarm, String> {
        let a = self
            .alarms
            .remove(&(target.to_string(), name.to_string()))
            .ok_or_else(|| {
                format!("no alarm {name:?} on {target:?}; GET /alarms/list lists them")
            })?;
        self.save();
        Ok(a)
    }

    /// Evaluates every alarm on this wave's totals (`main` is the nodes' series, a job its own).
    pub fn evaluate(&mut self, totals: &MetricSet, now_ms: u64) {
        let mut changed = false;
        for a in self.alarms.values_mut() {
            let value = if a.target == "main" {
                totals.get(&a.metric).map(reading)
            } else {
                totals
                    .get(&job::scoped_key(&a.target, &a.metric))
                    .map(reading)
            };
            a.current = value;
            if let Some(v) = value {
                let holds = a.operator.holds(v);
                if holds != a.active {
                    a.active = holds;
                    if holds {
                        a.raised_at = Some(now_ms);
                        info!(alarm = %a.name, target = %a.target, value = v, "alarm raised");
                    } else {
                        a.cleared_at = Some(now_ms);
                        info!(alarm = %a.name, target = %a.target, value = v, "alarm cleared");
                    }
                    a.history.push(Change {
                        at: now_ms,
                        raised: holds,
                        value: v,
                    });
                    if a.history.len() > HISTORY {
                        a.history.remove(0);
                    }
                    changed = true;
                }
            }
            a.pretty = pretty(a);
        }
        if changed {
            self.save();
        }
    }

    /// Every alarm by target (`/alarms/list`), or only the raised ones (`/alarms`).
    pub fn by_target(&self, raised_only: bool) -> BTreeMap<String, Vec<Alarm>> {
        let mut out: BTreeMap<String, Vec<Alarm>> = BTreeMap::new();
        for a in self.alarms.values() {
            if !raised_only || a.active {
                out.entry(a.target.clone()).or_default().push(a.clone());
            }
        }
        out
    }

    fn save(&self) {
        let Some(file) = &self.file else { return };
        let list: Vec<&Alarm> = self.alarms.values().collect();
        let tmp = file.with_extension("json.tmp");
        let result = serde_json::to_vec_pretty(&list)
            .map_err(|e| e.to_string())
            .and_then(|b| std::fs::write(&tmp, b).map_err(|e| e.to_string()))
            .and_then(|_| std::fs::rename(&tmp, file).map_err(|e| e.to_string()));
        if let Err(e) = result {
            warn!(file = %file.display(), error = %e, "cannot keep the alarms; a restart would lose changes");
        }
    }
}

fn pretty(a: &Alarm) -> String {
    let current = a.current.map_or("no value".to_string(), |v| format!("{v}"));
    format!(
        "{} : {} = {} {}{}",
        a.name,
        a.metric,
        current,
        a.operator.text(),
        if a.active { " (raised)" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(
        book: &mut AlarmBook,
        name: &str,
        target: &str,
        op: &str,
        v: f64,
    ) -> Result<Alarm, String> {
        book.add(AddRequest {
            name: name.into(),
            target: target.into(),
            metric: "load{node=\"x\"}".into(),
            operation: op.into(),
            value: v,
        })
    }

    #[test]
    fn alarms_raise_and_clear_with_timestamps_and_survive_a_restart() {
        let dir = std::env::temp_dir().join(format!("banyan-alarms-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let mut book = AlarmBook::open(Some(&dir));
        add(&mut book, "<b>hot</b>", "main", ">", 2.0).expect("add");
        add(&mut book, "job", "42.0", "<", 1.0).expect("add on a job");
        let mut t = MetricSet::new();
        t.set_gauge("load{node=\"x\"}", 3.0, 1);
        book.evaluate(&t, 1000);
        let raised = book.by_target(true);
        assert_eq!(raised["main"].len(), 1);
        assert_eq!(raised["main"][0].raised_at, Some(1000));
        assert!(
            !raised.contains_key("42.0"),
            "no value for the job yet: unchanged"
        );
        let again = AlarmBook::open(Some(&dir));
        assert!(
            again.by_target(true)["main"][0].active,
            "kept across a restart"
        );
        t.set_gauge("load{node=\"x\"}", 1.0, 2);
        book.evaluate(&t, 2000);
        let all = book.by_target(false);
        let a = &all["main"][0];
        assert!(!a.active);
        assert_eq!(a.cleared_at, Some(2000));
        assert_eq!(a.history.len(), 2);
        book.delete("main", "<b>hot</b>").expect("delete");
        assert!(book.delete("main", "<b>hot</b>").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_alarms_are_refused_with_the_reason() {
        let mut book = AlarmBook::open(None);
        assert!(add(&mut book, "a", "main", ">=", 1.0).is_err());
        assert!(add(&mut book, "", "main", ">", 1.0).is_err());
        assert!(add(&mut book, "a\nb", "main", ">", 1.0).is_err());
        assert!(add(&mut book, "a", "Node: x", ">", 1.0).is_err());
        assert!(add(&mut book, "a", "main", ">", f64::NAN).is_err());
        let bad_metric = book.add(AddRequest {
            name: "a".into(),
            target: "main".into(),
            metric: "9bad".into(),
            operation: ">".into(),
            value: 1.0,
        });
        assert!(bad_metric.is_err());
    }
}
