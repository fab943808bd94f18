//! The end of the log, kept in memory: every log line also goes to a bounded ring, so that a
//! failed job's alert and its run-history row can show what happened just before.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Mutex;

const KEEP: usize = 400;

static TAIL: Mutex<VecDeque<String>> = Mutex::new(VecDeque::new());

/// A `MakeWriter` for tracing-subscriber that appends each formatted line to the ring.
#[derive(Clone, Copy, Default)]
pub struct Ring;

pub struct RingWriter(Vec<u8>);

impl Write for RingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for RingWriter {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.0);
        let Ok(mut tail) = TAIL.lock() else { return };
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            if tail.len() == KEEP {
                tail.pop_front();
            }
            tail.push_back(line.to_string());
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Ring {
    type Writer = RingWriter;
    fn make_writer(&'a self) -> Self::Writer {
        RingWriter(Vec::new())
    }
}

/// The last `n` log lines.
pub fn last(n: usize) -> Vec<String> {
    let Ok(tail) = TAIL.lock() else {
        return vec![];
    };
    tail.iter()
        .skip(tail.len().saturating_sub(n))
        .cloned()
        .collect()
}
