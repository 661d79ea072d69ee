//! `banyan nodeset`: expands, folds and counts node-set expressions the way ClusterShell's `nodeset`
//! does, so operators can check an expression before handing it to another command. The parsing
//! lives in [`banyan_protocol::nodeset`]; this module only reads arguments or stdin and prints.
//! Expressions naming groups (`@compute`) are resolved by the root, which holds the group files
//! ([`crate::nodes`]); everything else, `@./file` terms included, works offline.

use std::io::{self, BufRead, Write};

use banyan_protocol::nodeset::{NodeSet, NodeSetError};
use clap::{ArgGroup, Args};

use crate::api::CliError;
use crate::nodes::{self, GroupResolver};

/// Arguments of `banyan nodeset`.
#[derive(Debug, Clone, Args)]
#[command(
    group(ArgGroup::new("mode").required(true).args(["expand", "fold", "count"])),
    after_help = "\
Expressions: comma lists and brackets as ClusterShell and pdsh write them; `@/path` or `@./path`
reads one name or expression per line (`#` starts a comment); `@group`, `@source:group` and `@*`
are the root's node groups (asked of the root at --root). Several expressions give their union.

Examples:
  banyan nodeset -e 'cn[43-45,47]'          cn43 cn44 cn45 cn47
  banyan nodeset -f cn1 cn2 cn3 gpu01       cn[1-3],gpu01
  banyan nodeset -c 'r[1-2]n[001-128]'      256
  banyan nodeset -e -S '\\n' 'n[1-10/3]'     one name per line: n1 n4 n7 n10
  banyan nodeset -f @./hosts.txt
  banyan nodeset -f '@compute!@./down.txt'  the compute group but the nodes listed in down.txt
  banyan nodeset -c @gpu
  scontrol show hostnames | banyan nodeset -f"
)]
pub struct NodesetArgs {
    /// Print every name, separated by spaces (or by --separator).
    #[arg(short, long)]
    pub expand: bool,
    /// Print the shortest folded form.
    #[arg(short, long)]
    pub fold: bool,
    /// Print the number of names.
    #[arg(short, long)]
    pub count: bool,
    /// Separator for --expand instead of a space; `\n` and `\t` are understood.
    #[arg(short = 'S', long, value_name = "SEP", conflicts_with_all = ["fold", "count"])]
    pub separator: Option<String>,
    /// Node-set expressions; read from standard input (whitespace separated) when none is given.
    #[arg(value_name = "NODESET")]
    pub exprs: Vec<String>,
}

/// Why `banyan nodeset` failed.
#[derive(Debug, thiserror::Error)]
pub enum NodesetCliError {
    /// The operator's input is wrong: exit code 2.
    #[error(transparent)]
    Input(#[from] NodeSetError),
    #[error("cannot read standard input: {0}")]
    Stdin(#[source] io::Error),
    #[error("cannot write output: {0}")]
    Output(#[source] io::Error),
    /// A group could not be resolved: the root is down, refused, or does not know it.
    #[error(transparent)]
    Root(#[from] CliError),
}

impl NodesetCliError {
    /// 2 for bad input, as clap does for bad arguments; 1 for I/O trouble.
    pub fn exit_code(&self) -> u8 {
        match self {
            NodesetCliError::Input(_) => 2,
            NodesetCliError::Stdin(_) | NodesetCliError::Output(_) => 1,
            NodesetCliError::Root(e) => e.exit_code(),
        }
    }
}

/// Runs `banyan nodeset`, reading `input` only when no expression was given; `groups` resolves
/// the expressions that name groups.
pub fn run(
    args: &NodesetArgs,
    input: impl BufRead,
    out: &mut impl Write,
    groups: &dyn GroupResolver,
) -> Result<(), NodesetCliError> {
    let mut set = NodeSet::new();
    let mut add = |expr: &str| -> Result<(), NodesetCliError> {
        if nodes::needs_root(expr) {
            set.extend(nodes::resolve(expr, groups)?);
        } else {
            set.extend(NodeSet::parse_with_files(expr)?);
        }
        Ok(())
    };
    if args.exprs.is_empty() {
        for line in input.lines() {
            let line = line.map_err(NodesetCliError::Stdin)?;
            for expr in split_words(&line) {
                add(expr)?;
            }
        }
    } else {
        for expr in &args.exprs {
            add(expr)?;
        }
    }

    let written = if args.count {
        writeln!(out, "{}", set.len())
    } else if args.fold {
        writeln!(out, "{}", set.fold())
    } else {
        let separator = args
            .separator
            .as_deref()
            .map_or_else(|| " ".to_owned(), unescape);
        write_expanded(&set, &separator, out)
    };
    written
        .and_then(|()| out.flush())
        .map_err(NodesetCliError::Output)
}

fn write_expanded(set: &NodeSet, separator: &str, out: &mut impl Write) -> io::Result<()> {
    for (i, name) in set.iter().enumerate() {
        if i > 0 {
            out.write_all(separator.as_bytes())?;
        }
        out.write_all(name.as_bytes())?;
    }
    out.write_all(b"\n")
}

/// Splits a line of stdin on whitespace outside brackets, so that `cn1 cn2` is two expressions
/// (as `hostname`-per-line or `scontrol show hostnames` output is) while `cn[1, 3]` stays one.
fn split_words(line: &str) -> Vec<&str> {
    let mut words = Vec::new();
    let mut depth = 0usize;
    let mut start = None;
    for (i, c) in line.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            c if c.is_whitespace() && depth == 0 => {
                if let Some(s) = start.take() {
                    words.push(&line[s..i]);
                }
                continue;
            }
            _ => {}
        }
        start.get_or_insert(i);
    }
    if let Some(s) = start {
        words.push(&line[s..]);
    }
    words
}

/// `\n` and `\t` as ClusterShell's `-S` takes them, since shells make real newlines awkward to pass.
fn unescape(sep: &str) -> String {
    sep.replace("\\n", "\n").replace("\\t", "\t")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdin_words_split_outside_brackets_only() {
        assert_eq!(
            split_words("  cn1 cn[1, 3]\tgpu1 "),
            ["cn1", "cn[1, 3]", "gpu1"]
        );
        assert!(split_words("   ").is_empty());
    }

    #[test]
    fn separator_escapes() {
        assert_eq!(unescape("\\n"), "\n");
        assert_eq!(unescape(","), ",");
    }
}
