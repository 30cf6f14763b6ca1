//! etcd's own access control for the cluster (`qimgd cluster secure-etcd`): a
//! user and a role per node, named by its certificate's common name (etcd
//! takes a client certificate's common name as the user once authentication
//! is on), and `root` for the operator. A node reads the cluster's keys and
//! writes only its own registration and report and the keys every node may
//! have to write (the plan and the election, as any node may coordinate; the
//! records; the users and token keys, edited on any node): a stolen
//! `node.key` can no longer forge another node's report or registration, nor
//! touch anything outside the cluster's prefix. What it may still write, the
//! members check (`qimgd::member::trust`).

use std::path::Path;
use std::time::Duration;

use etcd_client::{Identity, Permission};

use crate::error::Error;
use crate::pki::Ca;
use crate::spec::ClusterSpec;
use crate::store::{self, SharedDoc, etcd_err};

/// The operator's user in etcd (the built-in `root` role).
pub const ROOT: &str = "root";

/// One permission of a node's role: a key (or every key under it, `prefix`),
/// to read or to read and write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The key, the cluster's prefix included.
    pub key: String,
    /// Every key under `key`.
    pub prefix: bool,
    /// Read and write (else read only).
    pub write: bool,
}

/// Node `id`'s role's name.
pub fn role(spec: &ClusterSpec, id: u32) -> String {
    format!("qimg {} node {id}", spec.name)
}

/// What node `id` may do under the cluster's prefix `p` (pure, table-tested).
pub fn grants(p: &str, id: u32) -> Vec<Grant> {
    let g = |key: String, prefix: bool, write: bool| Grant { key, prefix, write };
    let mut v = vec![
        g(p.to_owned(), true, false),
        g(format!("{p}{}", store::node_key(id)), false, true),
        g(format!("{p}{}", store::report_key(id)), false, true),
        g(format!("{p}{}", store::PLAN), false, true),
        g(format!("{p}{}", store::COORDINATOR), false, true),
        g(format!("{p}{}", store::HISTORY), true, true),
    ];
    for d in [SharedDoc::Users, SharedDoc::TokenKeys] {
        v.push(g(format!("{p}{}", d.name()), false, true));
    }
    v
}

/// What [`secure`] set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Secured {
    /// The nodes' users, in the spec's order.
    pub users: Vec<String>,
}

/// Turns etcd's authentication on for the cluster `create` wrote under `out`
/// (its CA key there: a `root` client certificate is made for this run only,
/// never written): `root`, then every node's user and role ([`grants`]),
/// then authentication. Run again (nodes added), it adds what is missing.
pub async fn secure(out: &Path, limit: Duration) -> Result<Secured, Error> {
    let read = |p: &Path| std::fs::read_to_string(p).map_err(crate::error::io_err("reading", p));
    let ca_dir = out.join("ca");
    let ca = Ca::load(
        &read(&ca_dir.join("ca.crt"))?,
        &read(&ca_dir.join("ca.key"))?,
    )?;
    let spec = crate::create::first_membership(out)?.spec;
    let root = ca.issue(ROOT, &[ROOT.to_owned()])?;
    let client = store::client(
        &spec.endpoints(),
        ca.cert_pem().into_bytes(),
        Identity::from_pem(root.cert_pem, root.key_pem),
        limit,
    )
    .await?;
    let mut auth = client.auth_client();
    let exists = |e: &etcd_client::Error| e.to_string().contains("already exists");
    // A password nobody keeps: the nodes and root authenticate by certificate.
    let password = || {
        use ring::rand::SecureRandom;
        let mut b = [0u8; 24];
        let _ = ring::rand::SystemRandom::new().fill(&mut b);
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    };
    let tolerate = |r: Result<(), etcd_client::Error>, op: String| match r {
        Err(e) if !exists(&e) => Err(etcd_err(op)(e)),
        _ => Ok(()),
    };
    tolerate(
        auth.user_add(ROOT, password(), None).await.map(drop),
        "adding etcd's root user".into(),
    )?;
    tolerate(
        auth.role_add(ROOT).await.map(drop),
        "adding etcd's root role".into(),
    )?;
    auth.user_grant_role(ROOT, ROOT)
        .await
        .map_err(etcd_err("granting root its role"))?;
    let prefix = spec.prefix();
    let mut users = vec![];
    for n in &spec.nodes {
        let user = crate::create::node_subject(&spec, n);
        let role = role(&spec, n.id);
        tolerate(
            auth.role_add(role.clone()).await.map(drop),
            format!("adding the role {role:?}"),
        )?;
        for g in grants(&prefix, n.id) {
            let p = match g.write {
                true => Permission::read_write(g.key.clone()),
                false => Permission::read(g.key.clone()),
            };
            let p = if g.prefix { p.with_prefix() } else { p };
            auth.role_grant_permission(role.clone(), p)
                .await
                .map_err(etcd_err(format!("granting {role:?} {}", g.key)))?;
        }
        tolerate(
            auth.user_add(user.clone(), password(), None)
                .await
                .map(drop),
            format!("adding the user {user:?}"),
        )?;
        auth.user_grant_role(user.clone(), role.clone())
            .await
            .map_err(etcd_err(format!("granting {user:?} the role {role:?}")))?;
        users.push(user);
    }
    // Already on: etcd says so and changes nothing.
    auth.auth_enable()
        .await
        .map_err(etcd_err("turning etcd's authentication on"))?;
    Ok(Secured { users })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_writes_its_own_keys_and_the_shared_ones_only() {
        let g = grants("/qimg/c/", 2);
        let writes: Vec<(&str, bool)> = g
            .iter()
            .filter(|g| g.write)
            .map(|g| (g.key.as_str(), g.prefix))
            .collect();
        assert_eq!(
            writes,
            [
                ("/qimg/c/nodes/00000002", false),
                ("/qimg/c/reports/00000002", false),
                ("/qimg/c/plan", false),
                ("/qimg/c/coordinator", false),
                ("/qimg/c/history/", true),
                ("/qimg/c/users", false),
                ("/qimg/c/token-keys", false),
            ]
        );
        let reads: Vec<&Grant> = g.iter().filter(|g| !g.write).collect();
        assert_eq!(reads.len(), 1);
        assert_eq!((reads[0].key.as_str(), reads[0].prefix), ("/qimg/c/", true));
        // Nothing of another node's.
        assert!(!g.iter().any(|g| g.key.ends_with("00000001")));
    }
}
