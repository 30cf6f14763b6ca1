//! Whether a bundle may be installed on a node, and how: instant or platform.
//!
//! The mode follows from platform versions. Against a running node, any difference
//! between the bundle's platform version and the booted slot's means a platform
//! upgrade. Against a release version alone (`qq upgrade_mode --from V`), the
//! bundle's `platform_version` names the release that last changed the platform:
//! upgrading from an older release crosses that change, even when the release that
//! made it is skipped (4.0.0 → 4.1.0 crosses 4.0.6, a platform upgrade).

use qimg::{Manifest, Target, Version};
use serde::{Deserialize, Serialize};

use crate::error::Refusal;
use crate::state::{LastCommit, Mode};

/// The mode and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Instant or platform.
    pub mode: Mode,
    /// Why, in words.
    pub reason: String,
}

/// The mode for a node whose booted slot runs platform `running_platform`.
pub fn mode_on_node(m: &Manifest, running_platform: &Version) -> Decision {
    let p = &m.release.platform_version;
    if m.needs_platform_upgrade(running_platform) {
        Decision {
            mode: Mode::Platform,
            reason: format!(
                "the node runs platform {running_platform}, release {} needs platform {p}: reboot into the other slot",
                m.release.version
            ),
        }
    } else {
        Decision {
            mode: Mode::Instant,
            reason: format!("platform {p} is already running: only the container changes"),
        }
    }
}

/// The mode for an upgrade from release `from`.
pub fn mode_from_release(m: &Manifest, from: &Version) -> Decision {
    let p = &m.release.platform_version;
    if from < p {
        Decision {
            mode: Mode::Platform,
            reason: format!(
                "release {} carries the platform of {p}, newer than {from}: the upgrade crosses a platform change",
                m.release.version
            ),
        }
    } else {
        Decision {
            mode: Mode::Instant,
            reason: format!(
                "the platform last changed in {p}, which {from} already has: only the container changes"
            ),
        }
    }
}

/// What a node is, for [`check`].
#[derive(Clone, Debug)]
pub struct NodeFacts {
    /// Product of the node's slots.
    pub product: String,
    /// Hardware model.
    pub model: String,
    /// onprem or cloud.
    pub target: Target,
    /// The installed release, when known.
    pub installed: Option<Version>,
}

/// Checks product, target, model, minimum installed version and version order.
/// Returns the reason the bundle is refused.
pub fn check(m: &Manifest, n: &NodeFacts) -> Result<(), Refusal> {
    let r = &m.release;
    if r.product != n.product {
        return Err(Refusal::Product {
            bundle: r.product.clone(),
            node: n.product.clone(),
        });
    }
    if r.target != n.target {
        return Err(Refusal::Target {
            bundle: target_name(r.target),
            node: target_name(n.target),
        });
    }
    if !r.compatible_models.contains(&n.model) {
        return Err(Refusal::Model {
            model: n.model.clone(),
            version: r.version.clone(),
            supported: r.compatible_models.join(", "),
        });
    }
    let installed = n.installed.as_ref().ok_or(Refusal::InstalledUnknown)?;
    if installed < &r.min_installed_version {
        return Err(Refusal::TooOld {
            version: r.version.clone(),
            min: r.min_installed_version.clone(),
            installed: installed.clone(),
        });
    }
    if &r.version < installed {
        return Err(Refusal::Downgrade {
            version: r.version.clone(),
            installed: installed.clone(),
        });
    }
    if &r.version == installed {
        return Err(Refusal::SameVersion(installed.clone()));
    }
    Ok(())
}

pub(crate) fn target_name(t: Target) -> &'static str {
    match t {
        Target::Onprem => "on-prem",
        Target::Cloud => "cloud",
    }
}

/// When the bundle asks for a settle period that has not passed since the last
/// commit: until when, and why.
pub fn settle(m: &Manifest, last: Option<&LastCommit>, now: u64) -> Option<(u64, String)> {
    let s = m.release.settle.as_ref()?;
    let last = last?;
    let until = last.at.saturating_add(s.seconds);
    (until > now).then(|| {
        (
            until,
            format!(
                "{} may be prepared {} s after the upgrade to {} (until {} Unix time, {} s from now): {}",
                m.release.version,
                s.seconds,
                last.to,
                until,
                until - now,
                s.reason
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use qimg::{BuildInfo, Component, ComponentKind, Compression, Release, Settle, Sha256};

    fn manifest(version: &str, platform: &str) -> Manifest {
        Manifest {
            release: Release {
                product: "p".into(),
                version: version.parse().unwrap(),
                platform_version: platform.parse().unwrap(),
                target: Target::Onprem,
                compatible_models: vec!["m1".into()],
                min_installed_version: "4.0".parse().unwrap(),
                settle: Some(Settle {
                    seconds: 100,
                    reason: "restripe".into(),
                }),
            },
            build: BuildInfo {
                tool: "t".into(),
                source_date_epoch: 0,
            },
            components: vec![Component {
                name: "c".into(),
                kind: ComponentKind::BootUki,
                size: 1,
                sha256: Sha256([0; 32]),
                compression: Compression::None,
                stored_size: 1,
                stored_sha256: Sha256([0; 32]),
            }],
        }
    }

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    #[test]
    fn skipping_a_platform_release_is_still_a_platform_upgrade() {
        // 4.1.0 carries 4.0.6's platform: from 4.0.0 that is a platform upgrade.
        let m = manifest("4.1.0", "4.0.6");
        assert_eq!(mode_from_release(&m, &v("4.0.0")).mode, Mode::Platform);
        assert_eq!(mode_from_release(&m, &v("4.0.6")).mode, Mode::Instant);
        assert_eq!(mode_from_release(&m, &v("4.0.7")).mode, Mode::Instant);
        assert_eq!(mode_on_node(&m, &v("4.0.0")).mode, Mode::Platform);
        assert_eq!(mode_on_node(&m, &v("4.0.6")).mode, Mode::Instant);
        assert!(mode_on_node(&m, &v("4.0.0")).reason.contains("4.0.6"));
    }

    #[test]
    fn refusals_name_their_cause() {
        let m = manifest("4.1.0", "4.0.6");
        let ok = NodeFacts {
            product: "p".into(),
            model: "m1".into(),
            target: Target::Onprem,
            installed: Some(v("4.0.6")),
        };
        assert_eq!(check(&m, &ok), Ok(()));
        let with = |f: &dyn Fn(&mut NodeFacts)| {
            let mut n = ok.clone();
            f(&mut n);
            check(&m, &n).unwrap_err().to_string()
        };
        assert!(with(&|n| n.product = "q".into()).contains("node runs q"));
        assert!(with(&|n| n.target = Target::Cloud).contains("for on-prem nodes"));
        assert!(with(&|n| n.model = "m9".into()).contains("model m9"));
        assert!(with(&|n| n.installed = Some(v("3.9"))).contains("4.0 or newer"));
        assert!(with(&|n| n.installed = Some(v("4.2"))).contains("downgrades"));
        assert!(with(&|n| n.installed = Some(v("4.1.0"))).contains("already installed"));
        assert!(with(&|n| n.installed = None).contains("not known"));
    }

    #[test]
    fn settle_blocks_until_the_period_passed() {
        let m = manifest("4.1.0", "4.0.6");
        let last = LastCommit {
            at: 1000,
            from: v("4.0"),
            to: v("4.0.6"),
        };
        let (until, why) = settle(&m, Some(&last), 1050).unwrap();
        assert_eq!(until, 1100);
        assert!(
            why.contains("restripe") && why.contains("50 s from now"),
            "{why}"
        );
        assert_eq!(settle(&m, Some(&last), 1100), None);
        assert_eq!(settle(&m, None, 1050), None);
    }
}
