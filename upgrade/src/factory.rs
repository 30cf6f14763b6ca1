//! The factory container. A node fresh from an `imagebuild disk` image boots its
//! release's platform, but its data partition holds no container yet: the
//! installer gives it the same bundle, and the container is staged from one
//! verified pass and made active. Simulated nodes get theirs the same way at
//! creation.

use std::io::BufReader;
use std::path::Path;

use qimg::{BundleReader, ComponentKind, Manifest, NoProgress, Version};

use crate::container::Containers;
use crate::error::{Error, Refusal, io_err};
use crate::node::Node;

/// Stages the bundle's container (verified against the node's keys; `accept` sees
/// the verified manifest before anything is written) and makes it the active one.
/// Returns the release.
pub fn install_container(
    node: &Node,
    bundle: &Path,
    accept: impl FnOnce(&Manifest) -> Result<(), Error>,
) -> Result<Version, Error> {
    let f = std::fs::File::open(bundle).map_err(io_err("opening", bundle))?;
    let berr = |source| Error::Bundle {
        path: bundle.to_owned(),
        source,
    };
    let (mut reader, _) =
        BundleReader::open_verified(BufReader::new(f), &node.keys()?).map_err(berr)?;
    let m = reader.manifest().clone();
    accept(&m)?;
    let containers = Containers::new(&node.config.state);
    let version = m.release.version.clone();
    let mut staged = None;
    for c in &m.components {
        match &c.kind {
            ComponentKind::Container { verity, .. } => {
                let mut sink = containers.begin(&version, verity.hash_offset)?;
                reader
                    .next_component(&mut sink, &NoProgress)
                    .map_err(berr)?;
                staged = Some((sink, verity.root_hash.0));
            }
            _ => {
                reader
                    .next_component(std::io::sink(), &NoProgress)
                    .map_err(berr)?;
            }
        }
    }
    reader.finish(&NoProgress).map_err(berr)?;
    let (sink, root_hash) = staged.ok_or_else(|| Error::Refused {
        path: bundle.to_owned(),
        reason: Refusal::Incomplete("the bundle has no container"),
    })?;
    containers.finish(&version, sink, &root_hash, true)?;
    containers.activate(&version)?;
    Ok(m.release.version)
}

/// Checks that a factory install of release `m` fits a node of `product` booted
/// into platform `booted` with `active` as its container: only once, only the
/// node's product, and only the booted platform's release.
pub fn check(
    bundle: &Path,
    active: Option<&Version>,
    m: &qimg::Release,
    product: &str,
    booted: &Version,
) -> Result<(), Error> {
    let refused = |reason| Error::Refused {
        path: bundle.to_owned(),
        reason,
    };
    let bundle_platform = &m.platform_version;
    if let Some(v) = active {
        return Err(refused(Refusal::AlreadyInstalled(v.clone())));
    }
    if m.product != product {
        return Err(refused(Refusal::Product {
            bundle: m.product.clone(),
            node: product.to_owned(),
        }));
    }
    if bundle_platform != booted {
        return Err(refused(Refusal::OtherPlatform {
            bundle: bundle_platform.clone(),
            booted: booted.clone(),
        }));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_factory_install_happens_once_and_only_for_the_booted_platform() {
        let p = Path::new("b.qimg");
        let v = |s: &str| s.parse::<Version>().unwrap();
        let rel = |platform: &str| qimg::Release {
            product: "node".into(),
            version: v(platform),
            platform_version: v(platform),
            target: qimg::Target::Onprem,
            compatible_models: vec!["m".into()],
            min_installed_version: v("0.1"),
            settle: None,
        };
        assert!(check(p, None, &rel("1.0.0"), "node", &v("1.0.0")).is_ok());
        let e = check(p, None, &rel("1.0.0"), "other", &v("1.0.0")).unwrap_err();
        assert!(
            matches!(&e, Error::Refused { reason: Refusal::Product { bundle, node }, .. }
                if bundle == "node" && node == "other"),
            "{e:?}"
        );
        let e = check(p, Some(&v("1.0.0")), &rel("1.0.0"), "node", &v("1.0.0")).unwrap_err();
        assert!(
            matches!(&e, Error::Refused { reason: Refusal::AlreadyInstalled(i), .. } if *i == v("1.0.0")),
            "{e:?}"
        );
        assert!(qutil::chain(&e).contains("already runs 1.0.0: upgrade it instead"));
        let e = check(p, None, &rel("2.0.0"), "node", &v("1.0.0")).unwrap_err();
        assert!(
            matches!(&e, Error::Refused { reason: Refusal::OtherPlatform { bundle, booted }, .. }
                if *bundle == v("2.0.0") && *booted == v("1.0.0")),
            "{e:?}"
        );
    }
}
