//! Diagnostics in compiler form: `file:line:col: error: message`, collected, sorted, printed.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A 1-based line and column in a source file. `0:0` means "no position".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

impl Pos {
    pub const fn new(line: u32, col: u32) -> Self {
        Pos { line, col }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub file: Arc<str>,
    pub pos: Pos,
    pub severity: Severity,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        if self.pos.line == 0 {
            write!(f, "{}: {}: {}", self.file, sev, self.message)
        } else {
            write!(f, "{}:{}:{}: {}: {}", self.file, self.pos.line, self.pos.col, sev, self.message)
        }
    }
}

/// An ordered collection of diagnostics for one or more files.
#[derive(Clone, Debug, Default)]
pub struct Diagnostics {
    items: Vec<Diagnostic>,
}

impl Diagnostics {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn error(&mut self, file: &Arc<str>, pos: Pos, message: impl Into<String>) {
        self.push(file, pos, Severity::Error, message.into());
    }

    pub fn warning(&mut self, file: &Arc<str>, pos: Pos, message: impl Into<String>) {
        self.push(file, pos, Severity::Warning, message.into());
    }

    fn push(&mut self, file: &Arc<str>, pos: Pos, severity: Severity, message: String) {
        self.items.push(Diagnostic { file: file.clone(), pos, severity, message });
    }

    pub fn push_diagnostic(&mut self, d: Diagnostic) {
        self.items.push(d);
    }

    pub fn extend(&mut self, other: Diagnostics) {
        self.items.extend(other.items);
    }

    pub fn has_errors(&self) -> bool {
        self.items.iter().any(|d| d.severity == Severity::Error)
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Sorted by file, line, column, then errors before warnings; duplicates removed.
    pub fn sorted(mut self) -> Vec<Diagnostic> {
        self.items
            .sort_by(|a, b| (&a.file, a.pos, a.severity, &a.message).cmp(&(&b.file, b.pos, b.severity, &b.message)));
        self.items.dedup();
        self.items
    }

    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items.iter()
    }

    /// The sorted diagnostics, one per line.
    #[cfg(test)]
    pub fn render(self) -> String {
        let mut out = String::new();
        for d in self.sorted() {
            out.push_str(&d.to_string());
            out.push('\n');
        }
        out
    }
}

/// Closest candidate within a small edit distance, for "did you mean" hints.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = word.to_ascii_lowercase();
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        if c.starts_with('$') {
            continue;
        }
        let d = if c.eq_ignore_ascii_case(word) { 0 } else { edit_distance(&lower, &c.to_ascii_lowercase()) };
        let limit = (c.len().max(word.len()) / 3).clamp(1, 3);
        if d <= limit && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c)
}

/// Edit distance counting an adjacent transposition as one edit (optimal string alignment).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_are_close_matches_only() {
        let fields = ["replicas", "readiness", "restart", "labels", "command"];
        assert_eq!(did_you_mean("replics", fields), Some("replicas"));
        assert_eq!(did_you_mean("Labels", fields), Some("labels"));
        assert_eq!(did_you_mean("comand", fields), Some("command"));
        assert_eq!(did_you_mean("xyz", fields), None);
        assert_eq!(did_you_mean("nmae", ["name", "port"]), Some("name"));
    }

    #[test]
    fn render_sorts_by_file_line_col_and_dedups() {
        let f: Arc<str> = Arc::from("a.yaml");
        let g: Arc<str> = Arc::from("b.yaml");
        let mut d = Diagnostics::new();
        d.error(&g, Pos::new(1, 1), "late file");
        d.warning(&f, Pos::new(9, 3), "w");
        d.error(&f, Pos::new(2, 5), "e2");
        d.error(&f, Pos::new(2, 5), "e2");
        d.error(&f, Pos::new(2, 1), "e1");
        assert_eq!(
            d.render(),
            "a.yaml:2:1: error: e1\na.yaml:2:5: error: e2\na.yaml:9:3: warning: w\nb.yaml:1:1: error: late file\n"
        );
    }
}
