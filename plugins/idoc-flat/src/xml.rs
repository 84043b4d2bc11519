//! XML IDocs: every `IDOC` element of the document (one as the root, or several under a root
//! such as `<DELVRY07>`), each with a control element (`EDI_DC40` or `EDI_DC40_U`) and segment
//! elements, nested as the IDoc type nests them. A segment is an element marked `SEGMENT`, or one
//! with child elements; its fields are its other child elements.

use crate::{Content, Idoc, Segment, reject};
use millrace_sdk::MediationError;
use roxmltree::{Document, Node};

/// The IDocs of an XML document.
pub fn read(text: &str) -> Result<Vec<Idoc<'_>>, MediationError> {
    let options = roxmltree::ParsingOptions {
        allow_dtd: false,
        nodes_limit: 1_000_000,
    };
    let doc = Document::parse_with_options(text, options).map_err(|e| {
        MediationError::rejected(format!("line {}: not well-formed XML: {e}", e.pos().row))
            .field("IDOC")
            .position(e.pos().row)
    })?;
    let line = |node: Node| doc.text_pos_at(node.range().start).row;
    let mut idocs = Vec::new();
    for idoc in doc
        .descendants()
        .filter(|n| n.is_element() && n.tag_name().name() == "IDOC")
    {
        let Some(control) = idoc
            .children()
            .find(|n| n.is_element() && n.tag_name().name().starts_with("EDI_DC40"))
        else {
            return Err(reject(
                line(idoc),
                "IDOC",
                "EDI_DC40",
                "is missing: an IDOC element starts with its control record".into(),
            ));
        };
        let leaf = |name: &str| -> String {
            control
                .children()
                .find(|n| n.is_element() && n.tag_name().name() == name)
                .and_then(|n| n.text())
                .unwrap_or("")
                .trim()
                .to_string()
        };
        let segments = idoc
            .descendants()
            .filter(|n| {
                n.is_element()
                    && *n != idoc
                    && !n.ancestors().any(|a| a == control)
                    && is_segment(*n)
            })
            .map(|n| Segment {
                name: n.tag_name().name().to_string(),
                line: line(n),
                content: leaves(n),
            })
            .collect();
        idocs.push(Idoc {
            docnum: leaf("DOCNUM").trim_start_matches('0').to_string(),
            mestyp: leaf("MESTYP"),
            control: Segment {
                name: control.tag_name().name().to_string(),
                line: line(control),
                content: leaves(control),
            },
            segments,
        });
    }
    if idocs.is_empty() {
        return Err(MediationError::rejected(
            "no IDOC element: not an XML IDoc (expected <IDOC BEGIN=\"1\"> with an EDI_DC40 control record)",
        )
        .field("IDOC")
        .position(1));
    }
    Ok(idocs)
}

/// A segment's fields: its child elements without children of their own, name → trimmed text.
fn leaves(segment: Node) -> Content<'static> {
    Content::Xml(
        segment
            .children()
            .filter(|c| c.is_element() && !is_segment(*c))
            .map(|c| {
                (
                    c.tag_name().name().to_string(),
                    c.text().unwrap_or("").trim().to_string(),
                )
            })
            .collect(),
    )
}

/// A segment element: marked `SEGMENT="1"`, or (senders that leave the mark out) holding
/// elements of its own.
fn is_segment(node: Node) -> bool {
    node.has_attribute("SEGMENT") || node.children().any(|c| c.is_element())
}
