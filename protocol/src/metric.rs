//! The metric model and its merge rules.
//!
//! Three kinds of value travel up the tree: [`Counter`] (monotonic, cumulative since the reporting
//! agent started), [`Gauge`] (a level: last, min, max, total, hits) and [`Histogram`] (fixed
//! log-linear buckets). Every merge is associative and commutative, so the tree may combine reports
//! in any grouping and any order and the root still gets the same answer; the property tests below
//! check that. Counters and histograms are *cumulative*: a report replaces the previous one from the
//! same child instead of adding to it, which is what keeps totals exact when reports are repeated or
//! lost.
//!
//! Merges are exact on integer-valued data. On arbitrary floats a floating-point sum (a counter, a
//! gauge's total, a histogram's sum) may differ in its last bit with the grouping, which is floating
//! point, not the merge rule; everything else (min, max, `last`, hits, bucket counts, kind
//! conflicts) is independent of grouping and order, NaN and signed zeros included.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A monotonic count, cumulative since the reporting agent started.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Default)]
pub struct Counter {
    pub value: f64,
}

/// A level. Merging keeps the min of mins, the max of maxes, sums totals and hits (saturating), and
/// keeps the `last` value with the newest timestamp (ties broken by the larger value in
/// [`f64::total_cmp`] order, so the merge commutes).
///
/// NaN samples are ignored by `min` and `max` (a gauge whose samples were all NaN keeps NaN there),
/// and `-0.0` counts as smaller than `0.0`: with those two rules min and max are a total order's
/// min and max, so they commute and associate; `f64::min` alone leaves the sign of a zero to the
/// argument order. A NaN sample still counts in `hits` and makes `total` and [`Gauge::mean`] NaN,
/// which is what the reporter said.
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
        self.min = level_min(self.min, other.min);
        self.max = level_max(self.max, other.max);
        // Saturating addition is still associative on unsigned integers, and a peer's report must
        // not be able to make this panic in a debug build.
        self.hits = self.hits.saturating_add(other.hits);
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

/// The smaller level, ignoring NaN; see [`Gauge`]. Two NaNs give the canonical NaN, so even the bits
/// of the result do not depend on the argument order.
fn level_min(a: f64, b: f64) -> f64 {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => f64::NAN,
        (true, false) => b,
        (false, true) => a,
        (false, false) => {
            if a.total_cmp(&b).is_le() {
                a
            } else {
                b
            }
        }
    }
}

/// The larger level, ignoring NaN; see [`level_min`].
fn level_max(a: f64, b: f64) -> f64 {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => f64::NAN,
        (true, false) => b,
        (false, true) => a,
        (false, false) => {
            if a.total_cmp(&b).is_ge() {
                a
            } else {
                b
            }
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
    /// Bucket index of a value. Bucket 0 holds everything below 1 (negative values and `-Inf`
    /// included); from 1 on, each power of two `[2^e, 2^(e+1))` is split into four linear
    /// sub-buckets (1, 1.25, 1.5, 1.75, 2, 2.5, ...), up to bucket 62 `[1.25, 1.5) * 2^15`; the last
    /// bucket holds everything from `1.5 * 2^15 = 49152` on, `+Inf` included, and NaN, which
    /// compares below no bound and so belongs in the `le="+Inf"` bucket only (as Prometheus does).
    ///
    /// Every value `v` lands in the bucket `b` with `upper_bound(b - 1) <= v < upper_bound(b)`.
    pub fn bucket_of(value: f64) -> u8 {
        const LAST: u8 = (HISTOGRAM_BUCKETS - 1) as u8;
        if value.is_nan() {
            return LAST;
        }
        if value < 1.0 {
            return 0;
        }
        if value >= Self::upper_bound(LAST - 1) {
            return LAST;
        }
        // Here 1 <= value < 2^16, a normal float: its binary exponent and the top two bits of its
        // mantissa are exactly the power of two and the quarter within it. `log2().floor()` is not
        // exact: it rounds values just below a power of two up to it.
        let bits = value.to_bits();
        let exp = ((bits >> 52) & 0x7ff) - 1023;
        let quarter = (bits >> 50) & 0b11;
        // exp <= 15 and quarter <= 1 when exp == 15, so this is at most 62.
        (1 + exp * 4 + quarter) as u8
    }

    /// Upper bound of bucket `index` (the Prometheus `le` label), exclusive: strictly increasing
    /// over `0..HISTOGRAM_BUCKETS`, and the last bucket is `+Inf`.
    pub fn upper_bound(index: u8) -> f64 {
        let i = index as usize;
        if i == 0 {
            return 1.0;
        }
        if i >= HISTOGRAM_BUCKETS - 1 {
            return f64::INFINITY;
        }
        // Bucket i >= 1 is quarter (i - 1) % 4 of [2^e, 2^(e+1)) with e = (i - 1) / 4; its bound is
        // the start of the next quarter. Exact: powers of two times multiples of 1/4.
        let exp = (i - 1) / 4;
        let quarter = (i - 1) % 4;
        let base = (exp as f64).exp2();
        base + base * (quarter as f64 + 1.0) / 4.0
    }

    pub fn observe(&mut self, value: f64) {
        let bucket = self.buckets.entry(Self::bucket_of(value)).or_insert(0);
        *bucket = bucket.saturating_add(1);
        self.count = self.count.saturating_add(1);
        self.sum += value;
    }

    /// Adds `other` bucket by bucket. Counts saturate instead of overflowing (still associative),
    /// and buckets left at zero are dropped: an explicit zero from a peer would otherwise make two
    /// equal distributions compare unequal, and the subtraction below drops them too.
    pub fn merge(&mut self, other: &Histogram) {
        for (b, c) in &other.buckets {
            let mine = self.buckets.entry(*b).or_insert(0);
            *mine = mine.saturating_add(*c);
        }
        self.buckets.retain(|_, c| *c > 0);
        self.count = self.count.saturating_add(other.count);
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
        // Observations may be negative (bucket 0 takes everything below 1), so the sum is not
        // clamped at zero; only a histogram the subtraction emptied has nothing left to sum.
        self.sum = if self.count == 0 {
            0.0
        } else {
            self.sum - other.sum
        };
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
    /// commutes and associates, so the kind of higher rank (histogram > gauge > counter) wins and
    /// values of lower rank are dropped: the result is always the merge of every value of the
    /// highest kind reported, whatever the grouping and order.
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

    /// Subtracts the cumulative series of `other` (counts clamp at zero); gauges, and series whose
    /// kinds differ, are left alone.
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // Generated floats are integer-valued (or NaN, -0.0 and 0.0 for gauge levels): f64 addition of
    // integers below 2^53 is exact, so sums do not depend on grouping and the properties can demand
    // equality. On arbitrary floats (a + b) + c and a + (b + c) may differ in the last bit, which is
    // floating point, not the merge rule under test.

    /// Compares through `Debug`, which tells -0.0 from 0.0 (`==` does not) and prints every NaN
    /// alike (`==` never holds for NaN).
    fn same<T: std::fmt::Debug>(a: &T, b: &T) -> bool {
        format!("{a:?}") == format!("{b:?}")
    }

    fn merged(a: &MetricSet, b: &MetricSet) -> MetricSet {
        let mut out = a.clone();
        out.merge(b);
        out
    }

    fn counter() -> impl Strategy<Value = Counter> {
        (0u32..1_000_000).prop_map(|v| Counter {
            value: f64::from(v),
        })
    }

    fn level() -> impl Strategy<Value = f64> {
        prop_oneof![
            8 => (-1000i32..1000).prop_map(f64::from),
            1 => Just(0.0),
            1 => Just(-0.0),
            1 => Just(f64::NAN),
        ]
    }

    fn gauge() -> impl Strategy<Value = Gauge> {
        // Few distinct timestamps, so `last` ties are common; hits near u64::MAX exercise saturation.
        let hits = prop_oneof![9 => 0u64..1000, 1 => Just(u64::MAX - 3)];
        (level(), level(), hits, level(), level(), 0u64..4).prop_map(
            |(min, max, hits, total, last, last_ms)| Gauge {
                min,
                max,
                hits,
                total,
                last,
                last_ms,
            },
        )
    }

    fn histogram() -> impl Strategy<Value = Histogram> {
        // Negative values, values below 1 and values past the last finite bound all occur.
        prop::collection::vec(-50i32..70_000, 0..20).prop_map(|values| {
            let mut h = Histogram::default();
            for v in values {
                h.observe(f64::from(v));
            }
            h
        })
    }

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            counter().prop_map(Value::Counter),
            gauge().prop_map(Value::Gauge),
            histogram().prop_map(Value::Histogram),
        ]
    }

    fn name() -> impl Strategy<Value = String> {
        // A small pool, so sets share names, and a shared name often has different kinds.
        prop::sample::select(vec!["a", "b{x=\"1\"}", "c", "d"]).prop_map(String::from)
    }

    fn metric_set() -> impl Strategy<Value = MetricSet> {
        prop::collection::btree_map(name(), value(), 0..4).prop_map(|values| MetricSet { values })
    }

    /// A set `a` and a set `x` holding, for some cumulative series of `a`, a value of the same kind.
    fn set_and_part() -> impl Strategy<Value = (MetricSet, MetricSet)> {
        let pair = prop_oneof![
            (counter(), prop::option::of(counter()))
                .prop_map(|(a, x)| (Value::Counter(a), x.map(Value::Counter))),
            (histogram(), prop::option::of(histogram()))
                .prop_map(|(a, x)| (Value::Histogram(a), x.map(Value::Histogram))),
            gauge().prop_map(|g| (Value::Gauge(g), None)),
        ];
        prop::collection::btree_map(name(), pair, 0..4).prop_map(|pairs| {
            let mut a = MetricSet::new();
            let mut x = MetricSet::new();
            for (name, (mine, part)) in pairs {
                a.values.insert(name.clone(), mine);
                if let Some(part) = part {
                    x.values.insert(name, part);
                }
            }
            (a, x)
        })
    }

    /// Reduces `sets` (at least one) in a binary tree: each `(split, swap)` of `shape` picks where an
    /// inner node splits its leaves and which half is merged into the other.
    fn reduce_tree(
        sets: &[MetricSet],
        shape: &mut std::slice::Iter<'_, (usize, bool)>,
    ) -> MetricSet {
        if sets.len() == 1 {
            return sets[0].clone();
        }
        let (split, swap) = shape.next().copied().unwrap_or_default();
        let k = 1 + split % (sets.len() - 1);
        let left = reduce_tree(&sets[..k], shape);
        let right = reduce_tree(&sets[k..], shape);
        if swap {
            merged(&right, &left)
        } else {
            merged(&left, &right)
        }
    }

    proptest! {
        #[test]
        fn merge_is_commutative(a in metric_set(), b in metric_set()) {
            prop_assert!(same(&merged(&a, &b), &merged(&b, &a)));
        }

        #[test]
        fn merge_is_associative(a in metric_set(), b in metric_set(), c in metric_set()) {
            let left = merged(&merged(&a, &b), &c);
            let right = merged(&a, &merged(&b, &c));
            prop_assert!(same(&left, &right), "{:?} != {:?}", left, right);
        }

        #[test]
        fn empty_set_is_the_identity(a in metric_set()) {
            prop_assert!(same(&merged(&a, &MetricSet::new()), &a));
            prop_assert!(same(&merged(&MetricSet::new(), &a), &a));
        }

        #[test]
        fn cumulative_drops_gauges_only(a in metric_set()) {
            let kept = a.cumulative();
            for (name, v) in &a.values {
                match v {
                    Value::Gauge(_) => prop_assert!(kept.get(name).is_none()),
                    _ => prop_assert!(same(&kept.get(name), &Some(v))),
                }
            }
            prop_assert!(kept.values.keys().all(|name| a.get(name).is_some()));
        }

        #[test]
        fn subtracting_a_merged_part_restores_the_set((a, x) in set_and_part()) {
            let mut s = merged(&a, &x);
            s.saturating_sub_cumulative(&x);
            prop_assert!(same(&s, &a), "{:?} != {:?}", s, a);
        }

        #[test]
        fn tree_reduction_equals_left_fold(
            sets in prop::collection::vec(metric_set(), 1..10),
            shape in prop::collection::vec((any::<usize>(), any::<bool>()), 10),
        ) {
            let tree = reduce_tree(&sets, &mut shape.iter());
            let fold = sets.iter().fold(MetricSet::new(), |acc, s| merged(&acc, s));
            prop_assert!(same(&tree, &fold), "{:?} != {:?}", tree, fold);
        }

        #[test]
        fn bucket_of_lies_between_bounds(v in prop_oneof![-1e3..1e6f64, 0.0..4.0f64]) {
            let b = Histogram::bucket_of(v);
            prop_assert!(v < Histogram::upper_bound(b));
            if b > 0 {
                prop_assert!(Histogram::upper_bound(b - 1) <= v);
            }
        }

        #[test]
        fn bucket_of_is_monotone(a in -1e3..1e6f64, b in -1e3..1e6f64) {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            prop_assert!(Histogram::bucket_of(lo) <= Histogram::bucket_of(hi));
        }
    }

    #[test]
    fn bucket_boundaries() {
        let last = (HISTOGRAM_BUCKETS - 1) as u8;
        for (v, b) in [
            (f64::NEG_INFINITY, 0),
            (-1.0, 0),
            (0.0, 0),
            (0.5, 0),
            (1.0, 1),
            (1.25, 2),
            (2.0, 5),
            // 1000 = 1.953 * 2^9: the fourth quarter of 2^9, bounds 896 and 1024.
            (1000.0, 40),
            (49_151.0, last - 1),
            (49_152.0, last),
            (1e9, last),
            (f64::INFINITY, last),
            (f64::NAN, last),
        ] {
            assert_eq!(Histogram::bucket_of(v), b, "bucket of {v}");
        }
        assert_eq!(Histogram::upper_bound(39), 896.0);
        assert_eq!(Histogram::upper_bound(40), 1024.0);
    }

    #[test]
    fn every_bound_starts_its_successor() {
        // Checked at each bound and at the float just below it, where rounding would show.
        for b in 0..(HISTOGRAM_BUCKETS - 1) as u8 {
            let bound = Histogram::upper_bound(b);
            assert!(
                bound < Histogram::upper_bound(b + 1),
                "bounds of {b} and {}",
                b + 1
            );
            assert_eq!(Histogram::bucket_of(bound), b + 1, "bucket of {bound}");
            let below = f64::from_bits(bound.to_bits() - 1);
            assert_eq!(Histogram::bucket_of(below), b, "bucket of {below}");
        }
    }

    #[test]
    fn histogram_merge_drops_empty_buckets() {
        let mut a = Histogram::default();
        a.observe(3.0);
        let mut explicit_zero = Histogram::default();
        explicit_zero.buckets.insert(7, 0);
        let mut b = a.clone();
        b.merge(&explicit_zero);
        assert_eq!(b, a);
    }

    #[test]
    fn subtraction_clamps_at_zero() {
        let mut small = MetricSet::new();
        small.set_counter("c", 2.0);
        let mut big = MetricSet::new();
        big.set_counter("c", 5.0);
        small.saturating_sub_cumulative(&big);
        assert_eq!(small.counter("c"), 0.0);
    }

    #[test]
    fn gauge_mean_and_nan() {
        let mut g = Gauge::sample(2.0, 10);
        g.merge(&Gauge::sample(6.0, 5));
        assert_eq!(g.mean(), 4.0);
        assert_eq!(
            (g.min, g.max, g.hits, g.last, g.last_ms),
            (2.0, 6.0, 2, 2.0, 10)
        );
        g.merge(&Gauge::sample(f64::NAN, 20));
        assert_eq!((g.min, g.max, g.hits), (2.0, 6.0, 3));
        assert!(g.last.is_nan() && g.mean().is_nan());
        assert_eq!(Gauge { hits: 0, ..g }.mean(), 0.0);
    }

    #[test]
    fn counter_add_and_kind_conflict() {
        let mut s = MetricSet::new();
        s.add_counter("c", 2.0);
        s.add_counter("c", 3.0);
        assert_eq!(s.counter("c"), 5.0);
        s.set_gauge("g", 1.0, 0);
        s.add_counter("g", 4.0);
        assert_eq!(s.get("g").map(Value::kind), Some("gauge"));
        assert_eq!(s.counter("g"), 0.0);
    }
}
