//! Workload output cut into lines of bounded length, shared by every driver.
//!
//! A workload may print anything, including gigabytes without a newline. The gateway holds
//! at most one line per output stream while splitting, so a line longer than [`MAX_LINE`]
//! is handed out in pieces of exactly that many bytes (the last one shorter). Docker's log
//! drivers cut long lines at the same 16 KiB, so `--tail` counts the same pieces whether
//! the runtime or the driver did the cutting.

use std::collections::VecDeque;

use crate::{LogLine, OutputStream};

/// Longest line a driver hands out, in bytes. Raising it raises the memory one log reader
/// can make the gateway hold (one line per stream per reader).
pub const MAX_LINE: usize = 16 * 1024;

/// What [`ComputeDriver::logs`](crate::ComputeDriver::logs) returns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Keep streaming new output until the workload stops.
    pub follow: bool,
    /// Only the last `n` lines (pieces of long lines count one each) written so far, then,
    /// with `follow`, everything new. `None`: everything from the workload's start. Drivers
    /// pass it to the runtime (or read from the end), never read everything to drop most.
    pub tail: Option<usize>,
}

/// One output stream's unfinished line: never more than [`MAX_LINE`] bytes.
#[derive(Debug, Default)]
struct Partial(Vec<u8>);

/// Splits chunks of output (any size, cut anywhere) into lines per stream, in the order
/// they completed. Each byte is scanned once.
#[derive(Debug, Default)]
pub struct LineSplitter {
    stdout: Partial,
    stderr: Partial,
    ready: VecDeque<LogLine>,
}

/// A whole line: its `\r` before the newline is part of the line ending.
fn line(stream: OutputStream, bytes: &[u8]) -> LogLine {
    piece(stream, bytes.strip_suffix(b"\r").unwrap_or(bytes))
}

/// A piece of a longer line, as it is.
fn piece(stream: OutputStream, bytes: &[u8]) -> LogLine {
    LogLine {
        stream,
        line: String::from_utf8_lossy(bytes).into_owned(),
    }
}

impl LineSplitter {
    /// Feeds a chunk of one stream.
    pub fn push(&mut self, stream: OutputStream, mut chunk: &[u8]) {
        let partial = match stream {
            OutputStream::Stdout => &mut self.stdout.0,
            OutputStream::Stderr => &mut self.stderr.0,
        };
        while !chunk.is_empty() {
            let room = MAX_LINE - partial.len();
            // One byte past the room: a newline right after a full piece ends that line
            // (a line of exactly MAX_LINE bytes is one line, not a piece and an empty line).
            let window = &chunk[..chunk.len().min(room + 1)];
            if let Some(i) = window.iter().position(|b| *b == b'\n') {
                partial.extend_from_slice(&window[..i]);
                self.ready.push_back(line(stream, partial));
                partial.clear();
                chunk = &chunk[i + 1..];
                continue;
            }
            let take = chunk.len().min(room);
            partial.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
            // Full, and the next byte (there is one) is not a newline: a piece.
            if !chunk.is_empty() {
                self.ready.push_back(piece(stream, partial));
                partial.clear();
            }
        }
    }

    /// Emits what is left without a final newline (the output ended).
    pub fn finish(&mut self) {
        for (stream, partial) in [
            (OutputStream::Stdout, &mut self.stdout.0),
            (OutputStream::Stderr, &mut self.stderr.0),
        ] {
            if !partial.is_empty() {
                self.ready.push_back(line(stream, partial));
                partial.clear();
            }
        }
    }

    /// The next finished line.
    pub fn pop(&mut self) -> Option<LogLine> {
        self.ready.pop_front()
    }

    /// How many finished lines wait to be popped.
    pub fn ready(&self) -> usize {
        self.ready.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use OutputStream::*;

    fn drain(sp: &mut LineSplitter) -> Vec<(OutputStream, String)> {
        std::iter::from_fn(|| sp.pop())
            .map(|l| (l.stream, l.line))
            .collect()
    }

    #[test]
    fn splits_across_chunks_and_streams() {
        let mut sp = LineSplitter::default();
        sp.push(Stdout, b"hel");
        assert!(sp.pop().is_none());
        sp.push(Stderr, b"oops\n");
        sp.push(Stdout, b"lo\r\nwor");
        sp.push(Stdout, b"ld\n\ntail");
        sp.finish();
        assert_eq!(
            drain(&mut sp),
            [
                (Stderr, "oops".to_string()),
                (Stdout, "hello".into()),
                (Stdout, "world".into()),
                (Stdout, "".into()),
                (Stdout, "tail".into()),
            ]
        );
    }

    #[test]
    fn long_lines_come_out_in_pieces_of_max_line() {
        let mut sp = LineSplitter::default();
        // 2.5 pieces without a newline, fed in odd chunk sizes.
        let data = vec![b'x'; MAX_LINE * 5 / 2];
        for c in data.chunks(7919) {
            sp.push(Stdout, c);
        }
        assert_eq!(sp.ready(), 2);
        sp.finish();
        let got = drain(&mut sp);
        let lens: Vec<usize> = got.iter().map(|(_, l)| l.len()).collect();
        assert_eq!(lens, [MAX_LINE, MAX_LINE, MAX_LINE / 2]);
        // A piece ending in `\r` keeps it: only a line ending drops it.
        let mut data = vec![b'z'; MAX_LINE - 1];
        data.extend_from_slice(b"\rmore\r\n");
        sp.push(Stdout, &data);
        let got = drain(&mut sp);
        assert_eq!(got.len(), 2);
        assert!(got[0].1.ends_with('\r'));
        assert_eq!(got[1].1, "more");
    }

    #[test]
    fn a_line_of_exactly_max_line_is_one_line() {
        for split in [MAX_LINE, MAX_LINE - 1, 1] {
            let mut sp = LineSplitter::default();
            let mut data = vec![b'y'; MAX_LINE];
            data.extend_from_slice(b"\nnext\n");
            sp.push(Stdout, &data[..split]);
            sp.push(Stdout, &data[split..]);
            let got = drain(&mut sp);
            assert_eq!(got.len(), 2, "split at {split}");
            assert_eq!(got[0].1.len(), MAX_LINE);
            assert_eq!(got[1].1, "next");
        }
    }
}
