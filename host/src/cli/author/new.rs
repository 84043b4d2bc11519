//! `millrace plugin new NAME --lang L`: a plugin folder from the template of its language,
//! embedded in this binary: source, README, build manifest, the plugin's world, conformance
//! vectors (one case that passes, one rejection) and a local host configuration whose route
//! section is the snippet to paste into a site's `millrace.toml`.

use super::{Language, check_name, sdk_dir, snake};
use std::path::{Path, PathBuf};

/// A template file: its path in the new folder and its text, with `{{placeholders}}`.
type File = (&'static str, &'static str);

macro_rules! template {
    ($($path:literal => $source:literal),* $(,)?) => {
        &[$(($path, include_str!(concat!("../../../templates/", $source)))),*]
    };
}

/// Every plugin, whatever its language.
const COMMON: &[File] = template! {
    "README.md" => "common/README.md",
    "millrace-plugin.toml" => "common/millrace-plugin.toml",
    "millrace.toml" => "common/millrace.toml",
    ".gitignore" => "common/gitignore",
    "vectors/settings.toml" => "common/vectors/settings.toml",
    "vectors/reported/input.txt" => "common/vectors/reported/input.txt",
    "vectors/reported/expected.json" => "common/vectors/reported/expected.json",
    "vectors/not-a-number/input.txt" => "common/vectors/not-a-number/input.txt",
    "vectors/not-a-number/expected.json" => "common/vectors/not-a-number/expected.json",
};

/// The plugin's own world and the contract it includes (C, Python, JavaScript).
const WIT: &[File] = &[
    (
        "wit/world.wit",
        include_str!("../../../templates/common/wit/world.wit"),
    ),
    (
        "wit/deps/millrace/mediation.wit",
        include_str!("../../../../wit/mediation.wit"),
    ),
];

const RUST: &[File] = template! {
    "Cargo.toml" => "rust/Cargo.toml",
    "src/lib.rs" => "rust/src/lib.rs",
};
const C: &[File] = template! { "mediate.c" => "c/mediate.c" };
const PYTHON: &[File] = template! { "app.py" => "python/app.py" };
const JS: &[File] = template! { "plugin.js" => "js/plugin.js" };

/// What the README says about a language's files and toolchain.
fn about(language: Language) -> (&'static str, &'static str) {
    match language {
        Language::Rust => (
            include_str!("../../../templates/rust/FILES.md"),
            "The build uses a rustup `wasm32-unknown-unknown` target when one is installed, else Debian's Rust with its std source (`scripts/setup --rust`).",
        ),
        Language::C => (
            include_str!("../../../templates/c/FILES.md"),
            "The build uses `wit-bindgen c`, clang 19, wasi-libc and wasm-component-ld (`scripts/setup`).",
        ),
        Language::Python => (
            include_str!("../../../templates/python/FILES.md"),
            "The build uses componentize-py (`scripts/setup`). CPython in the component imports WASI (granted without any authority: no files, clock or network) and needs `memory_mib = 128`.",
        ),
        Language::Js => (
            include_str!("../../../templates/js/FILES.md"),
            "The build uses componentize-js and jco from npm (`scripts/setup`) and Node.js. The component embeds SpiderMonkey (~12 MB); the host compiles it once into its compile cache.",
        ),
    }
}

/// The capabilities the template's component imports, as a TOML list; and what else its step
/// needs.
fn grants(language: Language) -> (&'static str, &'static str) {
    match language {
        // The SDK forwards panic messages to the host log.
        Language::Rust => (r#"["log", "config"]"#, ""),
        Language::C => (r#"["config"]"#, ""),
        Language::Python => (r#"["config", "wasi"]"#, "memory_mib = 128\n"),
        Language::Js => (r#"["config"]"#, "memory_mib = 128\n"),
    }
}

/// `millrace plugin new`.
pub fn run(name: &str, language: Language, dir: Option<&Path>) -> i32 {
    match create(name, language, dir) {
        Ok(dir) => {
            let shown = dir.display();
            println!(
                "created {shown}: a {} plugin named {name}",
                language.title()
            );
            println!();
            println!("next:");
            println!("  millrace plugin build {shown}");
            println!("  millrace plugin test {shown}/target/{name}.wasm --vectors {shown}/vectors");
            println!("  millrace run --config {shown}/millrace.toml --insecure-admin");
            println!();
            println!(
                "the plant and route to paste into a site's millrace.toml (from {shown}/millrace.toml; a site names its own plant):"
            );
            let config = std::fs::read_to_string(dir.join("millrace.toml")).unwrap_or_default();
            if let Some(at) = config.find("\n[plants.") {
                print!("{}", &config[at + 1..]);
            }
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

/// Write the plugin's folder; its path.
pub fn create(name: &str, language: Language, dir: Option<&Path>) -> Result<PathBuf, String> {
    check_name(name)?;
    let dir = dir.map_or_else(|| PathBuf::from(name), Path::to_path_buf);
    if dir.exists()
        && std::fs::read_dir(&dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .next()
            .is_some()
    {
        return Err(format!(
            "{} exists and is not empty: choose another folder with --dir, or remove it",
            dir.display()
        ));
    }
    // A TOML string's content (the path goes between quotes in Cargo.toml).
    let sdk = match language {
        Language::Rust => {
            let quoted = toml::Value::String(sdk_dir()?.display().to_string()).to_string();
            quoted[1..quoted.len() - 1].to_string()
        }
        _ => String::new(),
    };
    let (files_md, toolchain) = about(language);
    let (grant_list, extra) = grants(language);
    let fill = |text: &str| {
        text.replace("{{files}}", files_md.trim_end())
            .replace("{{toolchain}}", toolchain)
            .replace("{{grants}}", grant_list)
            .replace("{{extra}}", extra)
            .replace("{{sdk}}", &sdk)
            .replace("{{language_name}}", language.title())
            .replace("{{language}}", language.key())
            .replace("{{snake}}", &snake(name))
            .replace("{{name}}", name)
    };
    let own: &[File] = match language {
        Language::Rust => RUST,
        Language::C => C,
        Language::Python => PYTHON,
        Language::Js => JS,
    };
    let wit: &[File] = if language == Language::Rust { &[] } else { WIT };
    for (path, text) in COMMON.iter().chain(wit).chain(own) {
        let at = dir.join(path);
        if let Some(parent) = at.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        // The contract is copied as it is; a WIT file may hold `{{` in a doc comment.
        let text = if path.ends_with("mediation.wit") {
            text.to_string()
        } else {
            fill(text)
        };
        std::fs::write(&at, text).map_err(|e| format!("cannot write {}: {e}", at.display()))?;
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_of_every_template_is_filled() {
        for language in [Language::C, Language::Python, Language::Js] {
            let dir = tempfile::tempdir().unwrap();
            let at = dir.path().join("p");
            create("work-report", language, Some(&at)).unwrap();
            for entry in walk(&at) {
                let text = std::fs::read_to_string(&entry).unwrap();
                assert!(!text.contains("{{"), "{}: {text}", entry.display());
            }
            let manifest = super::super::Manifest::read(&at).unwrap();
            assert_eq!(manifest.language, language);
            assert_eq!(manifest.name, "work-report");
        }
    }

    #[test]
    fn a_folder_with_files_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("keep.txt"), "mine").unwrap();
        let e = create("work-report", Language::C, Some(dir.path())).unwrap_err();
        assert!(e.contains("exists and is not empty"), "{e}");
        assert!(create("Work", Language::C, None).is_err());
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
        out
    }
}
