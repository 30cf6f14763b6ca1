//! One module per `qbootctl` subcommand (`status` is the report itself).

pub mod inspect_uki;
pub mod mark_bad;
pub mod mark_good;
pub mod rollback;
pub mod set_next;
