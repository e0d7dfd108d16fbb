//! A writer for the `newc` cpio format, the one the kernel unpacks as an initramfs. The
//! driver appends a small archive (its init script and the sandbox's environment) to the
//! base archive made by scripts/build-vm-kernel; the kernel unpacks concatenated archives
//! in order, later files replacing earlier ones.

/// One file of an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path inside the archive, without a leading `/`.
    pub path: String,
    /// Permission bits (`0o600`); directories get `S_IFDIR`, files `S_IFREG`.
    pub mode: u32,
    /// `None` for a directory.
    pub data: Option<Vec<u8>>,
}

impl Entry {
    pub fn dir(path: &str, mode: u32) -> Entry {
        Entry {
            path: path.into(),
            mode,
            data: None,
        }
    }

    pub fn file(path: &str, mode: u32, data: impl Into<Vec<u8>>) -> Entry {
        Entry {
            path: path.into(),
            mode,
            data: Some(data.into()),
        }
    }
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn header(out: &mut Vec<u8>, ino: u32, mode: u32, nlink: u32, size: usize, name: &str) {
    // newc: magic, then 13 fields of 8 hex digits; owner root, mtime 0, no devices.
    let fields = [
        ino,
        mode,
        0,
        0,
        nlink,
        0,
        size as u32,
        0,
        0,
        0,
        0,
        name.len() as u32 + 1,
        0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
}

/// The archive of `entries`, in order, with its trailer.
pub fn archive(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let path = e.path.trim_start_matches('/');
        match &e.data {
            None => header(
                &mut out,
                i as u32 + 1,
                S_IFDIR | (e.mode & 0o7777),
                2,
                0,
                path,
            ),
            Some(data) => {
                header(
                    &mut out,
                    i as u32 + 1,
                    S_IFREG | (e.mode & 0o7777),
                    1,
                    data.len(),
                    path,
                );
                out.extend_from_slice(data);
                pad4(&mut out);
            }
        }
    }
    header(&mut out, 0, 0, 1, 0, "TRAILER!!!");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_layout() {
        let a = archive(&[
            Entry::dir("openshell", 0o700),
            Entry::file("openshell/env", 0o600, "ab"),
        ]);
        assert!(a.starts_with(b"070701"));
        assert_eq!(a.len() % 4, 0);
        let text = String::from_utf8_lossy(&a);
        // The directory's mode, the file's mode and size (2), the names and the trailer.
        assert!(text.contains("000041c0"), "{text}");
        assert!(text.contains("00008180"), "{text}");
        assert!(text.contains("openshell/env\0"), "{text}");
        assert!(text.contains("TRAILER!!!\0"), "{text}");
        let file_hdr = text.find("openshell/env").unwrap() - 110;
        assert_eq!(&text[file_hdr + 54..file_hdr + 62], "00000002");
        let data = text.find("openshell/env\0").unwrap() + "openshell/env\0".len();
        let data = data.next_multiple_of(4);
        assert_eq!(&a[data..data + 2], b"ab");
    }
}
