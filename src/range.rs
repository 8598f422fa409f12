//! `Range: bytes=...` (RFC 9110 §14) for a single range. peerd serves one range per response;
//! a multi-range request is answered with the whole body (RFC 9110 lets a server ignore Range).

/// What a client asked for, before the size of the content is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeSpec {
    /// `bytes=first-` or `bytes=first-last`
    From { first: u64, last: Option<u64> },
    /// `bytes=-n`: the last n bytes
    Suffix(u64),
}

/// A resolved, satisfiable range: `start..=end` within content of `size` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RangeError {
    #[error("malformed Range header {0:?}")]
    Malformed(String),
    #[error("range not satisfiable for content of {size} bytes")]
    Unsatisfiable { size: u64 },
}

/// Parse a Range header value. `Ok(None)` means "serve the whole body": another unit than
/// bytes, or several ranges. A syntactically broken bytes range is an error (answered 416).
pub fn parse(value: &str) -> Result<Option<RangeSpec>, RangeError> {
    let value = value.trim();
    let Some((unit, set)) = value.split_once('=') else {
        return Err(RangeError::Malformed(value.into()));
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return Ok(None);
    }
    if set.contains(',') {
        return Ok(None);
    }
    let malformed = || RangeError::Malformed(value.into());
    let num = |s: &str| -> Result<u64, RangeError> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(malformed());
        }
        s.parse().map_err(|_| malformed())
    };
    let (first, last) = set.split_once('-').ok_or_else(malformed)?;
    if first.trim().is_empty() {
        return Ok(Some(RangeSpec::Suffix(num(last)?)));
    }
    let first = num(first)?;
    let last = if last.trim().is_empty() { None } else { Some(num(last)?) };
    if matches!(last, Some(l) if l < first) {
        return Err(malformed());
    }
    Ok(Some(RangeSpec::From { first, last }))
}

impl RangeSpec {
    /// Resolve against the content size (RFC 9110 §14.1.2: `last` is clamped to the end; a
    /// suffix longer than the content means all of it; a zero suffix or a start at or past the
    /// end cannot be satisfied).
    pub fn resolve(self, size: u64) -> Result<ByteRange, RangeError> {
        let unsat = RangeError::Unsatisfiable { size };
        match self {
            RangeSpec::From { first, last } => {
                if first >= size {
                    return Err(unsat);
                }
                let end = last.map_or(size - 1, |l| l.min(size - 1));
                Ok(ByteRange { start: first, end })
            }
            RangeSpec::Suffix(n) => {
                if n == 0 || size == 0 {
                    return Err(unsat);
                }
                Ok(ByteRange { start: size - n.min(size), end: size - 1 })
            }
        }
    }
}

impl ByteRange {
    /// Never zero: a resolved range holds at least one byte, so there is no `is_empty`.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }
    /// `Content-Range` value for a 206.
    pub fn content_range(&self, size: u64) -> String {
        format!("bytes {}-{}/{}", self.start, self.end, size)
    }
    /// Absolute `Range` header value to ask an upstream for exactly this range.
    pub fn header(&self) -> String {
        format!("bytes={}-{}", self.start, self.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str, size: u64) -> Result<Option<ByteRange>, RangeError> {
        parse(s)?.map(|spec| spec.resolve(size)).transpose()
    }

    #[test]
    fn satisfiable_ranges() {
        assert_eq!(r("bytes=0-0", 10), Ok(Some(ByteRange { start: 0, end: 0 })));
        assert_eq!(r("bytes=2-5", 10), Ok(Some(ByteRange { start: 2, end: 5 })));
        assert_eq!(r("bytes=2-", 10), Ok(Some(ByteRange { start: 2, end: 9 })));
        assert_eq!(r("bytes=5-100", 10), Ok(Some(ByteRange { start: 5, end: 9 })));
        assert_eq!(r("bytes=-3", 10), Ok(Some(ByteRange { start: 7, end: 9 })));
        assert_eq!(r("bytes=-30", 10), Ok(Some(ByteRange { start: 0, end: 9 })));
        assert_eq!(r(" Bytes = 1 - 2 ", 10), Ok(Some(ByteRange { start: 1, end: 2 })));
        assert_eq!(ByteRange { start: 7, end: 9 }.content_range(10), "bytes 7-9/10");
        assert_eq!(ByteRange { start: 7, end: 9 }.len(), 3);
    }

    #[test]
    fn whole_body_cases() {
        assert_eq!(r("items=0-5", 10), Ok(None));
        assert_eq!(r("bytes=0-1,4-5", 10), Ok(None));
    }

    #[test]
    fn errors() {
        for bad in [
            "bytes",
            "bytes=",
            "bytes=-",
            "bytes=a-b",
            "bytes=5-2",
            "bytes=1-2-3",
            "bytes=+1-2",
            "bytes=99999999999999999999-",
        ] {
            assert!(matches!(r(bad, 10), Err(RangeError::Malformed(_))), "{bad}");
        }
        assert_eq!(r("bytes=10-", 10), Err(RangeError::Unsatisfiable { size: 10 }));
        assert_eq!(r("bytes=-0", 10), Err(RangeError::Unsatisfiable { size: 10 }));
        assert_eq!(r("bytes=0-", 0), Err(RangeError::Unsatisfiable { size: 0 }));
        assert_eq!(r("bytes=-1", 0), Err(RangeError::Unsatisfiable { size: 0 }));
    }
}
