//! Building and reading event `data` by dotted paths (`to.storage_location`).

use serde_json::{Map, Value};

/// Put `value` at the dotted `path` of `map`, creating objects on the way (an existing
/// non-object on the way is left as it is and the value is dropped).
pub fn insert(map: &mut Map<String, Value>, path: &str, value: Value) {
    match path.split_once('.') {
        None => {
            map.insert(path.to_string(), value);
        }
        Some((head, rest)) => {
            if let Value::Object(child) = map
                .entry(head.to_string())
                .or_insert_with(|| Value::Object(Map::new()))
            {
                insert(child, rest, value);
            }
        }
    }
}

/// The text at the dotted `path` of `value`, if there is text there.
pub fn text(value: &Value, path: &str) -> Option<String> {
    path.split('.')
        .try_fold(value, |v, key| v.get(key))?
        .as_str()
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_nest_and_read_back() {
        let mut map = Map::new();
        insert(&mut map, "to.storage_location", json!("A"));
        insert(&mut map, "to.bin", json!("A-01"));
        insert(&mut map, "quantity", json!(2));
        let value = Value::Object(map);
        assert_eq!(
            value,
            json!({ "to": { "storage_location": "A", "bin": "A-01" }, "quantity": 2 })
        );
        assert_eq!(text(&value, "to.bin").as_deref(), Some("A-01"));
        assert_eq!(text(&value, "quantity"), None, "numbers are not text");
        assert_eq!(text(&value, "from.bin"), None);
    }
}
