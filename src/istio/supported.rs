//! The supported-versions table. Its one source is the table in `istio-patches/README.md`,
//! embedded at build time and parsed here; the patches it names are embedded beside it.

use anyhow::{bail, Context, Result};

use super::version::Version;

/// The README, embedded so mosnctl works outside this repository.
pub const README: &str = include_str!("../../istio-patches/README.md");

/// Every patch file, by its path under `istio-patches/`. A README row naming a patch that is
/// missing here fails the unit test below, so the two cannot drift apart.
pub const PATCHES: &[(&str, &str)] = &[(
    "1.10.6/wasm-disable.patch",
    include_str!("../../istio-patches/1.10.6/wasm-disable.patch"),
)];

const BEGIN: &str = "<!-- supported-versions:begin -->";
const END: &str = "<!-- supported-versions:end -->";

/// One row of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Supported {
    /// The Istio release.
    pub version: Version,
    /// Patch path under `istio-patches/`.
    pub patch: String,
    /// `lastStableSHA` of `istio.deps` at that release.
    pub proxy_sha: String,
}

impl Supported {
    /// The embedded patch text.
    pub fn patch_text(&self) -> Result<&'static str> {
        patch_text(&self.patch)
    }
}

/// The embedded text of a patch named in the table.
pub fn patch_text(name: &str) -> Result<&'static str> {
    PATCHES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| *t)
        .with_context(|| {
            format!("the supported-versions table names {name}, which is not embedded")
        })
}

/// Parse the table between the begin/end markers of `readme`.
pub fn parse_table(readme: &str) -> Result<Vec<Supported>> {
    let start = readme.find(BEGIN).context("no supported-versions table")? + BEGIN.len();
    let len = readme[start..].find(END).context("unterminated table")?;
    let mut rows = Vec::new();
    for line in readme[start..start + len].lines() {
        let cells: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        // Skip the header and the `|---|` rule.
        if cells.len() < 3 || cells[0] == "Istio" || cells[0].starts_with('-') {
            continue;
        }
        let version: Version = cells[0]
            .parse()
            .with_context(|| format!("bad version in table row `{line}`"))?;
        if version.patch.is_none() {
            bail!("table row `{line}` must name a full release (X.Y.Z)");
        }
        rows.push(Supported {
            version,
            patch: cells[1].to_string(),
            proxy_sha: cells[2].to_string(),
        });
    }
    if rows.is_empty() {
        bail!("the supported-versions table is empty");
    }
    Ok(rows)
}

/// The table from the embedded README.
pub fn table() -> Vec<Supported> {
    // The unit test parses the embedded README, so this cannot fail in a tested build.
    parse_table(README).expect("istio-patches/README.md has a valid supported-versions table")
}

/// The row for an exact release.
pub fn find(version: &Version) -> Option<Supported> {
    table().into_iter().find(|s| &s.version == version)
}

/// The release whose `istio.deps` pins this proxy commit.
pub fn by_proxy_sha(sha: &str) -> Option<Supported> {
    table().into_iter().find(|s| s.proxy_sha == sha)
}

/// `1.10.0, 1.10.1, …` for messages.
pub fn list() -> String {
    table()
        .iter()
        .map(|s| s.version.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readme_table_parses_and_every_patch_is_embedded() {
        let rows = parse_table(README).unwrap();
        assert!(rows.len() >= 7);
        for r in &rows {
            let text = r.patch_text().unwrap();
            super::super::diff::parse(text).unwrap();
            assert_eq!(r.proxy_sha.len(), 40, "{r:?}");
        }
        assert_eq!(list().split(", ").next(), Some("1.10.0"));
        assert!(find(&"1.10.6".parse().unwrap()).is_some());
        assert!(find(&"1.11.0".parse().unwrap()).is_none());
        assert_eq!(
            by_proxy_sha("98d4e1b66ba4d2f36574a623b3fcf6c859aaaeb9").map(|s| s.version.to_string()),
            Some("1.10.6".into())
        );
    }

    #[test]
    fn table_rows_need_full_versions() {
        let t = format!("{BEGIN}\n| Istio | Patch | Sha |\n|---|---|---|\n| 1.10 | p | s |\n{END}");
        assert!(parse_table(&t).is_err());
    }
}
