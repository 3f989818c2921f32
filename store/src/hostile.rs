//! Frames an attacker (or a broken peer) might send to the Raft port, for hraftd's own
//! tests and `hraftd-torture`'s hostile-peer fault. Not part of the API a user needs:
//! they exist so that the checks that the transport refuses them use the real wire format.

use openraft::raft::AppendEntriesRequest;

use crate::network::PeerRequest;
use crate::types::encode;
use crate::types::Command;
use crate::types::Entry;
use crate::types::NodeId;
use crate::types::TypeConfig;
use crate::types::Vote;

/// A length-prefixed frame around `body`, as the transport writes one.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

/// "You were removed by the membership change at `membership_index`."
pub fn removed(node_id: NodeId, membership_index: u64) -> Vec<u8> {
    let req = PeerRequest::Removed {
        node_id,
        membership_index,
    };
    frame(&encode(&req).expect("encodes"))
}

/// "The leader `node_id` of `term` is stopping."
pub fn leader_stopping(node_id: NodeId, term: u64) -> Vec<u8> {
    let req = PeerRequest::LeaderStopping { node_id, term };
    frame(&encode(&req).expect("encodes"))
}

/// A vote request from `node_id` for a much higher term.
pub fn vote(node_id: NodeId, term: u64) -> Vec<u8> {
    let req = PeerRequest::Vote(openraft::raft::VoteRequest {
        vote: Vote::new(term, node_id),
        last_log_id: None,
    });
    frame(&encode(&req).expect("encodes"))
}

/// An append from a "leader" `node_id` of `term` that would overwrite key `key`.
pub fn append(node_id: NodeId, term: u64, key: &str) -> Vec<u8> {
    frame(&append_body(
        node_id,
        term,
        Command::Delete { key: key.into() },
    ))
}

fn append_body(node_id: NodeId, term: u64, cmd: Command) -> Vec<u8> {
    let log_id = openraft::LogId::new(openraft::CommittedLeaderId::new(term, node_id), 1);
    let req: AppendEntriesRequest<TypeConfig> = AppendEntriesRequest {
        vote: Vote::new_committed(term, node_id),
        prev_log_id: None,
        leader_commit: Some(log_id),
        entries: vec![Entry {
            log_id,
            payload: openraft::EntryPayload::Normal(cmd),
        }],
    };
    encode(&PeerRequest::Append(req)).expect("encodes")
}

/// A frame of `n` heartbeats of group `group` from a "leader" `node_id` of `term`: more
/// than [`MAX_BEATS`](crate::network::MAX_BEATS) must be refused.
pub fn heartbeats(n: usize, group: &str, node_id: NodeId, term: u64) -> Vec<u8> {
    let beats = (0..n)
        .map(|_| crate::network::Beat {
            group: group.into(),
            incarnation: 1,
            rpc: AppendEntriesRequest {
                vote: Vote::new_committed(term, node_id),
                prev_log_id: None,
                leader_commit: None,
                entries: vec![],
            },
        })
        .collect();
    let req = PeerRequest::Beats { ttl_ms: 100, beats };
    frame(&encode(&req).expect("encodes"))
}

/// An append whose one entry is a batch nested `depth` deep (batches inside batches), the
/// shape that overflowed the stack of earlier versions while decoding.
pub fn nested_batch_append(depth: usize) -> Vec<u8> {
    let marker = "nested-batch-marker";
    let body = append_body(1, 1, Command::Delete { key: marker.into() });
    // Command::Delete { key } is: variant 1 (u32), key length (u64), key bytes.
    let mut plain = 1u32.to_le_bytes().to_vec();
    plain.extend_from_slice(&(marker.len() as u64).to_le_bytes());
    plain.extend_from_slice(marker.as_bytes());
    let at = body
        .windows(plain.len())
        .position(|w| w == plain.as_slice())
        .expect("the command is in the encoded request");
    // Batch is variant 2 holding a Vec of length 1, again and again.
    let mut nested = Vec::with_capacity(depth * 12 + plain.len());
    for _ in 0..depth {
        nested.extend_from_slice(&2u32.to_le_bytes());
        nested.extend_from_slice(&1u64.to_le_bytes());
    }
    nested.extend_from_slice(&plain);
    let mut out = body[..at].to_vec();
    out.extend_from_slice(&nested);
    out.extend_from_slice(&body[at + plain.len()..]);
    frame(&out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::decode;

    #[test]
    fn forged_frames_use_the_real_format() {
        for f in [
            removed(7, u64::MAX),
            leader_stopping(7, 3),
            vote(7, 99),
            append(7, 99, "k"),
            heartbeats(3, "g", 7, 99),
        ] {
            let len = u32::from_be_bytes(f[..4].try_into().unwrap()) as usize;
            assert_eq!(len, f.len() - 4);
            decode::<PeerRequest>(&f[4..]).expect("decodes as a peer request");
        }
    }

    /// Found by review: one ~1 MB frame of nested batches aborted the process.
    #[test]
    fn a_nested_batch_frame_is_refused_without_a_crash() {
        let shallow = nested_batch_append(0);
        decode::<PeerRequest>(&shallow[4..]).expect("depth 0 is a plain delete");
        let deep = nested_batch_append(90_000);
        assert!(deep.len() > 1_000_000);
        assert!(decode::<PeerRequest>(&deep[4..]).is_err());
    }
}
