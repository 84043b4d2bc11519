//! Parsing helpers that legacy formats keep needing: exact decimals, UTC offsets, and text that
//! may not be UTF-8.

/// A decimal number: optional sign, digits, and either one `separator` followed by digits or,
/// when `implied_decimals` > 0, no separator and that many implied decimal places
/// (`"0012500"` with 3 → 12.5). At most 15 significant digits, so the result is the exact
/// decimal as an `f64` (and prints back as written). `None` for anything else.
pub fn decimal(text: &str, separator: char, implied_decimals: u32) -> Option<f64> {
    let (negative, digits) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let (int_part, frac_part) = match digits.split_once(separator) {
        Some(parts) if implied_decimals == 0 => parts,
        Some(_) => return None,
        None => (digits, ""),
    };
    let all = || int_part.bytes().chain(frac_part.bytes());
    if (int_part.is_empty() && frac_part.is_empty()) || !all().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if all().skip_while(|b| *b == b'0').count() > 15 {
        return None;
    }
    let mantissa = format!("{int_part}{frac_part}").parse::<u64>().ok()? as f64;
    // An integer below 2^53 divided by a power of ten is the nearest f64 to the decimal.
    let value = mantissa / 10f64.powi(implied_decimals as i32 + frac_part.len() as i32);
    Some(if negative { -value } else { value })
}

/// `+01:00`, `-05:30` or `Z` → seconds east of UTC; the error says what is expected.
pub fn utc_offset(text: &str) -> Result<i64, String> {
    if text == "Z" {
        return Ok(0);
    }
    let bad = || format!("utc_offset {text:?} must look like +01:00, -05:30 or Z");
    let (sign, rest) = match text.as_bytes().first() {
        Some(b'+') => (1, &text[1..]),
        Some(b'-') => (-1, &text[1..]),
        _ => return Err(bad()),
    };
    let (h, m) = rest.split_once(':').ok_or_else(bad)?;
    let (h, m): (i64, i64) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 14 || m > 59 {
        return Err(bad());
    }
    Ok(sign * (h * 3600 + m * 60))
}

/// The bytes as text: UTF-8 when they are valid UTF-8, else ISO 8859-1 (every byte the character
/// of the same number), so legacy files with single-byte separators or accents still read.
pub fn text_or_latin1(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(_) => std::borrow::Cow::Owned(latin1(bytes)),
    }
}

/// ISO 8859-1 bytes as text.
pub fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| b as char).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_exact_with_implied_places_or_a_separator() {
        let cases = [
            ("0000012500", '.', 3, Some(12.5)),
            ("000000001", '.', 3, Some(0.001)),
            ("-12.75", '.', 0, Some(-12.75)),
            ("12,5", ',', 0, Some(12.5)),
            ("+7", '.', 0, Some(7.0)),
            (".5", '.', 0, Some(0.5)),
            ("12.5", '.', 3, None),
            ("12,5", '.', 0, None),
            ("1.000,5", ',', 0, None),
            ("1 2", '.', 0, None),
            ("-", '.', 0, None),
            ("", '.', 0, None),
            ("1234567890123456", '.', 0, None),
            ("0000000000000000000001", '.', 0, Some(1.0)),
        ];
        for (text, sep, implied, expected) in cases {
            assert_eq!(
                decimal(text, sep, implied),
                expected,
                "{text:?} sep {sep:?} implied {implied}"
            );
        }
    }

    #[test]
    fn offsets() {
        assert_eq!(utc_offset("+01:00"), Ok(3600));
        assert_eq!(utc_offset("-05:30"), Ok(-19800));
        assert_eq!(utc_offset("Z"), Ok(0));
        assert!(utc_offset("CET").unwrap_err().contains("must look like"));
        assert!(utc_offset("+15:00").is_err());
    }
}
