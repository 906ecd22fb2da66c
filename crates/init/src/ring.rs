//! A bounded log ring per service, with sequence numbers so readers can follow it.

use std::collections::VecDeque;

/// Keeps the last lines of a service's output, bounded in lines and bytes.
#[derive(Debug)]
pub struct LogRing {
    lines: VecDeque<String>,
    bytes: usize,
    max_lines: usize,
    max_bytes: usize,
    /// Sequence number of the next line to be pushed.
    next_seq: u64,
}

/// Longest single line kept; longer lines are cut.
pub const MAX_LINE: usize = 4096;

impl LogRing {
    /// An empty ring holding at most `max_lines` lines and `max_bytes` bytes.
    pub fn new(max_lines: usize, max_bytes: usize) -> Self {
        LogRing {
            lines: VecDeque::new(),
            bytes: 0,
            max_lines: max_lines.max(1),
            max_bytes: max_bytes.max(MAX_LINE),
            next_seq: 0,
        }
    }

    /// Appends a line, dropping the oldest ones to stay within bounds.
    pub fn push(&mut self, line: &str) {
        let mut line = line.to_string();
        if line.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
        }
        self.bytes += line.len();
        self.lines.push_back(line);
        self.next_seq += 1;
        while self.lines.len() > self.max_lines || self.bytes > self.max_bytes {
            match self.lines.pop_front() {
                Some(old) => self.bytes -= old.len(),
                None => break,
            }
        }
    }

    /// Lines with sequence number ≥ `since` still in the ring, and the next sequence number.
    pub fn since(&self, since: u64) -> (Vec<String>, u64) {
        let first = self.next_seq - self.lines.len() as u64;
        let skip = since.saturating_sub(first) as usize;
        let lines = self.lines.iter().skip(skip).cloned().collect();
        (lines, self.next_seq)
    }

    /// Number of lines currently held.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Bytes currently held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}
