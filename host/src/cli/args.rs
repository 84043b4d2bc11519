//! The command line's shape (clap) and the dispatch of each command to its file.

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

/// millrace: mediate factory-floor and ERP messages through sandboxed Wasm plugins.
#[derive(Parser)]
#[command(name = "millrace", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

impl Cli {
    /// Whether the command runs the host (which sets up its own logging from its configuration).
    pub fn runs_host(&self) -> bool {
        matches!(self.command, Command::Run { .. })
    }

    /// Whether the command may take messages from a broker (the host, `dlq`): its threads need
    /// [`crate::amqp::THREAD_STACK_BYTES`] of stack.
    pub fn reads_a_broker(&self) -> bool {
        matches!(self.command, Command::Run { .. } | Command::Dlq { .. })
    }
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the host: serve every configured route until SIGTERM/SIGINT.
    Run {
        /// Configuration file.
        #[arg(long, default_value = "millrace.toml")]
        config: PathBuf,
        /// HTTP listen address; overrides host.http of the configuration.
        #[arg(long)]
        http: Option<SocketAddr>,
        /// Admin API listen address; overrides host.admin of the configuration.
        #[arg(long)]
        admin: Option<SocketAddr>,
        /// Serve the admin API without authentication (loopback only; local development).
        #[arg(long)]
        insecure_admin: bool,
    },
    /// Validate the configuration and load every plugin it names.
    Check {
        #[arg(long, default_value = "millrace.toml")]
        config: PathBuf,
    },
    /// Work with plugin files.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// The dead-letter store.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// The path of a message: each step (plugin@version, digest, duration, decision), where
    /// its outputs went or the dead letter it became, retries and replays, then the paths of
    /// its outputs taken in again. Reads DATA_DIR/lineage.db (works while the host runs or not).
    Trace {
        /// The message id.
        id: String,
        #[arg(long, default_value = "millrace.toml")]
        config: PathBuf,
        /// Print the path as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Credentials for the admin API.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Make a new admin token: prints the token once (for the caller, e.g. in
    /// MILLRACE_ADMIN_TOKEN) and the [[admin.tokens]] entry holding its SHA-256 for the host.
    Token {
        /// Who holds it: recorded as the actor of everything it does.
        #[arg(long)]
        name: String,
        /// viewer (reads) or operator (also deploys, activates, rolls back, reloads).
        #[arg(long, default_value = "operator")]
        role: String,
        /// A plant it may act on (repeat for several); none: every plant.
        #[arg(long = "plant")]
        plants: Vec<String>,
    },
}

#[derive(Subcommand)]
pub enum PluginCommand {
    /// Start a plugin: a folder with a working plugin in the language given (source, README,
    /// vectors with one passing case and one rejection, its world, and a local host
    /// configuration whose route section is the snippet for a site's millrace.toml).
    New {
        /// The plugin's name: lower-case words joined by '-', e.g. work-report.
        name: String,
        #[arg(long, value_enum)]
        lang: super::author::Language,
        /// The folder to create (default: ./NAME); must not exist or be empty.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Build the plugin in DIR (its millrace-plugin.toml names the language) into
    /// DIR/target/NAME.wasm with the toolchains scripts/setup installs (MILLRACE_TOOLS names
    /// another tools folder); prints the output's path and size.
    Build {
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Run DIR/vectors against the build and put them inside it, for the deploy gate.
        #[arg(long)]
        bundle: bool,
    },
    /// Watch the plugin in DIR: on every change build it, run its vectors and, all passing,
    /// deploy and activate it on a running host (with the vectors inside, each build under its
    /// own VERSION-dev.N). A failed build or vector deploys nothing. Runs until interrupted.
    Dev {
        dir: PathBuf,
        #[command(flatten)]
        at: AdminTarget,
        /// How often to look for changes, in milliseconds.
        #[arg(long, default_value_t = 500)]
        interval_ms: u64,
    },
    /// Show a plugin's world, imports (the capabilities it asks for), exports, digest and size.
    Inspect { file: PathBuf },
    /// Run one message through one plugin locally, every capability granted. Exit 0 with the
    /// outputs (or none), 1 on a rejection, retry-later, trap or load failure.
    Test {
        /// The plugin: a WebAssembly component (.wasm), e.g. target/plugins/csv-records.wasm.
        file: PathBuf,
        /// The message body, read as bytes. The message has id `test-1`, plant `local` and route
        /// `local` (conformance vectors use the case name as id and plant `test-plant`).
        #[arg(long, required_unless_present = "vectors", conflicts_with = "vectors")]
        input: Option<PathBuf>,
        /// Run every case of a conformance-vector folder instead (see docs/plugins.md).
        #[arg(long, value_name = "DIR")]
        vectors: Option<PathBuf>,
        /// With --vectors: write each case's expected.json from the plugin's answers.
        #[arg(long, requires = "vectors")]
        bless: bool,
        /// Content type of the input. Default: from the input's extension as conformance vectors
        /// do (.csv text/csv, .json application/json, .x12/.edi application/edi-x12, .xml
        /// application/xml, .txt/.dat/.idoc text/plain), else the plugin's first accepted type.
        #[arg(long)]
        content_type: Option<String>,
        /// Step settings from a TOML file.
        #[arg(long)]
        settings: Option<PathBuf>,
        /// One setting; VALUE is JSON if it parses as JSON, else a string. Repeatable.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// A lookup table from a CSV file (header row; key and value = first two columns).
        #[arg(long = "lookup", value_name = "TABLE=FILE.csv")]
        lookup: Vec<String>,
        /// Wall-clock deadline of the call in milliseconds; past it the plugin is stopped (a
        /// `deadline` trap), as a route's `deadline_ms` does.
        #[arg(long, default_value_t = 1000)]
        deadline_ms: u64,
        /// Linear memory the plugin may grow to, in MiB; a larger growth fails (usually a
        /// `memory` trap), as a route's `memory_mib` does.
        #[arg(long, default_value_t = 64)]
        memory_mib: u32,
        /// Keep the compiled plugin in DIR and take it from there when the same bytes are tested
        /// again (the host's compile cache format): a repeated test then skips the compilation.
        /// Only this user should be able to write DIR: its contents are loaded as native code.
        /// Default: `$MILLRACE_COMPILE_CACHE` if set, else compile every time, keep nothing.
        #[arg(long, value_name = "DIR")]
        compile_cache: Option<PathBuf>,
    },
    /// Compile a component into a compile cache, limiting this process's address space and CPU
    /// time first; the host runs this for every candidate it did not get from its own
    /// configuration, so compiling untrusted bytes is bounded. Exit 0 when compiled, 1 when
    /// refused (`error: REASON`); killed or aborted past the budget.
    Compile {
        file: PathBuf,
        /// The compile cache directory (the host's `host.compile_cache`).
        #[arg(long)]
        cache: PathBuf,
        /// Address space this process may use, in MiB.
        #[arg(long, default_value_t = 2048)]
        memory_mib: u64,
        /// CPU time this process may use, in seconds.
        #[arg(long, default_value_t = 120)]
        cpu_s: u64,
    },
    /// Make an Ed25519 key pair for signing plugins: OUT.key (secret, mode 600) and OUT.pub
    /// (public; name it in a plant's [plants.P.trust] keys). wasmsign2's key file layout.
    Keygen {
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Sign a component with a secret key (adds to the signatures it already carries over the
    /// same bytes). Bundle sample vectors first: the signature covers them.
    Sign {
        file: PathBuf,
        #[arg(long)]
        key: PathBuf,
        /// Where to write the signed component.
        #[arg(long, short)]
        output: PathBuf,
    },
    /// Check a component's signatures against public keys; exit 1 unless at least
    /// --min-signatures distinct keys among them signed it.
    Verify {
        file: PathBuf,
        /// A public key file (repeat for several).
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        #[arg(long, default_value_t = 1)]
        min_signatures: usize,
    },
    /// Put a conformance-vector folder inside a component (a custom section), so the deploy
    /// gate runs its cases before the version is kept.
    Bundle {
        file: PathBuf,
        #[arg(long, value_name = "DIR")]
        vectors: PathBuf,
        /// Where to write the bundled component.
        #[arg(long, short)]
        output: PathBuf,
    },
    /// Upload a component to a plant of a running host (its admin API); gated and kept, and
    /// with --activate made the plant's active version.
    Deploy {
        file: PathBuf,
        #[command(flatten)]
        at: AdminTarget,
        #[arg(long)]
        activate: bool,
    },
    /// Make a deployed version the plant's active one.
    Activate {
        #[command(flatten)]
        at: AdminTarget,
        #[arg(long)]
        plugin: String,
        #[arg(long)]
        version: String,
    },
    /// Go back to the version that was active before.
    Rollback {
        #[command(flatten)]
        at: AdminTarget,
        #[arg(long)]
        plugin: String,
    },
    /// The versions of a plugin on a plant, the active one and the swap history.
    Versions {
        #[command(flatten)]
        at: AdminTarget,
        #[arg(long)]
        plugin: String,
    },
}

/// Where the admin API is and which plant to act on.
#[derive(clap::Args)]
pub struct AdminTarget {
    /// Admin API base URL (`host.admin` of the running host). The token is taken from
    /// MILLRACE_ADMIN_TOKEN; for an https:// admin API with its own CA, MILLRACE_ADMIN_CA names
    /// the CA's PEM file.
    #[arg(long, default_value = "http://127.0.0.1:9090")]
    admin: String,
    #[arg(long)]
    plant: String,
}

#[derive(Subcommand)]
pub enum DlqCommand {
    /// List dead letters with reason, plugin, version and digest.
    List {
        #[arg(long, default_value = "millrace.toml")]
        config: PathBuf,
        /// Only this route's entries.
        #[arg(long)]
        route: Option<String>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run a route's waiting dead letters through its current chain and deliver the outputs to
    /// its sink (after a fixed plugin or table is deployed); `--dry-run` shows what the chain
    /// would output without delivering or marking anything.
    Replay {
        #[arg(long, default_value = "millrace.toml")]
        config: PathBuf,
        #[arg(long)]
        route: String,
        /// At most this many entries, oldest first.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(long)]
        dry_run: bool,
    },
}

/// Run the command `cli` names; the process exit code.
pub fn dispatch(cli: Cli) -> i32 {
    match cli.command {
        Command::Run {
            config,
            http,
            admin,
            insecure_admin,
        } => super::run::run(config, http, admin, insecure_admin),
        Command::Check { config } => super::check(&config),
        Command::Plugin {
            command: PluginCommand::Inspect { file },
        } => super::inspect(&file),
        Command::Plugin {
            command: PluginCommand::New { name, lang, dir },
        } => super::author::new::run(&name, lang, dir.as_deref()),
        Command::Plugin {
            command: PluginCommand::Build { dir, bundle },
        } => super::author::build::run(&dir, bundle),
        Command::Plugin {
            command:
                PluginCommand::Dev {
                    dir,
                    at,
                    interval_ms,
                },
        } => super::author::dev::run(
            &dir,
            &at.admin,
            &at.plant,
            std::time::Duration::from_millis(interval_ms.max(50)),
        ),
        Command::Plugin {
            command:
                PluginCommand::Test {
                    file,
                    vectors: Some(vectors),
                    bless,
                    compile_cache,
                    ..
                },
        } => super::vectors(
            &file,
            &vectors,
            bless,
            compile_cache
                .or_else(crate::config::compile_cache_from_env)
                .as_deref(),
        ),
        Command::Plugin {
            command:
                PluginCommand::Test {
                    file,
                    input: Some(input),
                    content_type,
                    settings,
                    set,
                    lookup,
                    deadline_ms,
                    memory_mib,
                    compile_cache,
                    ..
                },
        } => super::test(super::TestRun {
            file,
            input,
            content_type,
            settings_file: settings,
            set,
            lookups: lookup,
            deadline_ms,
            memory_mib,
            compile_cache: compile_cache.or_else(crate::config::compile_cache_from_env),
        }),
        Command::Plugin {
            command: PluginCommand::Test { .. },
        } => unreachable!("clap requires --input or --vectors"),
        Command::Plugin {
            command: PluginCommand::Keygen { out },
        } => super::keygen(&out),
        Command::Plugin {
            command: PluginCommand::Sign { file, key, output },
        } => super::sign(&file, &key, &output),
        Command::Plugin {
            command:
                PluginCommand::Verify {
                    file,
                    keys,
                    min_signatures,
                },
        } => super::verify(&file, &keys, min_signatures),
        Command::Plugin {
            command:
                PluginCommand::Compile {
                    file,
                    cache,
                    memory_mib,
                    cpu_s,
                },
        } => crate::plugin::intake::compile_child(&file, &cache, memory_mib, cpu_s),
        Command::Plugin {
            command:
                PluginCommand::Bundle {
                    file,
                    vectors,
                    output,
                },
        } => super::bundle(&file, &vectors, &output),
        Command::Plugin {
            command: PluginCommand::Deploy { file, at, activate },
        } => super::deploy(&at.admin, &at.plant, &file, activate),
        Command::Plugin {
            command:
                PluginCommand::Activate {
                    at,
                    plugin,
                    version,
                },
        } => super::admin::activate(&at.admin, &at.plant, &plugin, &version),
        Command::Plugin {
            command: PluginCommand::Rollback { at, plugin },
        } => super::admin::rollback(&at.admin, &at.plant, &plugin),
        Command::Plugin {
            command: PluginCommand::Versions { at, plugin },
        } => super::admin::versions(&at.admin, &at.plant, &plugin),
        Command::Admin {
            command: AdminCommand::Token { name, role, plants },
        } => super::admin_token(&name, &role, &plants),
        Command::Trace { id, config, json } => super::trace::trace(&config, &id, json),
        Command::Dlq {
            command:
                DlqCommand::List {
                    config,
                    route,
                    json,
                },
        } => super::dlq_list(&config, route.as_deref(), json),
        Command::Dlq {
            command:
                DlqCommand::Replay {
                    config,
                    route,
                    limit,
                    dry_run,
                },
        } => super::dlq_replay(&config, &route, limit, dry_run),
    }
}
