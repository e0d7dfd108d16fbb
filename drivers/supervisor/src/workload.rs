//! Who the workload runs as. The supervisor runs as root (it must read its credential, which
//! only root can); everything it starts for the sandbox (the main process, every SSH, exec
//! and sftp session) runs as an unprivileged user, so the workload can read neither the
//! credential files nor the supervisor's memory.
//!
//! This is the seam the process part of a sandbox policy (`process.run_as_user` /
//! `run_as_group`) plugs into: today the user comes from `OPENSHELL_RUN_AS`.
//!
//! The user is looked up in the image's `/etc/passwd`. The default user, `sandbox`, need not
//! exist there: an image without it runs the workload as uid and gid 1000 with the home
//! [`FALLBACK_HOME`], created (owned by that uid) when missing. A user named explicitly must
//! exist, and root is refused: a root workload could read the credential.

use std::path::{Path, PathBuf};

/// The user the workload runs as when nothing else is configured.
pub const DEFAULT_USER: &str = "sandbox";
/// uid and gid of [`DEFAULT_USER`] in an image that has no such user.
pub const FALLBACK_ID: u32 = 1000;
/// Home of [`DEFAULT_USER`] in an image that has no such user.
pub const FALLBACK_HOME: &str = "/sandbox";

/// The identity programs are started with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    /// Whether starting a program changes its uid and gid (false when it keeps the
    /// supervisor's own: a supervisor not running as root, as in unit tests).
    pub switch: bool,
}

/// Why the workload's user cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkloadError {
    #[error(
        "OPENSHELL_RUN_AS={0}: no such user in /etc/passwd; add the user to the image or name one it has"
    )]
    NoSuchUser(String),
    #[error(
        "OPENSHELL_RUN_AS={0}: the workload may not run as root (uid 0), it could read the sandbox's credential; name an unprivileged user"
    )]
    Root(String),
    #[error("cannot prepare the home directory {path} of the workload user: {source}")]
    Home {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Workload {
    /// The supervisor's own identity: programs start as it is, nothing is switched.
    pub fn current() -> Workload {
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/"));
        Workload {
            name: std::env::var("USER").unwrap_or_default(),
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
            home,
            switch: false,
        }
    }

    /// `user` (a name or a numeric uid) looked up in `passwd` (the text of /etc/passwd).
    pub fn lookup(user: &str, passwd: &str) -> Result<Workload, WorkloadError> {
        let entry = passwd.lines().find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.len() >= 7 && (f[0] == user || f[2] == user)).then(|| {
                Some(Workload {
                    name: f[0].to_string(),
                    uid: f[2].parse().ok()?,
                    gid: f[3].parse().ok()?,
                    home: PathBuf::from(if f[5].is_empty() { "/" } else { f[5] }),
                    switch: true,
                })
            })
        });
        let workload = match entry.flatten() {
            Some(w) => w,
            None if user == DEFAULT_USER => Workload {
                name: DEFAULT_USER.into(),
                uid: FALLBACK_ID,
                gid: FALLBACK_ID,
                home: PathBuf::from(FALLBACK_HOME),
                switch: true,
            },
            None => return Err(WorkloadError::NoSuchUser(user.into())),
        };
        if workload.uid == 0 || workload.gid == 0 {
            return Err(WorkloadError::Root(user.into()));
        }
        Ok(workload)
    }

    /// The user named by `OPENSHELL_RUN_AS` (default [`DEFAULT_USER`]) when the supervisor
    /// runs as root; otherwise its own identity, since it could not switch anyway.
    pub fn from_env() -> Result<Workload, WorkloadError> {
        if !rustix::process::getuid().is_root() {
            return Ok(Workload::current());
        }
        let user = std::env::var("OPENSHELL_RUN_AS")
            .ok()
            .filter(|u| !u.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_USER.into());
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let workload = Workload::lookup(user.trim(), &passwd)?;
        if !passwd
            .lines()
            .any(|l| l.split(':').next() == Some(workload.name.as_str()))
        {
            // The fallback user: its home is ours to make. A user of the image keeps the
            // home the image gives it, or none.
            workload.prepare_home()?;
        }
        Ok(workload)
    }

    /// Creates the home directory, owned by the user, when it does not exist yet.
    fn prepare_home(&self) -> Result<(), WorkloadError> {
        if self.home.exists() {
            return Ok(());
        }
        let fail = |source| WorkloadError::Home {
            path: self.home.clone(),
            source,
        };
        std::fs::create_dir_all(&self.home).map_err(fail)?;
        rustix::fs::chown(
            &self.home,
            Some(rustix::process::Uid::from_raw(self.uid)),
            Some(rustix::process::Gid::from_raw(self.gid)),
        )
        .map_err(|e| fail(e.into()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&self.home, std::fs::Permissions::from_mode(0o750)).map_err(fail)
    }

    /// The directory programs start in: the home when it exists, else `/`.
    pub fn start_dir(&self) -> &Path {
        if self.home.is_dir() {
            &self.home
        } else {
            Path::new("/")
        }
    }

    /// Where the main process starts: `cwd` (the image's working directory) when this user
    /// may enter it, else the home.
    pub fn main_dir(&self, cwd: &Path) -> PathBuf {
        use std::os::unix::fs::MetadataExt;
        let enterable = std::fs::metadata(cwd).is_ok_and(|m| {
            let mode = m.mode();
            if !self.switch || m.uid() == self.uid {
                mode & 0o100 != 0
            } else if m.gid() == self.gid {
                mode & 0o010 != 0
            } else {
                mode & 0o001 != 0
            }
        });
        if enterable {
            cwd.to_path_buf()
        } else {
            self.start_dir().to_path_buf()
        }
    }

    /// `HOME`, `USER` and `LOGNAME` for a program started as this user.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![("HOME".into(), self.home.display().to_string())];
        if !self.name.is_empty() {
            env.push(("USER".into(), self.name.clone()));
            env.push(("LOGNAME".into(), self.name.clone()));
        }
        env
    }
}

/// Closes the supervisor to its own workload, once, before anything is started:
/// - not dumpable: `/proc/1/mem`, `/proc/1/environ` and ptrace need CAP_SYS_PTRACE, which
///   the workload never has;
/// - no new privileges, inherited by every child: no setuid binary in the image can give
///   the workload root back.
pub fn seal_supervisor() -> std::io::Result<()> {
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)?;
    rustix::thread::set_no_new_privs(true)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
                          agent:x:1001:1002::/home/agent:/bin/sh\n\
                          broken:x:abc:1::/:/bin/sh\n";

    #[test]
    fn users_are_found_by_name_or_uid_and_root_is_refused() {
        let a = Workload::lookup("agent", PASSWD).unwrap();
        assert_eq!(
            (a.uid, a.gid, a.home.as_path()),
            (1001, 1002, Path::new("/home/agent"))
        );
        assert_eq!(Workload::lookup("1001", PASSWD).unwrap(), a);
        let e = Workload::lookup("root", PASSWD).unwrap_err().to_string();
        assert!(e.contains("may not run as root"), "{e}");
        let e = Workload::lookup("nobody-here", PASSWD)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("OPENSHELL_RUN_AS=nobody-here") && e.contains("/etc/passwd"),
            "{e}"
        );
        assert!(Workload::lookup("broken", PASSWD).is_err());
    }

    #[test]
    fn the_default_user_falls_back_to_uid_1000() {
        let w = Workload::lookup(DEFAULT_USER, PASSWD).unwrap();
        assert_eq!((w.uid, w.gid), (FALLBACK_ID, FALLBACK_ID));
        assert_eq!(w.home, Path::new(FALLBACK_HOME));
        assert!(w.switch);
    }
}
