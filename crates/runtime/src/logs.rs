//! Instance log files: appending output line by line, and reading the end.
//!
//! Every line is written with one `write` on a file opened for appending and
//! flushed at once, so stdout and stderr (two writers on one file) never
//! interleave inside a line and a follower (`tail -f`) sees lines as they
//! come.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};

use crate::RuntimeError;

/// A line longer than this is written out in pieces, so that output without
/// newlines (progress bars redrawn with `\r`) cannot grow memory without
/// bound.
const MAX_LINE_BYTES: usize = 64 * 1024;
/// Read size for pipes: big enough for bursts of output, small per stream.
const PIPE_BUFFER_BYTES: usize = 8 * 1024;
/// `tail_lines` reads backwards in chunks of this size…
const TAIL_CHUNK_BYTES: u64 = 8 * 1024;
/// …and never more than this in total: very long lines are cut.
const TAIL_MAX_BYTES: u64 = 1024 * 1024;

/// Opens `path` for appending, creating it and its parent directories.
pub(crate) async fn open_append(path: &Path) -> Result<tokio::fs::File, RuntimeError> {
    let error = |source| RuntimeError::Log {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(parent).await.map_err(error)?;
    }
    tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
        .map_err(error)
}

/// Appends to one log file, one flushed write per line.
pub(crate) struct LogWriter {
    file: tokio::fs::File,
    failed: bool,
}

impl LogWriter {
    pub(crate) fn new(file: tokio::fs::File) -> Self {
        Self {
            file,
            failed: false,
        }
    }

    /// Writes `bytes` (normally one line with its newline). A failure (disk
    /// full) is reported once and the output dropped: the instance must not
    /// block on a full pipe because its log cannot be written.
    pub(crate) async fn write(&mut self, bytes: &[u8]) {
        let result = async {
            self.file.write_all(bytes).await?;
            self.file.flush().await
        }
        .await;
        if let Err(err) = result
            && !std::mem::replace(&mut self.failed, true)
        {
            tracing::warn!(error = %err, "cannot write an instance log line; dropping output");
        }
    }
}

/// Copies `stream` to `log` line by line until the stream ends; a last line
/// without a newline gets one.
pub(crate) async fn copy_lines(stream: impl AsyncRead + Unpin, mut log: LogWriter) {
    let mut reader = BufReader::with_capacity(PIPE_BUFFER_BYTES, stream);
    let mut line = Vec::with_capacity(256);
    loop {
        let chunk = match reader.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(chunk) => chunk,
        };
        let (taken, complete) = match chunk.iter().position(|&b| b == b'\n') {
            Some(newline) => (newline + 1, true),
            None => (chunk.len(), false),
        };
        line.extend_from_slice(&chunk[..taken]);
        reader.consume(taken);
        if complete || line.len() >= MAX_LINE_BYTES {
            log.write(&line).await;
            line.clear();
        }
    }
    if !line.is_empty() {
        line.push(b'\n');
        log.write(&line).await;
    }
}

/// Last `n` lines of a log file (used for error messages and by the
/// dispatcher), joined with `\n`, without a trailing newline. A missing or
/// unreadable file gives an empty string; invalid UTF-8 is replaced. Reads at
/// most the last MiB of the file, so a line longer than that is cut.
pub fn tail_lines(path: &Path, n: usize) -> String {
    if n == 0 {
        return String::new();
    }
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let Ok(len) = file.metadata().map(|m| m.len()) else {
        return String::new();
    };
    // Read backwards until what was read holds n complete lines (n
    // newlines, not counting trailing ones), the start of the file, or the
    // cap.
    let mut start = len;
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    let mut newlines = 0;
    let mut in_trailing_newlines = true;
    while start > 0 && len - start < TAIL_MAX_BYTES && newlines < n {
        let size = TAIL_CHUNK_BYTES.min(start);
        start -= size;
        let mut chunk = vec![0; usize::try_from(size).unwrap_or(0)];
        if file.seek(SeekFrom::Start(start)).is_err() || file.read_exact(&mut chunk).is_err() {
            // The file shrank or vanished under us: use what we have.
            break;
        }
        for &byte in chunk.iter().rev() {
            if in_trailing_newlines {
                in_trailing_newlines = byte == b'\n' || byte == b'\r';
            } else if byte == b'\n' {
                newlines += 1;
            }
        }
        chunks.push(chunk);
    }
    chunks.reverse();
    let buffer = chunks.concat();
    let text = String::from_utf8_lossy(trim_trailing_newlines(&buffer));
    let mut lines: Vec<&str> = text.rsplitn(n + 1, '\n').collect();
    if lines.len() > n {
        // The part before the last n lines.
        lines.pop();
    }
    lines.reverse();
    lines.join("\n")
}

fn trim_trailing_newlines(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .iter()
        .rposition(|&b| b != b'\n' && b != b'\r')
        .map_or(0, |i| i + 1);
    &bytes[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_with(contents: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(file.path(), contents).expect("write log");
        file
    }

    #[test]
    fn tail_lines_takes_the_last_lines() {
        let log = log_with("one\ntwo\nthree\nfour\n");
        assert_eq!(tail_lines(log.path(), 2), "three\nfour");
        assert_eq!(tail_lines(log.path(), 4), "one\ntwo\nthree\nfour");
        assert_eq!(tail_lines(log.path(), 10), "one\ntwo\nthree\nfour");
        assert_eq!(tail_lines(log.path(), 0), "");
    }

    #[test]
    fn tail_lines_handles_a_missing_final_newline_and_empty_files() {
        assert_eq!(tail_lines(log_with("a\nb").path(), 1), "b");
        assert_eq!(tail_lines(log_with("a\nb\n\n").path(), 1), "b");
        assert_eq!(tail_lines(log_with("").path(), 3), "");
        assert_eq!(tail_lines(Path::new("/nonexistent/rouse.log"), 3), "");
    }

    #[test]
    fn tail_lines_reads_across_chunks() {
        let lines: Vec<String> = (0..5000).map(|i| format!("line {i:05}")).collect();
        let log = log_with(&(lines.join("\n") + "\n"));
        assert_eq!(
            tail_lines(log.path(), 3),
            "line 04997\nline 04998\nline 04999"
        );
        // 2000 lines of 11 bytes span several 8 KiB chunks.
        let tail = tail_lines(log.path(), 2000);
        assert_eq!(tail.lines().count(), 2000);
        assert!(tail.starts_with("line 03000\n"), "{}", &tail[..20]);
    }

    #[test]
    fn tail_lines_cuts_lines_longer_than_its_cap() {
        let long = "x".repeat(2 * 1024 * 1024);
        let log = log_with(&format!("first\n{long}\nlast\n"));
        let tail = tail_lines(log.path(), 2);
        assert!(tail.ends_with("x\nlast"));
        assert!(tail.len() <= 1024 * 1024);
    }

    #[tokio::test]
    async fn copy_lines_terminates_the_last_line() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("nested/instance.log");
        let file = open_append(&path).await.expect("open log");
        copy_lines(&b"hello\nworld"[..], LogWriter::new(file)).await;
        let written = std::fs::read_to_string(&path).expect("read log");
        assert_eq!(written, "hello\nworld\n");
    }
}
