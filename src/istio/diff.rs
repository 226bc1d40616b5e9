//! A small unified-diff reader and applier with exact context matching (no fuzz), enough for
//! the git-style diffs in `istio-patches/`. It works on files that are not in a git repository,
//! and it tells, per hunk, whether a file holds the pre-image (original), the post-image
//! (patched) or neither, which is what idempotent apply and revert need.
//!
//! Written here rather than taken from a crate: `diffy` applies a whole patch or fails, but
//! cannot say which hunk is already applied, and the per-hunk answer is the point.

use anyhow::{bail, Context, Result};

/// One file's part of a patch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilePatch {
    /// Path relative to the tree root (the `a/` and `b/` prefixes removed).
    pub path: String,
    /// Hunks in file order.
    pub hunks: Vec<Hunk>,
}

/// One `@@` hunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hunk {
    /// The `@@ -a,b +c,d @@ …` line as written.
    pub header: String,
    /// 1-based first line of the pre-image.
    pub old_start: usize,
    /// 1-based first line of the post-image.
    pub new_start: usize,
    /// The hunk body: `(' ' | '-' | '+', line without its newline)`.
    pub lines: Vec<(char, String)>,
    /// The pre-image's last line has no newline (`\ No newline at end of file`).
    pub old_no_eol: bool,
    /// The post-image's last line has no newline.
    pub new_no_eol: bool,
}

impl Hunk {
    /// Lines of the file before the change.
    pub fn pre(&self) -> Vec<&str> {
        self.side('+')
    }

    /// Lines of the file after the change.
    pub fn post(&self) -> Vec<&str> {
        self.side('-')
    }

    fn side(&self, skip: char) -> Vec<&str> {
        self.lines
            .iter()
            .filter(|(k, _)| *k != skip)
            .map(|(_, l)| l.as_str())
            .collect()
    }
}

/// Parse a unified diff (git-style or plain `---`/`+++`). Only modifications of existing
/// files are supported: the patches here never create, delete or rename files.
pub fn parse(text: &str) -> Result<Vec<FilePatch>> {
    let lines: Vec<&str> = text.lines().collect();
    let mut files: Vec<FilePatch> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if line.starts_with("new file mode") || line.starts_with("deleted file mode") {
            bail!(
                "line {}: creating or deleting files is not supported",
                i + 1
            );
        }
        if let Some(old) = line.strip_prefix("--- ") {
            let new = lines
                .get(i + 1)
                .and_then(|l| l.strip_prefix("+++ "))
                .with_context(|| format!("line {}: `---` without `+++`", i + 1))?;
            let (old, new) = (strip_prefix_path(old), strip_prefix_path(new));
            if old != new {
                bail!("line {}: renames are not supported ({old} → {new})", i + 1);
            }
            files.push(FilePatch {
                path: new.to_string(),
                hunks: Vec::new(),
            });
            i += 2;
            continue;
        }
        if line.starts_with("@@ ") {
            let file = files
                .last_mut()
                .with_context(|| format!("line {}: hunk before any file header", i + 1))?;
            let (hunk, next) = parse_hunk(&lines, i)?;
            file.hunks.push(hunk);
            i = next;
            continue;
        }
        i += 1;
    }
    if files.is_empty() || files.iter().any(|f| f.hunks.is_empty()) {
        bail!("not a unified diff (no files with hunks)");
    }
    Ok(files)
}

/// `a/bin/init.sh` → `bin/init.sh`; also drops a trailing tab and timestamp.
fn strip_prefix_path(s: &str) -> &str {
    let s = s.split('\t').next().unwrap_or(s).trim_end();
    s.strip_prefix("a/")
        .or_else(|| s.strip_prefix("b/"))
        .unwrap_or(s)
}

fn parse_hunk(lines: &[&str], at: usize) -> Result<(Hunk, usize)> {
    let header = lines[at];
    let bad = || format!("line {}: malformed hunk header `{header}`", at + 1);
    let ranges = header
        .strip_prefix("@@ ")
        .and_then(|r| r.split(" @@").next())
        .with_context(bad)?;
    let (old, new) = ranges.split_once(' ').with_context(bad)?;
    let range = |s: &str, sign: char| -> Option<(usize, usize)> {
        let s = s.strip_prefix(sign)?;
        match s.split_once(',') {
            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
            None => Some((s.parse().ok()?, 1)),
        }
    };
    let (old_start, mut old_left) = range(old, '-').with_context(bad)?;
    let (new_start, mut new_left) = range(new, '+').with_context(bad)?;
    let mut hunk = Hunk {
        header: header.to_string(),
        old_start,
        new_start,
        lines: Vec::new(),
        old_no_eol: false,
        new_no_eol: false,
    };
    let mut i = at + 1;
    while old_left > 0 || new_left > 0 {
        let line = *lines
            .get(i)
            .with_context(|| format!("hunk `{header}` ends early (at line {})", i + 1))?;
        // An empty line is a context line whose single space was stripped by an editor.
        let (kind, body) = match line.chars().next() {
            None => (' ', ""),
            Some(c @ (' ' | '-' | '+')) => (c, &line[1..]),
            Some('\\') => {
                no_eol(&mut hunk);
                i += 1;
                continue;
            }
            Some(_) => bail!("line {}: unexpected `{line}` inside hunk `{header}`", i + 1),
        };
        let (o, n) = match kind {
            ' ' => (1, 1),
            '-' => (1, 0),
            _ => (0, 1),
        };
        if old_left < o || new_left < n {
            bail!(
                "line {}: hunk `{header}` is longer than its header says",
                i + 1
            );
        }
        old_left -= o;
        new_left -= n;
        hunk.lines.push((kind, body.to_string()));
        i += 1;
    }
    if lines.get(i).is_some_and(|l| l.starts_with('\\')) {
        no_eol(&mut hunk);
        i += 1;
    }
    // Without context, an insertion's pre-image (or a deletion's post-image) is empty and
    // matches anywhere, so applied and not applied could not be told apart.
    if hunk.pre().is_empty() || hunk.post().is_empty() {
        bail!("hunk `{header}` has no context lines (make the diff with context, e.g. -U3)");
    }
    Ok((hunk, i))
}

/// `\ No newline at end of file` applies to the line before it: to the pre-image for `-`, the
/// post-image for `+`, both for context.
fn no_eol(hunk: &mut Hunk) {
    match hunk.lines.last().map(|(k, _)| *k) {
        Some('-') => hunk.old_no_eol = true,
        Some('+') => hunk.new_no_eol = true,
        _ => {
            hunk.old_no_eol = true;
            hunk.new_no_eol = true;
        }
    }
}

/// Where a hunk stands in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HunkState {
    /// The pre-image is there, at this 0-based line.
    Original(usize),
    /// The post-image is there, at this 0-based line.
    Patched(usize),
    /// Neither is.
    Mismatch,
}

/// A file's text split into lines, remembering whether it ended with a newline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text {
    /// Lines without their `\n`.
    pub lines: Vec<String>,
    /// The last line ended with `\n`.
    pub eol_at_end: bool,
}

impl Text {
    /// Split bytes into lines; fails on non-UTF-8 content.
    pub fn parse(bytes: &[u8]) -> Result<Text> {
        let s = std::str::from_utf8(bytes).context("not UTF-8 text")?;
        let eol_at_end = s.is_empty() || s.ends_with('\n');
        let body = s.strip_suffix('\n').unwrap_or(s);
        let lines = if s.is_empty() {
            Vec::new()
        } else {
            body.split('\n').map(str::to_string).collect()
        };
        Ok(Text { lines, eol_at_end })
    }

    /// Join back into bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut s = self.lines.join("\n");
        if self.eol_at_end && !self.lines.is_empty() {
            s.push('\n');
        }
        s.into_bytes()
    }
}

/// Find `needle` in `hay`, preferring the match nearest to `near` at or after `from`.
fn locate(hay: &[String], needle: &[&str], near: usize, from: usize) -> Option<usize> {
    if needle.len() > hay.len() {
        return None;
    }
    let last = hay.len() - needle.len();
    let fits = |p: usize| {
        p >= from
            && p <= last
            && hay[p..p + needle.len()]
                .iter()
                .zip(needle)
                .all(|(a, b)| a == b)
    };
    let near = near.min(last);
    (0..=last.max(near)).find_map(|d| {
        [near.checked_sub(d), near.checked_add(d).filter(|_| d > 0)]
            .into_iter()
            .flatten()
            .find(|&p| fits(p))
    })
}

/// The state of every hunk of `fp` in `text`. Hunks are located in order and may not overlap;
/// a hunk's expected place is shifted by what the hunks before it changed.
pub fn states(fp: &FilePatch, text: &Text) -> Vec<HunkState> {
    let mut out = Vec::new();
    let mut from = 0usize;
    // Current-file line index minus the pre-image's line index, as of the last located hunk.
    let mut delta: isize = 0;
    for h in &fp.hunks {
        let pre = h.pre();
        let post = h.post();
        // Both images start at the same place in the current file.
        let expect = (h.old_start.saturating_sub(1) as isize + delta).max(0) as usize;
        // Exact place first for both images, then the nearest elsewhere.
        // Neither image is empty (`parse` refuses hunks without context).
        let state = if let Some(p) = exact(&text.lines, &pre, expect, from) {
            HunkState::Original(p)
        } else if let Some(p) = exact(&text.lines, &post, expect, from) {
            HunkState::Patched(p)
        } else if let Some(p) = locate(&text.lines, &pre, expect, from) {
            HunkState::Original(p)
        } else if let Some(p) = locate(&text.lines, &post, expect, from) {
            HunkState::Patched(p)
        } else {
            HunkState::Mismatch
        };
        match state {
            HunkState::Original(p) => {
                delta = p as isize - (h.old_start as isize - 1);
                from = p + pre.len();
            }
            HunkState::Patched(p) => {
                // Lines after a patched hunk are shifted by what it added or removed.
                delta = p as isize - (h.old_start as isize - 1) + post.len() as isize
                    - pre.len() as isize;
                from = p + post.len();
            }
            HunkState::Mismatch => {}
        }
        out.push(state);
    }
    out
}

fn exact(hay: &[String], needle: &[&str], at: usize, from: usize) -> Option<usize> {
    let fits = at >= from
        && at + needle.len() <= hay.len()
        && hay[at..at + needle.len()]
            .iter()
            .zip(needle)
            .all(|(a, b)| a == b);
    fits.then_some(at)
}

/// Which way to change a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Pre-image → post-image.
    Apply,
    /// Post-image → pre-image.
    Revert,
}

/// Rewrite `text`: every hunk in the source state of `dir` is replaced by its other image;
/// hunks already in the target state stay. The caller has checked there is no mismatch.
pub fn rewrite(fp: &FilePatch, text: &Text, states: &[HunkState], dir: Direction) -> Text {
    let mut lines: Vec<String> = Vec::with_capacity(text.lines.len());
    let mut eol_at_end = text.eol_at_end;
    let mut pos = 0;
    for (h, st) in fp.hunks.iter().zip(states) {
        let (at, from, to, to_no_eol) = match (dir, *st) {
            (Direction::Apply, HunkState::Original(p)) => (p, h.pre(), h.post(), h.new_no_eol),
            (Direction::Revert, HunkState::Patched(p)) => (p, h.post(), h.pre(), h.old_no_eol),
            _ => continue,
        };
        lines.extend(text.lines[pos..at].iter().cloned());
        lines.extend(to.iter().map(|s| s.to_string()));
        pos = at + from.len();
        if pos == text.lines.len() {
            eol_at_end = !to_no_eol;
        }
    }
    lines.extend(text.lines[pos..].iter().cloned());
    Text { lines, eol_at_end }
}

/// A short name for a hunk in messages: `hunk #2 (@@ -91,10 +91,10 @@)`.
pub fn hunk_name(fp: &FilePatch, index: usize) -> String {
    let h = &fp.hunks[index];
    let ranges = h
        .header
        .split(" @@")
        .next()
        .map(|r| format!("{r} @@"))
        .unwrap_or_else(|| h.header.clone());
    format!("hunk #{} ({ranges})", index + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Written with explicit lines: a `\` line continuation would eat the context lines' space.
    const PATCH: &str = concat!(
        "diff --git a/f.txt b/f.txt\n",
        "index 111..222 100644\n",
        "--- a/f.txt\n",
        "+++ b/f.txt\n",
        "@@ -1,3 +1,3 @@\n",
        " a\n",
        "-b\n",
        "+B\n",
        " c\n",
        "@@ -6,2 +6,3 @@ ctx\n",
        " f\n",
        "+F\n",
        " g\n",
    );

    fn text(s: &str) -> Text {
        Text::parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn parses_and_applies_and_reverts() {
        let fps = parse(PATCH).unwrap();
        assert_eq!(fps.len(), 1);
        assert_eq!(fps[0].path, "f.txt");
        assert_eq!(fps[0].hunks.len(), 2);
        let orig = text("a\nb\nc\nd\ne\nf\ng\n");
        let st = states(&fps[0], &orig);
        assert_eq!(st, vec![HunkState::Original(0), HunkState::Original(5)]);
        let patched = rewrite(&fps[0], &orig, &st, Direction::Apply);
        assert_eq!(patched.to_bytes(), b"a\nB\nc\nd\ne\nf\nF\ng\n");
        let st2 = states(&fps[0], &patched);
        assert_eq!(st2, vec![HunkState::Patched(0), HunkState::Patched(5)]);
        let back = rewrite(&fps[0], &patched, &st2, Direction::Revert);
        assert_eq!(back, orig);
    }

    #[test]
    fn finds_hunks_at_an_offset_and_reports_mismatch() {
        let fp = &parse(PATCH).unwrap()[0];
        let shifted = text("x\ny\na\nb\nc\nd\ne\nf\ng\n");
        assert_eq!(
            states(fp, &shifted),
            vec![HunkState::Original(2), HunkState::Original(7)]
        );
        let drifted = text("a\nb\nc\nd\ne\nf\nG\n");
        assert_eq!(
            states(fp, &drifted),
            vec![HunkState::Original(0), HunkState::Mismatch]
        );
        assert_eq!(hunk_name(fp, 1), "hunk #2 (@@ -6,2 +6,3 @@)");
    }

    #[test]
    fn half_applied_file_is_finished_by_apply() {
        let fp = &parse(PATCH).unwrap()[0];
        let half = text("a\nB\nc\nd\ne\nf\ng\n");
        let st = states(fp, &half);
        assert_eq!(st, vec![HunkState::Patched(0), HunkState::Original(5)]);
        let done = rewrite(fp, &half, &st, Direction::Apply);
        assert_eq!(done.to_bytes(), b"a\nB\nc\nd\ne\nf\nF\ng\n");
    }

    #[test]
    fn no_newline_at_end() {
        let p = "--- a/x\n+++ b/x\n@@ -1,2 +1,2 @@\n a\n-b\n\\ No newline at end of file\n+c\n\\ No newline at end of file\n";
        let fp = &parse(p).unwrap()[0];
        let orig = text("a\nb");
        let st = states(fp, &orig);
        let out = rewrite(fp, &orig, &st, Direction::Apply);
        assert_eq!(out.to_bytes(), b"a\nc");
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse("hello\n").is_err());
        assert!(parse("--- a/x\n+++ b/x\n@@ -1,0 +2,1 @@\n+new\n").is_err());
        assert!(parse("--- a/x\n+++ b/x\n@@ -1,2 +1,2 @@\n a\n").is_err());
    }
}
