//! The stock file an operator imports: CSV with a header row naming the
//! columns `code`, `pin` and optionally `expire_time` (RFC 3339), in any
//! order; gzip-compressed when the name ends in `.gz` (or the content
//! starts with the gzip magic bytes).
//!
//! ```text
//! code,pin,expire_time
//! EDY-0000-0000-0001,12345678,2027-03-31T23:59:59+09:00
//! EDY-0000-0000-0002,23456789,
//! ```
//!
//! Every problem is reported with its line number. Codes and PINs are
//! bearer secrets: no message ever repeats them.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use flate2::read::MultiGzDecoder;

use crate::error::{Error, Result};
use crate::time::parse_rfc3339;

/// Longest code or PIN, in characters (the server's limit).
pub const MAX_FIELD_CHARS: usize = 200;
/// Problems listed before a check gives up.
pub const MAX_REPORTED: usize = 10;

/// One item of the file.
#[derive(Clone, PartialEq, Eq)]
pub struct StockRow {
    /// Line of the file the row starts on (1-based; line 1 is the header).
    pub line: u64,
    /// The item's code, trimmed.
    pub code: String,
    /// Its PIN, trimmed; empty if none.
    pub pin: String,
    /// When it stops being usable, if it does.
    pub expire_time: Option<prost_types::Timestamp>,
}

impl std::fmt::Debug for StockRow {
    // Bearer secrets: the line only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StockRow")
            .field("line", &self.line)
            .finish_non_exhaustive()
    }
}

/// A row that cannot be imported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowError {
    /// Its line (0 when the reader could not tell).
    pub line: u64,
    /// What is wrong.
    pub message: String,
    /// Reading cannot go on after it (an I/O or decompression error).
    pub fatal: bool,
}

impl std::fmt::Display for RowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line > 0 {
            write!(f, "line {}: {}", self.line, self.message)
        } else {
            f.write_str(&self.message)
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Columns {
    code: usize,
    pin: usize,
    expire_time: Option<usize>,
    count: usize,
}

/// Reads a stock file row by row.
///
/// Lines are read one by one (so line numbers are exact); fields follow
/// RFC 4180 (`"a, b"`, `""` for a quote) except that a quoted field cannot
/// span lines, which codes and PINs never need.
pub struct StockReader {
    input: Box<dyn BufRead + Send>,
    columns: Columns,
    line: u64,
    buf: Vec<u8>,
}

impl std::fmt::Debug for StockReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StockReader")
            .field("columns", &self.columns)
            .field("line", &self.line)
            .finish_non_exhaustive()
    }
}

fn is_gzip_name(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gz"))
}

/// Opens `path`, decompressing gzip (by name or by content).
fn open_file(path: &Path) -> Result<Box<dyn Read + Send>> {
    let file = File::open(path).map_err(Error::io(format!("cannot open {}", path.display())))?;
    let mut buf = BufReader::with_capacity(1 << 16, file);
    let magic = buf
        .fill_buf()
        .map_err(Error::io(format!("cannot read {}", path.display())))?
        .starts_with(&[0x1f, 0x8b]);
    if magic || is_gzip_name(path) {
        Ok(Box::new(MultiGzDecoder::new(buf)))
    } else {
        Ok(Box::new(buf))
    }
}

/// Splits one line into fields.
fn split_fields(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            let mut closed = false;
            while let Some(c) = chars.next() {
                if c == '"' {
                    if chars.peek() == Some(&'"') {
                        chars.next();
                        field.push('"');
                    } else {
                        closed = true;
                        break;
                    }
                } else {
                    field.push(c);
                }
            }
            if !closed {
                return Err(
                    "a quoted field is not closed on its line (fields cannot span lines)".into(),
                );
            }
            while chars.peek() == Some(&' ') {
                chars.next();
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => fields.push(field),
                Some(_) => {
                    return Err(
                        "unexpected text after a closing quote (write a quote inside \
                                a quoted field as \"\")"
                            .into(),
                    );
                }
            }
        } else {
            let mut end = true;
            for c in chars.by_ref() {
                if c == ',' {
                    end = false;
                    break;
                }
                field.push(c);
            }
            fields.push(field);
            if end {
                return Ok(fields);
            }
        }
    }
}

/// A line as read (without its line ending), or the end of the file.
enum Line {
    Text(String),
    End,
}

impl StockReader {
    /// Opens a stock file and checks its header.
    ///
    /// # Errors
    /// [`Error::Io`] when it cannot be opened, [`Error::Invalid`] for a
    /// missing or wrong header (naming the file).
    pub fn open(path: &Path) -> Result<StockReader> {
        let r = open_file(path)?;
        Self::from_reader(r).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
    }

    /// Reads CSV from `r`, header first.
    ///
    /// # Errors
    /// A [`RowError`] (line 1) for a missing or wrong header.
    pub fn from_reader(r: Box<dyn Read + Send>) -> Result<StockReader, RowError> {
        let mut reader = StockReader {
            input: Box::new(BufReader::with_capacity(1 << 16, r)),
            columns: Columns {
                code: 0,
                pin: 0,
                expire_time: None,
                count: 0,
            },
            line: 0,
            buf: Vec::with_capacity(256),
        };
        let header = match reader.read_line()? {
            Line::End => {
                return Err(RowError {
                    line: 1,
                    message: "the file is empty; expected a header row code,pin[,expire_time]"
                        .into(),
                    fatal: true,
                });
            }
            Line::Text(t) => t,
        };
        let header = header.trim_start_matches('\u{feff}');
        let names = split_fields(header).map_err(|message| RowError {
            line: 1,
            message,
            fatal: true,
        })?;
        reader.columns = parse_header(&names)?;
        Ok(reader)
    }

    fn read_line(&mut self) -> Result<Line, RowError> {
        self.buf.clear();
        match self.input.read_until(b'\n', &mut self.buf) {
            Ok(0) => return Ok(Line::End),
            Ok(_) => {}
            Err(e) => {
                return Err(RowError {
                    line: self.line + 1,
                    message: if matches!(
                        e.kind(),
                        io::ErrorKind::InvalidInput
                            | io::ErrorKind::InvalidData
                            | io::ErrorKind::UnexpectedEof
                    ) {
                        format!("cannot read the file (damaged gzip?): {e}")
                    } else {
                        format!("cannot read the file: {e}")
                    },
                    fatal: true,
                });
            }
        }
        self.line += 1;
        let mut bytes = self.buf.as_slice();
        if let Some(b) = bytes.strip_suffix(b"\n") {
            bytes = b;
        }
        if let Some(b) = bytes.strip_suffix(b"\r") {
            bytes = b;
        }
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(Line::Text(s.to_owned())),
            Err(_) => Err(RowError {
                line: self.line,
                message: "is not valid UTF-8 (save the file as UTF-8)".into(),
                fatal: false,
            }),
        }
    }

    /// The next row, or `None` at the end of the file.
    pub fn next_row(&mut self) -> Option<Result<StockRow, RowError>> {
        loop {
            let text = match self.read_line() {
                Ok(Line::End) => return None,
                Ok(Line::Text(t)) => t,
                Err(e) => return Some(Err(e)),
            };
            // A line of only spaces (or only commas) is taken as blank.
            if text.chars().all(|c| matches!(c, ' ' | ',' | '\t')) {
                continue;
            }
            let line = self.line;
            return Some(
                split_fields(&text)
                    .map_err(|message| RowError {
                        line,
                        message,
                        fatal: false,
                    })
                    .and_then(|fields| parse_row(&fields, line, self.columns)),
            );
        }
    }
}

fn parse_header(h: &[String]) -> Result<Columns, RowError> {
    let bad = |message: String| RowError {
        line: 1,
        message,
        fatal: true,
    };
    let (mut code, mut pin, mut expire_time) = (None, None, None);
    for (i, name) in h.iter().enumerate() {
        let name = name.trim().to_ascii_lowercase();
        let slot = match name.as_str() {
            "code" => &mut code,
            "pin" => &mut pin,
            "expire_time" => &mut expire_time,
            other => {
                return Err(bad(format!(
                    "unknown column {other:?} in the header; expected code,pin[,expire_time]"
                )));
            }
        };
        if slot.replace(i).is_some() {
            return Err(bad(format!("column {name:?} appears twice in the header")));
        }
    }
    match (code, pin) {
        (Some(code), Some(pin)) => Ok(Columns {
            code,
            pin,
            expire_time,
            count: h.len(),
        }),
        _ => Err(bad(
            "the header must name the columns code and pin (and optionally expire_time), \
             e.g. code,pin,expire_time"
                .into(),
        )),
    }
}

fn check_field(name: &str, value: &str) -> Result<(), String> {
    if value.chars().count() > MAX_FIELD_CHARS {
        return Err(format!(
            "{name} is longer than {MAX_FIELD_CHARS} characters"
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{name} contains control characters"));
    }
    Ok(())
}

fn parse_row(r: &[String], line: u64, c: Columns) -> Result<StockRow, RowError> {
    let bad = |message: String| RowError {
        line,
        message,
        fatal: false,
    };
    if r.len() != c.count {
        return Err(bad(format!(
            "expected {} fields as in the header, found {}",
            c.count,
            r.len()
        )));
    }
    let field = |i: usize| r.get(i).map_or("", |f| f.trim());
    let code = field(c.code);
    if code.is_empty() {
        return Err(bad("code is empty".into()));
    }
    check_field("code", code).map_err(bad)?;
    let pin = field(c.pin);
    check_field("pin", pin).map_err(bad)?;
    let expire_time = match c.expire_time.map(field) {
        None | Some("") => None,
        Some(t) => Some(parse_rfc3339(t).map_err(|e| bad(format!("expire_time: {e}")))?),
    };
    Ok(StockRow {
        line,
        code: code.to_owned(),
        pin: pin.to_owned(),
        expire_time,
    })
}

/// Reads all of `r` and counts its rows, collecting up to
/// [`MAX_REPORTED`] problems.
///
/// # Errors
/// The problems found (each with its line), the header's first.
pub fn check(r: Box<dyn Read + Send>) -> Result<u64, Vec<RowError>> {
    let mut reader = StockReader::from_reader(r).map_err(|e| vec![e])?;
    let mut rows = 0u64;
    let mut problems = Vec::new();
    while let Some(row) = reader.next_row() {
        match row {
            Ok(_) => rows += 1,
            Err(e) => {
                let fatal = e.fatal;
                problems.push(e);
                if fatal || problems.len() >= MAX_REPORTED {
                    break;
                }
            }
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    if rows == 0 {
        return Err(vec![RowError {
            line: 0,
            message: "the file holds a header but no items".into(),
            fatal: true,
        }]);
    }
    Ok(rows)
}

/// Checks the file at `path` before anything is sent: every row must be
/// importable. Returns the number of items.
///
/// # Errors
/// [`Error::Invalid`] listing the problems with their lines; [`Error::Io`]
/// when the file cannot be opened.
pub fn check_file(path: &Path) -> Result<u64> {
    check(open_file(path)?).map_err(|problems| {
        let more = if problems.len() >= MAX_REPORTED && !problems.iter().any(|p| p.fatal) {
            format!(" (first {MAX_REPORTED} shown)")
        } else {
            String::new()
        };
        Error::Invalid(format!(
            "{} cannot be imported{more}; nothing was sent: {}",
            path.display(),
            problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn reader(text: &str) -> Box<dyn Read + Send> {
        Box::new(io::Cursor::new(text.as_bytes().to_vec()))
    }

    fn rows(text: &str) -> Vec<Result<StockRow, RowError>> {
        let mut r = StockReader::from_reader(reader(text)).unwrap();
        let mut out = Vec::new();
        while let Some(row) = r.next_row() {
            out.push(row);
        }
        out
    }

    #[test]
    fn reads_code_pin_and_optional_expiry_in_any_column_order() {
        let out = rows(
            "\u{feff}Code, PIN ,expire_time\n\
             EDY-0001,1234,2027-03-31T23:59:59+09:00\n\
             \n\
             \"EDY,0002\", ,\n  EDY-0003 ,5678,\n",
        );
        let out: Vec<StockRow> = out.into_iter().map(Result::unwrap).collect();
        assert_eq!(out.len(), 3);
        assert_eq!((out[0].line, out[0].code.as_str()), (2, "EDY-0001"));
        assert_eq!(out[0].pin, "1234");
        assert_eq!(
            out[0].expire_time.map(|t| t.seconds),
            Some(1_806_505_199) // 2027-03-31T14:59:59Z
        );
        assert_eq!((out[1].line, out[1].code.as_str()), (4, "EDY,0002"));
        assert_eq!((out[1].pin.as_str(), out[1].expire_time), ("", None));
        assert_eq!((out[2].line, out[2].code.as_str()), (5, "EDY-0003"));

        let out = rows("pin,code\n99,A1\n");
        let r = out[0].as_ref().unwrap();
        assert_eq!((r.code.as_str(), r.pin.as_str()), ("A1", "99"));
    }

    #[test]
    fn malformed_rows_are_reported_with_their_line_and_without_the_code() {
        let long = "X".repeat(201);
        let text = format!(
            "code,pin,expire_time\n\
             ,1,\n\
             SECRET-1,2\n\
             SECRET-2,3,2027-02-30T00:00:00Z\n\
             {long},4,\n\
             SECRET-3,{long},\n\
             SECRET-4,5,2027-01-01T00:00:00Z\n"
        );
        let out = rows(&text);
        let errs: Vec<String> = out
            .iter()
            .filter_map(|r| r.as_ref().err().map(ToString::to_string))
            .collect();
        assert_eq!(errs.len(), 5, "{errs:?}");
        assert_eq!(errs[0], "line 2: code is empty");
        assert_eq!(
            errs[1],
            "line 3: expected 3 fields as in the header, found 2"
        );
        assert!(errs[2].starts_with("line 4: expire_time: "), "{}", errs[2]);
        assert!(errs[2].contains("RFC 3339"), "{}", errs[2]);
        assert_eq!(errs[3], "line 5: code is longer than 200 characters");
        assert_eq!(errs[4], "line 6: pin is longer than 200 characters");
        for e in &errs {
            assert!(!e.contains("SECRET") && !e.contains("XXXX"), "{e}");
        }
        assert!(out[5].is_ok());
    }

    #[test]
    fn quoted_fields_follow_rfc_4180_on_one_line() {
        assert_eq!(
            split_fields(r#"a, "b,c" ,"say ""hi""",,"#).unwrap(),
            ["a", "b,c", "say \"hi\"", "", ""]
        );
        assert!(split_fields(r#""open"#).unwrap_err().contains("not closed"));
        assert!(
            split_fields(r#""a"b,c"#)
                .unwrap_err()
                .contains("after a closing quote")
        );
        let out = rows("code,pin\n\"A\n\nB,1\r\n");
        assert_eq!(out[0].as_ref().unwrap_err().line, 2);
        assert_eq!(out[1].as_ref().unwrap().line, 4);
    }

    #[test]
    fn headers_must_name_code_and_pin() {
        for (text, hint) in [
            ("", "empty"),
            ("code\nA\n", "code and pin"),
            ("code,pin,colour\nA,1,red\n", "unknown column \"colour\""),
            ("code,pin,code\n", "twice"),
            ("EDY-0001,1234\n", "unknown column"),
        ] {
            let e = StockReader::from_reader(reader(text)).unwrap_err();
            assert_eq!(e.line, 1, "{text}");
            assert!(e.message.contains(hint), "{text}: {e}");
        }
    }

    #[test]
    fn check_counts_rows_and_lists_problems() {
        assert_eq!(check(reader("code,pin\nA,1\nB,2\n\n")).unwrap(), 2);
        let e = check(reader("code,pin\n")).unwrap_err();
        assert!(e[0].message.contains("no items"));
        let mut text = String::from("code,pin\n");
        for _ in 0..20 {
            text.push_str(",1\n");
        }
        assert_eq!(check(reader(&text)).unwrap_err().len(), MAX_REPORTED);
        let bad_utf8: Vec<u8> = b"code,pin\nA\xff,1\nB,2\n".to_vec();
        let e = check(Box::new(io::Cursor::new(bad_utf8))).unwrap_err();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].line, 2);
        assert!(e[0].message.contains("UTF-8"));
    }

    #[test]
    fn gzip_files_are_read_by_name_or_content() {
        let dir = tempfile::tempdir().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"code,pin\nA,1\nB,2\nC,3\n").unwrap();
        let bytes = gz.finish().unwrap();
        let named = dir.path().join("stock.csv.gz");
        std::fs::write(&named, &bytes).unwrap();
        assert_eq!(check_file(&named).unwrap(), 3);
        let unnamed = dir.path().join("stock.csv");
        std::fs::write(&unnamed, &bytes).unwrap();
        assert_eq!(check_file(&unnamed).unwrap(), 3);
        let mut r = StockReader::open(&unnamed).unwrap();
        assert_eq!(r.next_row().unwrap().unwrap().code, "A");

        let broken = dir.path().join("broken.csv.gz");
        std::fs::write(&broken, &bytes[..bytes.len() / 2]).unwrap();
        let e = check_file(&broken).unwrap_err().to_string();
        assert!(e.contains("cannot read the file"), "{e}");

        let bad = dir.path().join("bad.csv");
        std::fs::write(&bad, "code,pin\n,1\n").unwrap();
        let e = check_file(&bad).unwrap_err().to_string();
        assert!(
            e.contains("bad.csv cannot be imported; nothing was sent: line 2: code is empty"),
            "{e}"
        );
        let e = check_file(&dir.path().join("missing.csv"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot open"), "{e}");
    }
}
