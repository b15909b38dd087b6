//! Streaming corpus readers.
//!
//! A corpus is a file of documents in one of two layouts, chosen by its extension:
//!
//! - **text** (`.txt`): documents are separated by a blank line (`"\n\n"`), paragraphs by a single
//!   `"\n"` — the layout of C4's `text` fields. Bytes pass through untouched (they need not be
//!   UTF-8). A blank line may also be `"\r\n"`, so CRLF files still split into documents.
//! - **JSON lines** (`.jsonl` or `.json`): one JSON object per line with a string field `"text"`,
//!   as in C4's shards; other fields are ignored, blank lines skipped.
//!
//! Either may be compressed: `.gz` (any number of concatenated gzip members) or `.zst`.
//!
//! [`open_documents`] yields documents one at a time; [`CorpusStream`] yields the corpus's
//! canonical byte stream (documents joined by `"\n\n"`). Neither loads the file into memory: only
//! the current document is held.

use anyhow::{anyhow, bail, Context, Result};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// The extensions [`open_documents`] accepts, for error messages and help text.
pub const SUPPORTED_EXTENSIONS: &[&str] = &[
    ".txt",
    ".txt.gz",
    ".txt.zst",
    ".jsonl",
    ".jsonl.gz",
    ".jsonl.zst",
    ".json",
    ".json.gz",
    ".json.zst",
];

/// The separator placed between documents in a corpus's byte stream.
pub const DOCUMENT_SEPARATOR: &[u8] = b"\n\n";

const READ_BUFFER: usize = 256 * 1024;

/// How documents are laid out in the (decompressed) file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Blank-line separated plain text.
    Text,
    /// One JSON object with a string field `"text"` per line.
    JsonLines,
}

/// How the file is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    fn name(self) -> &'static str {
        match self {
            Compression::None => "plain",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

/// The layout and compression a path's extension names, or an error listing the supported ones.
pub fn detect_format(path: &Path) -> Result<(Layout, Compression)> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let (stem, compression) = if let Some(s) = name.strip_suffix(".gz") {
        (s, Compression::Gzip)
    } else if let Some(s) = name.strip_suffix(".zst") {
        (s, Compression::Zstd)
    } else {
        (name.as_str(), Compression::None)
    };
    let layout = if stem.ends_with(".txt") {
        Layout::Text
    } else if stem.ends_with(".jsonl") || stem.ends_with(".json") {
        Layout::JsonLines
    } else {
        bail!(
            "cannot read corpus {}: unsupported file extension (supported: {})",
            path.display(),
            SUPPORTED_EXTENSIONS.join(", ")
        );
    };
    Ok((layout, compression))
}

/// An iterator over a corpus's documents, read lazily from disk.
///
/// Guarantees: every document is non-empty and carries no trailing newline; documents come in file
/// order; memory use is bounded by the largest document (plus a fixed read buffer). After the first
/// error the iterator is finished (it yields `None`). Errors name the path, and for JSON lines the
/// 1-based line number; a failure while decompressing is reported as a corrupt or truncated file.
pub struct DocumentReader {
    path: PathBuf,
    layout: Layout,
    compression: Compression,
    reader: Box<dyn BufRead + Send>,
    line: Vec<u8>,
    line_number: u64,
    done: bool,
}

/// Opens a corpus for streaming its documents. Fails at once if the path is missing, is a
/// directory, cannot be opened, or has an extension outside [`SUPPORTED_EXTENSIONS`].
pub fn open_documents(path: &Path) -> Result<DocumentReader> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot open corpus {}", path.display()))?;
    if meta.is_dir() {
        // Commands that take a corpus also take a token dataset directory, recognised by its
        // metadata.json: say why this directory is not one.
        bail!(
            "cannot open corpus {}: it is a directory, not a file, and not a token dataset (it has no metadata.json; an interrupted `terse tokenize` leaves such a directory: run it again)",
            path.display()
        );
    }
    let (layout, compression) = detect_format(path)?;
    let file =
        File::open(path).with_context(|| format!("cannot open corpus {}", path.display()))?;
    let reader: Box<dyn BufRead + Send> = match compression {
        Compression::None => Box::new(BufReader::with_capacity(READ_BUFFER, file)),
        Compression::Gzip => Box::new(BufReader::with_capacity(
            READ_BUFFER,
            flate2::read::MultiGzDecoder::new(BufReader::with_capacity(READ_BUFFER, file)),
        )),
        Compression::Zstd => Box::new(BufReader::with_capacity(
            READ_BUFFER,
            zstd::stream::read::Decoder::new(file).with_context(|| {
                format!("cannot start a zstd decoder for corpus {}", path.display())
            })?,
        )),
    };
    Ok(DocumentReader {
        path: path.to_path_buf(),
        layout,
        compression,
        reader,
        line: Vec::new(),
        line_number: 0,
        done: false,
    })
}

impl DocumentReader {
    /// The corpus path this reader was opened on.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The layout detected from the extension.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Reads one line (with its newline) into `buf`, appending; returns bytes read (0 at the end).
    fn read_line_into(&mut self, buf: &mut Vec<u8>) -> Result<usize> {
        let n = self
            .reader
            .read_until(b'\n', buf)
            .map_err(|e| self.read_error(e))?;
        if n > 0 {
            self.line_number += 1;
        }
        Ok(n)
    }

    fn read_error(&self, e: io::Error) -> anyhow::Error {
        match self.compression {
            Compression::None => {
                anyhow!(e).context(format!("cannot read corpus {}", self.path.display()))
            }
            c => anyhow!(e).context(format!(
                "corpus {} is corrupt or truncated ({} stream)",
                self.path.display(),
                c.name()
            )),
        }
    }

    fn next_text(&mut self) -> Result<Option<Vec<u8>>> {
        let mut doc = Vec::new();
        loop {
            let start = doc.len();
            if self.read_line_into(&mut doc)? == 0 {
                break;
            }
            let line = &doc[start..];
            if line == b"\n" || line == b"\r\n" {
                doc.truncate(start);
                if doc.is_empty() {
                    continue; // leading or repeated blank lines
                }
                break;
            }
        }
        if doc.last() == Some(&b'\n') {
            doc.pop();
            if doc.last() == Some(&b'\r') {
                doc.pop();
            }
        }
        Ok(if doc.is_empty() { None } else { Some(doc) })
    }

    fn next_json(&mut self) -> Result<Option<Vec<u8>>> {
        loop {
            let mut line = std::mem::take(&mut self.line);
            line.clear();
            let n = self.read_line_into(&mut line);
            let result = match n {
                Err(e) => Err(e),
                Ok(0) => Ok(None),
                Ok(_) => self.parse_json_line(&line),
            };
            self.line = line;
            match result? {
                Some(Some(doc)) => return Ok(Some(doc)),
                Some(None) => continue, // blank line or empty text
                None => return Ok(None),
            }
        }
    }

    /// `Ok(None)` at end of file is handled by the caller; here `Some(None)` means "skip".
    fn parse_json_line(&self, line: &[u8]) -> Result<Option<Option<Vec<u8>>>> {
        let trimmed = line.trim_ascii();
        if trimmed.is_empty() {
            return Ok(Some(None));
        }
        let at = || format!("corpus {} line {}", self.path.display(), self.line_number);
        if trimmed[0] != b'{' {
            bail!(
                "{}: expected a JSON object with a string field \"text\"",
                at()
            );
        }
        #[derive(serde::Deserialize)]
        struct Record {
            text: Option<serde_json::Value>,
        }
        let record: Record =
            serde_json::from_slice(trimmed).map_err(|e| anyhow!("{}: invalid JSON: {e}", at()))?;
        match record.text {
            Some(serde_json::Value::String(s)) if s.is_empty() => Ok(Some(None)),
            Some(serde_json::Value::String(s)) => Ok(Some(Some(s.into_bytes()))),
            Some(other) => bail!(
                "{}: field \"text\" must be a string, found {}",
                at(),
                json_kind(&other)
            ),
            None => bail!("{}: the object has no \"text\" field", at()),
        }
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

impl Iterator for DocumentReader {
    type Item = Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let result = match self.layout {
            Layout::Text => self.next_text(),
            Layout::JsonLines => self.next_json(),
        };
        match result {
            Ok(Some(doc)) => Some(Ok(doc)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

impl std::fmt::Debug for DocumentReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DocumentReader")
            .field("path", &self.path)
            .field("layout", &self.layout)
            .field("compression", &self.compression)
            .field("line_number", &self.line_number)
            .finish()
    }
}

/// A corpus's canonical byte stream: its documents joined by [`DOCUMENT_SEPARATOR`] (no separator
/// before the first or after the last). This is the byte sequence that held-out splits, byte
/// datasets and tokenizers agree on, whatever the file's layout or compression.
///
/// Reads are sequential only; [`offset`](Self::offset) counts the bytes delivered so far. Also
/// implements [`std::io::Read`] (errors are then flattened into `io::Error`s carrying the message).
#[derive(Debug)]
pub struct CorpusStream {
    docs: DocumentReader,
    doc: Vec<u8>,
    pos: usize,
    separator_left: usize,
    started: bool,
    offset: u64,
}

/// The first `limit` bytes of a corpus's byte stream (all of it when shorter); fails as
/// [`open_documents`] does.
pub fn read_prefix(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let mut stream = open_stream(path)?;
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    while (bytes.len() as u64) < limit {
        let want = buf.len().min((limit - bytes.len() as u64) as usize);
        let got = stream.read_full(&mut buf[..want])?;
        bytes.extend_from_slice(&buf[..got]);
        if got < want {
            break;
        }
    }
    Ok(bytes)
}

/// Opens a corpus's byte stream; fails as [`open_documents`] does.
pub fn open_stream(path: &Path) -> Result<CorpusStream> {
    Ok(CorpusStream {
        docs: open_documents(path)?,
        doc: Vec::new(),
        pos: 0,
        separator_left: 0,
        started: false,
        offset: 0,
    })
}

impl CorpusStream {
    /// The corpus path.
    pub fn path(&self) -> &Path {
        self.docs.path()
    }

    /// Bytes of the stream delivered so far (read, skipped or consumed).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Makes the next byte available in `doc[pos]` or `separator_left`; false at end of stream.
    fn ready(&mut self) -> Result<bool> {
        while self.separator_left == 0 && self.pos >= self.doc.len() {
            match self.docs.next() {
                None => return Ok(false),
                Some(Err(e)) => return Err(e),
                Some(Ok(doc)) => {
                    if self.started {
                        self.separator_left = DOCUMENT_SEPARATOR.len();
                    }
                    self.started = true;
                    self.doc = doc;
                    self.pos = 0;
                }
            }
        }
        Ok(true)
    }

    /// Fills `buf` as far as the stream allows; returns the count (less than `buf.len()` only at
    /// the end of the stream).
    pub fn read_full(&mut self, buf: &mut [u8]) -> Result<usize> {
        let mut n = 0;
        while n < buf.len() && self.ready()? {
            if self.separator_left > 0 {
                let sep = &DOCUMENT_SEPARATOR[DOCUMENT_SEPARATOR.len() - self.separator_left..];
                let k = sep.len().min(buf.len() - n);
                buf[n..n + k].copy_from_slice(&sep[..k]);
                self.separator_left -= k;
                n += k;
            } else {
                let k = (self.doc.len() - self.pos).min(buf.len() - n);
                buf[n..n + k].copy_from_slice(&self.doc[self.pos..self.pos + k]);
                self.pos += k;
                n += k;
            }
        }
        self.offset += n as u64;
        Ok(n)
    }

    /// The next byte without consuming it, or `None` at the end of the stream.
    pub fn peek_byte(&mut self) -> Result<Option<u8>> {
        if !self.ready()? {
            return Ok(None);
        }
        Ok(Some(if self.separator_left > 0 {
            DOCUMENT_SEPARATOR[DOCUMENT_SEPARATOR.len() - self.separator_left]
        } else {
            self.doc[self.pos]
        }))
    }

    /// Consumes and returns the next byte, or `None` at the end of the stream.
    pub fn next_byte(&mut self) -> Result<Option<u8>> {
        let mut b = [0u8];
        Ok((self.read_full(&mut b)? == 1).then_some(b[0]))
    }

    /// Discards up to `n` bytes; returns how many were discarded (less only at the end).
    pub fn skip(&mut self, n: u64) -> Result<u64> {
        let mut left = n;
        while left > 0 && self.ready()? {
            let k = if self.separator_left > 0 {
                let k = (self.separator_left as u64).min(left);
                self.separator_left -= k as usize;
                k
            } else {
                let k = ((self.doc.len() - self.pos) as u64).min(left);
                self.pos += k as usize;
                k
            };
            left -= k;
            self.offset += k;
        }
        Ok(n - left)
    }
}

impl Read for CorpusStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_full(buf)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{e:#}")))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// Writes `bytes` to `dir/name`, compressing by the extension.
    pub(crate) fn write_corpus(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        let file = File::create(&path).unwrap();
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".gz") {
            let mut enc = flate2::write::GzEncoder::new(file, flate2::Compression::new(6));
            enc.write_all(bytes).unwrap();
            enc.finish().unwrap();
        } else if lower.ends_with(".zst") {
            let mut enc = zstd::stream::write::Encoder::new(file, 3).unwrap();
            enc.write_all(bytes).unwrap();
            enc.finish().unwrap();
        } else {
            let mut file = file;
            file.write_all(bytes).unwrap();
        }
        path
    }

    fn docs(path: &Path) -> Result<Vec<Vec<u8>>> {
        open_documents(path)?.collect()
    }

    fn err_text(r: Result<impl std::fmt::Debug>) -> String {
        format!("{:#}", r.expect_err("expected an error"))
    }

    #[test]
    fn text_splits_documents_and_ignores_extra_blank_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_corpus(
            dir.path(),
            "a.txt",
            b"\n\nfirst para\nsecond para\n\nsecond doc\n\n\n\n\nthird doc\n\n\n",
        );
        let d = docs(&p).unwrap();
        assert_eq!(
            d,
            vec![
                b"first para\nsecond para".to_vec(),
                b"second doc".to_vec(),
                b"third doc".to_vec()
            ]
        );
        // No trailing newline at end of file.
        let p = write_corpus(dir.path(), "b.txt", b"one\n\ntwo");
        assert_eq!(docs(&p).unwrap(), vec![b"one".to_vec(), b"two".to_vec()]);
        // CRLF blank lines separate documents too.
        let p = write_corpus(dir.path(), "c.txt", b"one\r\n\r\ntwo\r\n");
        assert_eq!(docs(&p).unwrap(), vec![b"one".to_vec(), b"two".to_vec()]);
    }

    #[test]
    fn text_bytes_pass_through_even_when_not_utf8() {
        let dir = tempfile::tempdir().unwrap();
        let raw = b"\xff\xfe\x00bin\x80\nary\n\n\xc3\x28".to_vec();
        let p = write_corpus(dir.path(), "bin.txt", &raw);
        assert_eq!(
            docs(&p).unwrap(),
            vec![b"\xff\xfe\x00bin\x80\nary".to_vec(), b"\xc3\x28".to_vec()]
        );
        let mut all = Vec::new();
        open_stream(&p).unwrap().read_to_end(&mut all).unwrap();
        assert_eq!(all, raw);
    }

    #[test]
    fn jsonl_reads_text_fields_and_skips_blank_lines() {
        let dir = tempfile::tempdir().unwrap();
        let body = concat!(
            r#"{"text": "Hello\nworld", "timestamp": "2019", "url": "http://x"}"#,
            "\n\n   \n",
            r#"{"url": "y", "text": "caf\u00e9 \"q\""}"#,
            "\n",
            r#"{"text": ""}"#,
            "\n",
        );
        for name in ["c4.jsonl", "c4.json"] {
            let p = write_corpus(dir.path(), name, body.as_bytes());
            assert_eq!(
                docs(&p).unwrap(),
                vec![b"Hello\nworld".to_vec(), "café \"q\"".as_bytes().to_vec()]
            );
        }
    }

    #[test]
    fn jsonl_errors_name_path_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let good = r#"{"text": "ok"}"#;
        let cases: [(&str, &str); 4] = [
            ("{\"text\": \"unterminated", "invalid JSON"),
            ("{\"url\": \"x\"}", "no \"text\" field"),
            ("{\"text\": 7}", "must be a string, found a number"),
            ("[1, 2]", "expected a JSON object"),
        ];
        for (i, (bad, want)) in cases.iter().enumerate() {
            let body = format!("{good}\n\n{bad}\n{good}\n");
            let p = write_corpus(dir.path(), &format!("bad{i}.jsonl"), body.as_bytes());
            let mut reader = open_documents(&p).unwrap();
            assert_eq!(reader.next().unwrap().unwrap(), b"ok");
            let msg = format!("{:#}", reader.next().unwrap().unwrap_err());
            assert!(msg.contains(&p.display().to_string()), "{msg}");
            assert!(msg.contains("line 3"), "{msg}");
            assert!(msg.contains(want), "{msg}");
            assert!(reader.next().is_none(), "reader must stop after an error");
        }
    }

    #[test]
    fn gzip_and_zstd_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let text: Vec<u8> = (0..2000)
            .flat_map(|i| format!("doc {i} para a\npara b {i}\n\n").into_bytes())
            .collect();
        let want = docs(&write_corpus(dir.path(), "plain.txt", &text)).unwrap();
        assert_eq!(want.len(), 2000);
        for name in ["x.txt.gz", "x.txt.zst", "X.TXT.GZ"] {
            let p = write_corpus(dir.path(), name, &text);
            assert_eq!(docs(&p).unwrap(), want, "{name}");
        }
        let jsonl: String = want
            .iter()
            .map(|d| {
                serde_json::json!({"text": String::from_utf8_lossy(d), "url": "u"}).to_string()
                    + "\n"
            })
            .collect();
        for name in ["x.jsonl.gz", "x.json.zst"] {
            let p = write_corpus(dir.path(), name, jsonl.as_bytes());
            assert_eq!(docs(&p).unwrap(), want, "{name}");
        }
        // Concatenated gzip members are one stream.
        let p = dir.path().join("multi.txt.gz");
        let mut bytes = Vec::new();
        for part in [&b"a\n\n"[..], &b"b\n"[..]] {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(part).unwrap();
            bytes.extend(enc.finish().unwrap());
        }
        std::fs::write(&p, bytes).unwrap();
        assert_eq!(docs(&p).unwrap(), vec![b"a".to_vec(), b"b".to_vec()]);
    }

    #[test]
    fn corrupt_or_truncated_compressed_files_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let text: Vec<u8> = (0..5000)
            .flat_map(|i| format!("line {i} {}\n\n", i * 7919 % 1013).into_bytes())
            .collect();
        let garbage = dir.path().join("garbage.txt.gz");
        std::fs::write(&garbage, b"this is not gzip at all").unwrap();
        let msg = err_text(docs(&garbage));
        assert!(
            msg.contains("garbage.txt.gz") && msg.contains("corrupt"),
            "{msg}"
        );

        for name in ["t.txt.gz", "t.txt.zst"] {
            let p = write_corpus(dir.path(), name, &text);
            let full = std::fs::read(&p).unwrap();
            std::fs::write(&p, &full[..full.len() / 2]).unwrap();
            let msg = err_text(docs(&p));
            assert!(
                msg.contains(name) && msg.contains("corrupt or truncated"),
                "{msg}"
            );
        }
    }

    #[test]
    fn missing_directory_and_unknown_extension_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.txt");
        let msg = err_text(open_documents(&missing));
        assert!(
            msg.starts_with(&format!(
                "cannot open corpus {}: No such file or directory",
                missing.display()
            )),
            "{msg}"
        );
        let sub = dir.path().join("sub.txt");
        std::fs::create_dir(&sub).unwrap();
        let msg = err_text(open_documents(&sub));
        assert!(
            msg.contains("sub.txt") && msg.contains("directory"),
            "{msg}"
        );
        let p = write_corpus(dir.path(), "data.csv", b"a,b\n");
        let msg = err_text(open_documents(&p));
        assert!(
            msg.contains("data.csv") && msg.contains(".jsonl.gz"),
            "{msg}"
        );
    }

    #[test]
    fn empty_files_yield_no_documents() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["e.txt", "e.jsonl", "e.txt.gz", "e.txt.zst"] {
            let p = write_corpus(dir.path(), name, b"\n\n\n");
            assert!(docs(&p).unwrap().is_empty(), "{name}");
        }
    }

    #[test]
    fn stream_joins_documents_and_skips_and_peeks() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_corpus(dir.path(), "s.txt", b"\n\nab\ncd\n\n\n\nef\n");
        let mut all = Vec::new();
        open_stream(&p).unwrap().read_to_end(&mut all).unwrap();
        assert_eq!(all, b"ab\ncd\n\nef");
        for skip in 0..=all.len() as u64 + 2 {
            let mut s = open_stream(&p).unwrap();
            let skipped = s.skip(skip).unwrap();
            assert_eq!(skipped, skip.min(all.len() as u64));
            assert_eq!(s.offset(), skipped);
            let peek = s.peek_byte().unwrap();
            assert_eq!(peek, all.get(skipped as usize).copied());
            assert_eq!(s.next_byte().unwrap(), peek);
            let mut rest = vec![0u8; 100];
            let n = s.read_full(&mut rest).unwrap();
            assert_eq!(&rest[..n], &all[(skipped as usize + 1).min(all.len())..]);
        }
    }
}
