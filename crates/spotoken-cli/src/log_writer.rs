//! Log lines written by a thread of their own, for `spotoken serve`.
//!
//! The server logs one line per request. Written where it is made, each
//! line is a `write(2)` on the event loop that serves the request, which
//! cost the proxy a large share of its throughput (docs/BENCHMARKS.md has the
//! figures). Here the event loop only formats the line and hands
//! it over; a writer thread writes whatever has queued up in one go. The
//! queue is bounded (a server that logs faster than stderr drains waits,
//! rather than growing without end or dropping lines), and [`Flush`] writes
//! out what is left when the program ends.

use std::io::Write as _;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

/// Lines queued at most before a logging thread waits for the writer.
const QUEUE: usize = 16 * 1024;

enum Msg {
    Line(Vec<u8>),
    Flush(SyncSender<()>),
}

/// A `MakeWriter` for tracing-subscriber that queues each event's line for
/// the writer thread.
#[derive(Clone)]
pub(crate) struct Queued(SyncSender<Msg>);

/// Writes out the queued lines when dropped (at the end of `main`).
pub(crate) struct Flush(SyncSender<Msg>);

/// Starts the writer thread over `out` (stderr).
pub(crate) fn start(out: impl std::io::Write + Send + 'static) -> std::io::Result<(Queued, Flush)> {
    let (tx, rx) = sync_channel(QUEUE);
    std::thread::Builder::new()
        .name("spotoken-log".into())
        .spawn(move || write_lines(rx, out))?;
    Ok((Queued(tx.clone()), Flush(tx)))
}

fn write_lines(rx: Receiver<Msg>, out: impl std::io::Write) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let mut next = rx.recv().ok();
    while let Some(msg) = next {
        match msg {
            Msg::Line(line) => {
                let _ = out.write_all(&line);
            }
            Msg::Flush(done) => {
                let _ = out.flush();
                let _ = done.send(());
            }
        }
        // Whatever else is queued goes in the same write.
        next = match rx.try_recv() {
            Ok(m) => Some(m),
            Err(_) => {
                let _ = out.flush();
                rx.recv().ok()
            }
        };
    }
    let _ = out.flush();
}

/// One event's line, queued when tracing drops it.
pub(crate) struct Line {
    buf: Vec<u8>,
    tx: SyncSender<Msg>,
}

impl std::io::Write for Line {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            let _ = self.tx.send(Msg::Line(std::mem::take(&mut self.buf)));
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Queued {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line {
            buf: Vec::with_capacity(256),
            tx: self.0.clone(),
        }
    }
}

impl Drop for Flush {
    fn drop(&mut self) {
        let (done, wait) = sync_channel(1);
        if self.0.send(Msg::Flush(done)).is_ok() {
            let _ = wait.recv();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `io::Write` whose bytes a test can read.
    #[derive(Clone, Default)]
    struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_is_written_in_order_by_the_time_flush_returns() {
        let out = Shared::default();
        let (queued, flush) = start(out.clone()).expect("thread");
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let q = queued.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        let mut w = tracing_subscriber::fmt::MakeWriter::make_writer(&q);
                        writeln!(w, "t{t} line {i}").expect("write");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("join");
        }
        drop(flush);
        let text = String::from_utf8(out.0.lock().expect("lock").clone()).expect("utf8");
        assert_eq!(text.lines().count(), 4000);
        for t in 0..4 {
            let mine: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with(&format!("t{t} ")))
                .collect();
            let expected: Vec<String> = (0..1000).map(|i| format!("t{t} line {i}")).collect();
            assert_eq!(mine, expected, "one thread's lines keep their order");
        }
    }
}
