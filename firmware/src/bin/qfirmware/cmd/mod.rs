//! One module per `qfirmware` subcommand.

pub mod flash;
pub mod plan;
pub mod results;
pub mod status;
