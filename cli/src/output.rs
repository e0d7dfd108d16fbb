//! How results reach the user: `-o table|json|yaml`, colour (off with `NO_COLOR` or when
//! stdout is not a terminal), logging to stderr, and error printing.

use std::io::{IsTerminal, Write};

use serde::Serialize;

use crate::CliError;

/// Output format of list/get style commands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    #[default]
    Table,
    Json,
    Yaml,
}

/// Installs the stderr logger. `-v` = info, `-vv` = debug, `-vvv` = trace; `RUST_LOG` wins.
pub fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(color_enabled_stderr())
        .try_init();
}

/// Whether to colour stderr: a terminal, and `NO_COLOR` unset or empty.
pub fn color_enabled_stderr() -> bool {
    no_color_unset() && std::io::stderr().is_terminal()
}

/// Whether to colour stdout: a terminal, and `NO_COLOR` unset or empty.
pub fn color_enabled_stdout() -> bool {
    no_color_unset() && std::io::stdout().is_terminal()
}

fn no_color_unset() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Prints an error and its hint to stderr as `error: ...` lines.
pub fn print_error(err: &CliError) {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "error: {err}");
    let mut source = std::error::Error::source(err);
    // The transparent variants already print their own message; walk only deeper causes
    // that add information.
    let top = err.to_string();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !top.contains(&text) {
            let _ = writeln!(stderr, "  caused by: {text}");
        }
        source = cause.source();
    }
    if let Some(hint) = err.hint_text() {
        for line in hint.lines() {
            let _ = writeln!(stderr, "{line}");
        }
    }
}

/// `t` as an RFC 3339 UTC timestamp, as every command prints times.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Writes `text` to stdout; a closed pipe (`| head`) is not an error.
pub fn print_stdout(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(CliError::Io(e)),
    }
}

/// Serialises `value` as JSON or YAML; for `Table` calls `table` to render it.
pub fn emit<T: Serialize>(
    format: OutputFormat,
    value: &T,
    table: impl FnOnce(&T) -> String,
) -> Result<(), CliError> {
    let text = match format {
        OutputFormat::Table => table(value),
        OutputFormat::Json => {
            let mut s = serde_json::to_string_pretty(value)
                .map_err(|e| CliError::msg(format!("cannot encode JSON: {e}")))?;
            s.push('\n');
            s
        }
        OutputFormat::Yaml => serde_yaml::to_string(value)
            .map_err(|e| CliError::msg(format!("cannot encode YAML: {e}")))?,
    };
    print_stdout(&text)
}

/// Renders rows as a left-aligned table with a header row.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count();
                l.push_str(cell);
                l.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// A spinner on stderr for waits that may take a while. It appears only on a terminal and
/// only after a short delay (quick operations stay silent); piped output never sees it.
/// Dropping it stops it and clears its line.
pub struct Spinner {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Spinner {
    pub fn start(message: impl Into<String>) -> Spinner {
        if !std::io::stderr().is_terminal() {
            return Spinner {
                stop: None,
                task: None,
            };
        }
        let message = message.into();
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            const FRAMES: [&str; 4] = ["|", "/", "-", "\\"];
            tokio::select! {
                _ = &mut rx => return,
                _ = tokio::time::sleep(std::time::Duration::from_millis(300)) => {}
            }
            let mut i = 0;
            loop {
                eprint!("\r{} {message}", FRAMES[i % FRAMES.len()]);
                i += 1;
                tokio::select! {
                    _ = &mut rx => break,
                    _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
                }
            }
            eprint!("\r\x1b[2K");
        });
        Spinner {
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Stops the spinner and waits until its line is cleared.
    pub async fn finish(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let t = table(
            &["NAME", "ENDPOINT"],
            &[
                vec!["a".into(), "https://x".into()],
                vec!["long-name".into(), "y".into()],
            ],
        );
        assert_eq!(
            t,
            "NAME       ENDPOINT\na          https://x\nlong-name  y\n"
        );
    }
}
