//! Where a big file is cut into byte ranges that producers read side by side. A range begins
//! where a record begins and knows that record's line, so the ranges of a file, read one after
//! another, give exactly what one reader of the whole file gives: the same records, the same
//! rejects, the same line numbers.
//!
//! Finding where records begin reads the file once, when the run is planned: after every `\n`
//! for JSONL; for CSV, after every `\n` that ends a record, following quotes exactly as
//! `csv_core` does (a field that begins with `"` runs to the next lone `"`, newlines inside it
//! being data and `""` a quote; a `"` anywhere else is data).

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use super::FileFormat;
use crate::source::ByteRange;

/// Bytes read at a time while looking for record starts.
const SCAN_BLOCK: usize = 1 << 20;

/// How one file is to be read.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Cut {
    /// Whole, by one reader: the file is no bigger than one range, or no record begins past
    /// the first range's nominal end.
    Whole,
    /// In these ranges (two or more), in file order, from its first byte to its size when
    /// planned.
    Ranges(Vec<ByteRange>),
    /// Whole, by one reader, because no cut can be trusted to fall between records: why.
    Unsafe(String),
}

/// Cuts the file at `path`, `size` bytes long, into ranges of about `split_bytes` (0: never):
/// a range begins at the first record start at or after its nominal offset, a multiple of
/// `split_bytes`.
pub(super) fn cut(path: &Path, format: FileFormat, size: u64, split_bytes: u64) -> io::Result<Cut> {
    if split_bytes == 0 || size <= split_bytes {
        return Ok(Cut::Whole);
    }
    let mut file = File::open(path)?.take(size);
    let mut scan = Scan::new(format, size, split_bytes);
    let mut block = vec![0; SCAN_BLOCK];
    loop {
        let read = fill(&mut file, &mut block)?;
        if read == 0 {
            break;
        }
        scan.block(&block[..read]);
    }
    Ok(scan.finish())
}

/// Reads until `block` is full or the input ends; how many bytes were read.
fn fill(input: &mut impl Read, block: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < block.len() {
        match input.read(&mut block[filled..]) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

/// Where a CSV reader is within a record, as far as record ends go (`csv_core`'s states,
/// folded to the four that decide whether a newline ends a record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quoting {
    /// At the start of a record or field: a `"` here opens a quoted field.
    FieldStart,
    /// In a field that did not begin with `"`: quotes are data.
    Unquoted,
    /// In a quoted field: newlines and commas are data.
    Quoted,
    /// Just after a `"` in a quoted field: another `"` is an escaped quote, anything else
    /// closes the field.
    QuotedQuote,
}

/// The state of one file's scan.
struct Scan {
    format: FileFormat,
    size: u64,
    split_bytes: u64,
    /// Offset of the next byte to scan.
    position: u64,
    /// Newlines before `position`.
    newlines: u64,
    /// The nominal offset the next range begins at or after.
    next_offset: u64,
    /// Where ranges after the first begin, with their first line.
    starts: Vec<(u64, u64)>,
    quoting: Quoting,
    /// A CSV record with something in it has begun: the header.
    header_begun: bool,
    /// A CSV record with something in it has ended: the header. Ranges begin after it, so that
    /// each range but the first holds data rows only (the header is read from the file's
    /// start).
    header_ended: bool,
    /// The line on which the quoted field being read opened.
    opened_on: u64,
}

impl Scan {
    fn new(format: FileFormat, size: u64, split_bytes: u64) -> Scan {
        Scan {
            format,
            size,
            split_bytes,
            position: 0,
            newlines: 0,
            next_offset: split_bytes,
            starts: Vec::new(),
            quoting: Quoting::FieldStart,
            header_begun: false,
            header_ended: false,
            opened_on: 0,
        }
    }

    /// Scans the next block of the file.
    fn block(&mut self, block: &[u8]) {
        match self.format {
            FileFormat::Jsonl => {
                for at in memchr::memchr_iter(b'\n', block) {
                    self.newlines += 1;
                    self.record_starts(self.position + at as u64 + 1);
                }
            }
            FileFormat::Csv => {
                // The reader skips one byte order mark; so does the scan (it may open a field).
                let skip = if self.position == 0 && block.starts_with(b"\xEF\xBB\xBF") {
                    3
                } else {
                    0
                };
                self.csv_block(&block[skip..], self.position + skip as u64);
            }
        }
        self.position += block.len() as u64;
    }

    /// Follows the quotes of a CSV block that begins at offset `offset`.
    fn csv_block(&mut self, block: &[u8], offset: u64) {
        let mut at = 0;
        while at < block.len() {
            if self.quoting == Quoting::Quoted {
                // Only a `"` ends a quoted field: jump to it, counting the newlines passed.
                let rest = &block[at..];
                let quote = memchr::memchr(b'"', rest);
                let passed = &rest[..quote.unwrap_or(rest.len())];
                self.newlines += memchr::memchr_iter(b'\n', passed).count() as u64;
                match quote {
                    Some(quote) => {
                        self.quoting = Quoting::QuotedQuote;
                        at += quote + 1;
                    }
                    None => at = block.len(),
                }
                continue;
            }
            let byte = block[at];
            at += 1;
            self.quoting = match (self.quoting, byte) {
                (_, b'\n' | b'\r') => {
                    self.header_ended |= self.header_begun;
                    if byte == b'\n' {
                        self.newlines += 1;
                        if self.header_ended {
                            self.record_starts(offset + at as u64);
                        }
                    }
                    Quoting::FieldStart
                }
                (_, b',') => {
                    self.header_begun = true;
                    Quoting::FieldStart
                }
                (Quoting::FieldStart, b'"') => {
                    self.header_begun = true;
                    self.opened_on = self.newlines + 1;
                    Quoting::Quoted
                }
                (Quoting::QuotedQuote, b'"') => Quoting::Quoted,
                _ => {
                    self.header_begun = true;
                    Quoting::Unquoted
                }
            };
        }
    }

    /// A record begins at offset `at`, on line `newlines + 1`: a range begins there if it is
    /// the first record start at or after the next nominal offset.
    fn record_starts(&mut self, at: u64) {
        if at >= self.next_offset && at < self.size {
            self.starts.push((at, self.newlines + 1));
            self.next_offset = (at / self.split_bytes + 1) * self.split_bytes;
        }
    }

    fn finish(self) -> Cut {
        if self.quoting == Quoting::Quoted {
            return Cut::Unsafe(format!(
                "the quoted field opened on line {} is never closed (unbalanced quotes), so \
                 no cut can be trusted to fall between records",
                self.opened_on
            ));
        }
        if self.starts.is_empty() {
            return Cut::Whole;
        }
        let mut ranges = Vec::with_capacity(self.starts.len() + 1);
        let (mut start, mut first_line) = (0, 1);
        for (at, line) in self.starts {
            ranges.push(ByteRange {
                start,
                end: at,
                first_line,
            });
            (start, first_line) = (at, line);
        }
        ranges.push(ByteRange {
            start,
            end: self.size,
            first_line,
        });
        Cut::Ranges(ranges)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut_text(format: FileFormat, text: &[u8], split_bytes: u64) -> Cut {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, text).unwrap();
        cut(&path, format, text.len() as u64, split_bytes).unwrap()
    }

    fn range(start: u64, end: u64, first_line: u64) -> ByteRange {
        ByteRange {
            start,
            end,
            first_line,
        }
    }

    #[test]
    fn files_split_jsonl_ranges_begin_after_the_first_newline_at_or_after_each_offset() {
        // Lines begin at 0, 4, 9, 10 (blank line 3), 16.
        let text = b"{a}\n{bb}\n\n{ccc}\n{d}";
        assert_eq!(
            cut_text(FileFormat::Jsonl, text, 5),
            Cut::Ranges(vec![
                range(0, 9, 1),
                range(9, 10, 3),
                range(10, 16, 4),
                range(16, 19, 5)
            ])
        );
        // An offset at a line's first byte begins the range there.
        assert_eq!(
            cut_text(FileFormat::Jsonl, text, 4),
            Cut::Ranges(vec![
                range(0, 4, 1),
                range(4, 9, 2),
                range(9, 16, 3),
                range(16, 19, 5)
            ])
        );
        assert_eq!(
            cut_text(FileFormat::Jsonl, text, 19),
            Cut::Whole,
            "not bigger"
        );
        assert_eq!(cut_text(FileFormat::Jsonl, text, 0), Cut::Whole, "0: never");
        assert_eq!(
            cut_text(FileFormat::Jsonl, b"{\"one\": \"long line\"}\n", 3),
            Cut::Whole,
            "no record begins after the first offset"
        );
    }

    #[test]
    fn files_split_csv_cuts_only_between_records_and_after_the_header() {
        // `"` opens a quoted field only at a field's start; `""` inside one is a quote.
        let text = b"\n\"h\n1\",h2\n1,\"x\n\"\"y\n\"\n2,5\"\n3,\"\"\n";
        let Cut::Ranges(ranges) = cut_text(FileFormat::Csv, text, 1) else {
            panic!("splits")
        };
        let starts: Vec<(u64, u64)> = ranges.iter().map(|r| (r.start, r.first_line)).collect();
        // The blank first line and the header's quoted newline are no cut; neither are the
        // newlines of `"x\n""y\n"`; `5"` is data, so the line after it is a record.
        assert_eq!(starts, [(0, 1), (10, 4), (21, 7), (26, 8)]);
    }

    #[test]
    fn files_split_csv_with_an_unclosed_quote_is_not_cut() {
        let text = b"id,note\n1,ok\n2,\"open\n3,x\n4,y\n";
        let Cut::Unsafe(why) = cut_text(FileFormat::Csv, text, 4) else {
            panic!("an unclosed quote makes every cut doubtful")
        };
        assert!(
            why.contains("quoted field opened on line 3 is never closed"),
            "{why}"
        );
    }
}
