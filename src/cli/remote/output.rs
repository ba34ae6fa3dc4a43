//! How the operator commands print: plain tables for people (comfy-table), or, with
//! `--json`, one JSON document per line for scripts (docs/CLI.md, "JSON output").

use comfy_table::{ContentArrangement, Table, presets};
use serde_json::Value;

pub struct Output {
    json: bool,
}

impl Output {
    pub fn new(json: bool) -> Output {
        Output { json }
    }

    pub fn is_json(&self) -> bool {
        self.json
    }

    /// With `--json`: `value` on one line of standard output. Otherwise nothing.
    pub fn json_line(&self, value: &Value) {
        if self.json {
            println!("{value}");
        }
    }

    /// Without `--json`: a line of text on standard output.
    pub fn line(&self, text: &str) {
        if !self.json {
            println!("{text}");
        }
    }

    /// Without `--json`: a table with a header row.
    pub fn table(&self, headers: &[&str], rows: Vec<Vec<String>>) {
        if self.json {
            return;
        }
        let mut table = plain_table();
        table.set_header(headers.iter().map(|h| h.to_ascii_uppercase()));
        for row in rows {
            table.add_row(row);
        }
        println!("{}", tidy(&table));
    }

    /// Without `--json`: `name  value` lines, aligned.
    pub fn fields(&self, fields: &[(&str, String)]) {
        if self.json {
            return;
        }
        let mut table = plain_table();
        for (name, value) in fields {
            table.add_row(vec![name.to_string(), value.clone()]);
        }
        println!("{}", tidy(&table));
    }
}

/// Columns without borders (easy to read, and to grep or cut).
fn plain_table() -> Table {
    let mut table = Table::new();
    table.load_preset(presets::NOTHING).set_content_arrangement(ContentArrangement::Disabled);
    table
}

/// The table's text without the padding before its first column and after its last.
fn tidy(table: &Table) -> String {
    let text = table.to_string();
    text.lines().map(|line| line.strip_prefix(' ').unwrap_or(line).trim_end()).collect::<Vec<_>>().join("\n")
}

/// A size in bytes, for people: `1.5 MiB (1572864 bytes)`.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64;
    let mut unit = "B";
    for next in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = next;
    }
    format!("{value:.1} {unit} ({bytes} bytes)")
}

/// An optional text, `-` when absent.
pub fn or_dash(text: Option<&str>) -> String {
    text.filter(|t| !t.is_empty()).unwrap_or("-").to_string()
}

/// `showing 1-50 of 120 builds (--offset 50 for more)`.
pub fn page_footer(shown: usize, offset: u64, total: u64, what: &str) -> String {
    if shown == 0 {
        return format!("no {what} (of {total})");
    }
    let last = offset + shown as u64;
    let more = if last < total { format!(" (--offset {last} for more)") } else { String::new() };
    format!("showing {}-{last} of {total} {what}{more}", offset + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(size(512), "512 B");
        assert_eq!(size(1536), "1.5 KiB (1536 bytes)");
        assert_eq!(size(4 * 1024 * 1024), "4.0 MiB (4194304 bytes)");
    }
}
