//! The Prometheus text exposition format, version 0.0.4: rendering a [`MetricSet`] for `/metrics`,
//! and parsing what an exporter (node_exporter, say) serves, for `/join`.
//!
//! [`render`] writes a set as Prometheus scrapes it and as `promtool check metrics` lints it: one
//! `# HELP` and one `# TYPE` line per family, families in sorted order, label values escaped, names
//! sanitized, histograms as cumulative `_bucket{le=...}`, `_sum` and `_count` lines.
//! [`parse`] (and [`parse_document`], which keeps the HELP texts) reads an exporter's answer into
//! [`Sample`]s, tolerating what real exporters write and refusing hostile input with a line number;
//! [`to_metric_set`] turns those samples into banyan's metric model so they merge up the tree.
//!
//! It is not an HTTP client or server, and it does not speak OpenMetrics or the protobuf format:
//! the caller fetches the bytes (asking for `text/plain; version=0.0.4`) and serves the string.
//!
//! # Rendering rules (what `/metrics` promises)
//!
//! * **Names are kept.** A series name is changed only when it is not a valid Prometheus name at all
//!   (invalid characters become `_`, a leading digit gets a `_` in front): operators' queries and
//!   dashboards use the names their exporters chose. promtool's lint, however, expects a type to go
//!   with certain names (counters end in `_total`; only counters may; only histograms and summaries
//!   use `_bucket`, `_sum`, `_count`, `le` and `quantile`). Where the proper type and the name
//!   disagree, the family is exposed as `untyped`, which promtool accepts for any name and Prometheus
//!   stores just the same. So a counter named `*_total` is a `counter`; a counter named otherwise
//!   is `untyped` with its name intact (banyan's own counters are all named `*_total`).
//! * **Gauges** are exposed as their `total`, the sum over the merged nodes: the cluster-wide value of
//!   a level summed over nodes (memory used, jobs running) is the sum, and a single node's set has
//!   `hits == 1`, where `total` is its last sample.
//! * **Histograms** get one cumulative `_bucket` line per bound of [`Histogram::upper_bound`], from `1`
//!   to `+Inf`, so every scrape has the same `le` values; `le` is written as Prometheus writes floats.
//! * **Scraped histograms and summaries come back whole.** [`to_metric_set`] stores a scraped
//!   histogram as counters `F_bucket{le=..}`, `F_sum`, `F_count` (and a summary's quantiles as
//!   gauges). `render` recognises those shapes and exposes them again as one `histogram` (or
//!   `summary`) family `F`, with the same names and labels the exporter used; a pair of counters
//!   `F_sum` and `F_count` alone is a summary without quantiles. When the parts do not fit together
//!   cleanly they are exposed as the plain series they are stored as. A native histogram named
//!   `*_total` is written as three untyped families `F_bucket`, `F_sum`, `F_count`.
//! * **Labels**: `extra` labels (`job`, `node`, ...) are added to every series and win on a clash:
//!   the series' own label is renamed `exported_<name>`, as Prometheus itself does when a scraped
//!   label clashes with a target label. The same rename resolves any other clash (two label names
//!   that sanitize alike, or an own `le` on a histogram). Labels with empty values are left out
//!   (Prometheus treats them as absent).
//! * **Collisions** (which a sane set does not have): series of one name but different kinds (counter
//!   and gauge) form one `untyped` family, keeping every series. A histogram family owns the names
//!   `F`, `F_bucket`, `F_sum` and `F_count`; another family using one of them would make the
//!   exposition unparseable, so of families whose names collide, the one with more series is kept
//!   (ties: histogram, summary, gauge, counter, untyped, then the smaller name) and the others are
//!   dropped, each noted in a `# banyan: dropped ...` comment at the end. Series that become
//!   identical after sanitizing are kept once.
//!
//! promtool also lints style: camelCase names, non-base units (`_milliseconds`), unit
//! abbreviations (`_ms`), a type word in the name (`_counter`), colons. Those are properties of the
//! name itself; since names are kept, a series an exporter named badly is exposed as badly named.
//! `render` never adds a lint problem of its own; on names promtool is happy with, the output
//! passes `promtool check metrics` with exit status 0 (tests/tests/promtool.rs checks it).

use crate::metric::{Histogram, MetricSet, Value, HISTOGRAM_BUCKETS};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

/// Longest line [`parse`] accepts, in bytes (without the line feed).
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// Most samples [`parse`] accepts from one exposition.
pub const MAX_SAMPLES: usize = 200_000;

/// The type of a metric family, as a `# TYPE` line names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
    Summary,
    Untyped,
}

impl Kind {
    /// The word of the `# TYPE` line.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
            Kind::Summary => "summary",
            Kind::Untyped => "untyped",
        }
    }

    /// Reads a `# TYPE` word, ignoring case; OpenMetrics' `unknown` is `untyped`.
    fn from_word(word: &str) -> Option<Kind> {
        Some(match word.to_ascii_lowercase().as_str() {
            "counter" => Kind::Counter,
            "gauge" => Kind::Gauge,
            "histogram" => Kind::Histogram,
            "summary" => Kind::Summary,
            "untyped" | "unknown" => Kind::Untyped,
            _ => return None,
        })
    }

    /// Which family wins a name collision when both have as many series (see the module doc).
    fn rank(self) -> u8 {
        match self {
            Kind::Histogram => 4,
            Kind::Summary => 3,
            Kind::Gauge => 2,
            Kind::Counter => 1,
            Kind::Untyped => 0,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A metric family of a parsed exposition: its name, its HELP text if it had one, and its type
/// (`Untyped` when no `# TYPE` line named it).
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub name: String,
    pub help: Option<String>,
    pub kind: Kind,
}

/// One sample line of a parsed exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The family the line belongs to: `http_seconds` for `http_seconds_bucket{le="1"} 3`.
    pub family: String,
    /// The series in banyan's key form ([`series_key`]): the line's own name and its labels, sorted by
    /// name, escaped canonically, empty values left out; a histogram's `le` and a summary's
    /// `quantile` are rewritten as [`format_float`] writes them, so `le="1.0"` and `le="1"` are one
    /// series.
    pub name: String,
    pub value: f64,
    /// The family's type.
    pub kind: Kind,
    /// The optional timestamp of the line, in milliseconds since the Unix epoch.
    pub timestamp_ms: Option<i64>,
}

/// A parsed exposition: the families in the order they first appeared, and every sample.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Document {
    pub families: Vec<Family>,
    pub samples: Vec<Sample>,
}

/// Why an exposition could not be parsed, and on which line (counted from 1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

// ---------------------------------------------------------------------------------------------
// Names, labels, floats
// ---------------------------------------------------------------------------------------------

type Labels = Vec<(String, String)>;

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b':'
}

fn is_label_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Whether `name` is a valid metric name: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub fn is_metric_name(name: &str) -> bool {
    name.bytes().all(is_name_byte) && name.bytes().next().is_some_and(|b| !b.is_ascii_digit())
}

/// Whether `name` is a valid label name: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn is_label_name(name: &str) -> bool {
    name.bytes().all(is_label_byte) && name.bytes().next().is_some_and(|b| !b.is_ascii_digit())
}

/// A valid name made of `name`: every character `keep` refuses becomes `_`, and a leading digit
/// (or nothing at all) gets a `_` in front.
fn sanitize(name: &str, keep: fn(u8) -> bool) -> String {
    let mut out = String::with_capacity(name.len() + 1);
    if name.bytes().next().is_none_or(|b| b.is_ascii_digit()) {
        out.push('_');
    }
    for c in name.chars() {
        if c.is_ascii() && keep(c as u8) {
            out.push(c);
        } else {
            out.push('_');
        }
    }
    out
}

fn sanitize_metric_name(name: &str) -> String {
    if is_metric_name(name) {
        name.to_string()
    } else {
        sanitize(name, is_name_byte)
    }
}

/// Label names starting with `__` are reserved for Prometheus itself (`__name__` is an error in an
/// exposition), so a leading run of underscores is cut to one.
fn sanitize_label_name(name: &str) -> String {
    let clean = if is_label_name(name) {
        name.to_string()
    } else {
        sanitize(name, is_label_byte)
    };
    if clean.starts_with("__") {
        format!("_{}", clean.trim_start_matches('_'))
    } else {
        clean
    }
}

/// `exported_<name>`, prefixed again until no label of the series is called so.
fn exported_name(name: &str, taken: &HashSet<String>) -> String {
    let mut out = format!("exported_{name}");
    while taken.contains(&out) {
        out.insert_str(0, "exported_");
    }
    out
}

fn escape_label_value(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn escape_help(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Undoes the escapes of a HELP text (`\\`, `\n`); other backslashes stay as they are.
fn unescape_help(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

fn write_labels<'a>(out: &mut String, labels: impl IntoIterator<Item = (&'a str, &'a str)>) {
    let mut first = true;
    for (name, value) in labels {
        out.push(if first { '{' } else { ',' });
        first = false;
        out.push_str(name);
        out.push_str("=\"");
        escape_label_value(value, out);
        out.push('"');
    }
    if !first {
        out.push('}');
    }
}

/// The key of a series in banyan's text form, `name` or `name{a="x",b="y"}`: labels sorted by name,
/// values escaped as the exposition format escapes them (`\\`, `\"`, `\n`), labels with an empty
/// value left out (Prometheus treats them as absent). Names are not checked here; [`render`]
/// sanitizes what it must. Collectors should build keys with this rather than by hand.
pub fn series_key(name: &str, labels: &[(&str, &str)]) -> String {
    let mut sorted: Vec<(&str, &str)> = labels
        .iter()
        .copied()
        .filter(|(_, v)| !v.is_empty())
        .collect();
    sorted.sort();
    let mut out = String::from(name);
    write_labels(&mut out, sorted);
    out
}

fn owned_key(name: &str, labels: &[(String, String)]) -> String {
    let mut out = String::from(name);
    write_labels(
        &mut out,
        labels.iter().map(|(n, v)| (n.as_str(), v.as_str())),
    );
    out
}

/// Writes a float as Prometheus' Go code does (`strconv.FormatFloat(v, 'g', -1, 64)`): the
/// shortest digits that read back exactly, in exponent form (`1e+06`, `1.5e-05`) when the
/// exponent is below -4 or at least 6; `NaN`, `+Inf`, `-Inf`; both zeros as `0`. Used for values
/// and for `le`/`quantile` labels, so bucket bounds read `1`, `1.25`, `+Inf`.
pub fn format_float(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    if v == 0.0 {
        return "0".into();
    }
    // Rust's `{:e}` gives the shortest round-trip digits as `d.ddde-7`; only the layout differs
    // from Go's.
    let sci = format!("{:e}", v.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let mut out = String::with_capacity(digits.len() + 8);
    if v < 0.0 {
        out.push('-');
    }
    if !(-4..6).contains(&exp) {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push('e');
        out.push(if exp < 0 { '-' } else { '+' });
        out.push_str(&format!("{:02}", exp.unsigned_abs()));
        return out;
    }
    // Position of the decimal point within `digits`.
    let point = exp + 1;
    if point <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', point.unsigned_abs() as usize));
        out.push_str(&digits);
    } else {
        let point = point as usize;
        if point >= digits.len() {
            out.push_str(&digits);
            out.extend(std::iter::repeat_n('0', point - digits.len()));
        } else {
            out.push_str(&digits[..point]);
            out.push('.');
            out.push_str(&digits[point..]);
        }
    }
    out
}

/// Reads a sample value as Prometheus does: decimal and exponent forms, `NaN`, `Inf`, `+Inf`,
/// `-Inf` (any case, `infinity` too).
fn parse_float(token: &str) -> Option<f64> {
    token.parse::<f64>().ok()
}

// ---------------------------------------------------------------------------------------------
// Series syntax shared by the parser and by render's reading of keys
// ---------------------------------------------------------------------------------------------

fn skip_blanks(s: &str, mut i: usize) -> usize {
    let b = s.as_bytes();
    while i < b.len() && is_blank(b[i]) {
        i += 1;
    }
    i
}

/// Reads a label block starting at the `{` at `s[open]`: `{}`, `{a="x"}`, `{a="x",b="y",}`, with
/// blanks allowed between tokens. Escapes `\\`, `\"` and `\n` are undone; any other backslash is
/// kept as written. Returns the labels in their order and the index after the `}`. Duplicate
/// names are not checked here. `lenient` (for [`MetricSet`] keys, whose label names [`render`]
/// sanitizes) takes any text up to the `=` as a label name.
fn read_labels(s: &str, open: usize, lenient: bool) -> Result<(Labels, usize), String> {
    let b = s.as_bytes();
    let mut labels = Labels::new();
    let mut i = open + 1;
    loop {
        i = skip_blanks(s, i);
        match b.get(i) {
            None => return Err("the label set is not closed with '}'".into()),
            Some(b'}') => return Ok((labels, i + 1)),
            Some(_) => {}
        }
        let start = i;
        let in_name = |c: u8| {
            if lenient {
                !matches!(c, b'=' | b'"' | b',' | b'{' | b'}') && !is_blank(c)
            } else {
                is_label_byte(c)
            }
        };
        while i < b.len() && in_name(b[i]) {
            i += 1;
        }
        let name = &s[start..i];
        if name.is_empty() || (!lenient && name.as_bytes()[0].is_ascii_digit()) {
            let found = s[start..].chars().next().unwrap_or(' ');
            return Err(format!("expected a label name, found {found:?}"));
        }
        i = skip_blanks(s, i);
        if b.get(i) != Some(&b'=') {
            return Err(format!("expected '=' after the label name {name:?}"));
        }
        i = skip_blanks(s, i + 1);
        if b.get(i) != Some(&b'"') {
            return Err(format!("expected '\"' to open the value of label {name:?}"));
        }
        i += 1;
        let mut value = String::new();
        let mut run = i;
        loop {
            match b.get(i) {
                None => {
                    return Err(format!(
                        "the value of label {name:?} is not closed with '\"'"
                    ))
                }
                Some(b'"') => {
                    value.push_str(&s[run..i]);
                    i += 1;
                    break;
                }
                Some(b'\\') => {
                    value.push_str(&s[run..i]);
                    match b.get(i + 1) {
                        Some(b'\\') => value.push('\\'),
                        Some(b'"') => value.push('"'),
                        Some(b'n') => value.push('\n'),
                        // Prometheus keeps unknown escapes as written; so do we. The next
                        // character is handled by the loop, so a multi-byte one stays whole.
                        _ => {
                            value.push('\\');
                            i += 1;
                            run = i;
                            continue;
                        }
                    }
                    i += 2;
                    run = i;
                }
                Some(_) => i += 1,
            }
        }
        labels.push((name.to_string(), value));
        i = skip_blanks(s, i);
        match b.get(i) {
            Some(b',') => i += 1,
            Some(b'}') => return Ok((labels, i + 1)),
            None => return Err("the label set is not closed with '}'".into()),
            Some(_) => {
                let found = s[i..].chars().next().unwrap_or(' ');
                return Err(format!(
                    "expected ',' or '}}' after the value of label {name:?}, found {found:?}"
                ));
            }
        }
    }
}

/// Reads a metric name at the start of `s`; returns it and the index after it.
fn read_metric_name(s: &str) -> Result<(&str, usize), String> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() && is_name_byte(b[i]) {
        i += 1;
    }
    let name = &s[..i];
    if name.is_empty() || b[0].is_ascii_digit() {
        let token: String = s
            .chars()
            .take_while(|c| !c.is_whitespace())
            .take(40)
            .collect();
        return Err(format!("{token:?} does not start with a valid metric name"));
    }
    Ok((name, i))
}

/// Splits a key of a [`MetricSet`] into a valid metric name and sanitized, unique labels. Keys
/// are written by banyan ([`series_key`], [`to_metric_set`]), but a key that is not in that form
/// must not break the exposition: then the whole key is sanitized into a name.
fn split_key(key: &str) -> (String, Labels) {
    let (name, labels) = match key.find('{') {
        None => (key, Labels::new()),
        Some(open) => match read_labels(key, open, true) {
            Ok((labels, end)) if key[end..].trim().is_empty() => (&key[..open], labels),
            _ => (key, Labels::new()),
        },
    };
    let mut taken = HashSet::new();
    let mut clean = Labels::with_capacity(labels.len());
    for (n, v) in labels {
        if v.is_empty() {
            continue;
        }
        let mut n = sanitize_label_name(&n);
        if taken.contains(&n) {
            n = exported_name(&n, &taken);
        }
        taken.insert(n.clone());
        clean.push((n, v));
    }
    (sanitize_metric_name(name.trim()), clean)
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

/// Parses an exposition in the text format 0.0.4 into its samples; see [`parse_document`].
pub fn parse(text: &str) -> Result<Vec<Sample>, ParseError> {
    parse_document(text).map(|d| d.samples)
}

struct FamilyState {
    family: Family,
    typed: bool,
    has_samples: bool,
}

/// Parses an exposition in the text format 0.0.4, as exporters serve it.
///
/// Accepted: `\n` or `\r\n` line ends, blank lines, leading and trailing blanks, blanks and a
/// trailing comma inside label sets, `# HELP` (escapes `\\` and `\n`), `# TYPE` (any case;
/// OpenMetrics' `unknown` means untyped), other `#` comments, escapes in label values, decimal and
/// exponent floats, `NaN` and `Inf` in any case and sign, an optional integer timestamp in
/// milliseconds. A sample with no `# TYPE` line is untyped; `F_bucket`, `F_sum` and `F_count` belong
/// to family `F` when `F` is a histogram (or, but for `_bucket`, a summary). A repeated HELP line
/// keeps the first text.
///
/// Refused, with the line number: invalid names, broken label sets, a label given twice or named
/// `__name__`, a value or timestamp that is not a number, text after the timestamp, an unknown
/// type, a second TYPE line that disagrees or one after the family's samples, a histogram bucket
/// without a numeric `le`, a summary quantile without a numeric `quantile`; a line longer than
/// [`MAX_LINE_BYTES`], and more than [`MAX_SAMPLES`] samples, so hostile input costs bounded memory
/// per line and in total.
pub fn parse_document(text: &str) -> Result<Document, ParseError> {
    let mut states: Vec<FamilyState> = Vec::new();
    let mut by_name: HashMap<String, usize> = HashMap::new();
    let mut samples: Vec<Sample> = Vec::new();
    for (index, raw) in text.split('\n').enumerate() {
        let line_no = index + 1;
        let fail = |message: String| ParseError {
            line: line_no,
            message,
        };
        if raw.len() > MAX_LINE_BYTES {
            return Err(fail(format!(
                "the line is {} bytes long, more than the limit of {MAX_LINE_BYTES}",
                raw.len()
            )));
        }
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let line = line.trim_matches(|c| c == ' ' || c == '\t');
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            read_comment(comment, &mut states, &mut by_name).map_err(fail)?;
            continue;
        }
        if samples.len() >= MAX_SAMPLES {
            return Err(fail(format!(
                "more than {MAX_SAMPLES} samples; refusing the rest of the exposition"
            )));
        }
        let sample = read_sample(line, &mut states, &mut by_name).map_err(fail)?;
        samples.push(sample);
    }
    Ok(Document {
        families: states.into_iter().map(|s| s.family).collect(),
        samples,
    })
}

fn family_index(
    name: &str,
    states: &mut Vec<FamilyState>,
    by_name: &mut HashMap<String, usize>,
) -> usize {
    if let Some(&i) = by_name.get(name) {
        return i;
    }
    states.push(FamilyState {
        family: Family {
            name: name.to_string(),
            help: None,
            kind: Kind::Untyped,
        },
        typed: false,
        has_samples: false,
    });
    by_name.insert(name.to_string(), states.len() - 1);
    states.len() - 1
}

/// The first blank-separated token of `s` (after leading blanks) and the rest after it.
fn token(s: &str) -> (&str, &str) {
    let s = s.trim_start_matches([' ', '\t']);
    let end = s.find([' ', '\t']).unwrap_or(s.len());
    (&s[..end], &s[end..])
}

fn read_comment(
    comment: &str,
    states: &mut Vec<FamilyState>,
    by_name: &mut HashMap<String, usize>,
) -> Result<(), String> {
    let (word, rest) = token(comment);
    if word != "HELP" && word != "TYPE" {
        return Ok(());
    }
    let (name, rest) = token(rest);
    if name.is_empty() {
        return Err(format!("the {word} line names no metric"));
    }
    if !is_metric_name(name) {
        return Err(format!(
            "the {word} line names {name:?}, which is not a valid metric name"
        ));
    }
    let i = family_index(name, states, by_name);
    let state = &mut states[i];
    if word == "HELP" {
        if state.family.help.is_none() {
            let text = rest.trim_start_matches([' ', '\t']);
            state.family.help = Some(unescape_help(text));
        }
        return Ok(());
    }
    let (kind_word, extra) = token(rest);
    if kind_word.is_empty() {
        return Err(format!("the TYPE line of {name} names no type"));
    }
    if !extra.trim().is_empty() {
        return Err(format!(
            "unexpected text {:?} after the type of {name}",
            extra.trim()
        ));
    }
    let Some(kind) = Kind::from_word(kind_word) else {
        return Err(format!(
            "unknown type {kind_word:?} for {name} (expected counter, gauge, histogram, summary or untyped)"
        ));
    };
    if state.typed {
        if state.family.kind != kind {
            return Err(format!(
                "a second TYPE line says {name} is a {kind}; the first said {}",
                state.family.kind
            ));
        }
        return Ok(());
    }
    if state.has_samples {
        return Err(format!("the TYPE line of {name} comes after samples of it"));
    }
    state.family.kind = kind;
    state.typed = true;
    Ok(())
}

/// The family a sample line named `name` belongs to: its own, or that of the histogram or summary
/// whose `_bucket`, `_sum` or `_count` it is.
fn resolve_family(
    name: &str,
    states: &mut Vec<FamilyState>,
    by_name: &mut HashMap<String, usize>,
) -> usize {
    if let Some(&i) = by_name.get(name) {
        return i;
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if let Some(&i) = by_name.get(base) {
                match states[i].family.kind {
                    Kind::Histogram => return i,
                    Kind::Summary if suffix != "_bucket" => return i,
                    _ => {}
                }
            }
        }
    }
    family_index(name, states, by_name)
}

/// Rewrites the value of label `label` as [`format_float`] writes it; an error when it is missing
/// or not a number.
fn canonical_float_label(labels: &mut Labels, label: &str, what: &str) -> Result<(), String> {
    let Some(slot) = labels.iter_mut().find(|(n, _)| n == label) else {
        return Err(format!("{what} has no {label} label"));
    };
    let Some(v) = parse_float(slot.1.trim()) else {
        return Err(format!(
            "{what} has {label}={:?}, which is not a number",
            slot.1
        ));
    };
    slot.1 = format_float(v);
    Ok(())
}

fn read_sample(
    line: &str,
    states: &mut Vec<FamilyState>,
    by_name: &mut HashMap<String, usize>,
) -> Result<Sample, String> {
    let (name, mut i) = read_metric_name(line)?;
    let b = line.as_bytes();
    let mut labels = Labels::new();
    let after_name = skip_blanks(line, i);
    if b.get(after_name) == Some(&b'{') {
        let (read, end) = read_labels(line, after_name, false)?;
        labels = read;
        i = end;
    } else if i < b.len() && !is_blank(b[i]) {
        let found = line[i..].chars().next().unwrap_or(' ');
        return Err(format!("unexpected {found:?} after the metric name {name}"));
    }

    labels.sort_by(|x, y| x.0.cmp(&y.0));
    if let Some(w) = labels.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(format!("label {} appears twice in {name}", w[0].0));
    }
    if labels.iter().any(|(n, _)| n == "__name__") {
        return Err(format!("label name __name__ is reserved (in {name})"));
    }
    labels.retain(|(_, v)| !v.is_empty());

    let (value_token, rest) = token(&line[i..]);
    if value_token.is_empty() {
        return Err(format!("the sample {name} has no value"));
    }
    let Some(value) = parse_float(value_token) else {
        return Err(format!(
            "the value {value_token:?} of {name} is not a number"
        ));
    };
    let (ts_token, rest) = token(rest);
    let timestamp_ms = if ts_token.is_empty() {
        None
    } else {
        match ts_token.parse::<i64>() {
            Ok(ts) => Some(ts),
            Err(_) => {
                return Err(format!(
                    "the timestamp {ts_token:?} of {name} is not an integer number of milliseconds"
                ))
            }
        }
    };
    if !rest.trim().is_empty() {
        let extra: String = rest.trim().chars().take(40).collect();
        return Err(format!("unexpected text {extra:?} after the sample {name}"));
    }

    let fi = resolve_family(name, states, by_name);
    let state = &mut states[fi];
    state.has_samples = true;
    let family = &state.family;
    match family.kind {
        Kind::Histogram if name == family.name => {
            return Err(format!(
                "{name} is a histogram: its samples are {name}_bucket, {name}_sum and {name}_count"
            ))
        }
        Kind::Histogram if name.ends_with("_bucket") => {
            canonical_float_label(&mut labels, "le", &format!("the bucket {name}"))?
        }
        Kind::Summary if name == family.name => canonical_float_label(
            &mut labels,
            "quantile",
            &format!("the summary sample {name}"),
        )?,
        _ => {}
    }
    Ok(Sample {
        family: family.name.clone(),
        name: owned_key(name, &labels),
        value,
        kind: family.kind,
        timestamp_ms,
    })
}

/// Turns parsed samples into banyan's metric model, so that a scraped exporter merges up the tree
/// like any other source. Counters stay counters (cumulative, so a constant counter stays
/// constant); gauges and untyped samples become gauges sampled at `now_ms` (the scrape's time,
/// not the exporter's optional timestamp, which may be stale or in the future and would then pin
/// the merged gauge's `last`). A histogram's `_bucket{le=..}`, `_sum` and `_count` lines become
/// counters of those very names: banyan's own histograms have fixed buckets, an exporter's do not,
/// and counters merge exactly by adding, which is what a cluster-wide histogram is. A summary's
/// quantiles become gauges (a quantile does not add up across nodes; the gauge keeps min, max and
/// last), its `_sum` and `_count` counters. [`render`] exposes these shapes as histograms and
/// summaries again. Of two samples of one series, the first is kept, as Prometheus does.
pub fn to_metric_set(samples: &[Sample], now_ms: u64) -> MetricSet {
    use crate::metric::{Counter, Gauge};
    let mut set = MetricSet::new();
    for s in samples {
        if set.values.contains_key(&s.name) {
            continue;
        }
        let bare = s.name.split('{').next().unwrap_or(&s.name);
        let counter = Value::Counter(Counter { value: s.value });
        let gauge = Value::Gauge(Gauge::sample(s.value, now_ms));
        let value = match s.kind {
            Kind::Counter | Kind::Histogram => counter,
            Kind::Gauge | Kind::Untyped => gauge,
            Kind::Summary if bare == s.family => gauge,
            Kind::Summary => counter,
        };
        set.values.insert(s.name.clone(), value);
    }
    set
}

// ---------------------------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------------------------

/// A counter or gauge series, ready to print.
struct Scalar {
    labels: Labels,
    is_counter: bool,
    value: f64,
}

/// One family of the output, not yet accepted (see [`render`]'s collision rule).
struct OutFamily {
    name: String,
    kind: Kind,
    /// Series (label sets) in the family; decides collisions.
    series: usize,
    /// Every name the family's lines use, and the family name: another family may use none.
    claims: Vec<String>,
    /// The sample lines.
    body: String,
    /// Series dropped because they became identical to another after sanitizing.
    duplicates: usize,
}

fn has_label(labels: &[(String, String)], name: &str) -> bool {
    labels.iter().any(|(n, _)| n == name)
}

fn label_value<'a>(labels: &'a [(String, String)], name: &str) -> Option<&'a str> {
    labels
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

fn write_sample(
    out: &mut String,
    name: &str,
    labels: &[(String, String)],
    last: Option<(&str, &str)>,
    value: &str,
) {
    out.push_str(name);
    write_labels(
        out,
        labels
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .chain(last),
    );
    out.push(' ');
    out.push_str(value);
    out.push('\n');
}

/// Renders `set` as Prometheus text exposition 0.0.4; see the module doc for the rules.
///
/// `help(family)` gives a family's HELP text; without one (or with an empty one) the text is
/// `banyan metric <family>`, because promtool warns about a family without HELP. `extra` labels
/// (`job`, `node`, ...) are added to every series and win over a series' own label of the same
/// name, which is kept as `exported_<name>`; extra labels with an empty value, an invalid name, or
/// a name the format reserves (`le`, `quantile`, `__*`) are skipped.
pub fn render(
    set: &MetricSet,
    help: &dyn Fn(&str) -> Option<String>,
    extra: &[(&str, &str)],
) -> String {
    // The extra labels, valid and unique, first one of a name wins.
    let mut extras: Labels = Vec::new();
    for (n, v) in extra {
        let reserved = *n == "le" || *n == "quantile" || n.starts_with("__");
        if v.is_empty() || reserved || !is_label_name(n) || has_label(&extras, n) {
            continue;
        }
        extras.push((n.to_string(), v.to_string()));
    }

    // Every series, with its final labels, grouped by name: histograms apart from the rest.
    let mut scalars: BTreeMap<String, Vec<Scalar>> = BTreeMap::new();
    let mut histograms: BTreeMap<String, Vec<(Labels, &Histogram)>> = BTreeMap::new();
    for (key, value) in &set.values {
        let (name, own) = split_key(key);
        let is_histogram = matches!(value, Value::Histogram(_));
        // Labels the series may not keep under their own name: the extra ones, and for a
        // histogram `le` (render writes it) and `quantile` (only summaries may have it).
        let ours =
            |n: &str| has_label(&extras, n) || (is_histogram && (n == "le" || n == "quantile"));
        let mut taken: HashSet<String> = own
            .iter()
            .map(|(n, _)| n.clone())
            .chain(extras.iter().map(|(n, _)| n.clone()))
            .collect();
        let mut labels = Labels::with_capacity(own.len() + extras.len());
        for (n, v) in own {
            if ours(&n) {
                let renamed = exported_name(&n, &taken);
                taken.insert(renamed.clone());
                labels.push((renamed, v));
            } else {
                labels.push((n, v));
            }
        }
        labels.extend(extras.iter().cloned());
        labels.sort();
        match value {
            Value::Histogram(h) => histograms.entry(name).or_default().push((labels, h)),
            Value::Counter(c) => scalars.entry(name).or_default().push(Scalar {
                labels,
                is_counter: true,
                value: c.value,
            }),
            // The gauge's total: the sum over the nodes merged into it (the cluster-wide value
            // of a level such as memory used); a single node's gauge has hits == 1, total == last.
            Value::Gauge(g) => scalars.entry(name).or_default().push(Scalar {
                labels,
                is_counter: false,
                value: g.total,
            }),
        }
    }

    let mut families: Vec<OutFamily> = Vec::new();
    for (name, series) in &histograms {
        families.extend(render_histogram(name, series));
    }
    let native_claims: HashSet<String> = families
        .iter()
        .flat_map(|f| f.claims.iter().cloned())
        .collect();
    families.extend(reassemble(&mut scalars, &native_claims));
    for (name, series) in scalars {
        families.push(render_scalars(name, series));
    }

    // Collisions: the family with more series first, then by kind, then by name; a family is
    // accepted when none of its names is taken yet.
    families.sort_by(|a, b| {
        b.series
            .cmp(&a.series)
            .then(b.kind.rank().cmp(&a.kind.rank()))
            .then(a.name.cmp(&b.name))
    });
    let mut owner: HashMap<String, String> = HashMap::new();
    let mut accepted: BTreeMap<String, OutFamily> = BTreeMap::new();
    let mut notes: Vec<String> = Vec::new();
    for family in families {
        if let Some(winner) = family.claims.iter().find_map(|c| owner.get(c)) {
            notes.push(format!(
                "# banyan: dropped {} series of {} ({}): its names collide with family {}\n",
                family.series, family.name, family.kind, winner
            ));
            continue;
        }
        for c in &family.claims {
            owner.insert(c.clone(), family.name.clone());
        }
        accepted.insert(family.name.clone(), family);
    }
    notes.sort();

    let mut out = String::new();
    for (name, family) in &accepted {
        let text = help(name)
            .filter(|t| !t.trim().is_empty())
            .unwrap_or_else(|| format!("banyan metric {name}"));
        out.push_str("# HELP ");
        out.push_str(name);
        out.push(' ');
        escape_help(&text, &mut out);
        out.push_str("\n# TYPE ");
        out.push_str(name);
        out.push(' ');
        out.push_str(family.kind.as_str());
        out.push('\n');
        out.push_str(&family.body);
        if family.duplicates > 0 {
            notes.push(format!(
                "# banyan: dropped {} series of {name} identical to another after sanitizing\n",
                family.duplicates
            ));
        }
    }
    for note in notes {
        out.push_str(&note);
    }
    out
}

/// A native banyan histogram: per series, cumulative buckets at every bound, then `_sum` and
/// `_count`. A histogram named `*_total` (promtool allows that suffix on counters only) is
/// written as three untyped families `F_bucket`, `F_sum`, `F_count` instead: the same lines,
/// names and values, just no histogram TYPE.
fn render_histogram(name: &str, series: &[(Labels, &Histogram)]) -> Vec<OutFamily> {
    let bounds: Vec<String> = (0..HISTOGRAM_BUCKETS as u8)
        .map(|i| format_float(Histogram::upper_bound(i)))
        .collect();
    let bucket = format!("{name}_bucket");
    let sum = format!("{name}_sum");
    let count = format!("{name}_count");
    let mut sorted: Vec<&(Labels, &Histogram)> = series.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut seen: HashSet<&Labels> = HashSet::new();
    let mut duplicates = 0;
    // One (buckets, sum, count) text per series.
    let mut parts: Vec<(String, String, String)> = Vec::new();
    for (labels, h) in sorted {
        if !seen.insert(labels) {
            duplicates += 1;
            continue;
        }
        let (mut buckets, mut sum_line, mut count_line) =
            (String::new(), String::new(), String::new());
        // Storage is per bucket; Prometheus wants "observations <= le", the running sum. The last
        // bucket is +Inf and so carries every observation.
        let mut cumulative: u64 = 0;
        for (i, bound) in bounds.iter().enumerate() {
            cumulative = cumulative.saturating_add(h.buckets.get(&(i as u8)).copied().unwrap_or(0));
            write_sample(
                &mut buckets,
                &bucket,
                labels,
                Some(("le", bound)),
                &cumulative.to_string(),
            );
        }
        write_sample(&mut sum_line, &sum, labels, None, &format_float(h.sum));
        write_sample(&mut count_line, &count, labels, None, &h.count.to_string());
        parts.push((buckets, sum_line, count_line));
    }
    let series_count = seen.len();
    if name.ends_with("_total") {
        let untyped = |name: String, body: String, duplicates: usize| OutFamily {
            claims: vec![name.clone()],
            name,
            kind: Kind::Untyped,
            series: series_count,
            body,
            duplicates,
        };
        let mut bodies = (String::new(), String::new(), String::new());
        for (b, s, c) in parts {
            bodies.0.push_str(&b);
            bodies.1.push_str(&s);
            bodies.2.push_str(&c);
        }
        return vec![
            untyped(bucket, bodies.0, duplicates),
            untyped(sum, bodies.1, 0),
            untyped(count, bodies.2, 0),
        ];
    }
    let mut body = String::new();
    for (b, s, c) in parts {
        body.push_str(&b);
        body.push_str(&s);
        body.push_str(&c);
    }
    vec![OutFamily {
        name: name.to_string(),
        kind: Kind::Histogram,
        series: series_count,
        claims: vec![name.to_string(), bucket, sum, count],
        body,
        duplicates,
    }]
}

/// Counters and gauges of one name: a `counter` family when every series is a counter and the
/// name ends in `_total`, a `gauge` family when every series is a gauge and the name uses no
/// suffix promtool reserves for other types, `untyped` otherwise (and whenever a series carries
/// an `le` or `quantile` label, which promtool allows only to histograms and summaries).
fn render_scalars(name: String, mut series: Vec<Scalar>) -> OutFamily {
    let reserved_label = series
        .iter()
        .any(|s| has_label(&s.labels, "le") || has_label(&s.labels, "quantile"));
    let counters = series.iter().all(|s| s.is_counter);
    let gauges = series.iter().all(|s| !s.is_counter);
    let reserved_suffix = ["_total", "_bucket", "_sum", "_count"]
        .iter()
        .any(|s| name.ends_with(s));
    let kind = if reserved_label {
        Kind::Untyped
    } else if counters && name.ends_with("_total") {
        Kind::Counter
    } else if gauges && !reserved_suffix {
        Kind::Gauge
    } else {
        Kind::Untyped
    };
    series.sort_by(|a, b| a.labels.cmp(&b.labels));
    let mut body = String::new();
    let mut kept = 0;
    let mut duplicates = 0;
    let mut previous: Option<&Labels> = None;
    for s in &series {
        if previous == Some(&s.labels) {
            duplicates += 1;
            continue;
        }
        previous = Some(&s.labels);
        kept += 1;
        write_sample(&mut body, &name, &s.labels, None, &format_float(s.value));
    }
    OutFamily {
        claims: vec![name.clone()],
        name,
        kind,
        series: kept,
        body,
        duplicates,
    }
}

/// Which part of a scraped histogram or summary a group of stored series may be.
#[derive(Clone, Copy, PartialEq)]
enum Part {
    /// Counters with a numeric `le`, no `quantile`.
    Bucket,
    /// Gauges with a numeric `quantile`, no `le`.
    Quantile,
    /// Counters without `le` or `quantile`: `_sum` and `_count`.
    Total,
}

fn fits(series: &[Scalar], part: Part) -> bool {
    let number = |s: &Scalar, label: &str| {
        label_value(&s.labels, label).is_some_and(|v| parse_float(v).is_some())
    };
    series.iter().all(|s| match part {
        Part::Bucket => s.is_counter && number(s, "le") && !has_label(&s.labels, "quantile"),
        Part::Quantile => !s.is_counter && number(s, "quantile") && !has_label(&s.labels, "le"),
        Part::Total => {
            s.is_counter && !has_label(&s.labels, "le") && !has_label(&s.labels, "quantile")
        }
    })
}

/// Finds scraped histograms and summaries stored as counters and gauges (see [`to_metric_set`])
/// and takes them out of `scalars` as whole families, when every stored series their names use
/// fits and no native histogram uses those names. Bases ending in `_total` are left alone: a
/// histogram or summary of that name would trip promtool, the plain series do not.
fn reassemble(
    scalars: &mut BTreeMap<String, Vec<Scalar>>,
    native_claims: &HashSet<String>,
) -> Vec<OutFamily> {
    let mut bases: Vec<String> = Vec::new();
    for (name, series) in scalars.iter() {
        if let Some(base) = name.strip_suffix("_bucket") {
            bases.push(base.to_string());
        } else if series.iter().any(|s| has_label(&s.labels, "quantile")) {
            bases.push(name.clone());
        } else if let Some(base) = name.strip_suffix("_sum") {
            bases.push(base.to_string());
        }
    }
    bases.sort();
    bases.dedup();

    let mut out = Vec::new();
    for base in bases {
        if base.ends_with("_total") || !is_metric_name(&base) {
            continue;
        }
        let bucket = format!("{base}_bucket");
        let sum = format!("{base}_sum");
        let count = format!("{base}_count");
        let names = [base.clone(), bucket.clone(), sum.clone(), count.clone()];
        if names.iter().any(|n| native_claims.contains(n)) {
            continue;
        }
        let totals_fit = [&sum, &count]
            .iter()
            .all(|n| scalars.get(*n).is_none_or(|s| fits(s, Part::Total)));
        if !totals_fit {
            continue;
        }
        let kind = match (scalars.get(&base), scalars.get(&bucket)) {
            (None, Some(b)) if fits(b, Part::Bucket) => Kind::Histogram,
            (Some(q), None) if fits(q, Part::Quantile) => Kind::Summary,
            (None, None) if scalars.contains_key(&sum) && scalars.contains_key(&count) => {
                Kind::Summary
            }
            _ => continue,
        };
        let parts = |scalars: &mut BTreeMap<String, Vec<Scalar>>, n: &str| {
            scalars.remove(n).unwrap_or_default()
        };
        let (points, label) = if kind == Kind::Histogram {
            (parts(scalars, &bucket), "le")
        } else {
            (parts(scalars, &base), "quantile")
        };
        let sums = parts(scalars, &sum);
        let counts = parts(scalars, &count);
        out.push(render_parts(&base, kind, label, points, sums, counts));
    }
    out
}

/// Writes a scraped histogram or summary: per label set (without `le`/`quantile`), its points
/// in numeric order, then `_sum`, then `_count`, as client libraries write them.
fn render_parts(
    base: &str,
    kind: Kind,
    label: &str,
    points: Vec<Scalar>,
    sums: Vec<Scalar>,
    counts: Vec<Scalar>,
) -> OutFamily {
    #[derive(Default)]
    struct Group {
        points: Vec<(f64, String, f64)>,
        /// The bounds written so far; a set, as a hostile exporter may send many thousands.
        bounds: HashSet<String>,
        sum: Option<f64>,
        count: Option<f64>,
    }
    let mut groups: BTreeMap<Labels, Group> = BTreeMap::new();
    let mut duplicates = 0;
    for p in points {
        let bound = label_value(&p.labels, label)
            .and_then(parse_float)
            .unwrap_or(f64::NAN);
        let rest: Labels = p.labels.into_iter().filter(|(n, _)| n != label).collect();
        let group = groups.entry(rest).or_default();
        let text = format_float(bound);
        if !group.bounds.insert(text.clone()) {
            duplicates += 1;
            continue;
        }
        group.points.push((bound, text, p.value));
    }
    for (list, is_sum) in [(sums, true), (counts, false)] {
        for s in list {
            let group = groups.entry(s.labels).or_default();
            let slot = if is_sum {
                &mut group.sum
            } else {
                &mut group.count
            };
            if slot.is_some() {
                duplicates += 1;
            } else {
                *slot = Some(s.value);
            }
        }
    }
    let bucket = format!("{base}_bucket");
    let sum = format!("{base}_sum");
    let count = format!("{base}_count");
    let point_name = if kind == Kind::Histogram {
        &bucket
    } else {
        base
    };
    let mut body = String::new();
    for (labels, group) in &mut groups {
        group.points.sort_by(|a, b| a.0.total_cmp(&b.0));
        for (_, text, value) in &group.points {
            write_sample(
                &mut body,
                point_name,
                labels,
                Some((label, text)),
                &format_float(*value),
            );
        }
        if let Some(v) = group.sum {
            write_sample(&mut body, &sum, labels, None, &format_float(v));
        }
        if let Some(v) = group.count {
            write_sample(&mut body, &count, labels, None, &format_float(v));
        }
    }
    let mut claims = vec![base.to_string(), sum, count];
    if kind == Kind::Histogram {
        claims.push(bucket);
    }
    OutFamily {
        name: base.to_string(),
        kind,
        series: groups.len(),
        claims,
        body,
        duplicates,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metric::{Counter, Gauge};
    use proptest::prelude::*;

    fn no_help(_: &str) -> Option<String> {
        None
    }

    fn render_plain(set: &MetricSet) -> String {
        render(set, &no_help, &[])
    }

    /// The samples of `text` by series key; the exposition must parse.
    fn samples_of(text: &str) -> BTreeMap<String, Sample> {
        let samples = parse(text).unwrap_or_else(|e| panic!("{e}\n--- exposition:\n{text}"));
        samples.into_iter().map(|s| (s.name.clone(), s)).collect()
    }

    fn type_line(text: &str, family: &str) -> Option<String> {
        let prefix = format!("# TYPE {family} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
    }

    fn gauge_of_nodes(values: &[f64]) -> Value {
        let mut g = Gauge::sample(values[0], 1);
        for v in &values[1..] {
            g.merge(&Gauge::sample(*v, 1));
        }
        Value::Gauge(g)
    }

    #[test]
    fn floats_are_written_as_prometheus_writes_them() {
        for (v, text) in [
            (1.0, "1"),
            (1.25, "1.25"),
            (0.1, "0.1"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (123456.0, "123456"),
            (1e6, "1e+06"),
            (1234567.0, "1.234567e+06"),
            (1.6663363584e10, "1.6663363584e+10"),
            (49152.0, "49152"),
            (-2.5, "-2.5"),
            (-0.0, "0"),
            (0.0, "0"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (f64::MAX, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
            (1e100, "1e+100"),
        ] {
            assert_eq!(format_float(v), text, "format of {v:e}");
        }
    }

    #[test]
    fn counters_round_trip() {
        let mut set = MetricSet::new();
        set.set_counter("banyan_agent_waves_total", 1234567.0);
        set.set_counter(&series_key("jobs_done_total", &[("queue", "gpu")]), 12.0);
        set.set_counter(&series_key("jobs_done_total", &[("queue", "cpu")]), 0.5);
        let text = render_plain(&set);
        assert_eq!(
            type_line(&text, "jobs_done_total").as_deref(),
            Some("counter")
        );
        assert!(
            text.contains("jobs_done_total{queue=\"cpu\"} 0.5\n"),
            "{text}"
        );
        let back = samples_of(&text);
        assert_eq!(back.len(), 3);
        for (key, value) in &set.values {
            let s = &back[key];
            assert_eq!(s.kind, Kind::Counter);
            assert_eq!(Value::Counter(Counter { value: s.value }), *value);
        }
        assert_eq!(to_metric_set(&parse(&text).unwrap(), 7), set);
    }

    #[test]
    fn gauges_expose_the_sum_over_nodes() {
        let mut set = MetricSet::new();
        set.values.insert(
            "mem_used_bytes".into(),
            gauge_of_nodes(&[100.0, 250.0, 50.0]),
        );
        set.set_gauge("banyan_agent_up", 1.0, 5);
        set.set_gauge(&series_key("temp_celsius", &[("sensor", "a")]), -3.5, 5);
        let text = render_plain(&set);
        assert_eq!(type_line(&text, "mem_used_bytes").as_deref(), Some("gauge"));
        let back = samples_of(&text);
        assert_eq!(back["mem_used_bytes"].value, 400.0);
        assert_eq!(back["banyan_agent_up"].value, 1.0);
        assert_eq!(back["temp_celsius{sensor=\"a\"}"].value, -3.5);
        assert!(back.values().all(|s| s.kind == Kind::Gauge));
    }

    #[test]
    fn non_finite_values_are_written_as_nan_and_inf() {
        let mut set = MetricSet::new();
        set.set_gauge(&series_key("level", &[("v", "nan")]), f64::NAN, 1);
        set.set_gauge(&series_key("level", &[("v", "pos")]), f64::INFINITY, 1);
        set.set_gauge(&series_key("level", &[("v", "neg")]), f64::NEG_INFINITY, 1);
        let text = render_plain(&set);
        assert!(text.contains("level{v=\"nan\"} NaN\n"), "{text}");
        assert!(text.contains("level{v=\"pos\"} +Inf\n"), "{text}");
        assert!(text.contains("level{v=\"neg\"} -Inf\n"), "{text}");
        let back = samples_of(&text);
        assert!(back["level{v=\"nan\"}"].value.is_nan());
        assert_eq!(back["level{v=\"neg\"}"].value, f64::NEG_INFINITY);
    }

    #[test]
    fn histograms_render_cumulative_buckets_and_round_trip() {
        let mut h = Histogram::default();
        for v in [0.5, 1.0, 1.1, 3.0, 3.0, 1000.0, 1e9, -4.0] {
            h.observe(v);
        }
        let mut set = MetricSet::new();
        let key = series_key("io_size_bytes", &[("op", "read")]);
        set.values.insert(key, Value::Histogram(h.clone()));
        let text = render_plain(&set);
        assert_eq!(
            type_line(&text, "io_size_bytes").as_deref(),
            Some("histogram")
        );
        let buckets: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("io_size_bytes_bucket"))
            .collect();
        assert_eq!(buckets.len(), HISTOGRAM_BUCKETS);
        assert_eq!(buckets[0], "io_size_bytes_bucket{op=\"read\",le=\"1\"} 2");
        assert_eq!(
            buckets[1],
            "io_size_bytes_bucket{op=\"read\",le=\"1.25\"} 4"
        );
        assert_eq!(
            buckets[HISTOGRAM_BUCKETS - 1],
            "io_size_bytes_bucket{op=\"read\",le=\"+Inf\"} 8"
        );
        assert!(
            text.contains("io_size_bytes_sum{op=\"read\"} 1.0000010046e+09\n"),
            "{text}"
        );
        assert!(
            text.contains("io_size_bytes_count{op=\"read\"} 8\n"),
            "{text}"
        );

        let samples = parse(&text).unwrap();
        let mut previous = 0.0;
        for s in samples
            .iter()
            .filter(|s| s.name.starts_with("io_size_bytes_bucket"))
        {
            assert_eq!(s.kind, Kind::Histogram);
            assert_eq!(s.family, "io_size_bytes");
            assert!(s.value >= previous, "buckets are cumulative: {}", s.name);
            previous = s.value;
        }
        // Every observation is counted in the first bucket whose bound is above it.
        for i in 0..HISTOGRAM_BUCKETS as u8 {
            let bound = Histogram::upper_bound(i);
            let below = [0.5, 1.0, 1.1, 3.0, 3.0, 1000.0, 1e9, -4.0]
                .iter()
                .filter(|v| Histogram::bucket_of(**v) <= i)
                .count();
            let key = format!(
                "io_size_bytes_bucket{{le=\"{}\",op=\"read\"}}",
                format_float(bound)
            );
            let s = samples.iter().find(|s| s.name == key).unwrap();
            assert_eq!(s.value, below as f64, "{key}");
        }
    }

    #[test]
    fn hostile_label_values_round_trip() {
        let hostile = [
            "quote\" in the middle",
            "back\\slash and \\n literally",
            "new\nline",
            "<script>alert('x')</script>",
            "}, evil=\"1\"} 666\nfake_total 1",
            "tab\tcr\rnul\0 é ✓ 🦀",
            "\\",
            "\"",
            " ",
        ];
        let mut set = MetricSet::new();
        for (i, v) in hostile.iter().enumerate() {
            let key = series_key("hostile_total", &[("v", v), ("i", &i.to_string())]);
            set.set_counter(&key, i as f64);
        }
        let text = render_plain(&set);
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("hostile_total"))
                .count(),
            hostile.len(),
            "one line per series:\n{text}"
        );
        let back = samples_of(&text);
        for key in set.values.keys() {
            assert!(
                back.contains_key(key),
                "{key:?} missing after the round trip"
            );
        }
        let parsed: Vec<&str> = back.keys().map(|k| k.as_str()).collect::<Vec<_>>();
        assert_eq!(parsed.len(), hostile.len());
    }

    #[test]
    fn series_keys_are_canonical() {
        assert_eq!(series_key("a", &[]), "a");
        assert_eq!(
            series_key("a", &[("z", "1"), ("b", "q\"\\\n"), ("e", "")]),
            "a{b=\"q\\\"\\\\\\n\",z=\"1\"}"
        );
        let text = "a{z=\"1\" , b = \"q\\\"\\\\\\n\",e=\"\",} 1\n";
        assert_eq!(
            parse(text).unwrap()[0].name,
            "a{b=\"q\\\"\\\\\\n\",z=\"1\"}"
        );
    }

    #[test]
    fn bad_names_are_sanitized() {
        let mut set = MetricSet::new();
        set.set_gauge("9lives", 1.0, 0);
        set.set_gauge("bad-name.with dots", 2.0, 0);
        set.set_gauge("température", 3.0, 0);
        set.set_gauge("", 4.0, 0);
        set.set_gauge("x{a-b=\"1\",a_b=\"2\",__name__=\"3\",0c=\"4\"}", 5.0, 0);
        set.set_gauge("broken{a=\"1\"", 6.0, 0);
        let text = render_plain(&set);
        let back = samples_of(&text);
        let keys: Vec<&str> = back.keys().map(|k| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "_",
                "_9lives",
                "bad_name_with_dots",
                "broken_a__1_",
                "temp_rature",
                "x{_0c=\"4\",_name__=\"3\",a_b=\"1\",exported_a_b=\"2\"}",
            ],
            "{text}"
        );
    }

    #[test]
    fn types_follow_promtool_naming_rules_without_renaming() {
        let mut set = MetricSet::new();
        set.set_counter("reads_total", 1.0);
        set.set_counter("reads", 2.0);
        set.set_gauge("queue_total", 3.0, 0);
        set.set_gauge("files_count", 4.0, 0);
        set.set_gauge(&series_key("odd", &[("le", "1")]), 5.0, 0);
        set.set_counter(&series_key("odd2_total", &[("quantile", "1")]), 6.0);
        let text = render_plain(&set);
        for (family, kind) in [
            ("reads_total", "counter"),
            ("reads", "untyped"),
            ("queue_total", "untyped"),
            ("files_count", "untyped"),
            ("odd", "untyped"),
            ("odd2_total", "untyped"),
        ] {
            assert_eq!(type_line(&text, family).as_deref(), Some(kind), "{text}");
        }
        // The names are the set's names.
        let back = samples_of(&text);
        assert_eq!(
            back.keys().collect::<Vec<_>>(),
            set.values.keys().collect::<Vec<_>>()
        );
    }

    #[test]
    fn help_texts_come_from_the_callback_or_a_fallback() {
        let mut set = MetricSet::new();
        set.set_counter("known_total", 1.0);
        set.set_counter("unknown_total", 1.0);
        set.set_counter("empty_total", 1.0);
        let help = |name: &str| match name {
            "known_total" => Some("Line one\nwith a \\ backslash".to_string()),
            "empty_total" => Some("  ".to_string()),
            _ => None,
        };
        let text = render(&set, &help, &[]);
        assert!(
            text.contains("# HELP known_total Line one\\nwith a \\\\ backslash\n"),
            "{text}"
        );
        assert!(text.contains("# HELP unknown_total banyan metric unknown_total\n"));
        assert!(text.contains("# HELP empty_total banyan metric empty_total\n"));
        let doc = parse_document(&text).unwrap();
        let known = doc
            .families
            .iter()
            .find(|f| f.name == "known_total")
            .unwrap();
        assert_eq!(known.help.as_deref(), Some("Line one\nwith a \\ backslash"));
        assert_eq!(known.kind, Kind::Counter);
    }

    #[test]
    fn extra_labels_win_and_the_series_label_is_exported() {
        let mut set = MetricSet::new();
        set.set_counter(
            &series_key("a_total", &[("job", "theirs"), ("x", "1")]),
            1.0,
        );
        set.set_counter(
            &series_key("a_total", &[("job", "t2"), ("exported_job", "t3")]),
            2.0,
        );
        set.set_counter("b_total", 3.0);
        let extra = [
            ("job", "main"),
            ("node", "cn\"1"),
            ("le", "1"),
            ("bad-name", "x"),
            ("empty", ""),
            ("job", "second"),
        ];
        let text = render(&set, &no_help, &extra);
        let back = samples_of(&text);
        let keys: Vec<&str> = back.keys().map(|k| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "a_total{exported_exported_job=\"t2\",exported_job=\"t3\",job=\"main\",node=\"cn\\\"1\"}",
                "a_total{exported_job=\"theirs\",job=\"main\",node=\"cn\\\"1\",x=\"1\"}",
                "b_total{job=\"main\",node=\"cn\\\"1\"}",
            ],
            "{text}"
        );
    }

    #[test]
    fn one_name_with_two_scalar_kinds_is_untyped_and_keeps_every_series() {
        let mut set = MetricSet::new();
        set.set_counter(&series_key("mixed_total", &[("a", "1")]), 1.0);
        set.set_gauge(&series_key("mixed_total", &[("a", "2")]), 2.0, 0);
        let text = render_plain(&set);
        assert_eq!(type_line(&text, "mixed_total").as_deref(), Some("untyped"));
        assert_eq!(samples_of(&text).len(), 2);
    }

    #[test]
    fn colliding_families_keep_the_one_with_more_series() {
        let mut set = MetricSet::new();
        let mut h = Histogram::default();
        h.observe(2.0);
        set.values.insert("lat".into(), Value::Histogram(h.clone()));
        set.values.insert(
            series_key("lat", &[("x", "1")]),
            Value::Histogram(h.clone()),
        );
        // A gauge named like the histogram's count, and one named like the histogram itself.
        set.set_gauge("lat_count", 9.0, 0);
        // Here the gauges are the majority.
        set.set_gauge(&series_key("size_count", &[("a", "1")]), 1.0, 0);
        set.set_gauge(&series_key("size_count", &[("a", "2")]), 1.0, 0);
        set.values
            .insert("size".into(), Value::Histogram(h.clone()));
        // No collision: a gauge `g` does not own `g_bucket`.
        set.set_gauge("g", 1.0, 0);
        set.values.insert("g_bucket".into(), Value::Histogram(h));
        let text = render_plain(&set);
        assert_eq!(type_line(&text, "lat").as_deref(), Some("histogram"));
        assert_eq!(type_line(&text, "lat_count"), None);
        assert_eq!(type_line(&text, "size_count").as_deref(), Some("untyped"));
        assert_eq!(type_line(&text, "size"), None, "{text}");
        assert_eq!(type_line(&text, "g").as_deref(), Some("gauge"));
        assert_eq!(type_line(&text, "g_bucket").as_deref(), Some("histogram"));
        assert!(text.contains(
            "# banyan: dropped 1 series of lat_count (untyped): its names collide with family lat\n"
        ));
        assert!(text.contains(
            "# banyan: dropped 1 series of size (histogram): its names collide with family size_count\n"
        ));
        let back = samples_of(&text);
        assert_eq!(back["lat_count"].value, 1.0, "the histogram's own count");
    }

    #[test]
    fn native_histogram_labels_le_and_quantile_are_exported() {
        let mut set = MetricSet::new();
        let mut h = Histogram::default();
        h.observe(1.0);
        set.values.insert(
            series_key("h", &[("le", "mine"), ("quantile", "q")]),
            Value::Histogram(h),
        );
        let text = render_plain(&set);
        assert!(
            text.contains("h_bucket{exported_le=\"mine\",exported_quantile=\"q\",le=\"1\"} 0\n"),
            "{text}"
        );
        samples_of(&text);
    }

    #[test]
    fn a_histogram_named_total_is_written_as_untyped_series() {
        let mut set = MetricSet::new();
        let mut h = Histogram::default();
        h.observe(3.0);
        set.values.insert("waits_total".into(), Value::Histogram(h));
        let text = render_plain(&set);
        assert_eq!(type_line(&text, "waits_total"), None);
        for family in ["waits_total_bucket", "waits_total_sum", "waits_total_count"] {
            assert_eq!(
                type_line(&text, family).as_deref(),
                Some("untyped"),
                "{text}"
            );
        }
        let back = samples_of(&text);
        assert_eq!(back["waits_total_bucket{le=\"+Inf\"}"].value, 1.0);
        assert_eq!(back["waits_total_sum"].value, 3.0);
        assert_eq!(back["waits_total_count"].value, 1.0);
    }

    #[test]
    fn empty_set_renders_nothing() {
        assert_eq!(render_plain(&MetricSet::new()), "");
        assert_eq!(parse("").unwrap(), vec![]);
    }

    /// An excerpt in the style of node_exporter's answer (written for this test).
    const NODE_EXPORTER: &str = "\
# HELP go_gc_duration_seconds A summary of the pause duration of garbage collection cycles.
# TYPE go_gc_duration_seconds summary
go_gc_duration_seconds{quantile=\"0\"} 2.1e-05
go_gc_duration_seconds{quantile=\"0.25\"} 3.4e-05
go_gc_duration_seconds{quantile=\"0.5\"} 4.05e-05
go_gc_duration_seconds{quantile=\"0.75\"} 6.2e-05
go_gc_duration_seconds{quantile=\"1\"} 0.000713
go_gc_duration_seconds_sum 0.0192
go_gc_duration_seconds_count 311
# HELP node_cpu_seconds_total Seconds the CPUs spent in each mode.
# TYPE node_cpu_seconds_total counter
node_cpu_seconds_total{cpu=\"0\",mode=\"idle\"} 84512.37
node_cpu_seconds_total{cpu=\"0\",mode=\"iowait\"} 12.04
node_cpu_seconds_total{cpu=\"0\",mode=\"user\"} 1876.5
node_cpu_seconds_total{cpu=\"1\",mode=\"idle\"} 84790.02
# HELP node_filesystem_avail_bytes Filesystem space available to non-root users in bytes.
# TYPE node_filesystem_avail_bytes gauge
node_filesystem_avail_bytes{device=\"/dev/nvme0n1p2\",fstype=\"ext4\",mountpoint=\"/\"} 3.7214420992e+10
node_filesystem_avail_bytes{device=\"tmpfs\",fstype=\"tmpfs\",mountpoint=\"/run\"} 1.654784e+09
# HELP node_load1 1m load average.
# TYPE node_load1 gauge
node_load1 0.42
# HELP node_memory_MemTotal_bytes Memory information field MemTotal_bytes.
# TYPE node_memory_MemTotal_bytes gauge
node_memory_MemTotal_bytes 1.6663363584e+10
# HELP node_network_receive_bytes_total Network device statistic receive_bytes.
# TYPE node_network_receive_bytes_total counter
node_network_receive_bytes_total{device=\"eth0\"} 9.87654321e+08
node_network_receive_bytes_total{device=\"lo\"} 123456
# HELP node_systemd_unit_state Systemd unit
# TYPE node_systemd_unit_state gauge
node_systemd_unit_state{name=\"dev-disk-by\\\\x2duuid-1234.swap\",state=\"active\",type=\"swap\"} 1
# HELP node_vmstat_pgfault /proc/vmstat information field pgfault.
# TYPE node_vmstat_pgfault untyped
node_vmstat_pgfault 4.3361742e+07
# HELP node_time_seconds System time in seconds since epoch (1970).
# TYPE node_time_seconds gauge
node_time_seconds 1.7180e+09 1718000000123
# HELP prometheus_http_request_duration_seconds Histogram of latencies for HTTP requests.
# TYPE prometheus_http_request_duration_seconds histogram
prometheus_http_request_duration_seconds_bucket{handler=\"/metrics\",le=\"0.1\"} 40
prometheus_http_request_duration_seconds_bucket{handler=\"/metrics\",le=\"0.5\"} 41
prometheus_http_request_duration_seconds_bucket{handler=\"/metrics\",le=\"+Inf\"} 41
prometheus_http_request_duration_seconds_sum{handler=\"/metrics\"} 0.373
prometheus_http_request_duration_seconds_count{handler=\"/metrics\"} 41
# HELP promhttp_metric_handler_requests_total Total number of scrapes by HTTP status code.
# TYPE promhttp_metric_handler_requests_total counter
promhttp_metric_handler_requests_total{code=\"200\"} 41
promhttp_metric_handler_requests_total{code=\"500\"} 0
";

    #[test]
    fn a_node_exporter_answer_parses() {
        let doc = parse_document(NODE_EXPORTER).unwrap();
        assert_eq!(doc.families.len(), 11);
        assert_eq!(doc.samples.len(), 27);
        let by_key: BTreeMap<&str, &Sample> =
            doc.samples.iter().map(|s| (s.name.as_str(), s)).collect();
        let s = by_key["go_gc_duration_seconds{quantile=\"0.25\"}"];
        assert_eq!((s.kind, s.value), (Kind::Summary, 3.4e-05));
        let s = by_key["go_gc_duration_seconds_count"];
        assert_eq!(
            (s.family.as_str(), s.value),
            ("go_gc_duration_seconds", 311.0)
        );
        let s = by_key["node_cpu_seconds_total{cpu=\"0\",mode=\"iowait\"}"];
        assert_eq!((s.kind, s.value), (Kind::Counter, 12.04));
        let s = by_key["node_memory_MemTotal_bytes"];
        assert_eq!((s.kind, s.value), (Kind::Gauge, 1.6663363584e10));
        let s = by_key["node_systemd_unit_state{name=\"dev-disk-by\\\\x2duuid-1234.swap\",state=\"active\",type=\"swap\"}"];
        assert_eq!(s.value, 1.0);
        let s = by_key["node_time_seconds"];
        assert_eq!((s.value, s.timestamp_ms), (1.718e9, Some(1718000000123)));
        let s = by_key["node_vmstat_pgfault"];
        assert_eq!(s.kind, Kind::Untyped);
        let s = by_key
            ["prometheus_http_request_duration_seconds_bucket{handler=\"/metrics\",le=\"+Inf\"}"];
        assert_eq!((s.kind, s.value), (Kind::Histogram, 41.0));
        let help = doc
            .families
            .iter()
            .find(|f| f.name == "node_load1")
            .and_then(|f| f.help.as_deref());
        assert_eq!(help, Some("1m load average."));
    }

    #[test]
    fn scraped_series_become_banyan_metrics() {
        let set = to_metric_set(&parse(NODE_EXPORTER).unwrap(), 99);
        assert_eq!(
            set.get("node_cpu_seconds_total{cpu=\"0\",mode=\"user\"}"),
            Some(&Value::Counter(Counter { value: 1876.5 }))
        );
        assert_eq!(
            set.get("node_load1"),
            Some(&Value::Gauge(Gauge::sample(0.42, 99)))
        );
        assert_eq!(
            set.get("node_vmstat_pgfault"),
            Some(&Value::Gauge(Gauge::sample(4.3361742e7, 99)))
        );
        assert_eq!(
            set.get("go_gc_duration_seconds{quantile=\"1\"}"),
            Some(&Value::Gauge(Gauge::sample(0.000713, 99)))
        );
        assert_eq!(set.counter("go_gc_duration_seconds_count"), 311.0);
        assert_eq!(
            set.counter(
                "prometheus_http_request_duration_seconds_bucket{handler=\"/metrics\",le=\"0.5\"}"
            ),
            41.0
        );
        assert_eq!(
            set.counter("prometheus_http_request_duration_seconds_sum{handler=\"/metrics\"}"),
            0.373
        );
        // Merged over two nodes, the scraped histogram adds bucket by bucket.
        let mut two = set.clone();
        two.merge(&set);
        assert_eq!(
            two.counter(
                "prometheus_http_request_duration_seconds_bucket{handler=\"/metrics\",le=\"0.1\"}"
            ),
            80.0
        );
    }

    #[test]
    fn scraped_histograms_and_summaries_render_whole_again() {
        let original = parse(NODE_EXPORTER).unwrap();
        let set = to_metric_set(&original, 1);
        let text = render_plain(&set);
        assert_eq!(
            type_line(&text, "prometheus_http_request_duration_seconds").as_deref(),
            Some("histogram")
        );
        assert_eq!(
            type_line(&text, "go_gc_duration_seconds").as_deref(),
            Some("summary")
        );
        assert_eq!(
            type_line(&text, "node_vmstat_pgfault").as_deref(),
            Some("gauge")
        );
        let again = parse(&text).unwrap();
        assert_eq!(again.len(), original.len(), "{text}");
        let before: BTreeMap<&str, &Sample> =
            original.iter().map(|s| (s.name.as_str(), s)).collect();
        for s in &again {
            let b = before[s.name.as_str()];
            assert_eq!((&s.family, s.value), (&b.family, b.value), "{}", s.name);
            // Only the untyped family becomes a gauge: banyan stores it as one.
            if b.kind != Kind::Untyped {
                assert_eq!(s.kind, b.kind, "{}", s.name);
            }
        }
        // Buckets come in numeric order, before _sum and _count.
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("prometheus_http_request_duration_seconds"))
            .collect();
        assert_eq!(
            lines,
            [
                "prometheus_http_request_duration_seconds_bucket{handler=\"/metrics\",le=\"0.1\"} 40",
                "prometheus_http_request_duration_seconds_bucket{handler=\"/metrics\",le=\"0.5\"} 41",
                "prometheus_http_request_duration_seconds_bucket{handler=\"/metrics\",le=\"+Inf\"} 41",
                "prometheus_http_request_duration_seconds_sum{handler=\"/metrics\"} 0.373",
                "prometheus_http_request_duration_seconds_count{handler=\"/metrics\"} 41",
            ]
        );
    }

    #[test]
    fn sum_and_count_counters_alone_form_a_summary() {
        let mut set = MetricSet::new();
        set.set_counter("rpc_seconds_sum", 3.5);
        set.set_counter("rpc_seconds_count", 7.0);
        set.set_counter("lonely_sum", 1.0);
        let text = render_plain(&set);
        assert_eq!(type_line(&text, "rpc_seconds").as_deref(), Some("summary"));
        assert_eq!(type_line(&text, "lonely_sum").as_deref(), Some("untyped"));
        assert_eq!(samples_of(&text).len(), 3);
    }

    #[test]
    fn tolerant_of_what_exporters_write() {
        let text = "\r\n\
            # a plain comment\r\n\
            \t# HELP  spaced   text with  spaces \r\n\
            #TYPE spaced GAUGE\r\n\
            \r\n\
            spaced{ a = \"1\" , } 1.5e3 -5\r\n\
            \tspaced{a=\"2\"}\t+Inf\r\n\
            spaced{a=\"3\"} nan\n\
            spaced{a=\"4\"} -inf\n\
            spaced{a=\"5\"} .5\n\
            spaced{a=\"6\",unknown=\"a\\qb\"} 1\n\
            # TYPE spaced gauge\n\
            # HELP spaced a second help is ignored\n\
            other{} 2";
        let doc = parse_document(text).unwrap();
        assert_eq!(doc.families[0].help.as_deref(), Some("text with  spaces"));
        assert_eq!(doc.families[0].kind, Kind::Gauge);
        let s = &doc.samples;
        assert_eq!(
            (s[0].name.as_str(), s[0].value, s[0].timestamp_ms),
            ("spaced{a=\"1\"}", 1500.0, Some(-5))
        );
        assert_eq!(s[1].value, f64::INFINITY);
        assert!(s[2].value.is_nan());
        assert_eq!(s[3].value, f64::NEG_INFINITY);
        assert_eq!(s[4].value, 0.5);
        assert_eq!(s[5].name, "spaced{a=\"6\",unknown=\"a\\\\qb\"}");
        assert_eq!((s[6].name.as_str(), s[6].kind), ("other", Kind::Untyped));
    }

    #[test]
    fn histogram_bounds_are_canonical() {
        let text = "# TYPE h histogram\nh_bucket{le=\"1.0\"} 1\nh_bucket{le=\"+inf\"} 1\n\
                    # TYPE s summary\ns{quantile=\"0.50\"} 1\n";
        let keys: Vec<String> = parse(text).unwrap().into_iter().map(|s| s.name).collect();
        assert_eq!(
            keys,
            [
                "h_bucket{le=\"1\"}",
                "h_bucket{le=\"+Inf\"}",
                "s{quantile=\"0.5\"}"
            ]
        );
    }

    #[test]
    fn errors_name_the_line_and_the_problem() {
        for (bad, message) in [
            ("a{b=\"c} 1", "not closed"),
            ("a{b=\"c\"", "not closed"),
            ("a{b=\"c\"} x", "not a number"),
            ("a 1 2 3", "unexpected text"),
            ("a 1 1.5", "not an integer"),
            ("a{b=\"1\",b=\"2\"} 1", "appears twice"),
            ("a{__name__=\"x\"} 1", "reserved"),
            ("a{1b=\"c\"} 1", "expected a label name"),
            ("a{b\"c\"} 1", "expected '='"),
            ("a{b=c} 1", "to open the value"),
            ("a{b=\"c\" d=\"e\"} 1", "expected ',' or '}'"),
            ("a", "has no value"),
            ("9a 1", "valid metric name"),
            ("a-b 1", "unexpected '-'"),
            ("é 1", "valid metric name"),
            ("# TYPE a foo", "unknown type"),
            ("# TYPE a", "names no type"),
            ("# TYPE a counter extra", "unexpected text"),
            ("# HELP 9x text", "not a valid metric name"),
            ("# TYPE", "names no metric"),
        ] {
            let text = format!("ok_total 1\r\n\n{bad}\nafter 2\n");
            match parse(&text) {
                Err(e) => {
                    assert_eq!(e.line, 3, "{bad:?}: {e}");
                    assert!(e.message.contains(message), "{bad:?}: {e}");
                    assert!(e.to_string().starts_with("line 3: "), "{e}");
                }
                Ok(s) => panic!("{bad:?} parsed as {s:?}"),
            }
        }
        for (text, line, message) in [
            ("a 1\n# TYPE a counter\n", 2, "after samples"),
            (
                "# TYPE a counter\n# TYPE a gauge\n",
                2,
                "first said counter",
            ),
            ("# TYPE h histogram\nh_bucket 1\n", 2, "has no le label"),
            (
                "# TYPE h histogram\nh_bucket{le=\"x\"} 1\n",
                2,
                "not a number",
            ),
            (
                "# TYPE h histogram\n\nh 1\n",
                3,
                "h_bucket, h_sum and h_count",
            ),
            ("# TYPE s summary\ns 1\n", 2, "has no quantile label"),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.message.contains(message), "{text:?}: {e}");
        }
    }

    #[test]
    fn long_lines_are_refused() {
        let fits = format!("a{{v=\"{}\"}} 1\n", "x".repeat(MAX_LINE_BYTES - 20));
        assert!(parse(&fits).is_ok());
        let labels: String = (0..20_000).map(|i| format!("l{i}=\"v\",")).collect();
        let text = format!("ok 1\na{{{labels}}} 1\n");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("more than the limit of 65536"), "{e}");
        let e = parse(&format!("# {}", "c".repeat(MAX_LINE_BYTES + 1))).unwrap_err();
        assert_eq!(e.line, 1);
    }

    #[test]
    fn too_many_samples_are_refused() {
        let mut text = String::new();
        for i in 0..MAX_SAMPLES {
            text.push_str(&format!("s{{i=\"{i}\"}} 1\n"));
        }
        assert_eq!(parse(&text).unwrap().len(), MAX_SAMPLES);
        text.push_str("# a comment is fine\none_more 1\n");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.line, MAX_SAMPLES + 2);
        assert!(e.message.contains("more than 200000 samples"), "{e}");
    }

    #[test]
    fn first_sample_of_a_series_wins() {
        let set = to_metric_set(&parse("a_total 1\na_total 2\n").unwrap(), 0);
        assert_eq!(set.len(), 1);
    }

    // Properties: whatever the set holds, the exposition parses, names every family once in
    // sorted order with HELP and TYPE; and clean counters and gauges come back exactly.

    fn any_name() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "a_total", "a", "b", "b_sum", "b_count", "b_bucket", "c_total", "d-e", "9f", "x:y", "",
            "g{", "h_total",
        ])
        .prop_map(String::from)
    }

    fn any_label_name() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "a",
            "le",
            "quantile",
            "job",
            "exported_job",
            "__name__",
            "b-c",
            "b_c",
            "0d",
        ])
        .prop_map(String::from)
    }

    fn any_key() -> impl Strategy<Value = String> {
        let labels = prop::collection::vec((any_label_name(), any::<String>()), 0..3);
        prop_oneof![
            8 => (any_name(), labels).prop_map(|(n, l)| {
                let l: Vec<(&str, &str)> = l.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
                series_key(&n, &l)
            }),
            1 => any::<String>(),
        ]
    }

    fn any_float() -> impl Strategy<Value = f64> {
        prop_oneof![
            4 => -1e6..1e6f64,
            1 => any::<f64>(),
            1 => Just(f64::NAN),
            1 => Just(f64::INFINITY),
        ]
    }

    fn any_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            any_float().prop_map(|v| Value::Counter(Counter { value: v })),
            any_float().prop_map(|v| Value::Gauge(Gauge::sample(v, 0))),
            prop::collection::vec(any_float(), 0..5).prop_map(|vs| {
                let mut h = Histogram::default();
                for v in vs {
                    h.observe(v);
                }
                Value::Histogram(h)
            }),
        ]
    }

    proptest! {
        #[test]
        fn any_set_renders_a_valid_exposition(
            values in prop::collection::btree_map(any_key(), any_value(), 0..12),
            extra_value in any::<String>(),
        ) {
            let set = MetricSet { values };
            let text = render(&set, &no_help, &[("job", extra_value.as_str()), ("node", "cn1")]);
            let doc = parse_document(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
            let names: Vec<&str> = doc.families.iter().map(|f| f.name.as_str()).collect();
            let mut sorted = names.clone();
            sorted.sort();
            sorted.dedup();
            prop_assert_eq!(&names, &sorted);
            prop_assert!(doc.families.iter().all(|f| f.help.is_some()));
            prop_assert_eq!(text.matches("# TYPE ").count(), names.len());
            for family in &doc.families {
                prop_assert!(type_line(&text, &family.name).is_some());
            }
        }

        #[test]
        fn clean_counters_and_gauges_round_trip(
            series in prop::collection::btree_map(
                (prop::sample::select(vec!["a_total", "b", "c_total"]),
                 prop::collection::btree_map(
                     prop::sample::select(vec!["x", "y", "job"]), any::<String>(), 0..3)),
                any_float(),
                0..10),
        ) {
            let mut set = MetricSet::new();
            for ((name, labels), v) in &series {
                let labels: Vec<(&str, &str)> = labels.iter().map(|(a, b)| (*a, b.as_str())).collect();
                let key = series_key(name, &labels);
                if name.ends_with("_total") {
                    set.set_counter(&key, *v);
                } else {
                    set.set_gauge(&key, *v, 3);
                }
            }
            let text = render_plain(&set);
            let back = to_metric_set(&parse(&text).map_err(|e| TestCaseError::fail(format!("{e}")))?, 3);
            prop_assert_eq!(back.len(), set.len());
            for (key, value) in &set.values {
                // Compared as numbers: NaN is NaN, and -0 is written `0` as Prometheus writes it.
                let same = match (back.get(key), value) {
                    (Some(Value::Counter(a)), Value::Counter(b)) => a.value == b.value || (a.value.is_nan() && b.value.is_nan()),
                    (Some(Value::Gauge(a)), Value::Gauge(b)) => a.total == b.total || (a.total.is_nan() && b.total.is_nan()),
                    _ => false,
                };
                prop_assert!(same, "{:?}: {:?} came back as {:?}\n{}", key, value, back.get(key), text);
            }
        }
    }
}
