//! Splits the runtime's log chunks (any size, split anywhere) into lines per output stream.

use std::collections::VecDeque;

use bollard::container::LogOutput;
use openshell_drivers::{LogLine, OutputStream};

/// Collects chunks and hands out whole lines, in the order they completed.
#[derive(Default)]
pub(crate) struct LineSplitter {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    ready: VecDeque<LogLine>,
}

fn line(stream: OutputStream, bytes: &[u8]) -> LogLine {
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    LogLine {
        stream,
        line: String::from_utf8_lossy(bytes).into_owned(),
    }
}

impl LineSplitter {
    pub(crate) fn push(&mut self, chunk: LogOutput) {
        let (stream, buf, bytes) = match chunk {
            LogOutput::StdErr { message } => (OutputStream::Stderr, &mut self.stderr, message),
            // A TTY merges both streams into one; it is reported as stdout.
            LogOutput::StdOut { message } | LogOutput::Console { message } => {
                (OutputStream::Stdout, &mut self.stdout, message)
            }
            LogOutput::StdIn { .. } => return,
        };
        buf.extend_from_slice(&bytes);
        let mut start = 0;
        while let Some(nl) = buf[start..].iter().position(|b| *b == b'\n') {
            self.ready.push_back(line(stream, &buf[start..start + nl]));
            start += nl + 1;
        }
        buf.drain(..start);
    }

    /// Emits what is left without a final newline.
    pub(crate) fn finish(&mut self) {
        for (stream, buf) in [
            (OutputStream::Stdout, &mut self.stdout),
            (OutputStream::Stderr, &mut self.stderr),
        ] {
            if !buf.is_empty() {
                self.ready.push_back(line(stream, buf));
                buf.clear();
            }
        }
    }

    pub(crate) fn pop(&mut self) -> Option<LogLine> {
        self.ready.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(s: &str) -> LogOutput {
        LogOutput::StdOut {
            message: s.as_bytes().to_vec().into(),
        }
    }

    #[test]
    fn splits_across_chunks_and_streams() {
        let mut sp = LineSplitter::default();
        sp.push(out("hel"));
        assert!(sp.pop().is_none());
        sp.push(LogOutput::StdErr {
            message: b"oops\n".to_vec().into(),
        });
        sp.push(out("lo\r\nwor"));
        sp.push(out("ld\n\ntail"));
        sp.finish();
        let got: Vec<_> = std::iter::from_fn(|| sp.pop())
            .map(|l| (l.stream, l.line))
            .collect();
        use OutputStream::*;
        assert_eq!(
            got,
            [
                (Stderr, "oops".to_string()),
                (Stdout, "hello".into()),
                (Stdout, "world".into()),
                (Stdout, "".into()),
                (Stdout, "tail".into()),
            ]
        );
    }
}
