//! Attributes the host writes into an output that is a structured CloudEvent (content type
//! `application/cloudevents+json`): the trace context it carries (`traceparent`,
//! `tracestate`) and, with `host.amqp_event_provenance`, where it came from (`millraceplant`,
//! `millraceroute`, `millracelineage`). Other outputs are left as they are. The event's other
//! members keep their order and their values' bytes (numbers, escapes) whichever way the
//! attributes go in.

/// Whether `content_type` is that of a structured CloudEvent in JSON.
pub fn is_structured(content_type: &str) -> bool {
    content_type.starts_with("application/cloudevents+json")
}

/// Set each of `attributes` (name, string value) in the structured CloudEvent `body`,
/// replacing an attribute of that name, and remove those named in `removed`; a body of another
/// content type, or not an object, is left as it is (one that is not JSON is not checked: it
/// stays unparseable).
pub fn set_attributes(
    content_type: &str,
    body: &mut Vec<u8>,
    attributes: &[(&str, &str)],
    removed: &[&str],
) {
    if !is_structured(content_type) || (attributes.is_empty() && removed.is_empty()) {
        return;
    }
    // The common case without a parse: an object naming none of them yet (anywhere, as a
    // quoted string) gets them written in after its opening brace.
    let start = body.iter().position(|b| !b.is_ascii_whitespace());
    let named = |name: &str| {
        let quoted = format!("\"{name}\"");
        body.windows(quoted.len()).any(|w| w == quoted.as_bytes())
    };
    // A name may also be written with escapes (`\u0070`): an event with any takes the parse.
    let escaped = body.windows(2).any(|w| w == b"\\u");
    if let Some(start) = start.filter(|&at| body[at] == b'{')
        && !escaped
        && !attributes.iter().any(|(name, _)| named(name))
        && !removed.iter().any(|name| named(name))
    {
        let mut written = Vec::new();
        for (name, value) in attributes {
            for text in [name, value] {
                serde_json::to_writer(&mut written, text).expect("a string writes");
                written.push(b':');
            }
            *written.last_mut().expect("written") = b',';
        }
        let empty = body[start + 1..]
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|&b| b == b'}');
        if empty {
            written.pop();
        }
        body.splice(start + 1..start + 1, written);
        return;
    }
    // One of them named already: the members read as they are written, those of the names
    // (given or removed) dropped, the attributes first and then the rest, each with its own
    // bytes.
    let Ok(Members(members)) = serde_json::from_slice::<Members>(body) else {
        return;
    };
    let mut written = b"{".to_vec();
    for (name, value) in attributes {
        for text in [name, value] {
            serde_json::to_writer(&mut written, text).expect("a string writes");
            written.push(b':');
        }
        *written.last_mut().expect("written") = b',';
    }
    for (name, value) in &members {
        if attributes.iter().any(|(given, _)| given == name) || removed.contains(&name.as_str()) {
            continue;
        }
        serde_json::to_writer(&mut written, name).expect("a string writes");
        written.push(b':');
        written.extend_from_slice(value.get().as_bytes());
        written.push(b',');
    }
    if written.len() > 1 {
        written.pop();
    }
    written.push(b'}');
    *body = written;
}

/// A JSON object's members in the order written, each value as its own bytes.
struct Members(Vec<(String, Box<serde_json::value::RawValue>)>);

impl<'de> serde::Deserialize<'de> for Members {
    fn deserialize<D: serde::Deserializer<'de>>(from: D) -> Result<Members, D::Error> {
        struct Read;
        impl<'de> serde::de::Visitor<'de> for Read {
            type Value = Members;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<Members, M::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        from.deserialize_map(Read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(content_type: &str, body: &str, attributes: &[(&str, &str)]) -> String {
        let mut body = body.as_bytes().to_vec();
        set_attributes(content_type, &mut body, attributes, &[]);
        String::from_utf8(body).unwrap()
    }

    #[test]
    fn removed_attributes_go_and_the_rest_stays_valid() {
        let ce = "application/cloudevents+json";
        for (body, want) in [
            (r#"{"tracestate":"x"}"#, "{}"),
            (r#" { "a" : 1 , "tracestate":"x" } "#, r#"{"a":1}"#),
            (
                r#"{"tracestate":"x","b":[1E2],"tracestate":"y"}"#,
                r#"{"b":[1E2]}"#,
            ),
            // Not named: left as it is.
            (r#"{"a":1}"#, r#"{"a":1}"#),
        ] {
            let mut out = body.as_bytes().to_vec();
            set_attributes(ce, &mut out, &[], &["tracestate"]);
            assert_eq!(String::from_utf8(out).unwrap(), want, "{body}");
        }
        let mut out = br#"{"tracestate":"x"}"#.to_vec();
        set_attributes(ce, &mut out, &[("traceparent", "t")], &["tracestate"]);
        assert_eq!(String::from_utf8(out).unwrap(), r#"{"traceparent":"t"}"#);
    }

    #[test]
    fn attributes_are_written_into_structured_events_only() {
        let ce = "application/cloudevents+json; charset=utf-8";
        let pairs = [
            ("millraceplant", "plant-a"),
            ("millracelineage", "a@1+x\"y"),
        ];
        for body in [
            r#"{"specversion":"1.0","id":"1"}"#,
            " { } ",
            // Already named: replaced, by the parse.
            r#"{"id":"2","millraceplant":"other"}"#,
            // Named in the data only: the parse too, the data kept.
            r#"{"id":"3","data":{"x":"millraceplant"}}"#,
            r#"{"millracelineage":"old","z":1E2,"a":[1, 2]}"#,
            // Named with an escape.
            r#"{"millrace\u0070lant":"other"}"#,
        ] {
            let out = set(ce, body, &pairs);
            let event: serde_json::Value =
                serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
            assert_eq!(event["millraceplant"], "plant-a", "{body}");
            assert_eq!(event["millracelineage"], "a@1+x\"y", "{body}");
            if body.contains("data") {
                assert_eq!(event["data"]["x"], "millraceplant");
            }
        }
        // The other members keep their order and bytes through the parse.
        assert_eq!(
            set(
                ce,
                r#"{"z":1E2, "millraceplant":"x","a":[1, 2],"n":123456789012345678901234567890}"#,
                &pairs
            ),
            r#"{"millraceplant":"plant-a","millracelineage":"a@1+x\"y","z":1E2,"a":[1, 2],"n":123456789012345678901234567890}"#
        );
        // Not a structured event, not an object, not JSON: unchanged.
        assert_eq!(set("application/json", "{}", &pairs), "{}");
        assert_eq!(set(ce, "[1]", &pairs), "[1]");
        let broken = set(ce, "{not json", &pairs);
        assert!(
            serde_json::from_str::<serde_json::Value>(&broken).is_err(),
            "{broken}"
        );
        assert_eq!(set(ce, r#"{"a":1}"#, &[]), r#"{"a":1}"#);
    }
}
