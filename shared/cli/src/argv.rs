//! Flags rendered back to the argv they are parsed from: [`ToArgs`], the [`Argv`] builder, and the
//! round-trip check every implementation is tested with.

use std::ffi::{OsStr, OsString};

/// A parsed flag group or command that can be written back as command-line arguments, so that
/// parsing `to_args()` gives the same value again.
pub trait ToArgs {
    fn to_args(&self) -> Vec<OsString>;
}

/// Command-line arguments under construction.
#[derive(Debug, Default, Clone)]
pub struct Argv(Vec<OsString>);

impl Argv {
    pub fn new() -> Self {
        Self::default()
    }

    /// `name value`.
    pub fn arg(&mut self, name: &str, value: impl AsRef<OsStr>) -> &mut Self {
        self.0.push(name.into());
        self.0.push(value.as_ref().to_os_string());
        self
    }

    /// `name value` when there is a value.
    pub fn opt(&mut self, name: &str, value: Option<impl AsRef<OsStr>>) -> &mut Self {
        if let Some(v) = value {
            self.arg(name, v);
        }
        self
    }

    /// `name value` for each value (a repeatable flag).
    pub fn each<V: AsRef<OsStr>>(&mut self, name: &str, values: impl IntoIterator<Item = V>) -> &mut Self {
        for v in values {
            self.arg(name, v);
        }
        self
    }

    /// The bare flag `name` when `on`.
    pub fn switch(&mut self, name: &str, on: bool) -> &mut Self {
        if on {
            self.0.push(name.into());
        }
        self
    }

    /// A positional argument, or a subcommand's name.
    pub fn word(&mut self, word: impl AsRef<OsStr>) -> &mut Self {
        self.0.push(word.as_ref().to_os_string());
        self
    }

    /// The arguments of a group.
    pub fn group(&mut self, group: &impl ToArgs) -> &mut Self {
        self.0.extend(group.to_args());
        self
    }

    pub fn build(&mut self) -> Vec<OsString> {
        std::mem::take(&mut self.0)
    }
}

/// Parses `value.to_args()` as `T`'s flags: the check that rendering and parsing agree
/// (`parse(to_args(x)) == x`), for tests.
pub fn reparse<T: clap::Args + clap::FromArgMatches + ToArgs>(value: &T) -> Result<T, clap::Error> {
    let command = T::augment_args(clap::Command::new("reparse").no_binary_name(true));
    T::from_arg_matches(&command.try_get_matches_from(value.to_args())?)
}

