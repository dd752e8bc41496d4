//! Settings come from `.env` (if present), then the environment, then flags:
//! each flag has an environment variable (clap's `env`), and `.env` only
//! fills variables the environment does not set. A setting that cannot be
//! used is a [`ConfigError`]: one line naming the setting, exit code 2
//! (a flag clap refuses gets clap's own message, also exit code 2).

use std::fmt;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;

/// Exit code of a bad setting (the same as clap's for a bad flag).
pub const EXIT_CONFIG: u8 = 2;

/// A setting whose value cannot be used; says which and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The flag and environment variable, e.g. `--min-events/MIN_EVENTS`.
    pub setting: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(setting: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError { setting: setting.into(), message: message.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid setting {}: {}", self.setting, self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Loads `.env` from the working directory, if there is one. Variables
/// already set in the environment win. A malformed `.env` is a configuration
/// error.
pub fn load_dotenv() -> Result<(), ConfigError> {
    match dotenvy::dotenv() {
        Ok(_) => Ok(()),
        Err(e) if e.not_found() => Ok(()),
        Err(e) => Err(ConfigError::new(".env", e.to_string())),
    }
}

/// Parses the command line (with the environment behind each flag); on a
/// bad value prints clap's whole message (what is wrong, its tips such as
/// "a similar argument exists", the usage line) and exits with code 2.
/// `--help` and `--version` print and exit 0.
pub fn parse_or_exit<P: Parser>() -> P {
    match P::try_parse() {
        Ok(p) => p,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => e.exit(),
        Err(e) => {
            let _ = e.print();
            std::process::exit(i32::from(EXIT_CONFIG));
        }
    }
}

/// Prints a configuration error as one line and returns exit code 2.
pub fn config_exit(e: &ConfigError) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(EXIT_CONFIG)
}

/// Checks a rate lies in `[0, 1]`.
pub fn check_rate(setting: &str, value: f64) -> Result<(), ConfigError> {
    if (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::new(setting, format!("{value} is not a share between 0 and 1")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_error_names_its_setting_in_one_line() {
        let e = ConfigError::new("--rows/ROWS", "must be at least 1");
        assert_eq!(e.to_string(), "invalid setting --rows/ROWS: must be at least 1");
        assert!(check_rate("--r", 0.5).is_ok());
        assert_eq!(check_rate("--r", 1.5).err().map(|e| e.setting), Some("--r".to_owned()));
    }
}
