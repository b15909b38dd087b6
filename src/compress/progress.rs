//! What a long `compress` or `decompress` says while it runs, on stderr: nothing, a bar (only
//! where stderr is a terminal), or with `-v` a line per batch of chunks whether or not it is one
//! (a log, a pipe): bytes in and out, the ratio so far and the speed.

use std::time::{Duration, Instant};

/// How progress is reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    Off,
    /// A bar of the original bytes, drawn only when stderr is a terminal.
    Bar,
    /// Lines on stderr, at most two a second and always the last: `-v`.
    Lines,
}

/// The least time between two [`Progress::Lines`] lines.
const LINE_EVERY: Duration = Duration::from_millis(500);

/// Follows one run: the original bytes (read when compressing, written when decompressing)
/// against the compressed bytes (written or read).
pub(crate) struct Meter {
    mode: Progress,
    what: &'static str,
    bar: indicatif::ProgressBar,
    started: Instant,
    last_line: Option<Instant>,
}

impl Meter {
    /// `total`: the original size when known (0 otherwise); `what`: "compressing" or
    /// "decompressing".
    pub(crate) fn new(mode: Progress, total: u64, what: &'static str) -> Self {
        let bar = if mode == Progress::Bar {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} {bytes}/{total_bytes} ({bytes_per_sec}, {eta} left)",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_message(what);
            bar
        } else {
            indicatif::ProgressBar::hidden()
        };
        Meter {
            mode,
            what,
            bar,
            started: Instant::now(),
            last_line: None,
        }
    }

    /// `original` and `compressed` bytes done so far.
    pub(crate) fn update(&mut self, original: u64, compressed: u64) {
        self.bar.set_position(original);
        let due = self.last_line.is_none_or(|t| t.elapsed() >= LINE_EVERY);
        if self.mode == Progress::Lines && due {
            self.line(original, compressed);
        }
    }

    /// The end of the run: clears the bar, or prints the last line.
    pub(crate) fn finish(mut self, original: u64, compressed: u64) {
        self.bar.finish_and_clear();
        if self.mode == Progress::Lines {
            self.line(original, compressed);
        }
    }

    fn line(&mut self, original: u64, compressed: u64) {
        self.last_line = Some(Instant::now());
        eprintln!(
            "terse: {}",
            status(self.what, original, compressed, self.started.elapsed())
        );
    }
}

/// "compressing 12.00 MiB -> 3.90 MiB (32.5%, 2.600 bits/byte), 0.21 MB/s".
fn status(what: &str, original: u64, compressed: u64, elapsed: Duration) -> String {
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let ratio = match original {
        0 => String::from("-"),
        n => format!(
            "{:.1}%, {:.3} bits/byte",
            100.0 * compressed as f64 / n as f64,
            8.0 * compressed as f64 / n as f64
        ),
    };
    let mb_s = original as f64 / 1e6 / elapsed.as_secs_f64().max(1e-9);
    format!(
        "{what} {:.2} MiB -> {:.2} MiB ({ratio}), {mb_s:.2} MB/s",
        mib(original),
        mib(compressed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_give_sizes_ratio_and_speed() {
        let s = status("compressing", 4 << 20, 1 << 20, Duration::from_secs(2));
        assert_eq!(
            s,
            "compressing 4.00 MiB -> 1.00 MiB (25.0%, 2.000 bits/byte), 2.10 MB/s"
        );
        assert!(status("decompressing", 0, 48, Duration::ZERO).contains("(-)"));
    }
}
