//! `giftctl`: parse the command line, run it, print one line and exit
//! non-zero on failure.

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = giftx_cli::Cli::parse();
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
    match runtime.block_on(giftx_cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("giftctl: error: {e}");
            ExitCode::FAILURE
        }
    }
}
