//! A cluster's nodes in commit batches: all at once (a complete reboot) or rolling
//! (one batch after another, each healthy before the next starts; the reference's
//! rolling reboot with protection level 1).

/// Node indices per batch: one batch of all nodes, or `per_batch` at a time.
pub fn batches(nodes: usize, rolling: bool, per_batch: usize) -> Vec<Vec<usize>> {
    if nodes == 0 {
        return vec![];
    }
    let size = if rolling { per_batch.max(1) } else { nodes };
    (0..nodes)
        .collect::<Vec<_>>()
        .chunks(size)
        .map(<[usize]>::to_vec)
        .collect()
}

/// Runs `commit` over the batches in order and stops after the first batch with a
/// failure: later batches are left untouched. Returns each attempted node's result.
pub fn commit_batches<T, E>(
    batches: &[Vec<usize>],
    mut commit: impl FnMut(usize) -> Result<T, E>,
) -> Vec<(usize, Result<T, E>)> {
    let mut out = vec![];
    for b in batches {
        let mut failed = false;
        for &n in b {
            let r = commit(n);
            failed |= r.is_err();
            out.push((n, r));
        }
        if failed {
            break;
        }
    }
    out
}

/// Commits the prepared upgrade on every node: all at once, or (rolling) one node
/// at a time, each committed and healthy before the next, stopping at the first
/// failure. The upgrade reference's protection level decides the batch size on a
/// real cluster; here it is one node per batch.
pub fn commit_cluster(
    nodes: &[crate::node::Node],
    rolling: bool,
    obs: &dyn crate::Observer,
) -> Vec<(usize, Result<crate::state::Record, crate::Error>)> {
    let b = batches(nodes.len(), rolling, 1);
    commit_batches(&b, |i| crate::commit::commit(&nodes[i], obs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_all_at_once_or_rolling() {
        assert_eq!(batches(1, false, 1), vec![vec![0]]);
        assert_eq!(batches(1, true, 1), vec![vec![0]]);
        assert_eq!(batches(4, false, 1), vec![vec![0, 1, 2, 3]]);
        assert_eq!(batches(5, true, 2), vec![vec![0, 1], vec![2, 3], vec![4]]);
        assert!(batches(0, true, 1).is_empty());
    }

    #[test]
    fn a_failed_batch_stops_the_rollout() {
        let b = batches(4, true, 1);
        let r = commit_batches(&b, |n| if n == 1 { Err("unhealthy") } else { Ok(n) });
        assert_eq!(r.len(), 2);
        assert_eq!(r[1], (1, Err("unhealthy")));
    }
}
