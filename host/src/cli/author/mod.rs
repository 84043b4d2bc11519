//! Writing a plugin: `millrace plugin new | build | dev`. A plugin folder from a template embedded
//! in this binary, its component built with the toolchains `scripts/setup` installs, and the
//! edit → build → vectors → deploy → activate loop against a running host. Reads and writes the
//! plugin's folder; talks to a host only through its admin API.

pub mod build;
pub mod dev;
pub mod new;
pub mod optimise;

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The languages a plugin can be written in with what this project builds with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    Rust,
    C,
    #[value(alias = "py")]
    Python,
    #[value(alias = "javascript")]
    #[serde(alias = "javascript")]
    Js,
}

impl Language {
    /// The name `--lang` and `millrace-plugin.toml` use.
    pub fn key(self) -> &'static str {
        match self {
            Language::Rust => "rust",
            Language::C => "c",
            Language::Python => "python",
            Language::Js => "js",
        }
    }

    /// The name people use.
    pub fn title(self) -> &'static str {
        match self {
            Language::Rust => "Rust",
            Language::C => "C",
            Language::Python => "Python",
            Language::Js => "JavaScript",
        }
    }
}

/// The file in a plugin's folder that names it, its version and its language.
pub const MANIFEST: &str = "millrace-plugin.toml";

/// A plugin folder's `millrace-plugin.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The plugin's name: what `describe` reports and routes name in their steps.
    pub name: String,
    /// The version `describe` reports; the build stamps it into the component.
    pub version: String,
    pub language: Language,
}

impl Manifest {
    /// The manifest of the plugin in `dir`, checked.
    pub fn read(dir: &Path) -> Result<Manifest, String> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                format!(
                    "{} has no {MANIFEST}: start a plugin with `millrace plugin new NAME --lang rust|c|python|js`, or add one with name, version and language",
                    dir.display()
                )
            } else {
                format!("cannot read {}: {e}", path.display())
            }
        })?;
        let manifest: Manifest =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        check_name(&manifest.name).map_err(|e| format!("{}: name: {e}", path.display()))?;
        check_version(&manifest.version)
            .map_err(|e| format!("{}: version: {e}", path.display()))?;
        Ok(manifest)
    }
}

/// A plugin name is a WIT world name: lower-case words of letters and digits, each starting with
/// a letter, joined by `-` (`work-report`, `plant2-codes`).
pub fn check_name(name: &str) -> Result<(), String> {
    let word_ok = |w: &str| {
        w.starts_with(|c: char| c.is_ascii_lowercase())
            && w.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    };
    if name.is_empty() || name.len() > 64 || !name.split('-').all(word_ok) {
        return Err(format!(
            "{name:?} is not a plugin name: use lower-case words of letters and digits, each starting with a letter, joined by '-' (e.g. work-report), at most 64 characters"
        ));
    }
    if WIT_KEYWORDS.contains(&name) {
        return Err(format!(
            "{name:?} is a WIT keyword and cannot name the plugin's world: choose another name (e.g. {name}-map)"
        ));
    }
    Ok(())
}

/// The longest version a manifest may give.
const MAX_VERSION: usize = 48;

/// Words WIT reserves: a world cannot be named by one.
const WIT_KEYWORDS: &[&str] = &[
    "as",
    "async",
    "bool",
    "borrow",
    "char",
    "constructor",
    "enum",
    "export",
    "f32",
    "f64",
    "flags",
    "float32",
    "float64",
    "from",
    "func",
    "future",
    "import",
    "include",
    "interface",
    "list",
    "option",
    "own",
    "package",
    "record",
    "resource",
    "result",
    "s16",
    "s32",
    "s64",
    "s8",
    "static",
    "stream",
    "string",
    "tuple",
    "type",
    "u16",
    "u32",
    "u64",
    "u8",
    "use",
    "variant",
    "with",
    "world",
];

/// A version is `MAJOR.MINOR.PATCH` with an optional `-pre-release` (semantic versioning).
pub fn check_version(version: &str) -> Result<(), String> {
    let (core, pre) = match version.split_once('-') {
        Some((core, pre)) => (core, Some(pre)),
        None => (version, None),
    };
    let numbers: Vec<&str> = core.split('.').collect();
    let core_ok = numbers.len() == 3
        && numbers
            .iter()
            .all(|n| !n.is_empty() && n.len() <= 9 && n.bytes().all(|b| b.is_ascii_digit()));
    let pre_ok = pre.is_none_or(|p| {
        !p.is_empty()
            && p.split('.').all(|id| {
                !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
    });
    // The host keeps versions of up to 64 bytes; `plugin dev` adds `-dev.` and ten digits.
    if !core_ok || !pre_ok || version.len() > MAX_VERSION {
        return Err(format!(
            "{version:?} is not a version: use MAJOR.MINOR.PATCH, e.g. 0.2.0 (semantic versioning), at most {MAX_VERSION} characters"
        ));
    }
    Ok(())
}

/// Where the toolchains of `scripts/setup` are: `MILLRACE_TOOLS`, else `target/tools` of the
/// checkout this binary was built in (the binary is `target/release/millrace`).
pub fn tools_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(TOOLS_ENV) {
        return PathBuf::from(dir);
    }
    checkout_path(&["target", "tools"]).unwrap_or_else(|| PathBuf::from("target/tools"))
}

/// The command that installs the toolchains: `scripts/setup` of the checkout this binary was
/// built in (`--rust`: Rust's only).
pub fn setup_command(rust_only: bool) -> String {
    let script = checkout_path(&["scripts", "setup"])
        .map_or_else(|| "scripts/setup".to_string(), |p| p.display().to_string());
    let only = if rust_only { " --rust" } else { "" };
    format!("`{script}{only}` (from the millrace checkout; as root or with sudo)")
}

/// The environment variable naming the toolchains folder.
pub const TOOLS_ENV: &str = "MILLRACE_TOOLS";

/// The environment variable naming the Rust SDK's folder for `plugin new --lang rust`.
pub const SDK_ENV: &str = "MILLRACE_SDK";

/// `parts` below the checkout this binary was built in (`target/release/millrace` → the
/// checkout), if the binary runs from there.
fn checkout_path(parts: &[&str]) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?.canonicalize().ok()?;
    let checkout = exe.parent()?.parent()?.parent()?;
    let mut path = checkout.to_path_buf();
    for part in parts {
        path.push(part);
    }
    path.exists().then_some(path)
}

/// The Rust SDK's folder: `MILLRACE_SDK`, else `sdk/` of the checkout this binary was built in.
pub fn sdk_dir() -> Result<PathBuf, String> {
    let dir = match std::env::var_os(SDK_ENV) {
        Some(dir) => PathBuf::from(dir),
        None => checkout_path(&["sdk"]).ok_or_else(|| {
            format!(
                "no millrace-sdk found beside this binary: set {SDK_ENV} to the sdk/ folder of a millrace checkout"
            )
        })?,
    };
    if !dir.join("Cargo.toml").is_file() {
        return Err(format!(
            "{} has no Cargo.toml: set {SDK_ENV} to the sdk/ folder of a millrace checkout",
            dir.display()
        ));
    }
    dir.canonicalize()
        .map_err(|e| format!("{}: {e}", dir.display()))
}

/// `name` with `-` as `_`: the C prefix of a world, the file name of a Rust library.
pub fn snake(name: &str) -> String {
    name.replace('-', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_wit_world_names() {
        for good in ["work-report", "a", "plant2-codes", "x12-map"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Work",
            "work_report",
            "2work",
            "work-2",
            "-work",
            "work-",
            "a--b",
            "wörk",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name(&"a".repeat(65)).is_err());
    }

    #[test]
    fn versions_are_semantic() {
        for good in ["0.1.0", "1.20.3", "0.1.0-dev.20261202", "2.0.0-rc-1"] {
            assert!(check_version(good).is_ok(), "{good}");
        }
        for bad in [
            "1.0",
            "1.0.0.0",
            "v1.0.0",
            "1.0.0-",
            "1.0.0-a..b",
            "1.x.0",
            "",
            "1.0.0+b",
        ] {
            assert!(check_version(bad).is_err(), "{bad:?}");
        }
    }
}
