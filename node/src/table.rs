//! Plain aligned text tables for human output (JSON output never goes through here), and
//! [`safe`], which every piece of crash-controlled text passes before it reaches a
//! terminal.

use std::borrow::Cow;

/// Text a crashed process, a kernel log or a peer chose, made harmless for a terminal:
/// control characters (C0 with newlines and tabs, DEL, C1; an escape sequence can retitle
/// the window, move the cursor over earlier lines or, on some terminals, write files) and
/// the bidirectional overrides that make text read differently than it is are shown as
/// `\x1b` / `\u{202e}` escapes. Ordinary text, any script, comes back unchanged.
pub fn safe(text: &str) -> Cow<'_, str> {
    let harmful =
        |c: char| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !text.chars().any(harmful) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if !harmful(c) {
            escaped.push(c);
        } else if (c as u32) < 0x100 {
            escaped.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            escaped.push_str(&format!("\\u{{{:x}}}", c as u32));
        }
    }
    Cow::Owned(escaped)
}

/// A table with a header row; cells are padded to the widest in their column.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|cell| cell.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// A row; every cell passes [`safe`] (cells often hold what a crash chose).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(
            cells
                .into_iter()
                .map(|cell| safe(&cell).into_owned())
                .collect(),
        );
    }

    /// The table as text, one line per row, the last column not padded.
    pub fn render(&self) -> String {
        let columns = self.header.len();
        let mut widths: Vec<usize> = self
            .header
            .iter()
            .map(|cell| cell.chars().count())
            .collect();
        for row in &self.rows {
            for (index, cell) in row.iter().enumerate().take(columns) {
                widths[index] = widths[index].max(cell.chars().count());
            }
        }
        let mut text = String::new();
        for row in std::iter::once(&self.header).chain(self.rows.iter()) {
            let mut line = String::new();
            for (index, cell) in row.iter().enumerate().take(columns) {
                if index + 1 == columns {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<width$}  ", width = widths[index]));
                }
            }
            text.push_str(line.trim_end());
            text.push('\n');
        }
        text
    }
}

/// Unix milliseconds as `2026-11-26 15:40:46` (UTC).
pub fn format_time_ms(time_ms: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(time_ms);
    let text = humantime::format_rfc3339_seconds(time).to_string();
    text.trim_end_matches('Z').replace('T', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align() {
        let mut table = Table::new(&["ID", "COUNT", "FUNCTION"]);
        table.row(vec!["abc".into(), "2".into(), "main".into()]);
        table.row(vec!["a".into(), "10".into(), "x".into()]);
        assert_eq!(
            table.render(),
            "ID   COUNT  FUNCTION\nabc  2      main\na    10     x\n"
        );
        assert_eq!(format_time_ms(0), "1970-01-01 00:00:00");
    }

    #[test]
    fn terminal_controls_are_shown_not_obeyed() {
        assert_eq!(
            safe("libfoo.so crashed, ünïcödé ok"),
            "libfoo.so crashed, ünïcödé ok"
        );
        assert_eq!(
            safe("a\u{1b}]0;pwned\u{7}b\nfake line\u{9b}2J"),
            "a\\x1b]0;pwned\\x07b\\x0afake line\\x9b2J"
        );
        assert_eq!(safe("evil\u{202e}txt.exe"), "evil\\u{202e}txt.exe");
        let mut table = Table::new(&["A", "B"]);
        table.row(vec!["x\ry".into(), "\u{1b}[2J".into()]);
        assert_eq!(table.render(), "A       B\nx\\x0dy  \\x1b[2J\n");
    }
}
