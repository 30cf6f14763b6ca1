//! One module per `imagebuild` subcommand: its `Args` and `run`.

pub mod bundle;
pub mod demo;
pub mod disk;
pub mod inspect;
pub mod install_slot;
pub mod keygen;
pub mod uki;
pub mod verify;
