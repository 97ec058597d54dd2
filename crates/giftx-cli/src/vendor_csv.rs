//! The CSV file of freshly issued codes for the print vendor:
//! `serial,code,login_key`, gzip-compressed when the name ends in `.gz`.
//!
//! The file is written as `FILE.partial` (created new, mode 0600: it holds
//! bearer credentials) and only linked into place as `FILE` once every row
//! is written, flushed and fsynced; the directory is fsynced after. An
//! existing `FILE` is never overwritten. A run that fails leaves its rows in
//! `FILE.partial`, never a `FILE` that looks complete.
//!
//! The same writer serves the other operator exports (shipments,
//! preferences) through [`VendorCsv::create_with_header`] and
//! [`VendorCsv::write_record`].

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;

use crate::error::{Error, Result};

/// The header row.
pub const HEADER: &[u8] = b"serial,code,login_key\n";

/// Large enough that a million rows cost a few dozen write calls.
const BUFFER_BYTES: usize = 1 << 20;

enum Sink {
    Plain(BufWriter<File>),
    Gz(BufWriter<GzEncoder<File>>),
}

impl Sink {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Sink::Plain(w) => w.write_all(bytes),
            Sink::Gz(w) => w.write_all(bytes),
        }
    }

    /// Flushes every buffer, ends the gzip stream and fsyncs the file.
    fn finish(self) -> io::Result<()> {
        let file = match self {
            Sink::Plain(w) => w.into_inner().map_err(io::IntoInnerError::into_error)?,
            Sink::Gz(w) => w
                .into_inner()
                .map_err(io::IntoInnerError::into_error)?
                .finish()?,
        };
        file.sync_all()
    }
}

/// A code file being written. Rows go to `FILE.partial` until [`finish`].
///
/// [`finish`]: VendorCsv::finish
pub struct VendorCsv {
    sink: Sink,
    target: PathBuf,
    partial: PathBuf,
    rows: u64,
}

impl std::fmt::Debug for VendorCsv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VendorCsv")
            .field("target", &self.target)
            .field("rows", &self.rows)
            .finish_non_exhaustive()
    }
}

/// `FILE.partial`, beside `FILE`.
pub fn partial_path(target: &Path) -> PathBuf {
    let mut name: OsString = target.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

fn is_gzip(target: &Path) -> bool {
    target
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gz"))
}

impl VendorCsv {
    /// Starts `target`: refuses it if it exists, creates `target.partial`
    /// (refused too if it exists) and writes the header row.
    ///
    /// # Errors
    /// [`Error::Invalid`] when a file is in the way, [`Error::Io`] otherwise.
    pub fn create(target: &Path) -> Result<VendorCsv> {
        Self::create_with_header(target, HEADER)
    }

    /// As [`create`](Self::create), with another header row (`header`
    /// ends with a newline); rows then go through
    /// [`write_record`](Self::write_record).
    ///
    /// # Errors
    /// As for [`create`](Self::create).
    pub fn create_with_header(target: &Path, header: &[u8]) -> Result<VendorCsv> {
        if target.symlink_metadata().is_ok() {
            return Err(Error::Invalid(format!(
                "{} already exists; giftctl never overwrites a code file, choose another name",
                target.display()
            )));
        }
        let partial = partial_path(target);
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(&partial).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                Error::Invalid(format!(
                    "{} already exists (left by an earlier failed run?); remove it or choose another name",
                    partial.display()
                ))
            } else {
                Error::io(format!("cannot create {}", partial.display()))(e)
            }
        })?;
        let sink = if is_gzip(target) {
            Sink::Gz(BufWriter::with_capacity(
                BUFFER_BYTES,
                GzEncoder::new(file, Compression::default()),
            ))
        } else {
            Sink::Plain(BufWriter::with_capacity(BUFFER_BYTES, file))
        };
        let mut csv = VendorCsv {
            sink,
            target: target.to_owned(),
            partial,
            rows: 0,
        };
        csv.sink
            .write_all(header)
            .map_err(Error::io(format!("cannot write {}", csv.partial.display())))?;
        Ok(csv)
    }

    /// Appends one row. Allocation-free: fields that need no quoting (codes
    /// and login keys never do) are copied as they are.
    ///
    /// # Errors
    /// The write error; the row may be partly written.
    pub fn write_row(&mut self, serial: i64, code: &str, login_key: &str) -> io::Result<()> {
        let mut digits = [0u8; 20];
        self.sink.write_all(format_i64(serial, &mut digits))?;
        self.sink.write_all(b",")?;
        write_field(&mut self.sink, code)?;
        self.sink.write_all(b",")?;
        write_field(&mut self.sink, login_key)?;
        self.sink.write_all(b"\n")?;
        self.rows += 1;
        Ok(())
    }

    /// Appends one row of any number of fields, quoted as RFC 4180 asks.
    ///
    /// # Errors
    /// The write error; the row may be partly written.
    pub fn write_record(&mut self, fields: &[&str]) -> io::Result<()> {
        for (i, f) in fields.iter().enumerate() {
            if i > 0 {
                self.sink.write_all(b",")?;
            }
            write_field(&mut self.sink, f)?;
        }
        self.sink.write_all(b"\n")?;
        self.rows += 1;
        Ok(())
    }

    /// Rows written so far (header aside).
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Where the complete file goes.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Where the rows are until the file is complete.
    pub fn partial(&self) -> &Path {
        &self.partial
    }

    /// Completes the file: flush, end the gzip stream, fsync, link
    /// `FILE.partial` to `FILE` (never replacing an existing `FILE`), remove
    /// the partial name and fsync the directory. Returns the rows written.
    ///
    /// # Errors
    /// [`Error::Io`] (or [`Error::Invalid`] if `FILE` appeared meanwhile);
    /// the rows then stay in `FILE.partial`.
    pub fn finish(self) -> Result<u64> {
        let VendorCsv {
            sink,
            target,
            partial,
            rows,
        } = self;
        sink.finish().map_err(Error::io(format!(
            "cannot flush and sync {}",
            partial.display()
        )))?;
        match fs::hard_link(&partial, &target) {
            Ok(()) => fs::remove_file(&partial)
                .map_err(Error::io(format!("cannot remove {}", partial.display())))?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(Error::Invalid(format!(
                    "{} appeared while writing; the codes are in {}",
                    target.display(),
                    partial.display()
                )));
            }
            // Filesystems without hard links: a rename, after checking that
            // nothing is in the way (not atomic with the check, but the
            // target was also absent when we started).
            Err(_) => {
                if target.symlink_metadata().is_ok() {
                    return Err(Error::Invalid(format!(
                        "{} appeared while writing; the codes are in {}",
                        target.display(),
                        partial.display()
                    )));
                }
                fs::rename(&partial, &target).map_err(Error::io(format!(
                    "cannot rename {} to {}",
                    partial.display(),
                    target.display()
                )))?;
            }
        }
        sync_parent_dir(&target)?;
        Ok(rows)
    }

    /// Gives up: flushes and syncs what was written into `FILE.partial`
    /// (a readable, shorter file) and leaves it there. With no row written
    /// the partial file is removed instead. Returns the rows written.
    ///
    /// # Errors
    /// The flush or remove error, for the failure message.
    pub fn abandon(self) -> (u64, io::Result<()>) {
        let rows = self.rows;
        let partial = self.partial.clone();
        let res = self.sink.finish();
        if rows == 0 {
            return (rows, fs::remove_file(&partial));
        }
        (rows, res)
    }
}

fn sync_parent_dir(target: &Path) -> Result<()> {
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io(format!(
            "cannot sync directory {}",
            dir.display()
        )))
}

/// Writes one CSV field, quoted only when RFC 4180 asks for it.
fn write_field(sink: &mut Sink, field: &str) -> io::Result<()> {
    let needs_quotes = field
        .bytes()
        .any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r'));
    if !needs_quotes {
        return sink.write_all(field.as_bytes());
    }
    sink.write_all(b"\"")?;
    for (i, part) in field.split('"').enumerate() {
        if i > 0 {
            sink.write_all(b"\"\"")?;
        }
        sink.write_all(part.as_bytes())?;
    }
    sink.write_all(b"\"")
}

/// Decimal digits of `n` in `buf`, without allocating.
fn format_i64(n: i64, buf: &mut [u8; 20]) -> &[u8] {
    let negative = n < 0;
    let mut v = n.unsigned_abs();
    let mut i = buf.len();
    loop {
        i -= 1;
        // v % 10 < 10.
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if negative {
        // i64::MIN has 19 digits, so one slot is left for the sign.
        i -= 1;
        buf[i] = b'-';
    }
    &buf[i..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn read_rows(data: &[u8]) -> Vec<Vec<String>> {
        csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(data)
            .records()
            .map(|r| r.unwrap().iter().map(str::to_owned).collect())
            .collect()
    }

    #[test]
    fn formats_integers_without_allocating() {
        let mut b = [0u8; 20];
        assert_eq!(format_i64(0, &mut b), b"0");
        assert_eq!(format_i64(1_000_000, &mut b), b"1000000");
        assert_eq!(format_i64(-42, &mut b), b"-42");
        assert_eq!(
            format_i64(i64::MAX, &mut b),
            i64::MAX.to_string().as_bytes()
        );
        assert_eq!(
            format_i64(i64::MIN, &mut b),
            i64::MIN.to_string().as_bytes()
        );
    }

    #[test]
    fn writes_header_and_rows_and_moves_into_place() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("codes.csv");
        let mut w = VendorCsv::create(&target).unwrap();
        assert!(partial_path(&target).exists());
        assert!(!target.exists());
        w.write_row(1, "AB12-CD34-EF56-GH7J", "K8M9-N0PQ").unwrap();
        w.write_row(2, "needs,quote", "has \"quotes\"").unwrap();
        assert_eq!(w.finish().unwrap(), 2);
        assert!(!partial_path(&target).exists());
        let text = fs::read_to_string(&target).unwrap();
        assert!(text.starts_with("serial,code,login_key\n1,AB12-CD34-EF56-GH7J,K8M9-N0PQ\n"));
        let rows = read_rows(text.as_bytes());
        assert_eq!(rows[0], ["serial", "code", "login_key"]);
        assert_eq!(rows[2], ["2", "needs,quote", "has \"quotes\""]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&target).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "code files are private to their owner");
        }
    }

    #[test]
    fn other_exports_get_their_own_header_and_quoted_records() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("shipments.csv");
        let mut w = VendorCsv::create_with_header(&target, b"reference,state,tracking\n").unwrap();
        w.write_record(&["SHP-1", "ORDERED", ""]).unwrap();
        w.write_record(&["SHP-2", "SHIPPED", "JP,\"12\""]).unwrap();
        assert_eq!(w.finish().unwrap(), 2);
        let rows = read_rows(fs::read(&target).unwrap().as_slice());
        assert_eq!(rows[0], ["reference", "state", "tracking"]);
        assert_eq!(rows[1], ["SHP-1", "ORDERED", ""]);
        assert_eq!(rows[2], ["SHP-2", "SHIPPED", "JP,\"12\""]);
    }

    #[test]
    fn gz_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("codes.csv.gz");
        let mut w = VendorCsv::create(&target).unwrap();
        for i in 1..=10_000 {
            w.write_row(i, &format!("CODE{i:012}"), "LOGIN-KEY0")
                .unwrap();
        }
        assert_eq!(w.finish().unwrap(), 10_000);
        let mut text = String::new();
        flate2::read::GzDecoder::new(File::open(&target).unwrap())
            .read_to_string(&mut text)
            .unwrap();
        let rows = read_rows(text.as_bytes());
        assert_eq!(rows.len(), 10_001);
        assert_eq!(rows[0], ["serial", "code", "login_key"]);
        assert_eq!(rows[10_000], ["10000", "CODE000000010000", "LOGIN-KEY0"]);
    }

    #[test]
    fn refuses_to_overwrite_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("codes.csv");
        fs::write(&target, "precious").unwrap();
        let err = VendorCsv::create(&target).unwrap_err();
        assert!(
            matches!(err, Error::Invalid(ref m) if m.contains("already exists")),
            "{err}"
        );
        assert_eq!(fs::read_to_string(&target).unwrap(), "precious");
        assert!(!partial_path(&target).exists());
    }

    #[test]
    fn refuses_a_leftover_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("codes.csv");
        fs::write(partial_path(&target), "old").unwrap();
        let err = VendorCsv::create(&target).unwrap_err();
        assert!(
            matches!(err, Error::Invalid(ref m) if m.contains(".partial")),
            "{err}"
        );
        assert_eq!(fs::read_to_string(partial_path(&target)).unwrap(), "old");
    }

    #[test]
    fn never_replaces_a_file_that_appears_while_writing() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("codes.csv");
        let mut w = VendorCsv::create(&target).unwrap();
        w.write_row(1, "A", "B").unwrap();
        fs::write(&target, "someone else's").unwrap();
        let err = w.finish().unwrap_err();
        assert!(
            matches!(err, Error::Invalid(ref m) if m.contains("appeared")),
            "{err}"
        );
        assert_eq!(fs::read_to_string(&target).unwrap(), "someone else's");
        assert!(
            fs::read_to_string(partial_path(&target))
                .unwrap()
                .ends_with("1,A,B\n")
        );
    }

    #[test]
    fn abandoned_file_keeps_its_rows_in_the_partial_file_and_readable_gzip() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("codes.csv.gz");
        let mut w = VendorCsv::create(&target).unwrap();
        w.write_row(1, "A", "B").unwrap();
        let (rows, res) = w.abandon();
        res.unwrap();
        assert_eq!(rows, 1);
        assert!(!target.exists());
        let mut text = String::new();
        flate2::read::GzDecoder::new(File::open(partial_path(&target)).unwrap())
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "serial,code,login_key\n1,A,B\n");
    }

    #[test]
    fn abandoned_file_without_rows_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("codes.csv");
        let w = VendorCsv::create(&target).unwrap();
        let (rows, res) = w.abandon();
        res.unwrap();
        assert_eq!(rows, 0);
        assert!(!partial_path(&target).exists());
    }

    #[test]
    fn file_in_the_current_directory_syncs_its_parent() {
        // A bare file name has an empty parent: the sync falls back to ".".
        sync_parent_dir(Path::new("codes.csv")).unwrap();
    }
}
