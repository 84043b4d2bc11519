//! `millrace plugin build [DIR]`: the component of the plugin in DIR, built with the toolchain
//! of its language (the ones `scripts/setup` installs), at `DIR/target/NAME.wasm`; with
//! `--bundle`, its vectors run and travel inside it. The version of `millrace-plugin.toml` is
//! stamped into the build, so `describe` reports it.

use super::optimise::{self, Optimised};
use super::{Language, Manifest, setup_command, snake, tools_dir};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const TARGET: &str = "wasm32-unknown-unknown";
/// Debian's Rust (rustc-web, rust-web-src) and its linkers, when rustup has no wasm32 target.
const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_STD_SOURCE: &str = "/usr/lib/rustlib/src/rust/library";
const DEBIAN_COMPONENT_LD: &str = "/usr/lib/rustlib/x86_64-unknown-linux-gnu/bin/wasm-component-ld";
const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";
const CLANG: &str = "/usr/bin/clang-19";
const WASI_LIBC: &str = "/usr/lib/wasm32-wasi/libc.a";

/// What one build made.
#[derive(Debug)]
pub struct Built {
    pub manifest: Manifest,
    pub path: PathBuf,
    pub size: u64,
    /// The version stamped in (what `describe` reports).
    pub version: String,
    pub took: Duration,
    /// What `wasm-opt` did to a Rust or C plugin's code; `None` for Python and JavaScript (their
    /// core module is the language's interpreter) and when [`Options::unoptimised`].
    pub optimised: Option<Optimised>,
}

impl Built {
    /// `; ` and what `wasm-opt` did, for the line saying what was built; empty when it did not run.
    pub fn optimised_note(&self) -> String {
        self.optimised
            .as_ref()
            .map(|o| format!("; {o}"))
            .unwrap_or_default()
    }
}

/// How to build.
#[derive(Default)]
pub struct Options {
    /// Stamp this version instead of the manifest's (`plugin dev` gives each build its own).
    pub version: Option<String>,
    /// Where to write the component instead of `DIR/target/NAME.wasm`.
    pub output: Option<PathBuf>,
    /// Keep a Rust or C plugin's code as linked, without `wasm-opt` (`plugin dev`'s quick loop).
    pub unoptimised: bool,
}

/// `millrace plugin build [DIR] [--bundle]`.
pub fn run(dir: &Path, bundle: bool) -> i32 {
    let built = match build(dir, &Options::default()) {
        Ok(built) => built,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    println!(
        "built {} {} ({}) in {:.1} s: {} ({} bytes{})",
        built.manifest.name,
        built.version,
        built.manifest.language.title(),
        built.took.as_secs_f64(),
        built.path.display(),
        built.size,
        built.optimised_note()
    );
    if !bundle {
        return 0;
    }
    let bundled = crate::cli::plugin::bundled(&built.path, &dir.join("vectors")).and_then(
        |(cases, bytes)| {
            std::fs::write(&built.path, bytes)
                .map_err(|e| format!("cannot write {}: {e}", built.path.display()))?;
            Ok(cases)
        },
    );
    match bundled {
        Ok(cases) => {
            println!(
                "bundled {cases} vector case(s) into {}: the deploy gate runs them",
                built.path.display()
            );
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

/// Build the plugin in `dir`.
pub fn build(dir: &Path, options: &Options) -> Result<Built, String> {
    let started = Instant::now();
    let manifest = Manifest::read(dir)?;
    let version = options
        .version
        .clone()
        .unwrap_or_else(|| manifest.version.clone());
    // Shown as given; handed to the tools (which run in the plugin's folder) absolute.
    let shown = options
        .output
        .clone()
        .unwrap_or_else(|| dir.join("target").join(format!("{}.wasm", manifest.name)));
    let dir = dir
        .canonicalize()
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let output = std::path::absolute(&shown).map_err(|e| format!("{}: {e}", shown.display()))?;
    if let Some(parent) = output.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    match manifest.language {
        Language::Rust => rust(&dir, &manifest, &version, &output)?,
        Language::C => c(&dir, &manifest, &version, &output)?,
        Language::Python => python(&dir, &manifest, &version, &output)?,
        Language::Js => js(&dir, &manifest, &version, &output)?,
    }
    let bytes = std::fs::read(&output).map_err(|e| format!("{}: {e}", output.display()))?;
    if !bytes.starts_with(&[0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00]) {
        return Err(format!(
            "{} is not a component (a core module?): the {} toolchain did not link one",
            output.display(),
            manifest.language.title()
        ));
    }
    let optimised = match manifest.language {
        Language::Rust | Language::C if !options.unoptimised => Some(optimise::component(&output)?),
        _ => None,
    };
    let size = std::fs::metadata(&output)
        .map_err(|e| format!("{}: {e}", output.display()))?
        .len();
    Ok(Built {
        manifest,
        path: shown,
        size,
        version,
        took: started.elapsed(),
        optimised,
    })
}

/// Run `command`; its output on failure, with what was run.
fn execute(mut command: Command, what: &str) -> Result<(), String> {
    let shown = format!("{command:?}");
    let out = command
        .output()
        .map_err(|e| format!("{what}: cannot run {shown}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stdout));
    // The end of a long compiler log says what failed.
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(60)..].join("\n");
    Err(format!("{what} failed ({}):\n{tail}", out.status))
}

fn need(path: &Path, what: &str) -> Result<(), String> {
    if path.exists() {
        Ok(())
    } else {
        Err(format!(
            "{what} is missing ({}): run {}",
            path.display(),
            setup_command(false)
        ))
    }
}

/// A Rust toolchain that builds components: rustup's `wasm32-unknown-unknown` target when
/// installed (cargo, its wasm-component-ld and wasm-ld), else Debian's Rust building std from
/// source.
struct RustToolchain {
    cargo: Command,
    component_ld: PathBuf,
    wasm_ld: PathBuf,
}

/// The toolchain as seen from `dir` (a `rust-toolchain.toml` there picks rustup's toolchain).
fn rust_toolchain(dir: &Path) -> Result<RustToolchain, String> {
    let rustup_target = Command::new("rustup")
        .current_dir(dir)
        .args(["target", "list", "--installed"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .is_some_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l == TARGET)
        });
    if rustup_target {
        let rustc = |args: &[&str]| {
            Command::new("rustc")
                .current_dir(dir)
                .args(args)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .map_err(|e| format!("rustc {}: {e}", args.join(" ")))
        };
        let sysroot = rustc(&["--print", "sysroot"])?;
        let host = rustc(&["-vV"])?
            .lines()
            .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
            .ok_or("rustc -vV names no host")?;
        let bin = PathBuf::from(sysroot.trim())
            .join("lib/rustlib")
            .join(host)
            .join("bin");
        let (component_ld, wasm_ld) = (bin.join("wasm-component-ld"), bin.join("gcc-ld/wasm-ld"));
        for (path, what) in [(&component_ld, "wasm-component-ld"), (&wasm_ld, "wasm-ld")] {
            if !path.exists() {
                return Err(format!(
                    "rustup's toolchain has the {TARGET} target but no {what} ({}): update it with `rustup update`",
                    path.display()
                ));
            }
        }
        let mut cargo = Command::new("cargo");
        cargo.arg("build");
        return Ok(RustToolchain {
            cargo,
            component_ld,
            wasm_ld,
        });
    }
    for (path, what) in [
        (DEBIAN_CARGO, "Debian's cargo (cargo-web)"),
        (DEBIAN_RUSTC, "Debian's rustc (rustc-web)"),
        (DEBIAN_STD_SOURCE, "Rust's std source (rust-web-src)"),
        (DEBIAN_COMPONENT_LD, "wasm-component-ld (rustc-web)"),
        ("/usr/lib/llvm-22/bin/wasm-ld", "wasm-ld (lld-22)"),
    ] {
        if !Path::new(path).exists() {
            return Err(format!(
                "no Rust toolchain for {TARGET}: {what} is missing ({path}); run {}, or `rustup target add {TARGET}`",
                setup_command(true)
            ));
        }
    }
    let mut cargo = Command::new(DEBIAN_CARGO);
    cargo
        .env("RUSTC", DEBIAN_RUSTC)
        .env("RUSTDOC", "/usr/bin/rustdoc")
        .env("RUSTC_BOOTSTRAP", "1")
        .arg("-Zbuild-std=std,panic_abort")
        .arg("build");
    Ok(RustToolchain {
        cargo,
        component_ld: DEBIAN_COMPONENT_LD.into(),
        wasm_ld: Path::new(LLVM_BIN).join("wasm-ld"),
    })
}

/// A call costs more in Wasm than natively (each function entry checks the stack and the epoch
/// deadline), so LLVM inlines more than its default (225) for plugins: 3–14 % less time per
/// message for the parsers (docs/performance.md). `scripts/build-plugins` passes the same flag.
const INLINE_THRESHOLD: &str = "-Cllvm-args=-inline-threshold=1000";

fn rust(dir: &Path, manifest: &Manifest, version: &str, output: &Path) -> Result<(), String> {
    let toolchain = rust_toolchain(dir)?;
    // Absolute: cargo runs in the plugin's folder, this process reads the result from here.
    let target_dir = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(given) => std::path::absolute(PathBuf::from(&given))
            .map_err(|e| format!("CARGO_TARGET_DIR={}: {e}", PathBuf::from(given).display()))?,
        None => dir.join("target"),
    };
    let mut cargo = toolchain.cargo;
    // The build picks its compiler and flags itself: a workspace wrapper meant for another
    // toolchain (e.g. clippy-driver, what the test command builds with) cannot compile for it.
    cargo
        .current_dir(dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CLIPPY_ARGS")
        .env("MILLRACE_PLUGIN_VERSION", version)
        .env("CARGO_TARGET_DIR", &target_dir)
        .args(["--release", "--target", TARGET, "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .arg("--config")
        .arg(format!(
            "target.{TARGET}.linker={:?}",
            toolchain.component_ld.display().to_string()
        ))
        .arg("--config")
        .arg(format!(
            "target.{TARGET}.rustflags=[\"-Clink-arg=--wasm-ld-path={}\", \"{INLINE_THRESHOLD}\"]",
            toolchain.wasm_ld.display()
        ));
    execute(cargo, "cargo build")?;
    let built = target_dir
        .join(TARGET)
        .join("release")
        .join(format!("{}.wasm", snake(&manifest.name)));
    std::fs::copy(&built, output).map_err(|e| {
        format!(
            "{}: {e} (is the package in Cargo.toml named {:?}, with crate-type cdylib?)",
            built.display(),
            manifest.name
        )
    })?;
    Ok(())
}

fn c(dir: &Path, manifest: &Manifest, version: &str, output: &Path) -> Result<(), String> {
    let tools = tools_dir();
    let wit_bindgen = tools.join("bin/wit-bindgen");
    need(&wit_bindgen, "wit-bindgen (C bindings generator)")?;
    need(Path::new(CLANG), "clang 19")?;
    need(Path::new(WASI_LIBC), "wasi-libc")?;
    let linker = match rust_toolchain(dir) {
        Ok(t) => t.component_ld,
        Err(_) => PathBuf::from(DEBIAN_COMPONENT_LD),
    };
    need(
        &linker,
        "wasm-component-ld (the Rust toolchain's component linker)",
    )?;
    need(&Path::new(LLVM_BIN).join("wasm-ld"), "wasm-ld (lld-22)")?;
    let generated = dir.join("target/gen");
    std::fs::create_dir_all(&generated).map_err(|e| format!("{}: {e}", generated.display()))?;
    let mut bindgen = Command::new(&wit_bindgen);
    bindgen
        .arg("c")
        .arg(dir.join("wit"))
        .args(["--world", &manifest.name, "--out-dir"])
        .arg(&generated);
    execute(bindgen, "wit-bindgen c (bindings from wit/)")?;
    let stem = snake(&manifest.name);
    let mut sources: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "c"))
        .collect();
    sources.sort();
    if sources.is_empty() {
        return Err(format!(
            "{} has no .c file: a C plugin's sources are the .c files beside millrace-plugin.toml (`millrace plugin new NAME --lang c` makes one)",
            dir.display()
        ));
    }
    let mut clang = Command::new(CLANG);
    clang
        // clang hands wasm-component-ld `--wasm-ld-path wasm-ld`, found on PATH. PATH is LLVM's
        // alone: clang would run a wasm-opt it finds on the linked component, which wasm-opt
        // cannot read (and clang 19's `--no-wasm-opt` drops the link step); the component's
        // code is optimised after (optimise.rs).
        .env("PATH", LLVM_BIN)
        .args([
            "--target=wasm32-wasi",
            "-mexec-model=reactor",
            "-O2",
            // Across the plugin's files and the generated bindings: ~4 % less time per message
            // for the C twin of downtime-router (docs/performance.md).
            "-flto",
            "-Wall",
            "-Wextra",
        ])
        .arg(format!("-DPLUGIN_VERSION=\"{version}\""))
        .arg(format!("-fuse-ld={}", linker.display()))
        .args(["-Wl,--wasi-adapter=none", "--sysroot=/usr"])
        .arg(format!("-I{}", generated.display()))
        .arg(format!("-I{}", dir.display()))
        .args(&sources)
        .arg(generated.join(format!("{stem}.c")))
        .arg(generated.join(format!("{stem}_component_type.o")))
        .arg("-o")
        .arg(output);
    execute(clang, "clang").map_err(|e| {
        if e.contains("wasi_snapshot_preview1") || e.contains("wasi:") {
            format!(
                "{e}\na C plugin may import only its world's interfaces: libc's stdio (printf, FILE) and clocks pull in WASI"
            )
        } else {
            e
        }
    })
}

/// Write `text` to `path` unless it already holds it (an unchanged file keeps its time, so a
/// watcher does not see a change).
fn write_if_changed(path: &Path, text: &str) -> Result<(), String> {
    if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(());
    }
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The generated files a build writes into the plugin's folder, which a watcher ignores.
pub const GENERATED: &[&str] = &["version.py", "version.js"];

fn python(dir: &Path, manifest: &Manifest, version: &str, output: &Path) -> Result<(), String> {
    let componentize = tools_dir().join("py/bin/componentize-py");
    need(&componentize, "componentize-py")?;
    need(&dir.join("app.py"), "the plugin's app.py")?;
    write_if_changed(
        &dir.join("version.py"),
        &format!(
            "# Written by `millrace plugin build` from {}; not edited.\nVERSION = {version:?}\n",
            super::MANIFEST
        ),
    )?;
    let mut command = Command::new(componentize);
    command
        .current_dir(dir)
        .arg("-d")
        .arg(dir.join("wit"))
        .args(["-w", &manifest.name, "componentize", "app", "-p"])
        .arg(dir)
        .arg("-o")
        .arg(output);
    execute(command, "componentize-py")
}

/// The script that drives componentize-js and jco's type generator.
const COMPONENTIZE_JS: &str = include_str!("componentize.mjs");

fn js(dir: &Path, manifest: &Manifest, version: &str, output: &Path) -> Result<(), String> {
    let modules = tools_dir().join("js/node_modules");
    need(
        &modules.join("@bytecodealliance/componentize-js"),
        "componentize-js",
    )?;
    need(&modules.join("@bytecodealliance/jco"), "jco")?;
    need(&dir.join("plugin.js"), "the plugin's plugin.js")?;
    if Command::new("node").arg("--version").output().is_err() {
        return Err(format!(
            "Node.js is missing (node): run {} (it installs Debian's nodejs when there is none)",
            setup_command(false)
        ));
    }
    write_if_changed(
        &dir.join("version.js"),
        &format!(
            "// Written by `millrace plugin build` from {}; not edited.\nexport const VERSION = {version:?};\n",
            super::MANIFEST
        ),
    )?;
    let script = dir.join("target/componentize.mjs");
    std::fs::create_dir_all(dir.join("target")).map_err(|e| format!("{}: {e}", dir.display()))?;
    write_if_changed(&script, COMPONENTIZE_JS)?;
    let mut command = Command::new("node");
    command
        .current_dir(dir)
        .arg(&script)
        .arg(&modules)
        .arg(dir.join("plugin.js"))
        .arg(dir.join("wit"))
        .arg(&manifest.name)
        .arg(output)
        .arg(dir.join("types"));
    execute(command, "componentize-js")
}
