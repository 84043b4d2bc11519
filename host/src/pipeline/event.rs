//! Attributes the host writes into an output that is a structured CloudEvent (content type
//! `application/cloudevents+json`): the trace context it carries (`traceparent`,
//! `tracestate`) and, with `host.amqp_event_provenance`, where it came from (`millraceplant`,
//! `millraceroute`, `millracelineage`). Other outputs are left as they are. The event's other
//! members keep their order and their values' bytes (numbers, escapes) whichever way the
//! attributes go in. And the attributes it reads from an event (an address's `{type}` and
//! `{subject}`, lineage's subject): [`read_attributes`].

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

/// An event attribute as text, from its JSON as written (`raw`): a string as it reads (escapes
/// resolved), a number as written (`1E3` stays `1E3`); anything else (an object, a list, `true`,
/// `null`, a string whose escapes do not read) counts as absent. So an attribute of the wrong
/// kind never costs the event its other attributes.
pub fn attribute_text(raw: &str) -> Option<String> {
    match raw.as_bytes().first()? {
        b'"' => serde_json::from_str(raw).ok(),
        b'-' | b'0'..=b'9' => Some(raw.to_owned()),
        _ => None,
    }
}

/// The members named in `names` of the JSON object `body`, each as [`attribute_text`] reads it
/// (`None`: not there, or of another kind). One pass that stops once every one named has been
/// read: an event from the SDK writes its `type` and `subject` before its `data`, which is then
/// not read at all (when it has every name asked for; else the body is read to its end). So the
/// body is checked as JSON only as far as it is read, and of a name written twice the first
/// counts. Every value, wanted or not, is only scanned for its end (no tree is built, no depth
/// bound applies, nothing recurses): a wanted value of another kind is skipped, however large
/// or deep. A body that is not an object gives `None` for each; so does one that breaks off or
/// goes wrong before the last name wanted, for the names not yet read.
pub fn read_attributes<const N: usize>(body: &[u8], names: [&str; N]) -> [Option<String>; N] {
    use serde::de::{DeserializeSeed, Error, IgnoredAny, MapAccess, Visitor};
    use std::borrow::Cow;

    /// A member's name, borrowed from the body unless it is written with escapes.
    struct Name<'de>(Cow<'de, str>);
    impl<'de> serde::Deserialize<'de> for Name<'de> {
        fn deserialize<D: serde::Deserializer<'de>>(from: D) -> Result<Self, D::Error> {
            struct Text;
            impl<'de> Visitor<'de> for Text {
                type Value = Name<'de>;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a member's name")
                }
                fn visit_borrowed_str<E: Error>(self, text: &'de str) -> Result<Name<'de>, E> {
                    Ok(Name(Cow::Borrowed(text)))
                }
                fn visit_str<E: Error>(self, text: &str) -> Result<Name<'de>, E> {
                    Ok(Name(Cow::Owned(text.to_owned())))
                }
            }
            from.deserialize_str(Text)
        }
    }

    struct Read<'n, const N: usize> {
        names: [&'n str; N],
        found: [Option<String>; N],
        read: [bool; N],
    }
    /// Said to stop the parse once every name is read: not a fault of the body.
    const ALL_READ: &str = "every attribute wanted is read";
    impl<'de, const N: usize> Visitor<'de> for &mut Read<'_, N> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<(), M::Error> {
            while let Some(Name(name)) = map.next_key::<Name<'de>>()? {
                match self.names.iter().position(|wanted| *wanted == name) {
                    Some(at) if !self.read[at] => {
                        self.read[at] = true;
                        let raw: &'de serde_json::value::RawValue = map.next_value()?;
                        self.found[at] = attribute_text(raw.get());
                        if self.read.iter().all(|read| *read) {
                            return Err(M::Error::custom(ALL_READ));
                        }
                    }
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            Ok(())
        }
    }
    impl<'de, const N: usize> DeserializeSeed<'de> for &mut Read<'_, N> {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(self, from: D) -> Result<(), D::Error> {
            from.deserialize_map(self)
        }
    }

    let mut read = Read {
        names,
        found: std::array::from_fn(|_| None),
        read: [false; N],
    };
    if N > 0 {
        // What was read before the parse stopped stands, whatever stopped it.
        let _ = (&mut read).deserialize(&mut serde_json::Deserializer::from_slice(body));
    }
    read.found
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
    fn attributes_are_read_one_by_one_and_no_further_than_needed() {
        let read = |body: &str| read_attributes(body.as_bytes(), ["type", "subject"]);
        let some = |text: &str| Some(text.to_string());
        assert_eq!(
            read(r#"{"specversion":"1.0","type":"t.1","subject":"WO-1","data":{"subject":"x"}}"#),
            [some("t.1"), some("WO-1")]
        );
        // Each on its own: a number is its text as written, another kind is absent alone,
        // before the other name as after it.
        assert_eq!(
            read(r#"{"subject":4711,"type":"t"}"#),
            [some("t"), some("4711")]
        );
        assert_eq!(
            read(r#"{"subject":-1.5E3,"type":["t"]}"#),
            [None, some("-1.5E3")]
        );
        assert_eq!(
            read(r#"{"subject":123456789012345678901,"type":"t"}"#),
            [some("t"), some("123456789012345678901")]
        );
        assert_eq!(
            read(r#"{"subject":1e400,"type":"t"}"#),
            [some("t"), some("1e400")]
        );
        assert_eq!(
            read(r#"{"subject":"\udc00","type":"t"}"#),
            [some("t"), None]
        );
        let deep_list = format!(
            r#"{{"subject":{}1{},"type":"t"}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        assert_eq!(read(&deep_list), [some("t"), None]);
        assert_eq!(read(r#"{"subject":{"a":[1]},"type":null}"#), [None, None]);
        // Only top-level members count; names with escapes are read as names.
        assert_eq!(
            read(r#" { "data" : {"type":"inner"}, "\u0074ype" : "esc\"aped" } "#),
            [some("esc\"aped"), None]
        );
        // The first of a name written twice counts.
        assert_eq!(
            read(r#"{"type":"a","type":"b","subject":"s"}"#),
            [some("a"), some("s")]
        );
        // Nothing after the last name wanted is read: a body broken there still gives both.
        assert_eq!(
            read(r#"{"type":"t","subject":"s","data":{broken"#),
            [some("t"), some("s")]
        );
        // Broken before a name: what was read stands, the rest is absent.
        assert_eq!(read(r#"{"type":"t","data":[1,}"#), [some("t"), None]);
        for body in [
            "",
            "[1]",
            "\"type\"",
            "not json",
            r#"{"type""#,
            "{\"type\":\"t",
        ] {
            assert_eq!(read(body), [None, None], "{body:?}");
        }
        // Deep nesting is skipped without recursion, wanted or not: no stack to exhaust.
        let nested = |depth: usize| format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        let deep = format!(r#"{{"type":"t","x":{},"subject":"s"}}"#, nested(100_000));
        assert_eq!(read(&deep), [some("t"), some("s")]);
        let deep = format!(r#"{{"subject":{},"type":"t"}}"#, nested(100_000));
        assert_eq!(read(&deep), [some("t"), None]);
        assert_eq!(read_attributes(b"{}", []), []);
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
