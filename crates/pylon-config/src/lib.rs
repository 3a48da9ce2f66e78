//! Pylon configuration: a TOML file becomes a validated [`model::Config`].
//!
//! Plain data only: no sockets, no tokio. [`load_file`] and [`parse`] report every error
//! they find at once, each with `file:line:column`, the key path (`routes[3].cluster`) and
//! the reason.

pub mod error;
pub mod model;
mod raw;
mod units;
mod validate;

pub use error::{ConfigError, ConfigErrors};
pub use model::Config;
pub use units::{parse_duration, parse_size};

use std::path::Path;

/// The quickstart configuration embedded in the binary (`examples/quickstart.toml`).
pub const QUICKSTART: &str = include_str!("../../../examples/quickstart.toml");

/// Reads and validates a configuration file.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: file.clone(),
            line: 0,
            column: 0,
            key: String::new(),
            message: format!("cannot read file: {e}"),
        }])
    })?;
    parse(&text, &file)
}

/// Validates configuration text; `file` is the name used in error messages.
pub fn parse(text: &str, file: &str) -> Result<Config, ConfigErrors> {
    validate::parse(text, file)
}
