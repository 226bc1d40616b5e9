//! Running Istio's make: in its own process group (so Ctrl-C can stop make, the docker CLI
//! and everything under them at once), output streamed to the terminal and a log file, the
//! last lines kept for the error report.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// How many lines of output a failure report shows.
pub const TAIL: usize = 30;

/// The process group of the make that is running, if any, so an interrupt handler elsewhere
/// can stop it after the future driving it was dropped.
#[derive(Debug, Clone, Default)]
pub struct Group(Arc<Mutex<Option<u32>>>);

impl Group {
    fn set(&self, pid: Option<u32>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = pid;
    }

    /// The running group's id.
    pub fn get(&self) -> Option<u32> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// SIGTERM the whole group, give it `grace` to exit (the docker CLI forwards the signal to
    /// Istio's build container), then SIGKILL whatever is left. True if a group was running.
    pub async fn stop(&self, grace: Duration) -> bool {
        let Some(pid) = self.get() else {
            return false;
        };
        let group = -(pid as libc::pid_t);
        // SAFETY: kill(2) with a negative pid signals a process group; no memory is shared.
        unsafe { libc::kill(group, libc::SIGTERM) };
        let deadline = tokio::time::Instant::now() + grace;
        // kill(-pgid, 0) fails with ESRCH once no member of the group is left.
        while unsafe { libc::kill(group, 0) } == 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        unsafe { libc::kill(group, libc::SIGKILL) };
        self.set(None);
        true
    }
}

/// One make invocation.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The checkout to run in.
    pub dir: PathBuf,
    /// Arguments after `make`.
    pub args: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
}

impl Invocation {
    /// `make a b c`, for plans and logs.
    pub fn display(&self) -> String {
        std::iter::once("make".to_string())
            .chain(self.args.iter().map(|a| shell_quote(a)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Quote a word for a POSIX shell when it needs it.
pub fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@%+,".contains(&b));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Run make, streaming its output to stderr and appending it to `log`. Fails with the last
/// lines and the log path when make fails.
pub async fn run(inv: &Invocation, log: &Path, label: &str, group: &Group) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open the log {}", log.display()))?;
    writeln!(file, "\n$ cd {}", inv.dir.display())?;
    for (k, v) in &inv.env {
        writeln!(file, "$ export {k}={}", shell_quote(v))?;
    }
    writeln!(file, "$ {}", inv.display())?;
    let mut cmd = tokio::process::Command::new("make");
    cmd.args(&inv.args)
        .current_dir(&inv.dir)
        .envs(inv.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group: Ctrl-C reaches mosnctl only, and mosnctl stops the group itself.
        .process_group(0);
    let mut child = cmd
        .spawn()
        .context("cannot run make\n\nhelp: install GNU make (e.g. apt-get install make)")?;
    group.set(child.id());
    let spinner = crate::ui::spinner(label.to_string());
    let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL)));
    let file = Arc::new(Mutex::new(file));
    let out = pump(child.stdout.take(), &spinner, &tail, &file);
    let err = pump(child.stderr.take(), &spinner, &tail, &file);
    let (status, _, _) = tokio::join!(child.wait(), out, err);
    group.set(None);
    spinner.finish_and_clear();
    let status = status.context("waiting for make failed")?;
    if status.success() {
        return Ok(());
    }
    let last: Vec<String> = tail
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .cloned()
        .collect();
    bail!(
        "`make {}` failed ({status}); its last lines:\n{}\n\n\
         help: the whole output, and the full command and environment, are in {}",
        inv.args.first().map(String::as_str).unwrap_or(""),
        last.iter()
            .map(|l| format!("  | {l}"))
            .collect::<Vec<_>>()
            .join("\n"),
        log.display()
    )
}

/// Copy lines from a pipe to the terminal (above the spinner), the log and the tail.
async fn pump(
    pipe: Option<impl AsyncRead + Unpin>,
    spinner: &indicatif::ProgressBar,
    tail: &Mutex<VecDeque<String>>,
    file: &Mutex<std::fs::File>,
) {
    let Some(pipe) = pipe else { return };
    let mut reader = BufReader::new(pipe);
    let mut buf = Vec::new();
    // Bytes, not `lines()`: make's output need not be UTF-8, and stopping the copy would
    // leave make blocked on a full pipe.
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&buf)
            .trim_end_matches(['\n', '\r'])
            .to_string();
        spinner.suspend(|| eprintln!("{line}"));
        let _ = writeln!(file.lock().unwrap_or_else(|e| e.into_inner()), "{line}");
        let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
        if t.len() == TAIL {
            t.pop_front();
        }
        t.push_back(line);
    }
}

/// `PATH` lookup, for the missing-tools check.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_only_when_needed() {
        assert_eq!(shell_quote("SIDECAR=mosn"), "SIDECAR=mosn");
        assert_eq!(
            shell_quote("URL=http://127.0.0.1:80/mosn.tar.gz"),
            "URL=http://127.0.0.1:80/mosn.tar.gz"
        );
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
