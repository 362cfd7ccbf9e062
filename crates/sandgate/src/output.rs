//! Printing results and errors, for people or as JSON.

use sandgate_policy::PolicyError;
use serde::Serialize;
use std::process::ExitCode;

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
            Ok(text) => println!("{text}"),
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
