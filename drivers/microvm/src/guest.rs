//! What the guest is given, as pure functions: the environment script the init sources,
//! the callback endpoint as seen from inside QEMU's user network, the kernel command line,
//! the QEMU arguments, the accelerator choice, and the reading of the console log.

use std::collections::BTreeMap;
use std::path::Path;

use openshell_drivers::{DriverError, WorkloadState};

/// The gateway as the guest sees it. QEMU's user network runs with `restrict=on`: the guest
/// reaches nothing on the host or beyond, except this one address and port, which QEMU
/// forwards (`guestfwd`) to the gateway's real address, a new `socat` per connection. The
/// host's other loopback services (other users' forwards, a health listener, a plaintext
/// gateway) stay out of reach, which plain slirp's 10.0.2.2 would not give.
pub const GATEWAY_FROM_GUEST: &str = "10.0.2.100";
/// Printed by the init right before it runs the main process.
pub const MARK_STARTED: &str = "openshell-init: starting the main process";
/// Printed by the init when the main process ends, followed by its exit code.
pub const MARK_EXITED: &str = "openshell-init: main process exited with code ";

/// `s` quoted for a POSIX shell (single quotes, `'` written as `'\''`).
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn is_env_name(k: &str) -> bool {
    let mut chars = k.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The script the guest init sources: the host's clock (for a guest whose RTC is unusable)
/// and the main process's environment and command as positional parameters, in this order:
/// `NAME=VALUE`..., then the parameters the init had set before sourcing (its launcher:
/// `busybox chroot /newroot`), then the command. The init runs `busybox env "$@"`.
///
/// The values are never evaluated, nor assigned to a variable of the init's shell, so none
/// can change how the init runs: each word is single-quoted, and inside single quotes a
/// POSIX shell gives every character its literal meaning (`'` is written `'\''`: close,
/// an escaped quote, reopen), so `$(...)`, backquotes, `$VAR`, newlines and globs arrive
/// as written; `"$@"` then expands to exactly these words, unsplit (IFS plays no part).
/// `busybox env` splits each `NAME=VALUE` at its first `=` (names cannot hold one), and
/// NUL, which no environment or argument can carry, is refused here.
pub fn env_script(
    env: &BTreeMap<String, String>,
    command: &[String],
    epoch_secs: u64,
) -> Result<String, DriverError> {
    if command.is_empty() {
        return Err(DriverError::InvalidSpec(
            "no command to run: the spec and the image name none".into(),
        ));
    }
    let mut out = format!("OPENSHELL_VM_EPOCH={epoch_secs}\nset --");
    for (k, v) in env {
        if !is_env_name(k) {
            return Err(DriverError::InvalidSpec(format!(
                "environment variable name {k:?} cannot be passed into a VM: use ASCII letters, \
                 digits and '_', not starting with a digit"
            )));
        }
        if v.contains('\0') {
            return Err(DriverError::InvalidSpec(format!(
                "the value of environment variable {k} contains a NUL byte, which no environment can hold"
            )));
        }
        out.push(' ');
        out.push_str(&shell_quote(&format!("{k}={v}")));
    }
    out.push_str(" \"$@\"");
    if command[0].contains('=') {
        // `env` would take it for one more variable.
        return Err(DriverError::InvalidSpec(format!(
            "the command {:?} contains '=', which a VM cannot run (name the program by a path without one)",
            command[0]
        )));
    }
    for arg in command {
        if arg.contains('\0') {
            return Err(DriverError::InvalidSpec(
                "an argument of the command contains a NUL byte, which no argument can hold".into(),
            ));
        }
        out.push(' ');
        out.push_str(&shell_quote(arg));
    }
    out.push('\n');
    Ok(out)
}

/// Host names that only containers resolve (to their host); the gateway's default callback
/// uses one of them.
const CONTAINER_HOST_ALIASES: [&str; 2] = ["host.docker.internal", "host.containers.internal"];

/// The gateway's callback URL as the guest dials it, and where QEMU forwards that.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestEndpoint {
    /// The URL with the host replaced by [`GATEWAY_FROM_GUEST`].
    pub url: String,
    /// The original host: the TLS name to verify, since the gateway's certificate names it
    /// and not 10.0.2.100.
    pub server_name: String,
    /// `host:port` on the host side of the forward (`[v6]:port` for IPv6).
    pub forward: String,
    pub port: u16,
}

/// The callback URL as the guest must dial it. `None` for a URL that is not
/// `SCHEME://HOST[:PORT][/PATH]` or whose host holds anything but letters, digits, `.`, `-`
/// and (IPv6) `:` (it ends up in the command QEMU runs for each connection).
pub fn guest_endpoint(url: &str) -> Option<GuestEndpoint> {
    let (scheme, rest) = url.split_once("://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let (host, port, v6) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        (host, after.strip_prefix(':'), true)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p), false),
            None => (authority, None, false),
        }
    };
    let plain = |c: char| c.is_ascii_alphanumeric() || c == '.' || c == '-' || (v6 && c == ':');
    if host.is_empty() || !host.chars().all(plain) {
        return None;
    }
    let port: u16 = match port {
        Some(p) => p.parse().ok()?,
        None if scheme == "http" => 80,
        None => 443,
    };
    // The names containers reach their host by mean nothing on the host itself, where QEMU
    // makes the forward: there the gateway is on the loopback.
    let target = if CONTAINER_HOST_ALIASES.contains(&host) {
        "127.0.0.1"
    } else {
        host
    };
    let forward = if v6 {
        format!("[{target}]:{port}")
    } else {
        format!("{target}:{port}")
    };
    Some(GuestEndpoint {
        url: format!("{scheme}://{GATEWAY_FROM_GUEST}:{port}{path}"),
        server_name: host.to_string(),
        forward,
        port,
    })
}

/// The `-netdev` value: user networking restricted to the forward to the gateway (none when
/// the sandbox has no callback endpoint).
pub fn netdev(forward: Option<(&str, u16)>, socat: &Path) -> String {
    let mut netdev = "user,id=net,restrict=on".to_string();
    if let Some((target, port)) = forward {
        // QEMU splits options at ',' (written ',,' inside a value); neither part has one.
        netdev.push_str(&format!(
            ",guestfwd=tcp:{GATEWAY_FROM_GUEST}:{port}-cmd:{} - TCP:{target}",
            socat.display().to_string().replace(',', ",,")
        ));
    }
    netdev
}

/// How QEMU runs the guest's CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualization through /dev/kvm.
    Kvm,
    /// QEMU's software emulation: works everywhere, 10 to 50 times slower.
    Tcg,
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// Picks KVM when it can run a stock kernel, and says why. A `/dev/kvm` without the vmx or
/// svm CPU flag is not hardware KVM (PVM, for one, runs only PVM-built guests and a stock
/// kernel hangs right after the real-mode stub), so that falls back to TCG.
pub fn choose_accel(kvm_device: bool, cpuinfo: &str) -> (Accel, &'static str) {
    let hw = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    match (kvm_device, hw) {
        (true, true) => (Accel::Kvm, "/dev/kvm is usable and the CPU has vmx/svm"),
        (false, _) => (Accel::Tcg, "there is no usable /dev/kvm"),
        (true, false) => (
            Accel::Tcg,
            "/dev/kvm exists but the CPU has no vmx/svm flag (not hardware KVM, e.g. PVM, \
             where stock kernels hang)",
        ),
    }
}

/// The host TSC frequency in kHz from `/proc/cpuinfo` (`cpu MHz`); under TCG the guest
/// counts host TSC ticks, and microvm has no PIT/HPET to calibrate against, so the kernel
/// must be told (`tsc_early_khz=`) or it hangs.
pub fn tsc_khz(cpuinfo: &str) -> u64 {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|mhz| (mhz * 1000.0) as u64)
        .filter(|khz| *khz > 0)
        .unwrap_or(2_000_000)
}

/// The kernel command line. No secrets ever go here: it is visible in `ps` on the host.
pub fn kernel_cmdline(accel: Accel, tsc_khz: u64) -> String {
    let mut line = "console=ttyS0 quiet panic=-1 reboot=t".to_string();
    if accel == Accel::Tcg {
        line.push_str(&format!(" tsc_early_khz={tsc_khz}"));
    }
    line
}

/// Everything one VM start needs.
#[derive(Debug, Clone)]
pub struct Launch<'a> {
    pub accel: Accel,
    pub cpus: u32,
    pub memory_mib: u64,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub disk: &'a Path,
    pub console: &'a Path,
    /// The serial console's socket (for the driver's `stop` request); `None` when its
    /// path is too long for a Unix socket, then stops are power cuts.
    pub console_socket: Option<&'a Path>,
    pub pidfile: &'a Path,
    pub cmdline: &'a str,
    /// `-name`, also how a process is recognised as this sandbox's VM.
    pub name: &'a str,
    /// The `-netdev` value (see [`netdev`]).
    pub netdev: String,
}

/// QEMU's arguments: a microvm with a serial console appended to a file, one virtio disk,
/// user networking, no display, daemonized with a pidfile.
pub fn qemu_args(l: &Launch<'_>) -> Vec<String> {
    let p = |p: &Path| p.to_string_lossy().into_owned();
    let mut args: Vec<String> = vec!["-name".into(), l.name.into()];
    args.extend(["-M".into(), "microvm,rtc=on".into()]);
    match l.accel {
        Accel::Kvm => args.extend(["-accel".into(), "kvm".into(), "-cpu".into(), "host".into()]),
        Accel::Tcg => args.extend(["-accel".into(), "tcg".into(), "-cpu".into(), "max".into()]),
    }
    args.extend([
        "-smp".into(),
        l.cpus.to_string(),
        "-m".into(),
        format!("{}M", l.memory_mib),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-display".into(),
        "none".into(),
        "-no-reboot".into(),
        "-kernel".into(),
        p(l.kernel),
        "-initrd".into(),
        p(l.initrd),
        "-append".into(),
        l.cmdline.into(),
        "-chardev".into(),
        match l.console_socket {
            Some(sock) => format!(
                "socket,id=con,path={},server=on,wait=off,logfile={},logappend=on",
                p(sock),
                p(l.console)
            ),
            None => format!("file,id=con,path={},append=on", p(l.console)),
        },
        "-serial".into(),
        "chardev:con".into(),
        "-drive".into(),
        format!("id=disk,file={},format=raw,if=none", p(l.disk)),
        "-device".into(),
        "virtio-blk-device,drive=disk".into(),
        "-netdev".into(),
        l.netdev.clone(),
        "-device".into(),
        "virtio-net-device,netdev=net".into(),
        "-pidfile".into(),
        p(l.pidfile),
        "-daemonize".into(),
    ]);
    args
}

/// Whether `path` fits in a Unix socket address (108 bytes with the NUL on Linux).
pub fn fits_socket(path: &Path) -> bool {
    path.as_os_str().len() < 108
}

/// The last `n` lines of a console log, for error messages.
pub fn tail(console: &str, n: usize) -> String {
    let lines: Vec<&str> = console
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// What the console of the current boot says about the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    /// The QEMU process of this sandbox runs.
    pub alive: bool,
    /// The driver stopped it (stop, or gateway shutdown).
    pub stopped_by_driver: bool,
    /// Seconds since this boot began.
    pub booting_for: u64,
    pub boot_timeout: u64,
}

/// The workload state from the facts and the console output of the current boot.
pub fn state_of(f: Facts, console: &str) -> WorkloadState {
    let started = console.contains(MARK_STARTED);
    let exit = console
        .rfind(MARK_EXITED)
        .and_then(|i| console[i + MARK_EXITED.len()..].lines().next())
        .and_then(|c| c.trim().parse::<i64>().ok());
    if f.alive {
        if exit.is_some() || started {
            return WorkloadState::Running;
        }
        if f.booting_for > f.boot_timeout {
            return WorkloadState::Error(format!(
                "the VM did not start its main process within {} s (the kernel or the init \
                 hung); delete the sandbox; console: {}",
                f.boot_timeout,
                tail(console, 10)
            ));
        }
        return WorkloadState::Creating;
    }
    match exit {
        Some(code) => WorkloadState::Stopped { exit_code: code },
        // QEMU was terminated by the driver (the main process ignored the stop request,
        // or there was no console socket), as `docker stop` reports SIGKILL.
        None if f.stopped_by_driver => WorkloadState::Stopped { exit_code: 137 },
        None => WorkloadState::Error(format!(
            "the VM ended before its main process did; console: {}",
            tail(console, 10)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_and_env() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        let env = BTreeMap::from([
            ("A".to_string(), "x y".to_string()),
            ("PEM".to_string(), "-----BEGIN-----\nab'c\n".to_string()),
        ]);
        let s = env_script(&env, &["/bin/sh".into(), "-c".into(), "echo $A".into()], 7).unwrap();
        assert!(s.starts_with("OPENSHELL_VM_EPOCH=7\n"), "{s}");
        assert!(
            s.ends_with(
                "set -- 'A=x y' 'PEM=-----BEGIN-----\nab'\\''c\n' \"$@\" '/bin/sh' '-c' 'echo $A'\n"
            ),
            "{s}"
        );
        let bad = BTreeMap::from([("A-B".to_string(), String::new())]);
        let e = env_script(&bad, &["x".into()], 0).unwrap_err().to_string();
        assert!(e.contains("\"A-B\""), "{e}");
        assert!(env_script(&env, &[], 0).is_err());
        let nul = BTreeMap::from([("A".to_string(), "a\0b".to_string())]);
        assert!(env_script(&nul, &["x".into()], 0).is_err());
        assert!(env_script(&env, &["A=b".into()], 0).is_err());
    }

    /// The generated script run the way the guest init runs it, by a real POSIX shell
    /// (here the host's `sh`; the guest's is busybox ash, same quoting rules): values that
    /// would change a shell's behaviour if they were assigned or evaluated (IFS, PATH, the
    /// init's own `B`, `$(...)`, backquotes, quotes, newlines, globs) reach the main process
    /// byte for byte, and the init's own variables are untouched.
    #[test]
    fn hostile_values_reach_the_main_process_verbatim() {
        let dir = std::env::temp_dir().join(format!("openshell-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let marker = dir.join("evaluated");
        let env = BTreeMap::from([
            ("IFS".to_string(), "/b".to_string()),
            ("B".to_string(), "/bin/false".to_string()),
            ("PATH".to_string(), "/nowhere".to_string()),
            (
                "TRICK".to_string(),
                format!(
                    "$(touch {m}) `touch {m}` ${{HOME}} * '\"\\\n;",
                    m = marker.display()
                ),
            ),
            ("EMPTY".to_string(), String::new()),
            ("EQ".to_string(), "a=b=c".to_string()),
        ]);
        let args = ["$(touch x)", "a b", "", "*", "'"];
        let mut command = vec!["/usr/bin/env".to_string(), "-0".to_string()];
        let script_for = |command: &[String]| {
            let path = dir.join("env");
            std::fs::write(&path, env_script(&env, command, 42).unwrap()).unwrap();
            path
        };
        // As init.sh: its launcher set first (here `env`, which passes everything on as
        // `chroot` does), the script sourced, `env "$@"` run (`-i` here, so only what the
        // script passes is printed); the init's own `B` and word splitting checked after.
        let init = r#"B=/bin/busybox
set -- /usr/bin/env
. "$1_script"
[ "$B" = /bin/busybox ] || { echo "B changed: $B" >&2; exit 9; }
( set -- $B; [ $# = 1 ] ) || { echo "IFS changed" >&2; exit 9; }
[ "$OPENSHELL_VM_EPOCH" = 42 ] || { echo "epoch: $OPENSHELL_VM_EPOCH" >&2; exit 9; }
exec /usr/bin/env -i "$@""#;
        let run = |script: &std::path::Path| {
            let init = init.replace("$1_script", &script.display().to_string());
            let out = std::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(&init)
                .env_clear()
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            out.stdout
        };
        let out = run(&script_for(&command));
        let got: BTreeMap<String, String> = out
            .split(|b| *b == 0)
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let kv = String::from_utf8(kv.to_vec()).unwrap();
                let (k, v) = kv.split_once('=').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect();
        assert_eq!(got, env);
        command = vec!["/usr/bin/printf".to_string(), "%s\\0".to_string()];
        command.extend(args.iter().map(|a| a.to_string()));
        let out = run(&script_for(&command));
        let got: Vec<&[u8]> = out.split(|b| *b == 0).collect();
        let want: Vec<&[u8]> = args
            .iter()
            .map(|a| a.as_bytes())
            .chain([&b""[..]])
            .collect();
        assert_eq!(got, want);
        assert!(!marker.exists(), "a value was evaluated");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn endpoints_are_rewritten_for_the_guest_and_forwarded() {
        let e = guest_endpoint("https://host.docker.internal:17670").unwrap();
        assert_eq!(e.url, "https://10.0.2.100:17670");
        assert_eq!(e.server_name, "host.docker.internal");
        assert_eq!(e.forward, "127.0.0.1:17670");
        let e = guest_endpoint("https://gw.example:17670").unwrap();
        assert_eq!(e.forward, "gw.example:17670");
        let e = guest_endpoint("https://[::1]:5/x").unwrap();
        assert_eq!(
            (e.url.as_str(), e.forward.as_str()),
            ("https://10.0.2.100:5/x", "[::1]:5")
        );
        let e = guest_endpoint("https://gw").unwrap();
        assert_eq!((e.url.as_str(), e.port), ("https://10.0.2.100:443", 443));
        assert_eq!(guest_endpoint("nonsense"), None);
        // The host goes into the command QEMU runs: nothing a shell would act on.
        assert_eq!(guest_endpoint("https://a;reboot:1"), None);
        assert_eq!(guest_endpoint("https://$(x):1"), None);
        let n = netdev(Some(("127.0.0.1:9", 9)), Path::new("/usr/bin/socat"));
        assert_eq!(
            n,
            "user,id=net,restrict=on,guestfwd=tcp:10.0.2.100:9-cmd:/usr/bin/socat - TCP:127.0.0.1:9"
        );
        assert_eq!(netdev(None, Path::new("socat")), "user,id=net,restrict=on");
    }

    #[test]
    fn accel() {
        let pvm = "processor : 0\nflags\t\t: fpu vme sse hypervisor\ncpu MHz\t\t: 2596.122\n";
        assert_eq!(choose_accel(true, pvm).0, Accel::Tcg);
        assert!(choose_accel(true, pvm).1.contains("vmx/svm"));
        assert_eq!(choose_accel(true, "flags : fpu vmx\n").0, Accel::Kvm);
        assert_eq!(choose_accel(false, "flags : fpu vmx\n").0, Accel::Tcg);
        assert_eq!(tsc_khz(pvm), 2_596_122);
        assert_eq!(tsc_khz(""), 2_000_000);
        assert!(kernel_cmdline(Accel::Tcg, 5).ends_with("tsc_early_khz=5"));
        assert!(!kernel_cmdline(Accel::Kvm, 5).contains("tsc"));
    }

    #[test]
    fn states() {
        let f = Facts {
            alive: true,
            stopped_by_driver: false,
            booting_for: 1,
            boot_timeout: 60,
        };
        assert_eq!(state_of(f, "[0.1] boot\n"), WorkloadState::Creating);
        assert_eq!(
            state_of(f, &format!("{MARK_STARTED}\n")),
            WorkloadState::Running
        );
        let slow = Facts {
            booting_for: 61,
            ..f
        };
        assert!(
            matches!(state_of(slow, "Probing EDD... ok\n"), WorkloadState::Error(e) if e.contains("within 60 s") && e.contains("Probing EDD"))
        );
        let dead = Facts { alive: false, ..f };
        assert_eq!(
            state_of(dead, &format!("{MARK_STARTED}\n{MARK_EXITED}3\n")),
            WorkloadState::Stopped { exit_code: 3 }
        );
        assert!(
            matches!(state_of(dead, "Kernel panic - not syncing\n"), WorkloadState::Error(e) if e.contains("Kernel panic"))
        );
        let stopped = Facts {
            stopped_by_driver: true,
            ..dead
        };
        assert_eq!(
            state_of(stopped, MARK_STARTED),
            WorkloadState::Stopped { exit_code: 137 }
        );
    }
}
