//! The two readers around the download: the compressed bytes are hashed and counted as they arrive
//! ([`HashingSource`]), and the decompressed tar stream may only deliver what the extractor has
//! granted ([`Budgeted`]): the accepted members' data plus a fixed allowance for the next headers.
//! That bounds what the tar parser can buffer for a GNU long name or PAX record claiming gigabytes,
//! and what a gzip bomb can make us inflate. Both record why they failed in a shared [`Meter`], so
//! the extractor can tell a network failure or a limit from a corrupt archive.

use std::cell::{Cell, RefCell};
use std::io::{self, Read};
use std::rc::Rc;

use sha2::{Digest, Sha256};

/// Why a reader stopped.
#[derive(Debug)]
pub(super) enum Fault {
    /// The download itself failed.
    Source(io::Error),
    /// More compressed bytes than allowed.
    CompressedTooLarge { limit: u64 },
    /// More decompressed bytes than granted.
    OverBudget,
}

/// State shared by the readers and the extractor (single thread).
pub(super) struct Meter {
    consumed: Cell<u64>,
    allowance: Cell<u64>,
    fault: RefCell<Option<Fault>>,
}

impl Meter {
    pub(super) fn new(initial_allowance: u64) -> Rc<Meter> {
        Rc::new(Meter {
            consumed: Cell::new(0),
            allowance: Cell::new(initial_allowance),
            fault: RefCell::new(None),
        })
    }

    /// Allows `bytes` more decompressed bytes from the current position on (replacing, not adding
    /// to, what was left: unused allowance never accumulates).
    pub(super) fn grant(&self, bytes: u64) {
        self.allowance
            .set(self.consumed.get().saturating_add(bytes));
    }

    /// The recorded fault, if any (taken: reported once).
    pub(super) fn take_fault(&self) -> Option<Fault> {
        self.fault.borrow_mut().take()
    }

    fn fail(&self, fault: Fault, what: &str) -> io::Error {
        *self.fault.borrow_mut() = Some(fault);
        io::Error::other(what.to_string())
    }
}

/// Hashes and counts the compressed download.
pub(super) struct HashingSource<'a> {
    inner: &'a mut dyn Read,
    hasher: Sha256,
    read: u64,
    limit: u64,
    meter: Rc<Meter>,
}

impl<'a> HashingSource<'a> {
    pub(super) fn new(inner: &'a mut dyn Read, limit: u64, meter: Rc<Meter>) -> Self {
        HashingSource {
            inner,
            hasher: Sha256::new(),
            read: 0,
            limit,
            meter,
        }
    }

    /// The hex SHA-256 of everything read.
    pub(super) fn finish(self) -> String {
        crate::worker::checksum::hex(&self.hasher.finalize())
    }
}

impl Read for HashingSource<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = loop {
            match self.inner.read(buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.meter.fail(Fault::Source(e), "download failed")),
            }
        };
        self.read += n as u64;
        if self.read > self.limit {
            return Err(self.meter.fail(
                Fault::CompressedTooLarge { limit: self.limit },
                "download too large",
            ));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Limits the decompressed stream to what the extractor granted.
pub(super) struct Budgeted<R> {
    inner: R,
    meter: Rc<Meter>,
}

impl<R: Read> Budgeted<R> {
    pub(super) fn new(inner: R, meter: Rc<Meter>) -> Self {
        Budgeted { inner, meter }
    }
}

impl<R: Read> Read for Budgeted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let left = self
            .meter
            .allowance
            .get()
            .saturating_sub(self.meter.consumed.get());
        if left == 0 {
            // The end of the stream is fine; anything more is over budget.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(self.meter.fail(Fault::OverBudget, "over budget")),
            };
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.meter
            .consumed
            .set(self.meter.consumed.get() + n as u64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_allows_exactly_what_was_granted() {
        let meter = Meter::new(4);
        let data = [7u8; 10];
        let mut r = Budgeted::new(&data[..], meter.clone());
        let mut buf = [0u8; 16];
        assert_eq!(r.read(&mut buf).expect("granted"), 4);
        assert!(r.read(&mut buf).is_err());
        assert!(matches!(meter.take_fault(), Some(Fault::OverBudget)));
        meter.grant(100);
        assert_eq!(
            r.read(&mut buf).expect("granted"),
            5,
            "one byte went to the probe"
        );

        let meter = Meter::new(4);
        let mut r = Budgeted::new(&data[..4], meter.clone());
        assert_eq!(r.read(&mut buf).expect("granted"), 4);
        assert_eq!(r.read(&mut buf).expect("end of stream"), 0);
        assert!(meter.take_fault().is_none());
    }

    #[test]
    fn source_counts_and_hashes() {
        let meter = Meter::new(0);
        let mut data: &[u8] = b"abc";
        let mut s = HashingSource::new(&mut data, 2, meter.clone());
        let mut buf = [0u8; 16];
        assert!(s.read(&mut buf).is_err());
        assert!(matches!(
            meter.take_fault(),
            Some(Fault::CompressedTooLarge { limit: 2 })
        ));

        let mut data: &[u8] = b"abc";
        let mut s = HashingSource::new(&mut data, 3, meter);
        assert_eq!(s.read(&mut buf).expect("read"), 3);
        assert_eq!(
            s.finish(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
