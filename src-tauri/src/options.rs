//! Start-up options from the command line and the environment:
//!
//! - `--data-dir DIR` or `LATTICE_DESKTOP_DATA_DIR=DIR`: keep everything in DIR instead of the
//!   app data directory (a second profile on one machine; tests). A custom data directory also
//!   turns single-instance off, so a test or a second profile never hands over to the main app.
//! - `--minimized`: start hidden in the tray, whatever the setting says.
//! - `--log-file PATH`: write the log there instead of stderr (launchers and WebDriver drop
//!   stderr); `LATTICE_LOG` sets the level, e.g. `LATTICE_LOG=debug`.

use std::ffi::OsString;
use std::path::PathBuf;

/// Environment variable naming the data directory.
pub const DATA_DIR_ENV: &str = "LATTICE_DESKTOP_DATA_DIR";

/// How this run of the app is set up.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Where to keep data; `None` means the platform's app data directory.
    pub data_dir: Option<PathBuf>,
    /// Start hidden in the tray.
    pub minimized: bool,
    /// Where to write the log (stderr when `None`).
    pub log_file: Option<PathBuf>,
    /// No window and no tray: for command tests on the mock runtime.
    pub headless: bool,
}

impl Options {
    /// Reads the process's arguments and environment. Unknown arguments are ignored (desktop
    /// launchers and WebDriver add their own).
    pub fn from_env_and_args() -> Self {
        Self::parse(std::env::args_os().skip(1), std::env::var_os(DATA_DIR_ENV))
    }

    fn parse(args: impl IntoIterator<Item = OsString>, env_dir: Option<OsString>) -> Self {
        let mut options = Self {
            data_dir: env_dir.filter(|d| !d.is_empty()).map(PathBuf::from),
            ..Self::default()
        };
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            if arg == "--data-dir" {
                if let Some(dir) = args.next() {
                    options.data_dir = Some(PathBuf::from(dir));
                }
            } else if let Some(dir) = arg.to_str().and_then(|a| a.strip_prefix("--data-dir=")) {
                options.data_dir = Some(PathBuf::from(dir));
            } else if arg == "--log-file" {
                if let Some(path) = args.next() {
                    options.log_file = Some(PathBuf::from(path));
                }
            } else if arg == "--minimized" {
                options.minimized = true;
            }
        }
        options
    }

    /// Whether to hand over to an already running instance (only for the default profile).
    pub fn single_instance(&self) -> bool {
        self.data_dir.is_none() && !self.headless
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn arguments_override_the_environment() {
        let o = Options::parse(
            os(&["--data-dir", "/a", "--minimized"]),
            Some("/env".into()),
        );
        assert_eq!(o.data_dir, Some(PathBuf::from("/a")));
        assert!(o.minimized);
        assert!(!o.single_instance());
        let o = Options::parse(
            os(&["--data-dir=/b", "--unknown", "--log-file", "/l"]),
            None,
        );
        assert_eq!(o.data_dir, Some(PathBuf::from("/b")));
        assert_eq!(o.log_file, Some(PathBuf::from("/l")));
        let o = Options::parse(os(&[]), Some("/env".into()));
        assert_eq!(o.data_dir, Some(PathBuf::from("/env")));
        assert!(Options::parse(os(&[]), None).single_instance());
    }
}
