//! The result table: one row per cell, a column per invariant, ✓ or ✗ with a short reason.

use super::checks::Verdict;

pub const COLUMNS: [&str; 6] = [
    "ends in time",
    "outbox → Kafka",
    "applied once",
    "one driver",
    "no orphan",
    "edge answers",
];

pub struct Row {
    pub group: &'static str,
    pub cell: String,
    pub fault: String,
    pub verdicts: Vec<Verdict>,
}

impl Row {
    pub fn passed(&self) -> bool {
        self.verdicts.iter().all(|v| v.ok)
    }
}

/// Longest reason shown; the full ones are in the test's output above the table.
const WIDTH: usize = 48;

fn cut(text: &str) -> String {
    if text.chars().count() <= WIDTH {
        text.to_owned()
    } else {
        let mut short: String = text.chars().take(WIDTH - 1).collect();
        short.push('…');
        short
    }
}

/// Renders `rows` as a Markdown table (readable as is in a terminal).
pub fn render(rows: &[Row]) -> String {
    let mut header = vec!["group".to_owned(), "cell".to_owned(), "fault".to_owned()];
    header.extend(COLUMNS.iter().map(|c| (*c).to_owned()));
    let mut lines: Vec<Vec<String>> = vec![header];
    for row in rows {
        let mut line = vec![row.group.to_owned(), row.cell.clone(), cut(&row.fault)];
        for v in &row.verdicts {
            line.push(format!("{} {}", if v.ok { "✓" } else { "✗" }, cut(&v.text)));
        }
        lines.push(line);
    }
    let columns = lines[0].len();
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            lines
                .iter()
                .map(|l| l[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        out.push('|');
        for (c, cell) in line.iter().enumerate() {
            let pad = widths[c] - cell.chars().count();
            out.push_str(&format!(" {cell}{} |", " ".repeat(pad)));
        }
        out.push('\n');
        if i == 0 {
            out.push('|');
            for w in &widths {
                out.push_str(&format!("{}|", "-".repeat(w + 2)));
            }
            out.push('\n');
        }
    }
    let failed = rows.iter().filter(|r| !r.passed()).count();
    out.push_str(&format!(
        "\n{} cells, {} passed, {failed} failed\n",
        rows.len(),
        rows.len() - failed
    ));
    out
}
