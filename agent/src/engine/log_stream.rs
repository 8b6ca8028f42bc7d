//! A container's log tail as Docker sends it (`GET /containers/{id}/logs`), made into
//! lines. Without a TTY, stdout and stderr come multiplexed in frames: an 8-byte header
//! (stream 1 or 2, three zero bytes, the payload length big-endian) before each entry;
//! with a TTY, as raw text. With `timestamps=1` every entry starts with its RFC 3339
//! time and a space. Pure and bounded: bytes are fed in as they are read, a line is cut
//! at `MAX_LINE_BYTES` whatever a frame header claims, and only the newest lines within
//! a line count and a byte budget are kept, so the tail end (the crash) is never lost.

use std::collections::VecDeque;

/// The Content-Type of a multiplexed stream (API 1.42 and later). Older engines call
/// every log stream `application/vnd.docker.raw-stream`, so the first byte decides then.
const MULTIPLEXED_CONTENT_TYPE: &str = "application/vnd.docker.multiplexed-stream";
/// Bytes of one line kept; the rest of a longer line is dropped and `…` marks the cut.
pub const MAX_LINE_BYTES: usize = 4096;
const FRAME_HEADER_BYTES: usize = 8;
const STDERR: u8 = 2;

/// One line a container wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub stderr: bool,
    /// When Docker received it, in ms since the epoch; a line without a timestamp of its
    /// own (a TTY entry's second line) has its entry's, `None` before the first.
    pub timestamp_ms: Option<u64>,
    /// Without the timestamp and the line end.
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// Nothing read yet and no Content-Type that says.
    Undecided,
    Multiplexed,
    Raw,
    /// A frame header that is none: the rest is ignored.
    Broken,
}

/// Turns the bytes of a log stream, fed in any pieces, into its last lines.
#[derive(Debug)]
pub struct LogTail {
    framing: Framing,
    header: [u8; FRAME_HEADER_BYTES],
    header_len: usize,
    /// Payload bytes still to come in the current frame.
    frame_left: usize,
    stderr: bool,
    /// The line being read, at most `MAX_LINE_BYTES`.
    line: Vec<u8>,
    line_cut: bool,
    last_timestamp_ms: Option<u64>,
    lines: VecDeque<LogLine>,
    kept_bytes: usize,
    max_lines: usize,
    max_bytes: usize,
}

impl LogTail {
    /// Keeps the last `max_lines` lines, fewer if their text exceeds `max_bytes`.
    /// `content_type`: the reply's, which says whether it is multiplexed (API ≥ 1.42).
    pub fn new(content_type: Option<&str>, max_lines: usize, max_bytes: usize) -> LogTail {
        let multiplexed = content_type.is_some_and(|t| t.trim().starts_with(MULTIPLEXED_CONTENT_TYPE));
        LogTail {
            framing: if multiplexed { Framing::Multiplexed } else { Framing::Undecided },
            header: [0; FRAME_HEADER_BYTES],
            header_len: 0,
            frame_left: 0,
            stderr: false,
            line: Vec::new(),
            line_cut: false,
            last_timestamp_ms: None,
            lines: VecDeque::new(),
            kept_bytes: 0,
            max_lines,
            max_bytes,
        }
    }

    /// Feeds the next bytes of the stream.
    pub fn push(&mut self, mut bytes: &[u8]) {
        if self.framing == Framing::Undecided {
            let Some(&first) = bytes.first() else { return };
            // A frame starts with its stream (0, 1 or 2); text with `timestamps=1` with a digit.
            self.framing = if first <= STDERR { Framing::Multiplexed } else { Framing::Raw };
        }
        match self.framing {
            Framing::Raw => self.text(bytes),
            Framing::Multiplexed => {
                while !bytes.is_empty() {
                    if self.frame_left == 0 {
                        let take = (FRAME_HEADER_BYTES - self.header_len).min(bytes.len());
                        self.header[self.header_len..self.header_len + take].copy_from_slice(&bytes[..take]);
                        self.header_len += take;
                        bytes = &bytes[take..];
                        if self.header_len == FRAME_HEADER_BYTES {
                            self.header_len = 0;
                            if !self.start_frame() {
                                return;
                            }
                        }
                        continue;
                    }
                    let take = self.frame_left.min(bytes.len());
                    self.text(&bytes[..take]);
                    self.frame_left -= take;
                    bytes = &bytes[take..];
                    if self.frame_left == 0 {
                        // A frame is one entry: its end ends a line (Docker's 16 KiB pieces too).
                        self.end_line();
                    }
                }
            }
            Framing::Undecided | Framing::Broken => {}
        }
    }

    /// The lines kept, oldest first. A line cut short by the end of the stream (a
    /// truncated frame) is kept as far as it came; a partial frame header is dropped.
    pub fn finish(mut self) -> Vec<LogLine> {
        self.end_line();
        self.lines.into()
    }

    /// Reads the complete header in `self.header`; false if it is not a frame header.
    fn start_frame(&mut self) -> bool {
        let [stream, z1, z2, z3, size @ ..] = self.header;
        if stream > STDERR || [z1, z2, z3] != [0, 0, 0] {
            self.framing = Framing::Broken;
            return false;
        }
        self.stderr = stream == STDERR;
        // Never allocated: a frame of any claimed size streams through `text`.
        self.frame_left = u32::from_be_bytes(size) as usize;
        true
    }

    fn text(&mut self, bytes: &[u8]) {
        let mut pieces = bytes.split(|&b| b == b'\n').peekable();
        while let Some(piece) = pieces.next() {
            let room = MAX_LINE_BYTES - self.line.len();
            if piece.len() > room {
                self.line_cut = true;
            }
            self.line.extend_from_slice(&piece[..piece.len().min(room)]);
            if pieces.peek().is_some() {
                self.end_line();
            }
        }
    }

    fn end_line(&mut self) {
        if self.line.is_empty() {
            self.line_cut = false;
            return;
        }
        let raw = String::from_utf8_lossy(&self.line);
        let raw = raw.strip_suffix('\r').unwrap_or(&raw);
        let (timestamp_ms, text) = match raw.split_once(' ').and_then(|(t, rest)| Some((timestamp_ms(t)?, rest))) {
            Some((at, rest)) => (Some(at), rest),
            None => (self.last_timestamp_ms, raw),
        };
        let mut text = text.to_string();
        if self.line_cut {
            text.push('…');
        }
        self.last_timestamp_ms = timestamp_ms;
        self.kept_bytes += text.len();
        self.lines.push_back(LogLine { stderr: self.stderr, timestamp_ms, text });
        while self.lines.len() > self.max_lines || (self.kept_bytes > self.max_bytes && !self.lines.is_empty()) {
            let dropped = self.lines.pop_front().map_or(0, |l| l.text.len());
            self.kept_bytes -= dropped;
        }
        self.line.clear();
        self.line_cut = false;
    }
}

/// `2024-01-02T03:04:05.123456789Z` (or with `±hh:mm`) in ms since the epoch.
pub(super) fn timestamp_ms(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let number = |from: usize, to: usize| -> Option<i64> {
        let digits = b.get(from..to)?;
        digits.iter().all(u8::is_ascii_digit).then(|| digits.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let (year, month, day) = (number(0, 4)?, number(5, 7)?, number(8, 10)?);
    let (hour, minute, second) = (number(11, 13)?, number(14, 16)?, number(17, 19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = &text[19..];
    let mut millis = 0;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        // Milliseconds: the first three digits, however many Docker wrote.
        let kept = &fraction.as_bytes()[..digits.min(3)];
        millis = kept.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0')) * 10_i64.pow(3 - kept.len() as u32);
        rest = &fraction[digits..];
    }
    let offset_secs = match rest.as_bytes() {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let digit = |d: &u8| d.is_ascii_digit().then(|| i64::from(d - b'0'));
            let secs = (digit(h1)? * 10 + digit(h2)?) * 3600 + (digit(m1)? * 10 + digit(m2)?) * 60;
            if *sign == b'+' {
                secs
            } else {
                -secs
            }
        }
        _ => return None,
    };
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    u64::try_from(secs * 1000 + millis).ok()
}

/// Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    const AT: &str = "2024-01-02T03:04:05.123456789Z";
    const AT_MS: u64 = 1_704_164_645_123;

    fn frame(stream: u8, payload: &str) -> Vec<u8> {
        let mut bytes = vec![stream, 0, 0, 0];
        bytes.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        bytes.extend_from_slice(payload.as_bytes());
        bytes
    }

    fn tail_of(content_type: Option<&str>, pieces: &[&[u8]]) -> Vec<LogLine> {
        let mut tail = LogTail::new(content_type, 50, 64 * 1024);
        for piece in pieces {
            tail.push(piece);
        }
        tail.finish()
    }

    fn line(stderr: bool, timestamp_ms: Option<u64>, text: &str) -> LogLine {
        LogLine { stderr, timestamp_ms, text: text.into() }
    }

    #[test]
    fn timestamps_in_rfc3339_as_docker_writes_them() {
        assert_eq!(timestamp_ms(AT), Some(AT_MS));
        assert_eq!(timestamp_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(timestamp_ms("2024-01-02T03:04:05.1Z"), Some(AT_MS - 23));
        assert_eq!(timestamp_ms("2024-01-02T04:04:05.123+01:00"), Some(AT_MS));
        assert_eq!(timestamp_ms("2024-01-02T14:04:05.1+11:00"), Some(AT_MS - 23));
        assert_eq!(timestamp_ms("2000-02-29T00:00:00Z"), Some(951_782_400_000));
        for bad in [
            "",
            "hello world",
            "2024-13-02T03:04:05Z",
            "2024-01-02T03:04:05",
            "2024-01-02T03:04:05.Z",
            "+024-01-02T03:04:05Z",
        ] {
            assert_eq!(timestamp_ms(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn multiplexed_frames_become_stdout_and_stderr_lines() {
        let mut stream = frame(1, &format!("{AT} starting\n"));
        stream.extend(frame(2, &format!("{AT} boom: no config\n")));
        stream.extend(frame(1, &format!("{AT} two\r\n")));
        let expected = vec![
            line(false, Some(AT_MS), "starting"),
            line(true, Some(AT_MS), "boom: no config"),
            line(false, Some(AT_MS), "two"),
        ];
        // Whole, and fed a byte at a time (headers and payloads split anywhere).
        assert_eq!(tail_of(None, &[&stream]), expected);
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(tail_of(None, &bytes), expected);
        assert_eq!(tail_of(Some(MULTIPLEXED_CONTENT_TYPE), &[&stream]), expected);
    }

    #[test]
    fn a_truncated_frame_keeps_what_came_and_a_partial_header_is_dropped() {
        let mut stream = frame(1, &format!("{AT} complete\n"));
        let cut = frame(2, &format!("{AT} cut off in the middle\n"));
        stream.extend_from_slice(&cut[..cut.len() - 12]);
        assert_eq!(
            tail_of(None, &[&stream]),
            vec![line(false, Some(AT_MS), "complete"), line(true, Some(AT_MS), "cut off in")]
        );
        let mut stream = frame(1, &format!("{AT} complete\n"));
        stream.extend_from_slice(&[2, 0, 0]);
        assert_eq!(tail_of(None, &[&stream]), vec![line(false, Some(AT_MS), "complete")]);
    }

    #[test]
    fn tty_containers_send_raw_text() {
        let text = format!("{AT} first\r\nsecond line of the entry\r\n{AT} third");
        assert_eq!(
            tail_of(Some("application/vnd.docker.raw-stream"), &[text.as_bytes()]),
            vec![
                line(false, Some(AT_MS), "first"),
                line(false, Some(AT_MS), "second line of the entry"),
                line(false, Some(AT_MS), "third"),
            ]
        );
        assert_eq!(tail_of(None, &[b"no timestamp\n"]), vec![line(false, None, "no timestamp")]);
        assert_eq!(tail_of(None, &[]), vec![]);
    }

    #[test]
    fn an_oversized_frame_is_cut_not_held() {
        // A header claiming 4 GiB, then far more than a line may keep.
        let mut stream = vec![2, 0, 0, 0, 0xff, 0xff, 0xff, 0xff];
        stream.extend_from_slice(AT.as_bytes());
        stream.push(b' ');
        let mut tail = LogTail::new(None, 50, 64 * 1024);
        tail.push(&stream);
        for _ in 0..100 {
            tail.push(&[b'x'; 1000]);
        }
        let lines = tail.finish();
        assert_eq!(lines.len(), 1);
        assert!(lines[0].stderr);
        assert_eq!(lines[0].text.len(), MAX_LINE_BYTES - AT.len() - 1 + '…'.len_utf8());
        assert!(lines[0].text.ends_with("x…"));
    }

    #[test]
    fn only_the_newest_lines_within_the_budget_are_kept() {
        let mut stream = Vec::new();
        for n in 0..100 {
            stream.extend(frame(1, &format!("{AT} line {n:03}\n")));
        }
        let texts = |lines: Vec<LogLine>| lines.into_iter().map(|l| l.text).collect::<Vec<_>>();
        let mut by_count = LogTail::new(None, 3, 64 * 1024);
        by_count.push(&stream);
        assert_eq!(texts(by_count.finish()), ["line 097", "line 098", "line 099"]);
        let mut by_bytes = LogTail::new(None, 50, 20);
        by_bytes.push(&stream);
        assert_eq!(texts(by_bytes.finish()), ["line 098", "line 099"]);
    }

    #[test]
    fn a_stream_that_is_not_frames_stops_being_read() {
        let mut stream = frame(1, &format!("{AT} fine\n"));
        stream.extend_from_slice(&[7, 1, 2, 3, 0, 0, 0, 1, b'x']);
        stream.extend(frame(1, &format!("{AT} after garbage\n")));
        assert_eq!(tail_of(None, &[&stream]), vec![line(false, Some(AT_MS), "fine")]);
    }
}
