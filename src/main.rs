//! The `mosnctl` binary: parse the command line, run the subcommand, report errors like cargo.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = mosnctl::cli::Cli::parse();
    mosnctl::ui::init_logging(cli.verbose, cli.quiet);
    match mosnctl::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            mosnctl::ui::print_error(&err);
            std::process::ExitCode::FAILURE
        }
    }
}
