//! An X12 file: one or more interchanges (ISA..IEA), their separators read from the ISA at its
//! fixed positions, segments numbered from 1 across the file, and the envelope checks (ISA/IEA,
//! GS/GE, ST/SE counts and control numbers).

use millrace_sdk::MediationError;
use std::collections::HashSet;

/// One segment: its 1-based number in the file, its id and its elements (element 1 first).
#[derive(Debug, Clone, PartialEq)]
pub struct Segment<'a> {
    pub number: u32,
    pub id: &'a str,
    pub elements: Vec<&'a str>,
}

impl<'a> Segment<'a> {
    /// Element `n` (1-based, as in `BSN02`), empty if absent.
    pub fn get(&self, n: usize) -> &'a str {
        self.elements.get(n - 1).copied().unwrap_or("")
    }

    /// Element `n`, which must not be empty.
    pub fn required(&self, n: usize) -> Result<&'a str, MediationError> {
        let value = self.get(n);
        if value.trim().is_empty() {
            Err(self.error(n, "is required but missing"))
        } else {
            Ok(value)
        }
    }

    /// A rejection at element `n` of this segment.
    pub fn error(&self, n: usize, what: &str) -> MediationError {
        let element = format!("{}{n:02}", self.id);
        MediationError::rejected(format!(
            "segment {} ({}): {element} {what}",
            self.number, self.id
        ))
        .field(element)
        .position(self.number)
    }

    /// A rejection at this segment as a whole; `field` is the segment id.
    pub fn fault(&self, what: impl std::fmt::Display) -> MediationError {
        MediationError::rejected(format!("segment {} ({}): {what}", self.number, self.id))
            .field(self.id)
            .position(self.number)
    }
}

/// A transaction set (ST..SE) with its envelopes' facts.
pub struct Transaction<'a> {
    /// ST02.
    pub control: &'a str,
    /// GS06 of its functional group.
    pub group_control: &'a str,
    /// ISA13 of its interchange.
    pub interchange_control: &'a str,
    /// GS08 of its functional group, e.g. `004010VICS`.
    pub version: &'a str,
    /// The segments between ST and SE.
    pub segments: Vec<Segment<'a>>,
}

/// What a file held: the 856 ship notices, and the other transaction sets passed over.
pub struct Interchanges<'a> {
    pub ship_notices: Vec<Transaction<'a>>,
    /// `ST01 ST02` of every transaction set that is not an 856.
    pub skipped: Vec<String>,
}

/// Widths of ISA01..ISA16, fixed by the standard in every version.
const ISA_WIDTHS: [usize; 16] = [2, 10, 2, 10, 2, 15, 2, 15, 6, 4, 1, 5, 9, 1, 1, 1];

/// The separators one interchange's segments are split with (the component and repetition
/// separators are checked, but no element this plugin reads is a composite or repeats).
#[derive(Debug, Clone, Copy)]
struct Separators {
    element: char,
    terminator: char,
}

/// Bytes that may follow the last IEA without being content: whitespace, NUL padding and the
/// DOS end-of-file mark.
fn is_padding(c: char) -> bool {
    c.is_whitespace() || c == '\0' || c == '\u{1a}'
}

/// Split `text` into interchanges with the separators each ISA declares, check the envelopes,
/// and return the 856 transaction sets.
pub fn parse(text: &str) -> Result<Interchanges<'_>, MediationError> {
    let mut rest = text.trim_start_matches(|c: char| c == '\u{feff}' || c.is_whitespace());
    if !rest.starts_with("ISA") {
        let what = if text.contains("ISA") {
            "the file must start with the ISA segment"
        } else {
            "no ISA segment: not an X12 interchange"
        };
        return Err(MediationError::rejected(what).field("ISA").position(1));
    }
    let mut found = Interchanges {
        ship_notices: Vec::new(),
        skipped: Vec::new(),
    };
    let mut number = 0;
    loop {
        rest = interchange(rest, &mut number, &mut found)?;
        let next = rest.trim_start_matches(is_padding);
        if next.is_empty() {
            return Ok(found);
        }
        if !next.starts_with("ISA") {
            let shown: String = next.chars().take(24).collect();
            return Err(MediationError::rejected(format!(
                "segment {}: {shown:?} follows the IEA; only another interchange (ISA) may",
                number + 1
            ))
            .field("IEA")
            .position(number + 1));
        }
        rest = next;
    }
}

/// Read the ISA at the start of `text` at its fixed positions.
fn separators(text: &str, number: u32) -> Result<(Separators, Segment<'_>, &str), MediationError> {
    let isa_fault = |what: String, field: &str| {
        MediationError::rejected(format!("segment {number} (ISA): {what}"))
            .field(field)
            .position(number)
    };
    let element = text[3..]
        .chars()
        .next()
        .ok_or_else(|| isa_fault("ends after its id".into(), "ISA"))?;
    if element.is_alphanumeric() || element == ' ' {
        return Err(isa_fault(
            format!(
                "the element separator (the 4th character) is {element:?}, which cannot be a separator"
            ),
            "ISA",
        ));
    }
    // ISA01..ISA15 end at an element separator; ISA16 is one character, then the terminator.
    let mut at = 3 + element.len_utf8();
    let mut elements = Vec::with_capacity(16);
    for (i, width) in ISA_WIDTHS.iter().enumerate().take(15) {
        let name = format!("ISA{:02}", i + 1);
        let end = text[at..]
            .find(element)
            .map(|e| at + e)
            .filter(|&e| text[at..e].chars().count() <= 40 && !text[at..e].contains(['\r', '\n']))
            .ok_or_else(|| {
                isa_fault(
                    format!(
                        "ends inside {name}; an ISA has 16 elements of fixed width (106 characters)"
                    ),
                    &name,
                )
            })?;
        let value = &text[at..end];
        let got = value.chars().count();
        if got != *width {
            return Err(isa_fault(
                format!(
                    "{name} is {got} character{}, must be {width} (the ISA is fixed-width, 106 characters)",
                    if got == 1 { "" } else { "s" }
                ),
                &name,
            ));
        }
        elements.push(value);
        at = end + element.len_utf8();
    }
    let mut tail = text[at..].chars();
    let (Some(component), Some(terminator)) = (tail.next(), tail.next()) else {
        return Err(isa_fault(
            "ends before ISA16 and the segment terminator".into(),
            "ISA16",
        ));
    };
    elements.push(&text[at..at + component.len_utf8()]);
    let version = elements[11];
    let repetition = elements[10]
        .chars()
        .next()
        .filter(|c| !c.is_alphanumeric() && *c != ' ' && version >= "00402");
    let separators = Separators {
        element,
        terminator,
    };
    if terminator.is_alphanumeric() || terminator == ' ' {
        return Err(isa_fault(
            format!(
                "the character after ISA16 is the segment terminator and cannot be {terminator:?}; ISA16 must be one character"
            ),
            "ISA16",
        ));
    }
    let mut all = vec![element, component, terminator];
    all.extend(repetition);
    if component.is_alphanumeric() || all.iter().collect::<HashSet<_>>().len() != all.len() {
        return Err(isa_fault(
            format!(
                "separators element {element:?}, component {component:?}{}, terminator {terminator:?} must be distinct non-alphanumeric characters",
                repetition
                    .map(|r| format!(", repetition {r:?}"))
                    .unwrap_or_default()
            ),
            "ISA16",
        ));
    }
    let isa = Segment {
        number,
        id: "ISA",
        elements,
    };
    let after = at + component.len_utf8() + terminator.len_utf8();
    Ok((separators, isa, &text[after..]))
}

/// The segments of one interchange, from its ISA up to and including its IEA; returns the text
/// after the IEA.
fn interchange<'a>(
    text: &'a str,
    number: &mut u32,
    found: &mut Interchanges<'a>,
) -> Result<&'a str, MediationError> {
    *number += 1;
    let (sep, isa, mut rest) = separators(text, *number)?;
    let mut segments = vec![isa];
    loop {
        let (piece, after) = match rest.find(sep.terminator) {
            Some(i) => (&rest[..i], &rest[i + sep.terminator.len_utf8()..]),
            None => (rest, ""),
        };
        rest = after;
        let piece = piece
            .trim_start_matches(|c: char| c.is_whitespace() || c == '\0')
            .trim_end_matches(['\r', '\n']);
        if piece.is_empty() {
            if rest.is_empty() {
                let last = &segments[segments.len() - 1];
                return Err(last.fault("the interchange has no IEA segment"));
            }
            continue;
        }
        *number += 1;
        let mut parts = piece.split(sep.element);
        let id = parts.next().unwrap_or("").trim_end();
        let segment = Segment {
            number: *number,
            id,
            elements: parts.collect(),
        };
        let valid_id = (2..=3).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
            && id.as_bytes()[0].is_ascii_uppercase();
        if !valid_id {
            let shown: String = piece.chars().take(24).collect();
            return Err(MediationError::rejected(format!(
                "segment {}: {shown:?} does not start with a segment id (separator {:?}, terminator {:?} from the ISA)",
                *number, sep.element, sep.terminator
            ))
            .field(id.chars().take(3).collect::<String>())
            .position(*number));
        }
        let done = segment.id == "IEA";
        segments.push(segment);
        if done {
            break;
        }
        if rest.is_empty() {
            let last = &segments[segments.len() - 1];
            return Err(last.fault("the interchange has no IEA segment"));
        }
    }
    envelopes(segments, found)?;
    Ok(rest)
}

/// Check the envelopes of one interchange's segments (ISA first, IEA last) and collect its sets.
fn envelopes<'a>(
    segments: Vec<Segment<'a>>,
    found: &mut Interchanges<'a>,
) -> Result<(), MediationError> {
    let isa = &segments[0];
    let interchange_control = isa.get(13);
    let mut groups = 0;
    let mut i = 1;
    while i < segments.len() {
        let seg = &segments[i];
        match seg.id {
            "GS" => {
                groups += 1;
                let version = seg.required(8)?;
                check_version(seg, version)?;
                let group_control = seg.required(6)?;
                let mut sets = 0;
                let mut controls = HashSet::new();
                i += 1;
                loop {
                    let Some(seg) = segments.get(i) else {
                        unreachable!("the interchange ends with IEA")
                    };
                    match seg.id {
                        "ST" => {
                            sets += 1;
                            let (transaction, next) = transaction(&segments, i)?;
                            if !controls.insert(transaction.control) {
                                return Err(seg.error(
                                    2,
                                    &format!(
                                        "control number {:?} is used twice in functional group {group_control:?}",
                                        transaction.control
                                    ),
                                ));
                            }
                            if seg.get(1) == "856" {
                                found.ship_notices.push(Transaction {
                                    group_control,
                                    interchange_control,
                                    version,
                                    ..transaction
                                });
                            } else {
                                found.skipped.push(format!(
                                    "{} {}",
                                    seg.get(1),
                                    transaction.control
                                ));
                            }
                            i = next;
                        }
                        "GE" => {
                            count(seg, 1, sets, "transaction sets")?;
                            if seg.get(2).trim() != group_control.trim() {
                                return Err(seg.error(
                                    2,
                                    &format!(
                                        "control number {:?} does not match GS06 {group_control:?}",
                                        seg.get(2)
                                    ),
                                ));
                            }
                            i += 1;
                            break;
                        }
                        "IEA" => return Err(seg.fault("the functional group has no GE segment")),
                        other => {
                            return Err(seg.fault(format!("expected ST or GE, found {other}")));
                        }
                    }
                }
            }
            "IEA" => {
                count(seg, 1, groups, "functional groups")?;
                if seg.get(2).trim() != interchange_control.trim() {
                    return Err(seg.error(
                        2,
                        &format!(
                            "control number {:?} does not match ISA13 {interchange_control:?}",
                            seg.get(2)
                        ),
                    ));
                }
                return Ok(());
            }
            "TA1" => i += 1,
            other => return Err(seg.fault(format!("expected GS or IEA, found {other}"))),
        }
    }
    unreachable!("the interchange ends with IEA")
}

/// GS08 is the version, release and sub-release (6 digits) and an optional industry identifier
/// (`004010VICS`). Versions 003010 to 008xxx are read.
fn check_version(gs: &Segment, version: &str) -> Result<(), MediationError> {
    let digits = version
        .get(..6)
        .filter(|d| d.bytes().all(|b| b.is_ascii_digit()));
    match digits {
        Some(d) if ("003010"..="008999").contains(&d) => Ok(()),
        Some(d) => Err(gs.error(
            8,
            &format!("version {d} is outside 003010 to 008xxx, the versions this plugin reads"),
        )),
        None => Err(gs.error(
            8,
            &format!("{version:?} is not a version: six digits (version, release, sub-release) and an optional industry identifier, e.g. 004010 or 004010VICS"),
        )),
    }
}

/// The transaction set starting at `segments[start]` (an ST) and the index after its SE.
fn transaction<'a>(
    segments: &[Segment<'a>],
    start: usize,
) -> Result<(Transaction<'a>, usize), MediationError> {
    let st = &segments[start];
    st.required(1)?;
    let control = st.required(2)?;
    let end = segments[start + 1..]
        .iter()
        .position(|s| matches!(s.id, "SE" | "ST" | "GS" | "GE" | "ISA" | "IEA"))
        .map(|p| start + 1 + p)
        .filter(|&e| segments[e].id == "SE")
        .ok_or_else(|| {
            st.fault("the transaction set has no SE segment before the next envelope segment")
        })?;
    let se = &segments[end];
    count(se, 1, end - start + 1, "segments")?;
    if se.get(2).trim() != control.trim() {
        return Err(se.error(
            2,
            &format!(
                "control number {:?} does not match ST02 {control:?}",
                se.get(2)
            ),
        ));
    }
    Ok((
        Transaction {
            control,
            group_control: "",
            interchange_control: "",
            version: "",
            segments: segments[start + 1..end].to_vec(),
        },
        end + 1,
    ))
}

/// Check a count element against what was counted.
fn count(seg: &Segment, n: usize, counted: usize, what: &str) -> Result<(), MediationError> {
    let declared = seg.get(n);
    if declared.trim().parse::<usize>() != Ok(counted) {
        return Err(seg.error(
            n,
            &format!("says {declared:?} {what}, the envelope has {counted}"),
        ));
    }
    Ok(())
}
