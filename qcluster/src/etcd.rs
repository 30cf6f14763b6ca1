//! The etcd member a voting node runs: its command line, with mutual TLS for
//! clients and peers from the cluster CA (a process without a cluster certificate
//! can neither join nor read).

use std::path::Path;

use crate::create::{Membership, NodeDir};

/// `etcd` arguments for this node's member, or `None` when it is not a voter.
pub fn member_args(m: &Membership, files: &NodeDir, data_dir: &Path) -> Option<Vec<String>> {
    let me = m.spec.voters().iter().find(|v| v.id == m.node_id)?;
    let client = me.etcd_client?;
    let peer = me.etcd_peer?;
    let initial: Vec<String> = m
        .spec
        .voters()
        .iter()
        .filter_map(|v| v.etcd_peer.map(|p| format!("{}=https://{p}", v.name)))
        .collect();
    let s = |p: &Path| p.display().to_string();
    Some(vec![
        format!("--name={}", me.name),
        format!("--data-dir={}", s(data_dir)),
        format!("--listen-client-urls=https://{client}"),
        format!("--advertise-client-urls=https://{client}"),
        format!("--listen-peer-urls=https://{peer}"),
        format!("--initial-advertise-peer-urls=https://{peer}"),
        format!("--initial-cluster={}", initial.join(",")),
        format!("--initial-cluster-token={}", m.spec.name),
        "--initial-cluster-state=new".into(),
        "--client-cert-auth".into(),
        format!("--trusted-ca-file={}", s(&files.ca())),
        format!("--cert-file={}", s(&files.cert())),
        format!("--key-file={}", s(&files.key())),
        "--peer-client-cert-auth".into(),
        format!("--peer-trusted-ca-file={}", s(&files.ca())),
        format!("--peer-cert-file={}", s(&files.cert())),
        format!("--peer-key-file={}", s(&files.key())),
        "--logger=zap".into(),
        "--log-outputs=stderr".into(),
    ])
}
