//! Per-plant reference tables (e.g. work centre → canonical code), from inline entries or CSV
//! files; read-only to plugins through the `lookup` capability.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// One table: key → value.
pub type Table = HashMap<String, String>;

/// All tables of one plant, by name.
pub type Tables = Arc<HashMap<String, Table>>;

/// Read a CSV table with a header row. `key_column`/`value_column` name the columns
/// (default: the first and the second). Duplicate keys are an error.
pub fn read_csv(
    path: &Path,
    key_column: Option<&str>,
    value_column: Option<&str>,
) -> Result<Table, String> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(|e| format!("cannot read lookup table {}: {e}", path.display()))?;
    let headers = reader
        .headers()
        .map_err(|e| format!("{}: cannot read the header row: {e}", path.display()))?
        .clone();
    let column = |name: Option<&str>, default: usize, what: &str| -> Result<usize, String> {
        match name {
            None if headers.len() > default => Ok(default),
            None => Err(format!(
                "{}: needs at least two columns (key, value)",
                path.display()
            )),
            Some(n) => headers.iter().position(|h| h == n).ok_or_else(|| {
                format!(
                    "{}: no {what} column {n:?} (columns: {})",
                    path.display(),
                    headers.iter().collect::<Vec<_>>().join(", ")
                )
            }),
        }
    };
    let key = column(key_column, 0, "key")?;
    let value = column(value_column, 1, "value")?;
    let mut table = Table::new();
    for (index, record) in reader.records().enumerate() {
        let line = index + 2;
        let record = record.map_err(|e| format!("{}:{line}: {e}", path.display()))?;
        let (Some(k), Some(v)) = (record.get(key), record.get(value)) else {
            return Err(format!(
                "{}:{line}: missing key or value column",
                path.display()
            ));
        };
        if table.insert(k.to_string(), v.to_string()).is_some() {
            return Err(format!(
                "{}:{line}: key {k:?} appears twice",
                path.display()
            ));
        }
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_table_reads_named_columns_and_refuses_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wc.csv");
        std::fs::write(
            &path,
            "local,description,canonical\nWC01,Assembly,ASSY-01\n\"WC,2\",Paint,PAINT-02\n",
        )
        .unwrap();
        let table = read_csv(&path, Some("local"), Some("canonical")).unwrap();
        assert_eq!(table.get("WC,2").map(String::as_str), Some("PAINT-02"));
        assert_eq!(
            read_csv(&path, None, None)
                .unwrap()
                .get("WC01")
                .map(String::as_str),
            Some("Assembly")
        );

        std::fs::write(&path, "k,v\nA,1\nA,2\n").unwrap();
        assert!(
            read_csv(&path, None, None)
                .unwrap_err()
                .contains(":3: key \"A\" appears twice")
        );
        assert!(
            read_csv(&path, Some("x"), None)
                .unwrap_err()
                .contains("no key column \"x\"")
        );
    }
}
