//! Terminal output: logging set-up, spinners, and cargo-style error reports.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// Set up `tracing` on stderr. `RUST_LOG` wins over the verbosity flags.
pub fn init_logging(verbose: u8, quiet: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "info",
        (false, 1) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .without_time()
        .try_init();
}

/// A spinner on stderr; hidden when stderr is not a terminal.
pub fn spinner(msg: impl Into<String>) -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    pb.set_style(
        ProgressStyle::with_template("{spinner:.green} {msg} [{elapsed}]")
            .expect("static template")
            .tick_chars("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏ "),
    );
    pb.set_message(msg.into());
    pb.enable_steady_tick(Duration::from_millis(100));
    pb
}

/// Print an error the way cargo does: `error: top`, then each cause on its own line, and the
/// `help:` lines of every message last, so the remedy is what the user reads at the end.
pub fn print_error(err: &anyhow::Error) {
    let (mut texts, mut helps) = (Vec::new(), Vec::new());
    for msg in err.chain().map(|c| c.to_string()) {
        let mut text = Vec::new();
        for line in msg.lines() {
            if line.trim_start().starts_with("help:") || line.trim_start().starts_with("note:") {
                helps.push(line.trim_start().to_string());
            } else {
                text.push(line);
            }
        }
        texts.push(text.join("\n").trim_end().to_string());
    }
    let mut texts = texts.into_iter().filter(|t| !t.is_empty());
    eprintln!("error: {}", texts.next().unwrap_or_default());
    let causes: Vec<String> = texts.collect();
    if !causes.is_empty() {
        eprintln!("\nCaused by:");
        for c in causes {
            for line in c.lines() {
                eprintln!("  {line}");
            }
        }
    }
    if !helps.is_empty() {
        eprintln!();
        for h in helps {
            eprintln!("{h}");
        }
    }
}

/// Resolves when the user presses Ctrl-C or the process gets SIGTERM.
pub async fn interrupted() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
