//! One module per `qcloud` subcommand.

pub mod publish;
pub mod scan;
