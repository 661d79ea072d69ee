//! One look for every table the CLI prints: aligned columns under a header, no borders, so that
//! the output reads like `ps` or `squeue` and stays easy to `grep` and `awk`.

use comfy_table::{presets, CellAlignment, ContentArrangement, Table};

/// A table with this header; add rows with [`Table::add_row`] and print it with [`render`].
pub fn new(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        // Long node sets stay on one line: a wrapped node set is hard to copy.
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.to_vec());
    for c in t.column_iter_mut() {
        c.set_padding((0, 1));
    }
    t
}

/// Right-aligns column `index` (counts).
pub fn align_right(t: &mut Table, index: usize) {
    if let Some(c) = t.column_mut(index) {
        c.set_cell_alignment(CellAlignment::Right);
    }
}

/// The table as text, one line a row, without trailing spaces.
pub fn render(t: &Table) -> String {
    let mut out = String::new();
    for line in t.lines() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_without_borders() {
        let mut t = new(&["UNIT", "N"]);
        t.add_row(vec!["nova-compute", "12"]);
        t.add_row(vec!["sshd", "3"]);
        align_right(&mut t, 1);
        assert_eq!(
            render(&t),
            "UNIT          N\nnova-compute 12\nsshd          3\n"
        );
    }
}
