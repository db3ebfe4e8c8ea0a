//! SHA-256 helpers shared by the configuration archive and the binary cache: parsing the expected
//! hex digest the platform sends, and hashing bytes as they pass through a reader or writer.

use std::io::{self, Write};

use sha2::{Digest, Sha256};

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The digest in lower case if `given` is 64 hexadecimal digits (surrounding whitespace ignored).
pub(crate) fn parse_sha256(given: &str) -> Option<String> {
    let given = given.trim();
    (given.len() == 64 && given.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| given.to_ascii_lowercase())
}

/// Hashes everything written through it.
pub(crate) struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
    limit: u64,
}

impl<W: Write> HashingWriter<W> {
    /// Passes writes to `inner`; a write beyond `limit` bytes in total fails.
    pub(crate) fn new(inner: W, limit: u64) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            written: 0,
            limit,
        }
    }

    /// Whether the last failure was the size limit.
    pub(crate) fn over_limit(&self) -> bool {
        self.written > self.limit
    }

    /// The inner writer and the hex digest of what passed through.
    pub(crate) fn finish(self) -> (W, String) {
        (self.inner, hex(&self.hasher.finalize()))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written.saturating_add(buf.len() as u64) > self.limit {
            self.written = self.limit.saturating_add(1);
            return Err(io::Error::other("size limit exceeded"));
        }
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// SHA-256 of everything `reader` yields, in hex.
#[cfg(test)]
pub(crate) fn sha256_of(reader: &mut dyn std::io::Read) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok(hex(&hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_hashes() {
        let empty = "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855";
        assert_eq!(
            parse_sha256(empty).as_deref(),
            Some(&*empty.to_ascii_lowercase())
        );
        assert_eq!(parse_sha256("abc"), None);
        assert_eq!(parse_sha256(&"g".repeat(64)), None);
        assert_eq!(
            sha256_of(&mut &b""[..]).expect("hash"),
            empty.to_ascii_lowercase()
        );
        let mut w = HashingWriter::new(Vec::new(), 3);
        w.write_all(b"abc").expect("within limit");
        assert!(w.write_all(b"d").is_err());
        assert!(w.over_limit());
    }
}
