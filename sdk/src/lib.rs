//! The Rust SDK for millrace mediation plugins: implement [`Plugin`], call [`export!`].
//!
//! A plugin is a type built once per Wasm instance from its step's settings
//! ([`Plugin::new`]) that turns one input [`Message`] into zero, one or several output messages
//! ([`Plugin::mediate`]). Everything the plugin may ask of the host goes through a [`Host`]:
//! on `wasm32` that is the real host (each method is a capability import the route must grant);
//! natively it is a [`TestHost`], so the plugin's logic is unit-tested and benchmarked with plain
//! `cargo test` / `cargo bench`.
//!
//! ```
//! use millrace_sdk::{Host, Message, MediationError, Plugin, PluginInfo};
//!
//! struct Upper;
//! impl Plugin for Upper {
//!     fn describe() -> PluginInfo { PluginInfo::new("upper", "1.0.0").accepts(["text/plain"]) }
//!     fn new(_host: &impl Host) -> Result<Self, String> { Ok(Upper) }
//!     fn mediate(&self, _host: &impl Host, input: Message) -> Result<Vec<Message>, MediationError> {
//!         let text = input.body_str()?.to_uppercase();
//!         Ok(vec![input.with_body("text/plain", text.into_bytes())])
//!     }
//! }
//! millrace_sdk::export!(Upper);
//! ```
//!
//! Generic `&impl Host` (not `&dyn Host`) is deliberate: a capability the plugin never calls is
//! not linked, so the built component does not import it and its route need not grant it.
#![warn(missing_docs)]

pub mod alloc;
mod cloudevent;
pub mod data;
mod host;
mod message;
pub mod parse;
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod runtime;
pub mod testing;
#[cfg(feature = "time")]
pub mod time;

/// Small blocks from size classes (see [`alloc`]) in a plugin built for `wasm32`, unless the
/// plugin turns the default feature `size-classes` off (e.g. to install an allocator of its own).
/// `--cfg millrace_std_alloc` in the build's flags turns it off too: the benchmarks' variant build
/// with the standard allocator (`docs/performance.md`).
#[cfg(all(
    target_arch = "wasm32",
    not(target_feature = "atomics"),
    feature = "size-classes",
    not(millrace_std_alloc)
))]
#[global_allocator]
static ALLOCATOR: alloc::SizeClasses = alloc::SizeClasses::new();

/// Bindings generated from `wit/` (the one `generate!` site of the guest side).
#[doc(hidden)]
#[allow(missing_docs, unsafe_op_in_unsafe_fn, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "plugin",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "__export_plugin_world",
        default_bindings_module: "millrace_sdk::bindings",
        additional_derives: [PartialEq],
    });
}

pub use bindings::millrace::mediation::log::Level;
pub use bindings::millrace::mediation::lookup::LookupError;
pub use bindings::millrace::mediation::state::StateError;
pub use bindings::millrace::mediation::types::{
    MediationError, Message, PluginInfo, Rejection, Retry,
};
pub use cloudevent::{CLOUDEVENTS_CONTENT_TYPE, CloudEvent};
pub use host::Host;
pub use testing::TestHost;

/// A mediation plugin.
///
/// The host keeps one value of this type per Wasm instance: it is built by [`Plugin::new`] on
/// the first call and reused for the following messages of the same plant, route step and
/// plugin version until the host discards the instance. Keep per-message state out of it.
pub trait Plugin: Sized + Send + Sync + 'static {
    /// Name, version, accepted content types and emitted event types. Must not fail.
    fn describe() -> PluginInfo;

    /// Build the plugin from its step's settings (read them with [`Host::settings`] or
    /// [`Host::setting`]). An `Err` fails the step's load with that text, before any message.
    fn new(host: &impl Host) -> Result<Self, String>;

    /// Mediate one message: `Ok(vec![])` filters it, several outputs fan it out, an `Err` says
    /// whether it is permanently rejected or should be retried later.
    fn mediate(&self, host: &impl Host, input: Message) -> Result<Vec<Message>, MediationError>;
}

/// Export a [`Plugin`] as the component's `plugin` world. Expands to nothing on non-Wasm
/// targets, so the same crate also builds natively for tests and benchmarks.
#[macro_export]
macro_rules! export {
    ($plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            static INSTANCE: ::std::sync::OnceLock<
                ::std::result::Result<$plugin, ::std::string::String>,
            > = ::std::sync::OnceLock::new();

            struct MillraceExport;

            impl $crate::bindings::Guest for MillraceExport {
                fn describe() -> $crate::PluginInfo {
                    <$plugin as $crate::Plugin>::describe()
                }
                fn check_settings() -> ::std::result::Result<(), ::std::string::String> {
                    $crate::runtime::check_settings::<$plugin>(&INSTANCE)
                }
                fn mediate(
                    input: $crate::Message,
                ) -> ::std::result::Result<::std::vec::Vec<$crate::Message>, $crate::MediationError>
                {
                    $crate::runtime::mediate::<$plugin>(&INSTANCE, input)
                }
            }

    $crate::bindings::__export_plugin_world!(MillraceExport with_types_in $crate::bindings);
        };

        // Natively the plugin runs against the host double: keep it linked (and type-checked
        // against `TestHost`) in crates that only export it, and check `describe` in tests.
        #[cfg(not(target_arch = "wasm32"))]
        #[doc(hidden)]
        pub fn __millrace_native_root() {
            let host = $crate::TestHost::new();
            let _ = <$plugin as $crate::Plugin>::describe();
            if let Ok(plugin) = <$plugin as $crate::Plugin>::new(&host) {
                let _ = $crate::Plugin::mediate(
                    &plugin,
                    &host,
                    $crate::TestHost::message("", Vec::new()),
                );
            }
        }

        #[cfg(all(test, not(target_arch = "wasm32")))]
        #[test]
        fn millrace_plugin_describes_itself() {
            let info = <$plugin as $crate::Plugin>::describe();
            assert!(
                !info.name.is_empty() && !info.version.is_empty(),
                "describe() needs a name and a version"
            );
            let _linked: fn() = __millrace_native_root;
        }
    };
}

impl PluginInfo {
    /// Info with a name and a version; add content types and event types with the builders.
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        PluginInfo {
            name: name.into(),
            version: version.into(),
            accepts: Vec::new(),
            emits: Vec::new(),
        }
    }

    /// Media types accepted as input (without parameters); `*/*` accepts anything.
    pub fn accepts<I: IntoIterator<Item = S>, S: Into<String>>(mut self, types: I) -> Self {
        self.accepts.extend(types.into_iter().map(Into::into));
        self
    }

    /// Event types this plugin emits.
    pub fn emits<I: IntoIterator<Item = S>, S: Into<String>>(mut self, types: I) -> Self {
        self.emits.extend(types.into_iter().map(Into::into));
        self
    }
}

impl MediationError {
    /// A permanent failure with a reason for the dead-letter entry.
    pub fn rejected(reason: impl Into<String>) -> Self {
        MediationError::Rejected(Rejection {
            reason: reason.into(),
            field: None,
            position: None,
        })
    }

    /// A transient failure: the host may try the message again later.
    pub fn retry_later(reason: impl Into<String>) -> Self {
        MediationError::RetryLater(Retry {
            reason: reason.into(),
            after_ms: None,
        })
    }

    /// Name the input field at fault (rejections only; no effect on retry-later).
    pub fn field(mut self, name: impl Into<String>) -> Self {
        if let MediationError::Rejected(r) = &mut self {
            r.field = Some(name.into());
        }
        self
    }

    /// Name the 1-based position at fault: column, line or segment, as the reason explains
    /// (rejections only; no effect on retry-later).
    pub fn position(mut self, position: u32) -> Self {
        if let MediationError::Rejected(r) = &mut self {
            r.position = Some(position);
        }
        self
    }

    /// The human-readable reason.
    pub fn reason(&self) -> &str {
        match self {
            MediationError::Rejected(r) => &r.reason,
            MediationError::RetryLater(r) => &r.reason,
        }
    }
}

/// A state store that cannot be reached is transient (retry later); an oversized key or value
/// is permanent for this message (rejected).
impl From<StateError> for MediationError {
    fn from(error: StateError) -> Self {
        match error {
            StateError::Unavailable(why) => {
                MediationError::retry_later(format!("plant state unavailable: {why}"))
            }
            StateError::TooLarge(why) => MediationError::rejected(format!("plant state: {why}")),
        }
    }
}
