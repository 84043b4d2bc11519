//! Flat IDoc files: a control record (`EDI_DC40`, or `EDI_DC40_U` from Unicode systems) per
//! IDoc, then its data records. Control record: TABNAM in columns 1–10, DOCNUM 14–29, MESTYP
//! 100–129. Data record: SEGNAM 1–30, DOCNUM 34–49, SDATA from column 64. Columns count
//! characters; records may have any length (senders trim trailing blanks); `\n` or `\r\n`.

use crate::{Content, Idoc, Segment, column, reject};
use millrace_sdk::MediationError;

const TABNAM: (usize, usize) = (1, 10);
const DOCNUM_CONTROL: (usize, usize) = (14, 16);
const MESTYP: (usize, usize) = (100, 30);
const SEGNAM: (usize, usize) = (1, 30);
const DOCNUM_DATA: (usize, usize) = (34, 16);
const SDATA_START: usize = 64;

/// The IDocs of a flat file.
pub fn read(text: &str) -> Result<Vec<Idoc<'_>>, MediationError> {
    let mut idocs: Vec<Idoc> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line_no = index as u32 + 1;
        if line.trim().is_empty() {
            continue;
        }
        if column(line, TABNAM).starts_with("EDI_DC40") {
            idocs.push(Idoc {
                docnum: column(line, DOCNUM_CONTROL)
                    .trim_start_matches('0')
                    .to_string(),
                mestyp: column(line, MESTYP).to_string(),
                control: Segment {
                    name: column(line, TABNAM).to_string(),
                    line: line_no,
                    content: Content::Flat(line),
                },
                segments: Vec::new(),
            });
            continue;
        }
        // SAP segment names have no blanks: the first word of SEGNAM, never what follows it.
        let segment = column(line, SEGNAM)
            .split_whitespace()
            .next()
            .unwrap_or_default();
        let Some(idoc) = idocs.last_mut() else {
            return Err(reject(
                line_no,
                segment,
                "TABNAM",
                "a data record before any EDI_DC40 control record".into(),
            ));
        };
        let own = column(line, DOCNUM_DATA).trim_start_matches('0');
        if own != idoc.docnum {
            return Err(reject(
                line_no,
                segment,
                "DOCNUM",
                format!(
                    "IDoc number {own:?} differs from the control record's {:?}",
                    idoc.docnum
                ),
            ));
        }
        let sdata = line
            .char_indices()
            .nth(SDATA_START - 1)
            .map_or("", |(i, _)| &line[i..]);
        idoc.segments.push(Segment {
            name: segment.to_string(),
            line: line_no,
            content: Content::Flat(sdata),
        });
    }
    if idocs.is_empty() {
        return Err(MediationError::rejected(
            "no EDI_DC40 control record: not an IDoc flat file (an XML IDoc starts with <)",
        )
        .field("EDI_DC40")
        .position(1));
    }
    Ok(idocs)
}
