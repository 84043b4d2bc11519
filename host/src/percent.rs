//! Percent-decoding (`%XX`), for URL query values and the `k=v` lists of OpenTelemetry's
//! environment variables. A `%` not followed by two hex digits stays as it is; bytes that do
//! not make UTF-8 become U+FFFD.

/// `text` with every `%XX` replaced by its byte.
pub fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%' && i + 2 < bytes.len())
            .then(|| std::str::from_utf8(&bytes[i + 1..i + 3]).ok())
            .flatten()
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        if let Some(b) = escaped {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_become_bytes_and_broken_ones_stay() {
        assert_eq!(super::decode("a%20b%C3%A9"), "a bé");
        assert_eq!(super::decode("100%"), "100%");
        assert_eq!(super::decode("%zz%4"), "%zz%4");
        assert_eq!(super::decode("%e2%82"), "\u{fffd}");
    }
}
