//! Host-side facts and helpers: running tools, finding a sandbox's QEMU process from its
//! pidfile (and checking it really is that QEMU), signalling it, private files.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use openshell_drivers::DriverError;
use tokio::process::Command;

pub fn unavailable(tool: &str, e: &std::io::Error, hint: &str) -> DriverError {
    DriverError::RuntimeUnavailable {
        runtime: "vm".into(),
        endpoint: tool.into(),
        reason: if e.kind() == std::io::ErrorKind::NotFound {
            format!("{tool} is not installed")
        } else {
            format!("cannot run {tool}: {e}")
        },
        hint: hint.into(),
    }
}

/// Runs `tool args`; its stdout on success, a backend error with its stderr otherwise.
pub async fn run_tool(tool: &str, args: &[&str], op: &str) -> Result<String, DriverError> {
    let out = Command::new(tool)
        .args(args)
        .output()
        .await
        .map_err(|e| unavailable(tool, &e, &format!("install {tool}")))?;
    if !out.status.success() {
        return Err(DriverError::Backend {
            runtime: "vm".into(),
            op: op.into(),
            message: format!(
                "{tool} exited with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The pid in `pidfile` when that process is alive (not a zombie) and its command line is
/// QEMU's carrying `name`: a stale pidfile whose pid was reused is not mistaken for the VM.
pub fn vm_pid(pidfile: &Path, name: &str) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
    if matches!(state, Some(Some('Z' | 'X'))) {
        return None;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let is_qemu = args
        .first()
        .is_some_and(|a| String::from_utf8_lossy(a).contains("qemu-system"));
    let is_ours = args
        .windows(2)
        .any(|w| w[0] == b"-name" && w[1] == name.as_bytes());
    (is_qemu && is_ours).then_some(pid)
}

/// Sends `signal` (`TERM`, `KILL`) with the shell's builtin `kill`: the workspace forbids
/// `unsafe`, so no libc, and kill(1) (procps) is not on every host.
pub async fn signal(pid: u32, signal: &str) {
    let _ = Command::new("sh")
        .args([
            "-c",
            "kill -s \"$1\" \"$2\"",
            "sh",
            signal,
            &pid.to_string(),
        ])
        .output()
        .await;
}

/// Creates `dir` (and parents) owner-only.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Writes `data` to `path` owner-only (0600) through a temp file and a rename.
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Host CPU count and memory in bytes, the upper bounds of `--cpu` and `--memory`.
pub fn host_limits() -> (u32, u64) {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(u64::MAX);
    (cpus, mem)
}

/// The bytes of `path` from `offset` on (none when it cannot be read).
pub fn read_from(path: &Path, offset: u64) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let mut out = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path)
        && f.seek(SeekFrom::Start(offset)).is_ok()
    {
        let _ = f.read_to_end(&mut out);
    }
    out
}

/// At most `max` bytes of a file from `offset` on (nothing if it cannot be read).
pub fn read_at(path: &Path, offset: u64, max: usize) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let mut out = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path)
        && f.seek(SeekFrom::Start(offset)).is_ok()
    {
        let _ = f.take(max as u64).read_to_end(&mut out);
    }
    out
}

/// How much of the console the log reader reads at once.
pub const LOG_CHUNK: usize = 64 << 10;

/// Where to start reading a file for its last `n` lines (pieces of long lines count one
/// each, as [`openshell_drivers::LineSplitter`] cuts them), and how many lines from there
/// come before those. Reads only the end of the file: the last `n` pieces lie within the
/// last `n * (MAX_LINE + 1)` bytes. The start moves back to the beginning of its line when
/// that is at most as far again, so pieces are cut where a full read cuts them; within a
/// longer line they are cut from where reading starts (same bytes, other boundaries).
pub fn tail_start(path: &Path, n: usize) -> (u64, usize) {
    use openshell_drivers::{LineSplitter, MAX_LINE, OutputStream};
    let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let window = (n as u64).saturating_mul(MAX_LINE as u64 + 1);
    let mut start = len.saturating_sub(window);
    // Back to the line's beginning: the byte after the last newline before `start`.
    let floor = start.saturating_sub(window);
    let mut end = start;
    while start > 0 && end > floor {
        let from = end.saturating_sub(LOG_CHUNK as u64).max(floor);
        let data = read_at(path, from, (end - from) as usize);
        if data.is_empty() {
            break;
        }
        if let Some(i) = data.iter().rposition(|b| *b == b'\n') {
            start = from + i as u64 + 1;
            break;
        }
        end = from;
        if from == 0 {
            start = 0;
        }
    }
    let mut splitter = LineSplitter::default();
    let mut count: usize = 0;
    let mut pos = start;
    while pos < len {
        let max = LOG_CHUNK.min((len - pos) as usize);
        let data = read_at(path, pos, max);
        if data.is_empty() {
            break;
        }
        pos += data.len() as u64;
        splitter.push(OutputStream::Stdout, &data);
        while splitter.pop().is_some() {
            count += 1;
        }
    }
    splitter.finish();
    while splitter.pop().is_some() {
        count += 1;
    }
    (start, count.saturating_sub(n))
}

/// How much of a boot's console output is read for its state: the start marker comes
/// early (after a few kernel lines), the exit marker and the tail for messages at the end.
const HEAD: u64 = 64 << 10;
const TAIL: u64 = 8 << 10;

/// The console output of one boot (from `offset` on) as text; for a long one only its
/// head and tail, so reading a chatty sandbox's state stays cheap.
pub fn read_segment(path: &Path, offset: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let offset = offset.min(len);
    if len - offset <= HEAD + TAIL {
        return String::from_utf8_lossy(&read_from(path, offset)).into_owned();
    }
    let mut head = vec![0; HEAD as usize];
    let mut tail = Vec::new();
    let ok = f.seek(SeekFrom::Start(offset)).is_ok()
        && f.read_exact(&mut head).is_ok()
        && f.seek(SeekFrom::Start(len - TAIL)).is_ok()
        && f.read_to_end(&mut tail).is_ok();
    if !ok {
        return String::new();
    }
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&head),
        String::from_utf8_lossy(&tail)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        std::fs::write(&path, "old boot\nnew boot\n").unwrap();
        assert_eq!(read_segment(&path, 9), "new boot\n");
        assert_eq!(read_segment(&path, 99), "");
        assert_eq!(read_from(&path, 13), b"boot\n");
        assert_eq!(read_at(&path, 13, 2), b"bo");
        let mut long = "start\n".to_string();
        long.push_str(&"x".repeat(200 << 10));
        long.push_str("\nend\n");
        std::fs::write(&path, &long).unwrap();
        let seg = read_segment(&path, 0);
        assert!(seg.starts_with("start\n") && seg.ends_with("\nend\n"));
        assert_eq!(seg.len() as u64, HEAD + TAIL + 1);
        assert!(read_segment(&dir.path().join("none"), 0).is_empty());
    }

    #[test]
    fn tail_reads_only_the_end() {
        use openshell_drivers::MAX_LINE;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        // 100 short lines, then one long line of 3.5 pieces without a newline.
        let mut data = Vec::new();
        for i in 0..100 {
            data.extend_from_slice(format!("line {i}\n").as_bytes());
        }
        data.extend(std::iter::repeat_n(b'z', MAX_LINE * 7 / 2));
        std::fs::write(&path, &data).unwrap();
        // The last 2: the long line's last two pieces, cut as a full read cuts them (the
        // start moved back to the line's beginning, within reach).
        let long_start = data.len() as u64 - (MAX_LINE as u64 * 7 / 2);
        assert_eq!(tail_start(&path, 2), (long_start, 2));
        // The last 6: two short lines, then the long line's four pieces.
        let (start, skip) = tail_start(&path, 6);
        assert!(start < long_start);
        let (mut sp, mut lines) = (openshell_drivers::LineSplitter::default(), Vec::new());
        sp.push(
            openshell_drivers::OutputStream::Stdout,
            &data[start as usize..],
        );
        sp.finish();
        while let Some(l) = sp.pop() {
            lines.push(l.line);
        }
        let lines = &lines[skip..];
        assert_eq!(lines.len(), 6);
        assert_eq!(lines[0], "line 98");
        assert_eq!(lines[1], "line 99");
        assert_eq!(lines[5].len(), MAX_LINE / 2);
        // More than there are: from the start, nothing skipped.
        assert_eq!(tail_start(&path, 1000), (0, 0));
    }
}
