//! Applying an embedded patch to an Istio checkout: every hunk of every file is checked before
//! anything is written, already-patched hunks are left alone (so re-running is a no-op), and
//! writes go through `fsutil` with the files' permission bits kept (`bin/init.sh` stays 0755).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::diff::{self, Direction, FilePatch, HunkState, Text};
use super::supported;
use super::version::Detected;
use crate::fsutil;

/// Which patch to use for a checkout, or why none is needed.
#[derive(Debug, Clone)]
pub enum Choice {
    /// Apply this embedded patch.
    Patch {
        /// The detected (or given) version.
        detected: Detected,
        /// Patch path under `istio-patches/`.
        name: String,
        /// Its text.
        text: &'static str,
    },
    /// Istio 1.18 or later: upstream dropped the wasm downloads.
    NotNeeded {
        /// The detected (or given) version.
        detected: Detected,
    },
}

/// The warning for Istio 1.14 and later, where the make path cannot produce a mosn image.
pub fn sidecar_warning(detected: &Detected) -> String {
    format!(
        "Istio {} (from {}): since 1.14 `make docker.proxyv2` builds through tools/docker-builder, \
         which hard-codes SIDECAR=envoy, so SIDECAR=mosn no longer puts /usr/local/bin/mosn in the \
         image; use `mosnctl overlay` to add mosn to a released proxyv2 image instead",
        detected.version, detected.source
    )
}

/// Pick the patch for a version, following the supported-versions table.
pub fn choose(detected: Detected) -> Result<Choice> {
    let v = &detected.version;
    if v.at_least(1, 18) {
        return Ok(Choice::NotNeeded { detected });
    }
    let rows = supported::table();
    let row = if v.patch.is_some() && v.pre.is_none() {
        rows.into_iter().find(|r| &r.version == v)
    } else if v.patch.is_none() {
        // Only the minor release is known (Makefile default): fine if that whole minor shares
        // one patch, since every hunk is still checked before anything is written.
        let same: Vec<_> = rows
            .into_iter()
            .filter(|r| (r.version.major, r.version.minor) == (v.major, v.minor))
            .collect();
        let first = same.first().cloned();
        first.filter(|f| same.iter().all(|r| r.patch == f.patch))
    } else {
        None
    };
    match row {
        Some(r) => Ok(Choice::Patch {
            text: r.patch_text()?,
            name: r.patch,
            detected,
        }),
        None => bail!(
            "no wasm patch for Istio {} (from {})\n\n\
             help: patches exist for Istio {} (istio-patches/README.md); pass --istio-version to \
             override the detection, or use `mosnctl overlay`, which adds mosn to a released \
             proxyv2 image without rebuilding Istio",
            v,
            detected.source,
            supported::list()
        ),
    }
}

/// One file of the checkout, read and compared with the patch.
#[derive(Debug)]
pub struct FileCheck {
    /// Path relative to the checkout.
    pub rel: String,
    /// Absolute path.
    pub path: PathBuf,
    /// The file's part of the patch.
    pub patch: FilePatch,
    /// Its current bytes.
    pub bytes: Vec<u8>,
    /// Its current text.
    pub text: Text,
    /// Each hunk's state.
    pub states: Vec<HunkState>,
}

impl FileCheck {
    fn count(&self, f: impl Fn(&HunkState) -> bool) -> usize {
        self.states.iter().filter(|s| f(s)).count()
    }

    /// Hunks still to apply.
    pub fn original(&self) -> usize {
        self.count(|s| matches!(s, HunkState::Original(_)))
    }

    /// Hunks already applied.
    pub fn patched(&self) -> usize {
        self.count(|s| matches!(s, HunkState::Patched(_)))
    }
}

/// A whole checkout compared with a patch.
#[derive(Debug)]
pub struct Check {
    /// The checkout.
    pub root: PathBuf,
    /// Patch path under `istio-patches/`.
    pub name: String,
    /// One entry per patched file, in patch order.
    pub files: Vec<FileCheck>,
}

/// Where a checkout stands as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TreeState {
    /// No hunk applied.
    Original,
    /// Every hunk applied.
    Patched,
    /// Some applied, some not (an interrupted run, or hand edits).
    Partial,
    /// At least one hunk matches neither side.
    Drifted,
}

/// Read every file the patch touches and locate each hunk. Reads only.
pub fn check(root: &Path, name: &str, text: &str) -> Result<Check> {
    let patches = diff::parse(text).with_context(|| format!("cannot read the patch {name}"))?;
    let mut files = Vec::new();
    for fp in patches {
        let path = root.join(&fp.path);
        let bytes = std::fs::read(&path).with_context(|| {
            format!(
                "cannot read {} (needed by the patch {name})\n\n\
                 help: --istio must point at the top of an istio/istio checkout",
                path.display()
            )
        })?;
        let text =
            Text::parse(&bytes).with_context(|| format!("cannot read {}", path.display()))?;
        let states = diff::states(&fp, &text);
        files.push(FileCheck {
            rel: fp.path.clone(),
            path,
            patch: fp,
            bytes,
            text,
            states,
        });
    }
    Ok(Check {
        root: root.to_path_buf(),
        name: name.to_string(),
        files,
    })
}

impl Check {
    /// The state of the whole checkout.
    pub fn state(&self) -> TreeState {
        let all = self.files.iter().flat_map(|f| f.states.iter());
        let (mut o, mut p, mut m) = (0, 0, 0);
        for s in all {
            match s {
                HunkState::Original(_) => o += 1,
                HunkState::Patched(_) => p += 1,
                HunkState::Mismatch => m += 1,
            }
        }
        match (o, p, m) {
            (_, _, m) if m > 0 => TreeState::Drifted,
            (_, 0, _) => TreeState::Original,
            (0, _, _) => TreeState::Patched,
            _ => TreeState::Partial,
        }
    }

    /// A one-line description of the state, for reports (also after an interrupt).
    pub fn describe(&self) -> String {
        let total: usize = self.files.iter().map(|f| f.states.len()).sum();
        let patched: usize = self.files.iter().map(FileCheck::patched).sum();
        match self.state() {
            TreeState::Original => format!("not patched (0 of {total} hunks applied)"),
            TreeState::Patched => format!("patched with {} ({total} of {total} hunks)", self.name),
            TreeState::Partial => format!("partly patched ({patched} of {total} hunks applied)"),
            TreeState::Drifted => "changed in ways the patch does not know".to_string(),
        }
    }

    /// Fail, naming every file and hunk that matches neither side, when any does.
    pub fn ensure_matches(&self) -> Result<()> {
        let mut bad = String::new();
        for f in &self.files {
            for (i, s) in f.states.iter().enumerate() {
                if *s == HunkState::Mismatch {
                    let h = &f.patch.hunks[i];
                    // The first changed line, numbered as in the original file.
                    let (line, first) = h
                        .lines
                        .iter()
                        .filter(|(k, _)| *k != '+')
                        .enumerate()
                        .find(|(_, (k, _))| *k == '-')
                        .map(|(n, (_, l))| (h.old_start + n, l.as_str()))
                        .unwrap_or((h.old_start, ""));
                    let _ = writeln!(
                        bad,
                        "  {}: {} matches neither the original nor the patched text \
                         (it changes `{}` near line {})",
                        f.rel,
                        diff::hunk_name(&f.patch, i),
                        first.trim(),
                        line
                    );
                }
            }
        }
        if bad.is_empty() {
            return Ok(());
        }
        bail!(
            "the patch {} does not fit {}; nothing was changed:\n{}\n\n\
             help: the checkout differs from the Istio release the patch was written for; check \
             out a supported tag ({}) or restore these files with `git checkout -- FILE`",
            self.name,
            self.root.display(),
            bad.trim_end(),
            supported::list()
        )
    }

    /// Apply or revert every hunk that needs it, all or nothing: the caller has called
    /// [`Check::ensure_matches`]; if a write fails, files already written are put back.
    /// Returns the changed files' relative paths.
    pub fn write(&self, dir: Direction) -> Result<Vec<String>> {
        self.ensure_matches()?;
        let mut todo = Vec::new();
        for f in &self.files {
            let needs = match dir {
                Direction::Apply => f.original(),
                Direction::Revert => f.patched(),
            };
            if needs > 0 {
                let new = diff::rewrite(&f.patch, &f.text, &f.states, dir);
                todo.push((f, new.to_bytes()));
            }
        }
        let mut done: Vec<&FileCheck> = Vec::new();
        for (f, bytes) in &todo {
            if let Err(e) = write_keeping_mode(&f.path, bytes) {
                let mut restored = true;
                for d in &done {
                    restored &= write_keeping_mode(&d.path, &d.bytes).is_ok();
                }
                let state = if restored {
                    "the files written before it were restored"
                } else {
                    "restoring the files written before it also failed; check the checkout with \
                     `mosnctl patch-istio --check`"
                };
                return Err(e.context(format!("cannot write {}; {state}", f.rel)));
            }
            done.push(f);
        }
        Ok(todo.iter().map(|(f, _)| f.rel.clone()).collect())
    }
}

/// Write atomically, keeping the old file's permission bits (write_atomic alone gives 0644).
fn write_keeping_mode(path: &Path, bytes: &[u8]) -> Result<()> {
    let perms = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .permissions();
    fsutil::write_atomic_with(path, |f| {
        use std::io::Write;
        f.write_all(bytes)?;
        f.set_permissions(perms)?;
        Ok(())
    })
}
