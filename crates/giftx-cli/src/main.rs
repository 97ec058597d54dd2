//! `giftctl`: parse the command line, run it, print one line (and under
//! `--json` one JSON object on stdout) and exit non-zero on failure.

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser as _;

/// Prints `value` as one line on stdout; a closed stdout is ignored.
fn print_json(value: &serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{value}").and_then(|()| out.flush());
}

fn main() -> ExitCode {
    let json = std::env::args_os().any(|a| a == "--json");
    let cli = match giftx_cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            if json && e.use_stderr() {
                let rendered = e.render().to_string();
                let first = rendered.lines().next().unwrap_or_default();
                let message = first.strip_prefix("error: ").unwrap_or(first).to_owned();
                print_json(&serde_json::json!({"error": {
                    "source": "giftctl",
                    "code": "INVALID_ARGUMENT",
                    "reason": "INVALID_COMMAND_LINE",
                    "message": message,
                    "details": {"usage": rendered},
                }}));
            }
            e.exit()
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("giftctl: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json = cli.json;
    match runtime.block_on(giftx_cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        // `giftctl … | head`: the reader has what it wanted.
        Err(e) if e.is_broken_pipe() => ExitCode::SUCCESS,
        Err(e) => {
            if json {
                print_json(&e.to_json());
            }
            eprintln!("giftctl: error: {e}");
            ExitCode::FAILURE
        }
    }
}
