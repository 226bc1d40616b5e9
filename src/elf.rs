//! Inspect a built binary: its format, architecture, dynamic loader and the newest glibc
//! symbol version it needs. This is what decides whether it runs on Istio 1.10's
//! ubuntu:bionic base (glibc 2.27).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use object::read::elf::{FileHeader, ProgramHeader};
use object::{Endianness, FileKind, Object};
use serde::Serialize;

/// `mosnctl inspect`: print what a binary needs to run.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The binary to inspect (ELF or Mach-O).
    pub binary: PathBuf,
    /// Fail when the binary needs a newer glibc than this.
    #[arg(long, default_value = "2.27")]
    pub min_glibc: GlibcVersion,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// A glibc symbol version such as `2.27`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct GlibcVersion(pub u32, pub u32);

impl fmt::Display for GlibcVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

impl FromStr for GlibcVersion {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.strip_prefix("GLIBC_").unwrap_or(s);
        let mut parts = s.split('.');
        let major = parts.next().and_then(|p| p.parse().ok());
        let minor = parts.next().and_then(|p| p.parse().ok());
        match (major, minor) {
            (Some(a), Some(b)) => Ok(GlibcVersion(a, b)),
            _ => Err(format!("`{s}` is not a glibc version; write it like 2.27")),
        }
    }
}

/// The executable format of a binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Linux (and other Unix) executables.
    Elf,
    /// macOS executables.
    MachO,
}

/// What a binary needs from the system it runs on.
#[derive(Debug, Clone, Serialize)]
pub struct BinaryInfo {
    /// ELF or Mach-O.
    pub format: Format,
    /// Architecture in Rust's spelling: `x86_64`, `aarch64`, ...
    pub arch: String,
    /// The dynamic loader (`PT_INTERP`), when the binary needs one.
    pub interpreter: Option<String>,
    /// The newest `GLIBC_x.y` symbol version it needs, if any.
    pub max_glibc: Option<GlibcVersion>,
    /// Shared libraries it links (`DT_NEEDED` as seen through version needs).
    pub needed: Vec<String>,
}

impl BinaryInfo {
    /// Architecture in the OCI/Docker spelling (`amd64`, `arm64`, ...).
    pub fn oci_arch(&self) -> &str {
        oci_arch(&self.arch)
    }

    /// True when the kernel can exec it with no loader and no shared libraries.
    pub fn is_static(&self) -> bool {
        self.interpreter.is_none()
    }
}

/// Map a Rust/ELF architecture name to the OCI platform architecture.
pub fn oci_arch(arch: &str) -> &str {
    match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "x86" | "i386" => "386",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// Read and inspect a binary on disk.
pub fn inspect(path: &Path) -> Result<BinaryInfo> {
    let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    inspect_bytes(&data).with_context(|| format!("cannot inspect {}", path.display()))
}

/// Inspect a binary held in memory.
pub fn inspect_bytes(data: &[u8]) -> Result<BinaryInfo> {
    let kind = FileKind::parse(data).context("not an executable this tool understands")?;
    let file = object::File::parse(data).context("malformed executable")?;
    let arch = arch_name(file.architecture());
    match kind {
        FileKind::Elf64 => elf_needs::<object::elf::FileHeader64<Endianness>>(data, arch),
        FileKind::Elf32 => elf_needs::<object::elf::FileHeader32<Endianness>>(data, arch),
        FileKind::MachO64 | FileKind::MachO32 | FileKind::MachOFat32 | FileKind::MachOFat64 => {
            Ok(BinaryInfo {
                format: Format::MachO,
                arch,
                interpreter: None,
                max_glibc: None,
                needed: Vec::new(),
            })
        }
        other => bail!("unsupported executable format {other:?}; expected ELF or Mach-O"),
    }
}

fn arch_name(arch: object::Architecture) -> String {
    use object::Architecture as A;
    match arch {
        A::X86_64 => "x86_64",
        A::Aarch64 => "aarch64",
        A::Arm => "arm",
        A::I386 => "x86",
        A::PowerPc64 => "powerpc64",
        A::S390x => "s390x",
        A::Riscv64 => "riscv64",
        _ => "unknown",
    }
    .to_string()
}

fn elf_needs<Elf: FileHeader<Endian = Endianness>>(
    data: &[u8],
    arch: String,
) -> Result<BinaryInfo> {
    let header = Elf::parse(data)?;
    let endian = header.endian()?;
    let mut interpreter = None;
    for ph in header.program_headers(endian, data)? {
        if let Some(bytes) = ph.interpreter(endian, data)? {
            interpreter = Some(String::from_utf8_lossy(bytes).into_owned());
        }
    }
    let sections = header.sections(endian, data)?;
    let mut max_glibc: Option<GlibcVersion> = None;
    let mut needed = Vec::new();
    if let Some((mut needs, link)) = sections.gnu_verneed(endian, data)? {
        let strings = sections.strings(endian, data, link)?;
        while let Some((need, mut auxes)) = needs.next()? {
            needed.push(String::from_utf8_lossy(need.file(endian, strings)?).into_owned());
            while let Some(aux) = auxes.next()? {
                let name = String::from_utf8_lossy(aux.name(endian, strings)?).into_owned();
                if let Some(v) = name.strip_prefix("GLIBC_").and_then(|v| v.parse().ok()) {
                    max_glibc = max_glibc.max(Some(v));
                }
            }
        }
    }
    Ok(BinaryInfo {
        format: Format::Elf,
        arch,
        interpreter,
        max_glibc,
        needed,
    })
}

/// Fail, with the exact figures, when a Linux binary cannot run on a system whose glibc is
/// `min` (Istio 1.10's base image has 2.27).
pub fn check_runs_on(info: &BinaryInfo, min: GlibcVersion) -> Result<()> {
    if info.format != Format::Elf {
        return Ok(());
    }
    if let Some(interp) = &info.interpreter {
        if interp.contains("musl") {
            bail!(
                "the binary needs the musl loader {interp}, which a glibc base image does not have\n\n\
                 help: link it statically (the musl target links statically by default)"
            );
        }
    }
    if let Some(max) = info.max_glibc {
        if max > min {
            bail!(
                "the binary needs glibc {max} (symbol version GLIBC_{max}), but the oldest glibc it must \
                 run on is {min}\n\n\
                 help: build it statically (`mosnctl build` does: crt-static, or musl where that target \
                 is installed), or pass --min-glibc {max} if your base image really has glibc {max}"
            );
        }
    }
    Ok(())
}

/// A one-line human summary, as `mosnctl build` and `inspect` print it.
pub fn summary(info: &BinaryInfo) -> String {
    let linkage = match &info.interpreter {
        None => "static, no dynamic loader".to_string(),
        Some(i) => format!("dynamic, loader {i}"),
    };
    let glibc = match (info.format, info.max_glibc) {
        (Format::MachO, _) => "glibc n/a (Mach-O)".to_string(),
        (_, Some(v)) => format!("needs glibc {v}"),
        (_, None) => "needs no glibc symbols".to_string(),
    };
    format!(
        "{:?} {} ({}), {linkage}, {glibc}",
        info.format,
        info.arch,
        info.oci_arch()
    )
}

/// `mosnctl inspect`.
pub fn run(args: Args) -> Result<()> {
    let info = inspect(&args.binary)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        println!("{}: {}", args.binary.display(), summary(&info));
    }
    check_runs_on(&info, args.min_glibc).with_context(|| {
        format!(
            "{} cannot run on glibc {}",
            args.binary.display(),
            args.min_glibc
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions() {
        assert_eq!("2.27".parse::<GlibcVersion>().unwrap(), GlibcVersion(2, 27));
        assert_eq!(
            "GLIBC_2.34".parse::<GlibcVersion>().unwrap(),
            GlibcVersion(2, 34)
        );
        assert!(GlibcVersion(2, 34) > GlibcVersion(2, 27));
        assert!(GlibcVersion(2, 9) < GlibcVersion(2, 10));
        assert!("two".parse::<GlibcVersion>().is_err());
    }

    #[test]
    fn current_test_binary_is_dynamic_glibc() {
        // The test binary itself is a dynamically linked glibc program on this host.
        let me = std::env::current_exe().unwrap();
        let info = inspect(&me).unwrap();
        assert_eq!(info.format, Format::Elf);
        assert!(info.interpreter.is_some());
        assert!(info.max_glibc.is_some());
    }
}
