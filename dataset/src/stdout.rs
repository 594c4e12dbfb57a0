//! Report lines on the CLIs' stdout (`outln!`): a closed stdout (`codetr-train … | head -1`)
//! ends the report, not the work. `println!` panics on a closed pipe (Rust ignores SIGPIPE),
//! which would abandon a command half way, e.g. before the file it was writing is renamed into
//! place; here the first failed write silences the rest of the report and the command goes on
//! to finish with its own exit status.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static CLOSED: AtomicBool = AtomicBool::new(false);

/// Writes one line to stdout; after a failed write (a closed pipe, a full disk) writes nothing
/// more. A failure other than a closed pipe is reported once on stderr.
pub fn write_line(args: std::fmt::Arguments<'_>) {
    if CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    let written = out
        .write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    if let Err(e) = written {
        CLOSED.store(true, Ordering::Relaxed);
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("warning: cannot write to stdout ({e}); the rest of the report is dropped");
        }
    }
}

/// `println!` for command reports, through [`write_line`]: never panics on a closed stdout.
#[macro_export]
macro_rules! outln {
    () => {
        $crate::stdout::write_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::stdout::write_line(format_args!($($arg)*))
    };
}
