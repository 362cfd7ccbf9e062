//! Printing results and errors, for people or as JSON.

use sandgate_policy::PolicyError;
use serde::Serialize;
use std::fmt::Arguments;
use std::io::{ErrorKind, Write};
use std::process::ExitCode;

/// Prints a line on standard output, like `println!`, except that a reader
/// that went away (`sandgate ... | head`) ends the program quietly (status 141, as SIGPIPE would) instead
/// of with a panic.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::output::line(format_args!($($arg)*))
    };
}
pub(crate) use say;

/// The function behind [`say!`].
pub fn line(args: Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = writeln!(stdout, "{args}") {
        if e.kind() == ErrorKind::BrokenPipe {
            // The status a shell reports for a process ended by SIGPIPE.
            std::process::exit(141);
        }
        eprintln!("cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

/// Runs `work` (a long call: a create, a wait), showing on standard error
/// that it runs: on a terminal, `label` and the seconds so far, redrawn
/// until it ends; elsewhere (a log, a test), `label...` once.
pub fn progress<T>(label: &str, work: impl FnOnce() -> T) -> T {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        eprintln!("{label}...");
        return work();
    }
    let started = std::time::Instant::now();
    std::thread::scope(|s| {
        // Dropped when `work` ends, by a return or a panic: the ticker
        // sees its channel closed at once and stops.
        let (done, ended) = std::sync::mpsc::channel::<()>();
        s.spawn(move || {
            let tick = std::time::Duration::from_millis(100);
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = ended.recv_timeout(tick) {
                eprint!("\r{label}... {:.1} s", started.elapsed().as_secs_f64());
            }
            // The line is cleared for what comes next.
            eprint!("\r\x1b[2K");
        });
        let result = work();
        drop(done);
        result
    })
}

/// Prints rows as aligned columns.
pub fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    say!("{}", line(header.iter().map(|h| h.to_string()).collect()));
    for r in rows {
        say!("{}", line(r));
    }
}

/// The exit status for input the user can fix.
pub const EXIT_USAGE: u8 = 2;

/// Where results go, and in which form.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    /// Whether to print JSON.
    pub json: bool,
}

impl Output {
    /// An output in JSON or text.
    pub fn new(json: bool) -> Self {
        Output { json }
    }

    /// Prints `value` as pretty JSON on standard output.
    pub fn print_json<T: Serialize>(&self, value: &T) {
        match serde_json::to_string_pretty(value) {
            Ok(text) => say!("{text}"),
            // Our own types always serialize; say so loudly if one does not.
            Err(e) => eprintln!("internal error: cannot print JSON: {e}"),
        }
    }

    /// Prints an error (JSON on standard output, or text on standard error)
    /// and returns the exit status for it.
    pub fn error(&self, error: &PolicyError) -> ExitCode {
        if self.json {
            self.print_json(&serde_json::json!({ "error": error }));
        } else {
            eprintln!("error [{}]: {}", error.code, error.message);
            if error.problems.len() > 1 {
                for p in &error.problems {
                    eprintln!("  - {}", p.message);
                }
            }
        }
        ExitCode::from(EXIT_USAGE)
    }
}

/// Reports a command-line error. With `--json` among the arguments it is
/// printed in the API's error shape with the code `invalid_arguments`;
/// otherwise clap prints it for people. Help and version requests are
/// printed as asked and succeed.
pub fn argument_error(error: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    ) {
        let _ = error.print();
        return ExitCode::SUCCESS;
    }
    if !std::env::args().any(|a| a == "--json") {
        let _ = error.print();
        return ExitCode::from(EXIT_USAGE);
    }
    let message = error.render().to_string();
    let message = message
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("invalid arguments")
        .trim_start_matches("error: ")
        .to_string();
    Output::new(true).print_json(&serde_json::json!({
        "error": { "code": "invalid_arguments", "message": message }
    }));
    ExitCode::from(EXIT_USAGE)
}
