//! The metric model and its merge rules.
//!
//! Three kinds of value travel up the tree: [`Counter`] (monotonic, cumulative since the reporting
//! agent started), [`Gauge`] (a level: last, min, max, total, hits) and [`Histogram`] (fixed
//! log-linear buckets). Every merge is associative and commutative, so the tree may combine reports
//! in any grouping and any order and the root still gets the same answer; the property tests below
//! check that. Counters and histograms are *cumulative*: a report replaces the previous one from the
//! same child instead of adding to it, which is what keeps totals exact when reports are repeated or
//! lost.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A monotonic count, cumulative since the reporting agent started.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Default)]
pub struct Counter {
    pub value: f64,
}

/// A level. Merging keeps the min of mins, the max of maxes, sums totals and hits, and keeps the
/// `last` value with the newest timestamp (ties broken by the larger value, so the merge commutes).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
pub struct Gauge {
    pub min: f64,
    pub max: f64,
    pub hits: u64,
    pub total: f64,
    pub last: f64,
    /// Milliseconds since the Unix epoch at which `last` was sampled.
    pub last_ms: u64,
}

impl Gauge {
    pub fn sample(value: f64, at_ms: u64) -> Gauge {
        Gauge {
            min: value,
            max: value,
            hits: 1,
            total: value,
            last: value,
            last_ms: at_ms,
        }
    }

    pub fn merge(&mut self, other: &Gauge) {
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.hits += other.hits;
        self.total += other.total;
        let newer = other
            .last_ms
            .cmp(&self.last_ms)
            .then(other.last.total_cmp(&self.last));
        if newer == std::cmp::Ordering::Greater {
            self.last = other.last;
            self.last_ms = other.last_ms;
        }
    }

    /// Mean of the merged samples.
    pub fn mean(&self) -> f64 {
        if self.hits == 0 {
            0.0
        } else {
            self.total / self.hits as f64
        }
    }
}

/// Number of buckets of a [`Histogram`]; see [`Histogram::bucket_of`].
pub const HISTOGRAM_BUCKETS: usize = 64;

/// A distribution over fixed log-linear buckets shared by every node, so merging is adding.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct Histogram {
    /// Sparse bucket counts: bucket index -> count.
    pub buckets: BTreeMap<u8, u64>,
    pub count: u64,
    pub sum: f64,
}

impl Histogram {
    /// Bucket index of a value: bucket 0 holds everything below 1; above that, four linear
    /// sub-buckets per power of two (1, 1.25, 1.5, 1.75, 2, 2.5, ...), up to 2^15; the last bucket
    /// holds the rest.
    pub fn bucket_of(value: f64) -> u8 {
        if value.is_nan() || value < 1.0 {
            return 0;
        }
        let exp = value.log2().floor();
        if exp >= 15.0 {
            return (HISTOGRAM_BUCKETS - 1) as u8;
        }
        let base = exp.exp2();
        let sub = (((value - base) / base) * 4.0).floor().clamp(0.0, 3.0);
        (1 + exp as usize * 4 + sub as usize).min(HISTOGRAM_BUCKETS - 1) as u8
    }

    /// Upper bound of bucket `index` (the Prometheus `le` label); the last bucket is `+Inf`.
    pub fn upper_bound(index: u8) -> f64 {
        let i = index as usize;
        if i == 0 {
            return 1.0;
        }
        if i >= HISTOGRAM_BUCKETS - 1 {
            return f64::INFINITY;
        }
        let exp = (i - 1) / 4;
        let sub = (i - 1) % 4;
        let base = (exp as f64).exp2();
        base + base * (sub as f64 + 1.0) / 4.0
    }

    pub fn observe(&mut self, value: f64) {
        *self.buckets.entry(Self::bucket_of(value)).or_insert(0) += 1;
        self.count += 1;
        self.sum += value;
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (b, c) in &other.buckets {
            *self.buckets.entry(*b).or_insert(0) += c;
        }
        self.count += other.count;
        self.sum += other.sum;
    }

    fn saturating_sub(&mut self, other: &Histogram) {
        for (b, c) in &other.buckets {
            if let Some(mine) = self.buckets.get_mut(b) {
                *mine = mine.saturating_sub(*c);
            }
        }
        self.buckets.retain(|_, c| *c > 0);
        self.count = self.count.saturating_sub(other.count);
        self.sum = (self.sum - other.sum).max(0.0);
    }
}

/// One value of any kind.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Value {
    Counter(Counter),
    Gauge(Gauge),
    Histogram(Histogram),
}

impl Value {
    fn rank(&self) -> u8 {
        match self {
            Value::Counter(_) => 0,
            Value::Gauge(_) => 1,
            Value::Histogram(_) => 2,
        }
    }

    /// Merges `other` into `self`. Values of one kind merge by that kind's rule. A name reported
    /// with two kinds is a bug upstream (ingest refuses it); the tree still needs a merge that
    /// commutes, so the kind of higher rank (histogram > gauge > counter) wins.
    pub fn merge(&mut self, other: &Value) {
        match (&mut *self, other) {
            (Value::Counter(a), Value::Counter(b)) => a.value += b.value,
            (Value::Gauge(a), Value::Gauge(b)) => a.merge(b),
            (Value::Histogram(a), Value::Histogram(b)) => a.merge(b),
            _ => {
                if other.rank() > self.rank() {
                    *self = other.clone();
                }
            }
        }
    }

    /// Counters and histograms are cumulative; gauges are levels.
    pub fn is_cumulative(&self) -> bool {
        !matches!(self, Value::Gauge(_))
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Value::Counter(_) => "counter",
            Value::Gauge(_) => "gauge",
            Value::Histogram(_) => "histogram",
        }
    }
}

/// A set of named series (`name` or `name{label="v"}`), merged name by name.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct MetricSet {
    pub values: BTreeMap<String, Value>,
}

impl MetricSet {
    pub fn new() -> MetricSet {
        MetricSet::default()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.values.get(name)
    }

    /// The counter's value, 0 when absent or of another kind.
    pub fn counter(&self, name: &str) -> f64 {
        match self.values.get(name) {
            Some(Value::Counter(c)) => c.value,
            _ => 0.0,
        }
    }

    pub fn set_counter(&mut self, name: &str, value: f64) {
        self.values
            .insert(name.to_string(), Value::Counter(Counter { value }));
    }

    pub fn add_counter(&mut self, name: &str, by: f64) {
        self.merge_value(name, &Value::Counter(Counter { value: by }));
    }

    pub fn set_gauge(&mut self, name: &str, value: f64, at_ms: u64) {
        self.values
            .insert(name.to_string(), Value::Gauge(Gauge::sample(value, at_ms)));
    }

    pub fn merge_value(&mut self, name: &str, value: &Value) {
        match self.values.get_mut(name) {
            Some(mine) => mine.merge(value),
            None => {
                self.values.insert(name.to_string(), value.clone());
            }
        }
    }

    /// Merges every series of `other` into `self`.
    pub fn merge(&mut self, other: &MetricSet) {
        for (name, value) in &other.values {
            self.merge_value(name, value);
        }
    }

    /// Only the cumulative series (counters and histograms). This is what a parent keeps of a child
    /// that left: counts that happened stay counted; a departed node's levels are not current.
    pub fn cumulative(&self) -> MetricSet {
        MetricSet {
            values: self
                .values
                .iter()
                .filter(|(_, v)| v.is_cumulative())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// Subtracts the cumulative series of `other` (clamping at zero); gauges are left alone.
    /// Used for a subtree's handover debt: what it already contributed through an old parent.
    pub fn saturating_sub_cumulative(&mut self, other: &MetricSet) {
        for (name, theirs) in &other.values {
            if let Some(mine) = self.values.get_mut(name) {
                match (mine, theirs) {
                    (Value::Counter(a), Value::Counter(b)) => {
                        a.value = (a.value - b.value).max(0.0)
                    }
                    (Value::Histogram(a), Value::Histogram(b)) => a.saturating_sub(b),
                    _ => {}
                }
            }
        }
    }
}
