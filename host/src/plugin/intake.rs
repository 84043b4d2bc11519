//! How untrusted component bytes come in (uploads, dropped files, broadcasts from other hosts):
//! a size cap, then cheap structural checks that read the bytes without compiling them, then
//! compilation in a child process under a memory and time budget. Only bytes whose compilation
//! fits the budget are compiled by the host itself — from the compile cache the child filled,
//! so usually not compiled again at all; a compilation the child proved bounded is bounded here
//! too, whether the cache answers or not.

use crate::plugin::capability::Capability;
use crate::plugin::engine::PluginEngine;
use crate::plugin::{Artifact, LoadError};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What one candidate may cost before the gate looks at its behaviour.
#[derive(Debug, Clone, Copy)]
pub struct IntakeLimits {
    /// Largest component accepted (`host.max_component_mib`, default 64 MiB).
    pub max_bytes: usize,
    /// Address space the compiling child may use (`host.compile_memory_mib`, default 2048).
    pub compile_memory_bytes: u64,
    /// Wall-clock time the compilation may take (`host.compile_timeout_s`, default 120).
    pub compile_timeout: Duration,
}

impl Default for IntakeLimits {
    fn default() -> Self {
        IntakeLimits {
            max_bytes: 64 << 20,
            compile_memory_bytes: 2048 << 20,
            compile_timeout: Duration::from_secs(120),
        }
    }
}

/// Structural bounds checked before compiling. Each is several times what the largest plugin
/// this project builds needs (the CPython and SpiderMonkey components included); a component
/// past any of them is refused without being compiled.
pub const MAX_CORE_MODULES: usize = 64;
pub const MAX_COMPONENTS: usize = 64;
pub const MAX_CORE_INSTANCES: usize = 256;
pub const MAX_FUNCTIONS: usize = 400_000;
pub const MAX_FUNCTION_BYTES: usize = 4 << 20;
pub const MAX_LOCALS: u64 = 50_000;
pub const MAX_MEMORIES: usize = 64;
pub const MAX_TABLES: usize = 256;
/// Globals defined by all the core modules together. Each instance holds its globals outside
/// linear memory, written at instantiation, so `memory_mib` does not count them: one module of
/// a million `v128` globals instantiated 126 times held 2.1 GB under a 64 MiB cap. The CPython
/// component defines 874.
pub const MAX_GLOBALS: usize = 10_000;
/// Instances one instantiation of the component makes at run time: itself, each core instance
/// and each component instance, those of nested components as often as they are instantiated.
/// Counted from the structure, since nesting multiplies: 23 levels of a component instantiating
/// the one inside it twice (2.4 KB) are 8 million instances, which held 1.2 GB of the host's
/// memory when it loaded them. The CPython component makes 16.
pub const MAX_FLAT_INSTANCES: u64 = 1024;

/// Functions of all the core instances one instantiation makes, each module's counted as
/// often as it is instantiated. An instance keeps a function reference (32 bytes) for each of
/// its functions that can escape, written at instantiation, outside linear memory: one module
/// of 390,000 functions instantiated 126 times would hold 1.6 GB. The CPython component's
/// instances have 14,583 together.
pub const MAX_FLAT_FUNCTIONS: u64 = 200_000;

/// Entries of one index space (components or core modules) of one component.
const MAX_INDEX_ENTRIES: usize = 1_000;

/// What one instantiation makes: instances, and the functions of its core instances.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Made {
    instances: u64,
    functions: u64,
}

impl Made {
    fn add(&mut self, other: Made) {
        self.instances = self.instances.saturating_add(other.instances);
        self.functions = self.functions.saturating_add(other.functions);
    }
}

/// A component or core module being read, for counting what an instantiation makes
/// ([`MAX_FLAT_INSTANCES`], [`MAX_FLAT_FUNCTIONS`]).
enum Frame {
    /// A core module and its functions (imported and defined).
    Module { functions: u64 },
    Component {
        /// What instantiating each entry of the component index space makes, in order.
        components: Vec<Made>,
        /// The functions of each entry of the core module index space, in order.
        modules: Vec<u64>,
        /// What instantiating this component makes so far, itself included.
        made: Made,
    },
}

/// The current (innermost) component frame's index spaces and count.
type Innermost<'a> = (&'a mut Vec<Made>, &'a mut Vec<u64>, &'a mut Made);

fn innermost(frames: &mut [Frame]) -> Result<Innermost<'_>, String> {
    match frames.last_mut() {
        Some(Frame::Component {
            components,
            modules,
            made,
        }) => Ok((components, modules, made)),
        _ => Err("not a valid component: a component section outside a component".into()),
    }
}

/// The component frame `up` levels out from the innermost.
fn outer(frames: &[Frame], up: u32) -> Result<(&[Made], &[u64]), String> {
    let at = frames
        .len()
        .checked_sub(1 + up as usize)
        .ok_or("not a valid component: an outer alias past the outermost component")?;
    match &frames[at] {
        Frame::Component {
            components,
            modules,
            ..
        } => Ok((components, modules)),
        Frame::Module { .. } => Err("not a valid component: an alias into a module".into()),
    }
}

/// What instantiating component `index` of the component `up` levels out makes.
fn weight(frames: &[Frame], up: u32, index: u32) -> Result<Made, String> {
    outer(frames, up)?
        .0
        .get(index as usize)
        .copied()
        .ok_or_else(|| format!("not a valid component: no component {index}"))
}

/// The functions of core module `index` of the component `up` levels out.
fn functions(frames: &[Frame], up: u32, index: u32) -> Result<u64, String> {
    outer(frames, up)?
        .1
        .get(index as usize)
        .copied()
        .ok_or_else(|| format!("not a valid component: no core module {index}"))
}

/// Push onto an index space, within [`MAX_INDEX_ENTRIES`].
fn push<T>(space: &mut Vec<T>, entry: T) -> Result<(), String> {
    if space.len() >= MAX_INDEX_ENTRIES {
        return Err(format!(
            "the component has more than {MAX_INDEX_ENTRIES} components or core modules in one index space"
        ));
    }
    space.push(entry);
    Ok(())
}

/// Add `made` to what the innermost component makes; past the bounds, refused.
fn makes(frames: &mut [Frame], made: Made) -> Result<(), String> {
    let (_, _, total) = innermost(frames)?;
    total.add(made);
    if total.instances > MAX_FLAT_INSTANCES {
        return Err(format!(
            "the component makes more than {MAX_FLAT_INSTANCES} instances when instantiated (components instantiated within each other multiply); at most {MAX_FLAT_INSTANCES} are accepted"
        ));
    }
    if total.functions > MAX_FLAT_FUNCTIONS {
        return Err(format!(
            "the component's instances have more than {MAX_FLAT_FUNCTIONS} functions together (each module counted as often as it is instantiated); at most {MAX_FLAT_FUNCTIONS} are accepted"
        ));
    }
    Ok(())
}

/// What a component is made of, read without compiling it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Shape {
    pub core_modules: usize,
    pub components: usize,
    pub core_instances: usize,
    pub functions: usize,
    pub largest_function_bytes: usize,
    pub most_locals: u64,
    pub memories: usize,
    pub tables: usize,
    pub globals: usize,
    /// Instances one instantiation makes at run time ([`MAX_FLAT_INSTANCES`]).
    pub flat_instances: u64,
    /// Functions of those instances together ([`MAX_FLAT_FUNCTIONS`]).
    pub flat_functions: u64,
    /// The component's own imports (`millrace:mediation/log@0.1.0`, `wasi:io/streams@0.2.6`).
    pub imports: Vec<String>,
}

/// Read `bytes` as a component and check its shape against the structural bounds.
pub fn shape(bytes: &[u8], max_bytes: usize) -> Result<Shape, String> {
    if bytes.len() > max_bytes {
        return Err(format!(
            "the component is {} bytes; at most {} MiB are accepted (host.max_component_mib)",
            bytes.len(),
            max_bytes >> 20
        ));
    }
    if !bytes.starts_with(b"\0asm") || bytes.get(4..8) != Some(&[0x0d, 0x00, 0x01, 0x00]) {
        return Err(
            "not a WebAssembly component (a core module or another file); build a component, e.g. with wasm-component-ld or `wasm-tools component new`"
                .into(),
        );
    }
    let mut shape = Shape::default();
    let mut frames: Vec<Frame> = Vec::new();
    let over = |what: &str, n: usize, max: usize| {
        Err(format!(
            "the component has {n} {what}; at most {max} are accepted"
        ))
    };
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        use wasmparser::Payload;
        match payload.map_err(|e| format!("not a valid component: {e}"))? {
            Payload::Version { encoding, .. } => {
                frames.push(match encoding {
                    wasmparser::Encoding::Module => Frame::Module { functions: 0 },
                    wasmparser::Encoding::Component => Frame::Component {
                        components: Vec::new(),
                        modules: Vec::new(),
                        made: Made {
                            instances: 1,
                            functions: 0,
                        },
                    },
                });
            }
            Payload::End(_) => {
                match frames.pop() {
                    Some(Frame::Component { made, .. }) => match frames.last_mut() {
                        Some(Frame::Component { components, .. }) => push(components, made)?,
                        Some(Frame::Module { .. }) => {
                            return Err("not a valid component: a component inside a module".into());
                        }
                        None => {
                            shape.flat_instances = made.instances;
                            shape.flat_functions = made.functions;
                        }
                    },
                    Some(Frame::Module { functions }) => match frames.last_mut() {
                        Some(Frame::Component { modules, .. }) => push(modules, functions)?,
                        Some(Frame::Module { .. }) => {
                            return Err("not a valid component: a module inside a module".into());
                        }
                        // A core module alone is refused before it is read.
                        None => {}
                    },
                    None => {}
                }
            }
            Payload::ModuleSection { .. } => {
                shape.core_modules += 1;
                if shape.core_modules > MAX_CORE_MODULES {
                    return over("core modules", shape.core_modules, MAX_CORE_MODULES);
                }
            }
            Payload::ComponentSection { .. } => {
                shape.components += 1;
                if shape.components > MAX_COMPONENTS {
                    return over("nested components", shape.components, MAX_COMPONENTS);
                }
            }
            Payload::InstanceSection(reader) => {
                shape.core_instances += reader.count() as usize;
                if shape.core_instances > MAX_CORE_INSTANCES {
                    return over("core instances", shape.core_instances, MAX_CORE_INSTANCES);
                }
                for instance in reader {
                    let instance = instance.map_err(|e| format!("not a valid component: {e}"))?;
                    if let wasmparser::Instance::Instantiate { module_index, .. } = instance {
                        let functions = functions(&frames, 0, module_index)?;
                        makes(
                            &mut frames,
                            Made {
                                instances: 1,
                                functions,
                            },
                        )?;
                    }
                }
            }
            Payload::ComponentInstanceSection(reader) => {
                for instance in reader {
                    let instance = instance.map_err(|e| format!("not a valid component: {e}"))?;
                    if let wasmparser::ComponentInstance::Instantiate {
                        component_index, ..
                    } = instance
                    {
                        let made = weight(&frames, 0, component_index)?;
                        makes(&mut frames, made)?;
                    }
                }
            }
            Payload::ComponentAliasSection(reader) => {
                for alias in reader {
                    match alias.map_err(|e| format!("not a valid component: {e}"))? {
                        wasmparser::ComponentAlias::Outer {
                            kind: wasmparser::ComponentOuterAliasKind::Component,
                            count,
                            index,
                        } => {
                            let made = weight(&frames, count, index)?;
                            push(innermost(&mut frames)?.0, made)?;
                        }
                        wasmparser::ComponentAlias::Outer {
                            kind: wasmparser::ComponentOuterAliasKind::CoreModule,
                            count,
                            index,
                        } => {
                            let functions = functions(&frames, count, index)?;
                            push(innermost(&mut frames)?.1, functions)?;
                        }
                        wasmparser::ComponentAlias::InstanceExport {
                            kind:
                                wasmparser::ComponentExternalKind::Component
                                | wasmparser::ComponentExternalKind::Module,
                            ..
                        } => {
                            return Err(
                                "the component takes a component or a core module from an instance's exports; they are accepted only as defined inside it"
                                    .into(),
                            );
                        }
                        _ => {}
                    }
                }
            }
            Payload::ComponentExportSection(reader) => {
                for export in reader {
                    let export = export.map_err(|e| format!("not a valid component: {e}"))?;
                    match export.kind {
                        wasmparser::ComponentExternalKind::Component => {
                            let made = weight(&frames, 0, export.index)?;
                            push(innermost(&mut frames)?.0, made)?;
                        }
                        wasmparser::ComponentExternalKind::Module => {
                            let functions = functions(&frames, 0, export.index)?;
                            push(innermost(&mut frames)?.1, functions)?;
                        }
                        _ => {}
                    }
                }
            }
            Payload::ComponentImportSection(reader) => {
                for import in reader {
                    let import = import.map_err(|e| format!("not a valid component: {e}"))?;
                    if matches!(
                        import.ty,
                        wasmparser::ComponentTypeRef::Component(_)
                            | wasmparser::ComponentTypeRef::Module(_)
                    ) {
                        return Err(
                            "the component imports a component or a core module; they are accepted only as defined inside it"
                                .into(),
                        );
                    }
                    // Only the outermost component's imports are asked of the host.
                    if frames.len() != 1 {
                        continue;
                    }
                    // Imported types (`message`, from the world's `use types.{..}`) are not
                    // capabilities; instances and functions are.
                    if !matches!(import.ty, wasmparser::ComponentTypeRef::Type(_)) {
                        shape.imports.push(import.name.name.to_string());
                    }
                }
            }
            Payload::ImportSection(reader) => {
                // Imported functions can escape too: they count as the module's functions.
                let mut imported = 0u64;
                for import in reader.into_imports() {
                    let import = import.map_err(|e| format!("not a valid component: {e}"))?;
                    if matches!(import.ty, wasmparser::TypeRef::Func(_)) {
                        imported += 1;
                    }
                }
                if let Some(Frame::Module { functions }) = frames.last_mut() {
                    *functions = functions.saturating_add(imported);
                }
            }
            Payload::FunctionSection(reader) => {
                if let Some(Frame::Module { functions }) = frames.last_mut() {
                    *functions = functions.saturating_add(u64::from(reader.count()));
                }
                shape.functions += reader.count() as usize;
                if shape.functions > MAX_FUNCTIONS {
                    return over("functions", shape.functions, MAX_FUNCTIONS);
                }
            }
            Payload::CodeSectionEntry(body) => {
                let size = body.range().len();
                shape.largest_function_bytes = shape.largest_function_bytes.max(size);
                if size > MAX_FUNCTION_BYTES {
                    return Err(format!(
                        "the component has a function of {size} bytes; at most {MAX_FUNCTION_BYTES} are accepted"
                    ));
                }
                let mut locals: u64 = 0;
                for declared in body
                    .get_locals_reader()
                    .map_err(|e| format!("not a valid component: {e}"))?
                {
                    let (count, _) = declared.map_err(|e| format!("not a valid component: {e}"))?;
                    locals += u64::from(count);
                }
                shape.most_locals = shape.most_locals.max(locals);
                if locals > MAX_LOCALS {
                    return Err(format!(
                        "the component has a function with {locals} locals; at most {MAX_LOCALS} are accepted"
                    ));
                }
            }
            Payload::MemorySection(reader) => {
                shape.memories += reader.count() as usize;
                if shape.memories > MAX_MEMORIES {
                    return over("memories", shape.memories, MAX_MEMORIES);
                }
            }
            Payload::TableSection(reader) => {
                shape.tables += reader.count() as usize;
                if shape.tables > MAX_TABLES {
                    return over("tables", shape.tables, MAX_TABLES);
                }
            }
            Payload::GlobalSection(reader) => {
                shape.globals += reader.count() as usize;
                if shape.globals > MAX_GLOBALS {
                    return over("globals", shape.globals, MAX_GLOBALS);
                }
            }
            _ => {}
        }
    }
    Ok(shape)
}

/// The capabilities `imports` ask for, or why one cannot be granted here: an import the host
/// does not provide, or a capability no step of the plant is granted (`granted`).
pub fn capabilities(imports: &[String], granted: &[Capability]) -> Result<Vec<Capability>, String> {
    let mut wanted = Vec::new();
    for import in imports {
        match Capability::of_import(import) {
            Ok(Some(cap)) if !granted.contains(&cap) => {
                return Err(format!(
                    "the plugin imports {import} but no step of the plant is granted \"{cap}\""
                ));
            }
            Ok(Some(cap)) if !wanted.contains(&cap) => wanted.push(cap),
            Ok(_) => {}
            Err(e) => return Err(format!("the plugin {e}")),
        }
    }
    Ok(wanted)
}

/// Compile `bytes` in a child process (`millrace plugin compile`) bounded by `limits`, into the
/// compile cache of `engine` (at `cache_dir`); then load it here. A child that runs out of
/// memory or time is killed and the candidate refused.
pub fn compile(
    engine: &PluginEngine,
    cache_dir: &Path,
    scratch: &Path,
    name: &Path,
    bytes: &[u8],
    limits: IntakeLimits,
) -> Result<Artifact, LoadError> {
    let refused = |reason: String| LoadError::Invalid {
        path: name.to_path_buf(),
        reason,
    };
    std::fs::create_dir_all(scratch)
        .map_err(|e| refused(format!("cannot make {}: {e}", scratch.display())))?;
    let file = tempfile::Builder::new()
        .suffix(".wasm")
        .tempfile_in(scratch)
        .map_err(|e| refused(format!("cannot write the candidate for compiling: {e}")))?;
    std::fs::write(file.path(), bytes)
        .map_err(|e| refused(format!("cannot write the candidate for compiling: {e}")))?;
    let exe = std::env::current_exe().map_err(|e| {
        refused(format!(
            "cannot find the millrace binary to compile with: {e}"
        ))
    })?;
    run_compiler(&exe, cache_dir, file.path(), limits).map_err(refused)?;
    Artifact::from_bytes(engine, name, bytes)
}

/// Run `exe plugin compile` on `file` and wait for it, within `limits`.
fn run_compiler(
    exe: &Path,
    cache_dir: &Path,
    file: &Path,
    limits: IntakeLimits,
) -> Result<(), String> {
    let started = Instant::now();
    let mut child = Command::new(exe)
        .args(["plugin", "compile"])
        .arg(file)
        .arg("--cache")
        .arg(cache_dir)
        .arg("--memory-mib")
        .arg((limits.compile_memory_bytes >> 20).to_string())
        .arg("--cpu-s")
        .arg(limits.compile_timeout.as_secs().max(1).to_string())
        // Nothing from the host's environment (secrets such as the control key among it).
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the compiler process {}: {e}", exe.display()))?;
    let mut stderr = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(stderr) = stderr.as_mut() {
            // At most 64 KiB of what it says.
            let _ = std::io::Read::read_to_string(
                &mut std::io::Read::take(stderr, 64 * 1024),
                &mut text,
            );
        }
        text
    });
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .map_err(|e| format!("waiting for the compiler process: {e}"))?
        {
            break status;
        }
        if started.elapsed() > limits.compile_timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "compiling the component took longer than {} s (host.compile_timeout_s); it was stopped",
                limits.compile_timeout.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let said = reader.join().unwrap_or_default();
    if status.success() {
        return Ok(());
    }
    let said = said.trim();
    if let Some(reason) = said.strip_prefix("error: ") {
        // The compiler refused the bytes (invalid Wasm, unsupported features): its reason.
        return Err(reason.to_string());
    }
    Err(format!(
        "compiling the component needed more than {} MiB of address space or {} s of CPU (host.compile_memory_mib, host.compile_timeout_s); the compiler process ended with {status}",
        limits.compile_memory_bytes >> 20,
        limits.compile_timeout.as_secs()
    ))
}

/// `millrace plugin compile FILE --cache DIR --memory-mib M --cpu-s S`: the child side of
/// [`compile`]. Limits its own address space and CPU time first, then compiles `file` with the
/// host's engine settings into the compile cache at `cache_dir`. Exit 0 when compiled; 1 with
/// `error: REASON` on stderr when the bytes are refused; killed or aborted past its budget.
pub fn compile_child(file: &Path, cache_dir: &Path, memory_mib: u64, cpu_s: u64) -> i32 {
    use rustix::process::{Resource, Rlimit, setrlimit};
    let bytes = memory_mib << 20;
    for (resource, limit) in [(Resource::As, bytes), (Resource::Cpu, cpu_s)] {
        if let Err(e) = setrlimit(
            resource,
            Rlimit {
                current: Some(limit),
                maximum: Some(limit),
            },
        ) {
            eprintln!("error: cannot limit the compiler process ({resource:?}): {e}");
            return 1;
        }
    }
    let engine = match PluginEngine::new(Some(cache_dir)) {
        Ok(engine) => engine,
        Err(e) => {
            eprintln!("error: {e:#}");
            return 1;
        }
    };
    let component = match std::fs::read(file) {
        Ok(bytes) => bytes,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", file.display());
            return 1;
        }
    };
    match wasmtime::component::Component::new(engine.engine(), &component) {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            1
        }
    }
}

/// Where `compile` writes candidates for the child to read: `DATA_DIR/tmp`.
pub fn scratch_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("tmp")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn built(dir: &str, name: &str) -> Option<Vec<u8>> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target")
            .join(dir)
            .join(format!("{name}.wasm"));
        std::fs::read(path).ok()
    }

    #[test]
    fn the_plugins_this_project_builds_fit_the_structural_bounds() {
        // Skipped for components not built yet (scripts/build-plugins builds them before the
        // tests run in CI).
        for (dir, name) in [
            ("plugins", "canonical-map-py"),
            ("plugins", "canonical-map-js"),
            ("plugins", "policy-guard"),
            ("plugins", "downtime-router-c"),
            ("plugins", "mes-fixed-width"),
            ("test-guests", "guest-wasi-probe"),
        ] {
            let Some(bytes) = built(dir, name) else {
                continue;
            };
            let shape = shape(&bytes, 64 << 20).unwrap_or_else(|e| panic!("{name}: {e}"));
            println!("{name}: {shape:?}");
        }
    }

    #[test]
    fn what_is_not_a_component_is_refused_before_anything_else() {
        assert!(
            shape(b"\0asm\x01\0\0\0", 1 << 20)
                .unwrap_err()
                .contains("not a WebAssembly component")
        );
        assert!(
            shape(b"hello", 1 << 20)
                .unwrap_err()
                .contains("not a WebAssembly component")
        );
        let big = vec![0u8; 2 << 20];
        assert!(shape(&big, 1 << 20).unwrap_err().contains("at most 1 MiB"));
    }

    #[test]
    fn a_function_with_too_many_locals_is_refused_unread_by_the_compiler() {
        let wat = format!(
            "(component (core module (func (local {}))))",
            "i64 ".repeat(MAX_LOCALS as usize + 1)
        );
        let bytes = wat::parse_str(&wat).unwrap();
        assert!(shape(&bytes, 1 << 20).unwrap_err().contains("locals"));
    }

    #[test]
    fn globals_past_the_bound_are_refused_unread_by_the_compiler() {
        // Two modules: the bound is on the component's globals together.
        let module = |n: usize| {
            format!(
                "(core module {})",
                "(global (mut i32) (i32.const 0))".repeat(n)
            )
        };
        let at = format!(
            "(component {} {})",
            module(MAX_GLOBALS / 2),
            module(MAX_GLOBALS / 2)
        );
        let shape = shape(&wat::parse_str(&at).unwrap(), 1 << 20).unwrap();
        assert_eq!(shape.globals, MAX_GLOBALS);
        let past = format!(
            "(component {} {})",
            module(MAX_GLOBALS / 2),
            module(MAX_GLOBALS / 2 + 1)
        );
        let why = super::shape(&wat::parse_str(&past).unwrap(), 1 << 20).unwrap_err();
        assert!(why.contains("globals; at most 10000"), "{why}");
    }

    /// `levels` components, each instantiating the one inside it twice.
    fn doubling(levels: usize) -> Vec<u8> {
        let mut wat = "(component)".to_string();
        for _ in 0..levels {
            wat =
                format!("(component {wat} (instance (instantiate 0)) (instance (instantiate 0)))");
        }
        wat::parse_str(&wat).unwrap()
    }

    #[test]
    fn nested_components_that_multiply_instances_are_refused_unread_by_the_compiler() {
        // 2^9 - 1 + 2^9 = 1023 instances: accepted; one level more: refused.
        assert_eq!(shape(&doubling(9), 1 << 20).unwrap().flat_instances, 1023);
        let why = shape(&doubling(10), 1 << 20).unwrap_err();
        assert!(why.contains("more than 1024 instances"), "{why}");
        assert!(shape(&doubling(23), 1 << 20).is_err());

        // The same through outer aliases of sibling components: each instantiates the one
        // before it twice.
        let mut wat = "(component (component $c0)".to_string();
        for k in 1..=12 {
            wat += &format!(
                " (component $c{k} (alias outer 1 $c{j} (component $in)) (instance (instantiate $in)) (instance (instantiate $in)))",
                j = k - 1
            );
        }
        wat += " (instance (instantiate $c12)))";
        let why = shape(&wat::parse_str(&wat).unwrap(), 1 << 20).unwrap_err();
        assert!(why.contains("more than 1024 instances"), "{why}");

        // One module of 2,000 functions instantiated 101 times: past the functions' bound;
        // 99 times (and its 99 instances, the component itself): within both.
        let module = format!("(core module $m {})", "(func)".repeat(2_000));
        let instantiated = |n: usize| {
            let wat = format!(
                "(component {module} {})",
                "(core instance (instantiate $m))".repeat(n)
            );
            shape(&wat::parse_str(&wat).unwrap(), 1 << 20)
        };
        let within = instantiated(99).unwrap();
        assert_eq!(
            (within.flat_instances, within.flat_functions),
            (100, 198_000)
        );
        let why = instantiated(101).unwrap_err();
        assert!(why.contains("more than 200000 functions"), "{why}");

        // A component passed in from outside could multiply what is not counted here: one
        // imported, or taken from an instance's exports.
        let imports = "(component (component (import \"c\" (component)) ))";
        let why = shape(&wat::parse_str(imports).unwrap(), 1 << 20).unwrap_err();
        assert!(why.contains("imports a component"), "{why}");
        let taken = "(component
            (component $inner (component $c) (export \"c\" (component $c)))
            (instance $i (instantiate $inner))
            (alias export $i \"c\" (component $c2))
            (instance (instantiate $c2)))";
        let why = shape(&wat::parse_str(taken).unwrap(), 1 << 20).unwrap_err();
        assert!(why.contains("from an instance's exports"), "{why}");
    }

    #[test]
    fn imports_must_be_capabilities_the_plant_grants() {
        let imports = vec![
            "millrace:mediation/log@0.1.0".to_string(),
            "millrace:mediation/state@0.1.0".to_string(),
        ];
        assert_eq!(
            capabilities(&imports, &[Capability::Log, Capability::State]),
            Ok(vec![Capability::Log, Capability::State])
        );
        assert!(
            capabilities(&imports, &[Capability::Log])
                .unwrap_err()
                .contains("no step of the plant is granted \"state\"")
        );
    }
}
