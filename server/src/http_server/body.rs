//! Reading a request body as its head framed it (a length, or chunked), within a size
//! limit and a deadline, from the bytes already buffered and then the socket. Whatever
//! is read past the body stays buffered: it is the next request of a pipelining client.

use super::transport::Transport;
use std::io::{self, Read};
use std::time::Instant;

/// A chunk-size line or a trailer line longer than this is malformed.
const MAX_LINE: usize = 4096;
/// Trailer lines after the last chunk (ignored, but read) at most.
const MAX_TRAILERS: usize = 32;

#[derive(Debug, PartialEq, Eq)]
pub enum BodyError {
    /// More than the limit (413).
    TooLarge { limit: usize },
    /// Bad chunk framing (400).
    Malformed(String),
    /// The deadline passed, or the client closed before the end (the connection is dropped).
    Incomplete(String),
}

/// Bytes of one connection: a buffer, and the source it is filled from.
pub struct Incoming<S> {
    pub buf: Vec<u8>,
    pub pos: usize,
    pub source: S,
}

impl<S: Read> Incoming<S> {
    /// What was read but not used: the start of the next request.
    pub fn into_leftover(mut self) -> Vec<u8> {
        self.buf.drain(..self.pos);
        self.buf
    }

    fn available(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Reads more from the source; an error if it has ended.
    fn fill(&mut self) -> Result<(), BodyError> {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        let start = self.buf.len();
        self.buf.resize(start + 16 * 1024, 0);
        let read = loop {
            match self.source.read(&mut self.buf[start..]) {
                Ok(n) => break Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => break Err(e),
            }
        };
        match read {
            Ok(0) => {
                self.buf.truncate(start);
                Err(BodyError::Incomplete("the client closed the connection within the body".into()))
            }
            Ok(n) => {
                self.buf.truncate(start + n);
                Ok(())
            }
            Err(e) => {
                self.buf.truncate(start);
                Err(BodyError::Incomplete(format!("reading the body: {e}")))
            }
        }
    }

    fn take_exact(&mut self, n: usize, out: &mut Vec<u8>) -> Result<(), BodyError> {
        let mut left = n;
        while left > 0 {
            if self.available().is_empty() {
                self.fill()?;
            }
            let step = left.min(self.available().len());
            out.extend_from_slice(&self.buf[self.pos..self.pos + step]);
            self.pos += step;
            left -= step;
        }
        Ok(())
    }

    /// One CRLF-ended line, without its ending.
    fn line(&mut self) -> Result<Vec<u8>, BodyError> {
        loop {
            if let Some(end) = self.available().iter().position(|&b| b == b'\n') {
                let mut line = self.buf[self.pos..self.pos + end].to_vec();
                self.pos += end + 1;
                if line.pop() != Some(b'\r') {
                    return Err(BodyError::Malformed("a chunk line does not end in CRLF".into()));
                }
                return Ok(line);
            }
            if self.available().len() > MAX_LINE {
                return Err(BodyError::Malformed(format!("a chunk line longer than {MAX_LINE} bytes")));
            }
            self.fill()?;
        }
    }

    /// A body of `length` bytes.
    pub fn read_length(&mut self, length: u64, limit: usize) -> Result<Vec<u8>, BodyError> {
        if length > limit as u64 {
            return Err(BodyError::TooLarge { limit });
        }
        let mut body = Vec::with_capacity(length as usize);
        self.take_exact(length as usize, &mut body)?;
        Ok(body)
    }

    /// A chunked body (RFC 9112 §7.1), extensions and trailers read and ignored.
    pub fn read_chunked(&mut self, limit: usize) -> Result<Vec<u8>, BodyError> {
        let mut body = Vec::new();
        loop {
            let line = self.line()?;
            let size_text = line.split(|&b| b == b';').next().unwrap_or_default();
            let size_text = std::str::from_utf8(size_text).unwrap_or("").trim_matches([' ', '\t']);
            if size_text.is_empty() || size_text.len() > 16 || !size_text.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(BodyError::Malformed(format!("chunk size {:?}", String::from_utf8_lossy(&line))));
            }
            let size = u64::from_str_radix(size_text, 16).map_err(|e| BodyError::Malformed(e.to_string()))?;
            if size == 0 {
                break;
            }
            // `limit - len` cannot underflow (the body never passes the limit), while the
            // sum `len + size` could overflow: a 16-hex-digit size is 2^64 - 1.
            if size > limit.saturating_sub(body.len()) as u64 {
                return Err(BodyError::TooLarge { limit });
            }
            self.take_exact(size as usize, &mut body)?;
            if !self.line()?.is_empty() {
                return Err(BodyError::Malformed("chunk data longer than its size".into()));
            }
        }
        for _ in 0..=MAX_TRAILERS {
            if self.line()?.is_empty() {
                return Ok(body);
            }
        }
        Err(BodyError::Malformed(format!("more than {MAX_TRAILERS} trailer lines")))
    }
}

/// A connection whose every read gives up at one deadline: a body trickled a byte at a
/// time (or a TLS record trickled a byte at a time) still ends when its time is up.
pub(super) struct DeadlineStream<'a> {
    pub transport: &'a mut Transport,
    pub deadline: Instant,
}

impl Read for DeadlineStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.transport.read_before(buf, self.deadline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source that hands out its bytes a few at a time, like a slow network.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.0.len().min(self.1).min(buf.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    fn incoming<'a>(buffered: &[u8], rest: &'a [u8]) -> Incoming<Trickle<'a>> {
        Incoming { buf: buffered.to_vec(), pos: 0, source: Trickle(rest, 3) }
    }

    #[test]
    fn a_length_body_comes_from_the_buffer_then_the_source_and_the_rest_is_kept() {
        let mut input = incoming(b"hel", b"lo worldGET / HTTP/1.1\r\n");
        assert_eq!(input.read_length(11, 100).unwrap(), b"hello world");
        let unread = input.source.0;
        assert_eq!([input.into_leftover(), unread.to_vec()].concat(), b"GET / HTTP/1.1\r\n", "the next request stays");
        assert_eq!(incoming(b"", b"").read_length(5, 4), Err(BodyError::TooLarge { limit: 4 }));
        assert!(matches!(incoming(b"abc", b"").read_length(5, 10), Err(BodyError::Incomplete(_))));
    }

    #[test]
    fn chunked_bodies_with_extensions_and_trailers() {
        let wire = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: y\r\n\r\nNEXT";
        let mut input = incoming(b"", wire);
        assert_eq!(input.read_chunked(100).unwrap(), b"hello world");
        let unread = input.source.0;
        assert_eq!([input.into_leftover(), unread.to_vec()].concat(), b"NEXT");
        assert_eq!(incoming(wire, b"").read_chunked(10), Err(BodyError::TooLarge { limit: 10 }));
    }

    #[test]
    fn bad_chunk_framing_is_malformed() {
        for wire in [
            &b"zz\r\nhello\r\n0\r\n\r\n"[..],
            b"\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhello!!\r\n0\r\n\r\n",
            b"fffffffffffffffff\r\n",
            b"-5\r\nhello\r\n0\r\n\r\n",
        ] {
            assert!(matches!(incoming(wire, b"").read_chunked(1 << 20), Err(BodyError::Malformed(_))), "{wire:?}");
        }
        let endless_line = vec![b'1'; MAX_LINE + 10];
        assert!(matches!(incoming(&endless_line, b"").read_chunked(1 << 20), Err(BodyError::Malformed(_))));
        let endless_trailers = format!("0\r\n{}", "T: v\r\n".repeat(MAX_TRAILERS + 2));
        assert!(matches!(incoming(endless_trailers.as_bytes(), b"").read_chunked(10), Err(BodyError::Malformed(_))));
        // Found by attack: a size of 2^64 - 1 after a first chunk overflowed the sum.
        let overflow = b"1\r\na\r\nffffffffffffffff\r\n";
        assert_eq!(incoming(overflow, b"").read_chunked(1 << 20), Err(BodyError::TooLarge { limit: 1 << 20 }));
        // A huge declared chunk is refused by the limit before anything is allocated.
        assert_eq!(
            incoming(b"ffffffffffff\r\n", b"").read_chunked(1 << 20),
            Err(BodyError::TooLarge { limit: 1 << 20 })
        );
    }
}
