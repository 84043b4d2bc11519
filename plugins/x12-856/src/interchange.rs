//! An X12 interchange: separators from the ISA segment, segments numbered from 1, and the
//! envelope checks (ISA/IEA, GS/GE, ST/SE counts and control numbers).

use millrace_sdk::MediationError;

/// One segment: its 1-based number in the interchange, its id and its elements (element 1 first).
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
        if value.is_empty() {
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
}

/// A rejection at a segment as a whole.
pub fn at(segment: &Segment, what: impl std::fmt::Display) -> MediationError {
    MediationError::rejected(format!(
        "segment {} ({}): {what}",
        segment.number, segment.id
    ))
    .position(segment.number)
}

/// A transaction set (ST..SE), with its group's version.
pub struct Transaction<'a> {
    pub control: &'a str,
    pub version: &'a str,
    pub segments: Vec<Segment<'a>>,
}

/// The ISA segment is fixed-width: 106 characters including its terminator.
const ISA_LEN: usize = 106;

/// Split `text` into segments with the separators the ISA segment declares, check the
/// envelopes, and return the transaction sets.
pub fn parse(text: &str) -> Result<Vec<Transaction<'_>>, MediationError> {
    let start = text.find("ISA").ok_or_else(|| {
        MediationError::rejected("no ISA segment: not an X12 interchange").position(1)
    })?;
    if !text[..start].trim().is_empty() {
        return Err(
            MediationError::rejected("the interchange must start with the ISA segment").position(1),
        );
    }
    let text = &text[start..];
    if text.len() < ISA_LEN || !text.is_char_boundary(ISA_LEN) {
        return Err(MediationError::rejected(
            "segment 1 (ISA): shorter than the fixed 106 characters",
        )
        .position(1));
    }
    let bytes = text.as_bytes();
    let (element_sep, component_sep, terminator) =
        (bytes[3] as char, bytes[104] as char, bytes[105] as char);
    if element_sep.is_alphanumeric()
        || terminator.is_alphanumeric()
        || element_sep == terminator
        || component_sep == element_sep
    {
        return Err(MediationError::rejected(format!(
            "segment 1 (ISA): separators element {element_sep:?}, component {component_sep:?}, segment {terminator:?} are not usable"
        ))
        .position(1));
    }
    let segments: Vec<Segment> = text
        .split(terminator)
        .map(|s| s.trim_start_matches(['\r', '\n']))
        .filter(|s| !s.trim().is_empty())
        .enumerate()
        .map(|(i, s)| {
            let mut parts = s.split(element_sep);
            let id = parts.next().unwrap_or("").trim();
            Segment {
                number: i as u32 + 1,
                id,
                elements: parts.collect(),
            }
        })
        .collect();
    let isa = &segments[0];
    if isa.id != "ISA" || isa.elements.len() != 16 {
        return Err(at(
            isa,
            format!("ISA must have 16 elements, has {}", isa.elements.len()),
        ));
    }
    let mut transactions = Vec::new();
    let mut groups = 0;
    let mut i = 1;
    while i < segments.len() {
        let seg = &segments[i];
        match seg.id {
            "GS" => {
                groups += 1;
                let version = seg.required(8)?;
                if !(version.starts_with("004010") || version.starts_with("005010")) {
                    return Err(seg.error(
                        8,
                        &format!("version {version:?} is not supported (004010, 005010)"),
                    ));
                }
                let group_control = seg.required(6)?;
                let mut sets = 0;
                i += 1;
                loop {
                    let Some(seg) = segments.get(i) else {
                        return Err(at(
                            &segments[segments.len() - 1],
                            "the functional group has no GE segment",
                        ));
                    };
                    match seg.id {
                        "ST" => {
                            sets += 1;
                            let (transaction, next) = transaction(&segments, i, version)?;
                            transactions.push(transaction);
                            i = next;
                        }
                        "GE" => {
                            count(seg, 1, sets, "transaction sets")?;
                            if seg.get(2) != group_control {
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
                        other => return Err(at(seg, format!("expected ST or GE, found {other}"))),
                    }
                }
            }
            "IEA" => {
                count(seg, 1, groups, "functional groups")?;
                if seg.get(2) != isa.get(13) {
                    return Err(seg.error(
                        2,
                        &format!(
                            "control number {:?} does not match ISA13 {:?}",
                            seg.get(2),
                            isa.get(13)
                        ),
                    ));
                }
                if let Some(extra) = segments.get(i + 1) {
                    return Err(at(extra, "segment after IEA"));
                }
                return Ok(transactions);
            }
            other => return Err(at(seg, format!("expected GS or IEA, found {other}"))),
        }
    }
    Err(at(
        &segments[segments.len() - 1],
        "the interchange has no IEA segment",
    ))
}

/// The transaction set starting at `segments[start]` (an ST) and the index after its SE.
fn transaction<'a>(
    segments: &[Segment<'a>],
    start: usize,
    version: &'a str,
) -> Result<(Transaction<'a>, usize), MediationError> {
    let st = &segments[start];
    if st.get(1) != "856" {
        return Err(st.error(
            1,
            &format!("transaction set {:?} is not an 856 ship notice", st.get(1)),
        ));
    }
    let control = st.required(2)?;
    let end = segments[start..]
        .iter()
        .position(|s| s.id == "SE")
        .map(|p| start + p)
        .ok_or_else(|| at(st, "the transaction set has no SE segment"))?;
    if let Some(nested) = segments[start + 1..end]
        .iter()
        .find(|s| matches!(s.id, "ST" | "GS" | "GE" | "ISA" | "IEA"))
    {
        return Err(at(
            nested,
            "envelope segment inside a transaction set (missing SE?)",
        ));
    }
    let se = &segments[end];
    count(se, 1, end - start + 1, "segments")?;
    if se.get(2) != control {
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
            version,
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
