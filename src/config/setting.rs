//! What a setting is (`Setting`), and the `settings!` macro that turns the list in
//! `declarations.rs` into everything else: the flags of `updraft serve` (and of the
//! maintenance commands, which take a subset), the typed values, the TOML keys, and the table
//! that docs/DEPLOYMENT.md and `.env.example` are generated from.
//!
//! A setting's name is its TOML key; its flag is the name in kebab case (`--max-upload-bytes`)
//! and its environment variable the name in upper case with the `UPDRAFT_` prefix.

use std::marker::PhantomData;
use std::path::PathBuf;

use super::declarations::{SETTINGS, ServeArgs};

/// One setting, as declared in `declarations.rs`.
#[derive(Debug)]
pub struct Setting {
    /// The TOML key, from which the flag and the environment variable follow.
    pub name: &'static str,
    /// The heading it is listed under in `.env.example`.
    pub group: &'static str,
    /// What it does: the first paragraph is the summary (`--help`, the docs table), the rest
    /// explains more (`.env.example`).
    pub doc: &'static str,
    /// The placeholder of the flag's value in `--help`, e.g. `SECS`.
    pub value_name: &'static str,
    /// The value when nothing sets it, written as an operator would write it; parsed like
    /// one. Empty when there is none or it depends on other settings (see `default_doc`).
    pub default: &'static str,
    /// What happens when nothing sets it, when `default` is empty, e.g. "a tenth of
    /// UPDRAFT_MAX_CONNECTIONS". Empty means "none".
    pub default_doc: &'static str,
    /// The least and greatest value of a number (for seconds, in seconds).
    pub min: u64,
    pub max: u64,
    /// The value shown in `.env.example` (the default when empty).
    pub example: &'static str,
    /// Another variable read when no layer sets this one, from the environment and `.env`
    /// (a seed server's own name of the setting).
    pub alias: &'static str,
    /// Other environment variables read, in this order, when no layer sets this one
    /// (neither from `.env` nor from the TOML file).
    pub fallbacks: &'static [&'static str],
    /// A secret: redacted in `Debug` and logs, its environment value hidden in `--help`.
    pub secret: bool,
    /// Read from the TOML file and `.env` too (false only for `config`, which names the file).
    pub layered: bool,
}

impl Setting {
    /// The base every declaration fills in.
    pub const NONE: Setting = Setting {
        name: "",
        group: "",
        doc: "",
        value_name: "VALUE",
        default: "",
        default_doc: "",
        min: 0,
        max: u64::MAX,
        example: "",
        alias: "",
        fallbacks: &[],
        secret: false,
        layered: true,
    };

    /// The declared setting `name`.
    ///
    /// # Panics
    /// When no setting has that name: names in code are declared ones.
    pub fn named(name: &str) -> &'static Setting {
        SETTINGS.iter().find(|setting| setting.name == name).unwrap_or_else(|| panic!("`{name}` is not a declared setting"))
    }

    /// `UPDRAFT_<NAME>`.
    pub fn env(&self) -> String {
        format!("UPDRAFT_{}", self.name.to_ascii_uppercase())
    }

    /// The long flag without its dashes, e.g. `max-upload-bytes`.
    pub fn flag(&self) -> String {
        self.name.replace('_', "-")
    }

    /// The doc's paragraphs, each on one line.
    pub fn paragraphs(&self) -> Vec<String> {
        let mut paragraphs = Vec::new();
        let mut current = Vec::new();
        for line in self.doc.lines().map(str::trim) {
            if line.is_empty() {
                if !current.is_empty() {
                    paragraphs.push(current.join(" "));
                    current.clear();
                }
            } else {
                current.push(line);
            }
        }
        if !current.is_empty() {
            paragraphs.push(current.join(" "));
        }
        paragraphs
    }

    /// The first paragraph of the doc.
    pub fn summary(&self) -> String {
        self.paragraphs().into_iter().next().unwrap_or_default()
    }

    /// The bounds of a number, when it has any.
    pub fn range(&self) -> Option<(u64, u64)> {
        (self.min != 0 || self.max != u64::MAX).then_some((self.min, self.max))
    }

    /// The variables read when no layer sets it: the alias, then the fallbacks.
    pub fn also_read_from(&self) -> impl Iterator<Item = &'static str> {
        std::iter::once(self.alias).filter(|alias| !alias.is_empty()).chain(self.fallbacks.iter().copied())
    }

    /// The text of `--help`: the summary, the default, the range and the other names.
    pub fn help(&self) -> String {
        let mut help = self.summary();
        match (self.default, self.default_doc) {
            ("", "") => {}
            ("", described) => help.push_str(&format!(" [default: {described}]")),
            (value, _) => help.push_str(&format!(" [default: {value}]")),
        }
        if let Some((min, max)) = self.range() {
            help.push_str(&match max {
                u64::MAX => format!(" [at least {min}]"),
                _ => format!(" [range: {min}-{max}]"),
            });
        }
        let also: Vec<&str> = self.also_read_from().collect();
        if !also.is_empty() {
            help.push_str(&format!(" [also read from: {}]", also.join(", ")));
        }
        help
    }

    /// The setting's flag (with its environment variable), for `clap`.
    fn arg(&'static self) -> clap::Arg {
        let arg = clap::Arg::new(self.name)
            .long(self.flag())
            .env(self.env())
            .value_name(self.value_name)
            .help(self.help())
            .hide_env_values(self.secret)
            .action(clap::ArgAction::Set);
        if self.name == "config" { arg.value_parser(clap::value_parser!(PathBuf)) } else { arg.value_parser(clap::value_parser!(String)) }
    }

    /// Checks a number against the declared range; `unit` follows the bounds in the message.
    pub(super) fn check_range(&self, n: u64, unit: &str) -> Result<u64, String> {
        match self.range() {
            Some((min, u64::MAX)) if n < min => Err(format!("must be at least {min}{unit}")),
            Some((min, max)) if !(min..=max).contains(&n) => Err(format!("must be between {min} and {max}{unit}")),
            _ => Ok(n),
        }
    }
}

/// Declares the settings; see `declarations.rs`, its only user. From each entry
/// `/// doc` `name: Kind { key: value, ... }` (keys are `Setting`'s fields) it generates:
/// - `ServeArgs`, with one `Option<String>` field per setting (plus `config`);
/// - `SETTINGS`, the `Setting` of each, in order, and `GROUPS`, the groups' introductions;
/// - `Values`, each setting's value in its kind's type, resolved from the layers.
macro_rules! settings {
    (
        $(
            $(#[doc = $group_doc:literal])*
            group $group:literal {
                $(
                    $(#[doc = $doc:literal])*
                    $name:ident: $kind:ty { $($key:ident: $value:expr),* $(,)? }
                )*
            }
        )*
    ) => {
        /// The settings of `updraft serve` as given by flags and `UPDRAFT_*` environment
        /// variables (clap reads both); unset when neither gives one. `Settings::load` adds
        /// the lower layers and parses them.
        #[derive(Clone, Default)]
        pub struct ServeArgs {
            /// The TOML file (`--config`, `UPDRAFT_CONFIG`).
            pub config: Option<std::path::PathBuf>,
            $($(
                $(#[doc = $doc])*
                pub $name: Option<String>,
            )*)*
        }

        impl ServeArgs {
            /// The value of the setting `name` given as a flag or environment variable.
            pub fn given(&self, name: &str) -> Option<&str> {
                match name {
                    $($(stringify!($name) => self.$name.as_deref(),)*)*
                    _ => None,
                }
            }

            /// The field of the setting `name` (None for `config`, which is a path).
            pub(super) fn field(&mut self, name: &str) -> Option<&mut Option<String>> {
                match name {
                    $($(stringify!($name) => Some(&mut self.$name),)*)*
                    _ => None,
                }
            }
        }

        /// Every setting, in the order of `updraft serve --help`, `.env.example` and
        /// docs/DEPLOYMENT.md.
        pub const SETTINGS: &[$crate::config::Setting] = &[
            CONFIG,
            $($(
                $crate::config::Setting {
                    name: stringify!($name),
                    group: $group,
                    doc: concat!($($doc, "\n"),*),
                    secret: <$kind as $crate::config::kinds::Kind>::SECRET,
                    $($key: $value,)*
                    ..$crate::config::Setting::NONE
                },
            )*)*
        ];

        /// Each group's title and introduction (empty when it has none), in order.
        pub const GROUPS: &[(&str, &str)] = &[(CONFIG.group, ""), $(($group, concat!($($group_doc, "\n"),*)),)*];

        /// Every setting's value in its kind's type.
        pub(super) struct Values {
            $($(pub $name: <$kind as $crate::config::kinds::Kind>::Value,)*)*
        }

        impl Values {
            /// Resolves every setting, in order: the highest layer that sets it, else its
            /// default. The first invalid one is the error.
            pub(super) fn resolve(sources: &$crate::config::layers::Sources) -> Result<Values, $crate::config::ConfigError> {
                Ok(Values { $($($name: sources.value::<$kind>(stringify!($name))?,)*)* })
            }
        }
    };
}

pub(super) use settings;

impl ServeArgs {
    /// The settings given in the environment alone (no command line).
    pub fn from_env() -> Result<ServeArgs, clap::Error> {
        use clap::{Args, FromArgMatches};
        let command = ServeArgs::augment_args(clap::Command::new("updraft").no_binary_name(true));
        let matches = command.try_get_matches_from(std::iter::empty::<String>())?;
        ServeArgs::from_arg_matches(&matches)
    }

    /// Sets every setting `other` gives.
    pub fn overlay(&mut self, other: &ServeArgs) {
        if other.config.is_some() {
            self.config.clone_from(&other.config);
        }
        for setting in SETTINGS {
            if let (Some(value), Some(field)) = (other.given(setting.name), self.field(setting.name)) {
                *field = Some(value.to_string());
            }
        }
    }

    /// Reads the flags `matches` has (of every setting, or of a subset).
    fn read(&mut self, matches: &clap::ArgMatches) {
        for setting in SETTINGS {
            if setting.name == "config" {
                if let Ok(Some(path)) = matches.try_get_one::<PathBuf>(setting.name) {
                    self.config = Some(path.clone());
                }
            } else if let Ok(Some(value)) = matches.try_get_one::<String>(setting.name)
                && let Some(field) = self.field(setting.name)
            {
                *field = Some(value.clone());
            }
        }
    }
}

impl std::fmt::Debug for ServeArgs {
    /// The settings given, secrets redacted.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut map = f.debug_map();
        if let Some(config) = &self.config {
            map.entry(&"config", config);
        }
        for setting in SETTINGS {
            if let Some(value) = self.given(setting.name) {
                map.entry(&setting.name, &if setting.secret { super::kinds::REDACTED } else { value });
            }
        }
        map.finish()
    }
}

impl clap::FromArgMatches for ServeArgs {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let mut args = ServeArgs::default();
        args.read(matches);
        Ok(args)
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        self.read(matches);
        Ok(())
    }
}

impl clap::Args for ServeArgs {
    fn augment_args(command: clap::Command) -> clap::Command {
        SETTINGS.iter().fold(command, |command, setting| command.arg(setting.arg()))
    }

    fn augment_args_for_update(command: clap::Command) -> clap::Command {
        ServeArgs::augment_args(command)
    }
}

/// A subset of the settings, by name: the ones a maintenance command uses.
pub trait FlagSet {
    const NAMES: &'static [&'static str];
}

/// The flags of the settings in `S`, for a command that uses only those (`#[command(flatten)]`).
pub struct SettingFlags<S> {
    /// The settings given; the others are unset.
    pub args: ServeArgs,
    set: PhantomData<S>,
}

impl<S: FlagSet> clap::FromArgMatches for SettingFlags<S> {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        Ok(SettingFlags { args: ServeArgs::from_arg_matches(matches)?, set: PhantomData })
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        self.args.update_from_arg_matches(matches)
    }
}

impl<S: FlagSet> clap::Args for SettingFlags<S> {
    fn augment_args(command: clap::Command) -> clap::Command {
        S::NAMES.iter().fold(command, |command, name| command.arg(Setting::named(name).arg()))
    }

    fn augment_args_for_update(command: clap::Command) -> clap::Command {
        SettingFlags::<S>::augment_args(command)
    }
}
