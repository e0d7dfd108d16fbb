//! Docker's log frames fed to the drivers' shared [`LineSplitter`].

use bollard::container::LogOutput;
use openshell_drivers::{LineSplitter, OutputStream};

/// Feeds one frame of Docker's log stream to the splitter.
pub(crate) fn push(splitter: &mut LineSplitter, chunk: LogOutput) {
    match chunk {
        LogOutput::StdErr { message } => splitter.push(OutputStream::Stderr, &message),
        // A TTY merges both streams into one; it is reported as stdout.
        LogOutput::StdOut { message } | LogOutput::Console { message } => {
            splitter.push(OutputStream::Stdout, &message)
        }
        LogOutput::StdIn { .. } => {}
    }
}
