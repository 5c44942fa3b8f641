//! Turning a byte span in policy text into "line, column, key" for errors.

/// Where a span sits: 1-based line and column, and the dotted key path of
/// the entry on that line (`fs[1].access`, `net.allow`, `plugin`).
pub(crate) struct Location {
    pub line: usize,
    pub column: usize,
    pub key: String,
}

pub(crate) fn locate(text: &str, offset: usize) -> Location {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    let line_text = text[line_start..].lines().next().unwrap_or_default();

    // The table this line belongs to, with an index for arrays of tables.
    let mut table = String::new();
    let mut counts: Vec<(String, usize)> = Vec::new();
    for l in text[..line_start].lines().chain(std::iter::once(line_text)) {
        let t = l.trim();
        if let Some(name) = t.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            let name = name.trim().to_owned();
            let n = match counts.iter_mut().find(|(k, _)| *k == name) {
                Some((_, n)) => {
                    *n += 1;
                    *n
                }
                None => {
                    counts.push((name.clone(), 0));
                    0
                }
            };
            table = format!("{name}[{n}]");
        } else if let Some(name) = t.strip_prefix('[').and_then(|r| r.split(']').next()) {
            table = name.trim().to_owned();
        }
    }
    let key = line_text
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_owned())
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    let key = match (table.is_empty(), key) {
        (true, Some(k)) => k,
        (false, Some(k)) => format!("{table}.{k}"),
        (false, None) => table,
        (true, None) => "(top level)".to_owned(),
    };
    Location { line, column, key }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_key_inside_arrays_of_tables() {
        let text = "plugin = \"x\"\n[[fs]]\nhost = \"/a\"\n[[fs]]\naccess = \"rw\"\n";
        let at = text.find("\"rw\"").unwrap();
        let loc = locate(text, at);
        assert_eq!((loc.line, loc.key.as_str()), (5, "fs[1].access"));
        let top = locate(text, 3);
        assert_eq!((top.line, top.column, top.key.as_str()), (1, 4, "plugin"));
    }
}
