//! Pylon configuration: a TOML file becomes a validated [`model::Config`].
//!
//! Plain data only: no sockets, no tokio. [`load_file`] and [`parse`] report every error
//! they find at once, each with `file:line:column`, the key path (`routes[3].cluster`) and
//! the reason.

pub mod diff;
pub mod effective;
pub mod error;
pub mod model;
mod raw;
mod units;
mod validate;

pub use diff::{ReloadPlan, diff};
pub use error::{ConfigError, ConfigErrors};
pub use model::Config;
pub use units::{parse_duration, parse_size};

use std::path::Path;

/// The quickstart configuration embedded in the binary (`examples/quickstart.toml`).
pub const QUICKSTART: &str = include_str!("../../../examples/quickstart.toml");

/// Reads and validates a configuration file.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let file = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: file.clone(),
            line: 0,
            column: 0,
            key: String::new(),
            message: format!("cannot read file: {e}"),
        }])
    })?;
    let text = utf8(&bytes, &file).map_err(|e| ConfigErrors(vec![e]))?;
    parse(text, &file)
}

/// The file as text, or an error at the line and column of its first byte that is not
/// UTF-8.
fn utf8<'a>(bytes: &'a [u8], file: &str) -> Result<&'a str, ConfigError> {
    std::str::from_utf8(bytes).map_err(|e| {
        let good = bytes.get(..e.valid_up_to()).unwrap_or_default();
        let line = good.iter().filter(|b| **b == b'\n').count() + 1;
        let line_start = good.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        // The bytes before it are valid UTF-8: count characters, as columns elsewhere do.
        let column = std::str::from_utf8(good.get(line_start..).unwrap_or_default())
            .map_or(0, |l| l.chars().count())
            + 1;
        let byte = bytes.get(e.valid_up_to()).copied().unwrap_or_default();
        ConfigError {
            file: file.to_owned(),
            line,
            column,
            key: String::new(),
            message: format!(
                "invalid UTF-8 (byte 0x{byte:02x}): the configuration must be UTF-8 text"
            ),
        }
    })
}

/// Validates configuration text; `file` is the name used in error messages, and
/// relative paths in it are resolved against its directory.
pub fn parse(text: &str, file: &str) -> Result<Config, ConfigErrors> {
    let base = Path::new(file).parent().unwrap_or(Path::new(""));
    validate::parse(text, file, base)
}

/// Validates configuration text that comes from somewhere other than a file (etcd):
/// `origin` names it in error messages, relative paths are resolved against `base`.
pub fn parse_in(text: &str, origin: &str, base: &Path) -> Result<Config, ConfigErrors> {
    validate::parse(text, origin, base)
}
