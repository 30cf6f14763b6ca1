//! The REST spelling of the engine's types. (The upgrade's bodies are shaped
//! from the plan, one flow for one node and many: `super::snapshot`.)

use qapi::types::UpgradeType;
use upgrade::wire::Mode;

/// The REST spelling of an upgrade mode.
pub fn upgrade_type(m: Mode) -> UpgradeType {
    UpgradeType::from_platform(m == Mode::Platform)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_as_qumulo_spells_them() {
        assert_eq!(
            upgrade_type(Mode::Platform),
            UpgradeType::from_platform(true)
        );
        assert_eq!(
            upgrade_type(Mode::Instant),
            UpgradeType::from_platform(false)
        );
        assert_ne!(upgrade_type(Mode::Platform), upgrade_type(Mode::Instant));
    }
}
