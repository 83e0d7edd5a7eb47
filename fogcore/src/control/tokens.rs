//! Token texts: new bearer tokens, how they are stored (hashed), and task tokens a node derives
//! from its own. Pure functions, shared by the master (which checks them) and the node (which
//! derives task tokens offline for its boot scripts).

use crate::control::model::TaskId;

/// A new random bearer token: `fog_` and 64 hex digits.
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("fog_{}", hex::encode(bytes))
}

/// How a token is stored: its BLAKE3 hash, hex.
pub fn token_hash(token: &str) -> String {
    blake3::hash(token.as_bytes()).to_hex().to_string()
}

/// The prefix of task tokens (see [`task_token`]).
pub const TASK_TOKEN_PREFIX: &str = "fogt_";

pub(crate) fn task_mac(key_hash: &blake3::Hash, node: &str, task: TaskId) -> blake3::Hash {
    blake3::keyed_hash(
        key_hash.as_bytes(),
        format!("fog task token v1\0{node}\0{task}").as_bytes(),
    )
}

/// The token an agent presents for `task` of `node`: `fogt_<id>_<64 hex>`, a BLAKE3 keyed hash of
/// the node and task keyed with the node token's stored hash. The node computes it without the
/// master (so it works from the node's cache); the master checks it against the node's stored
/// token hashes. It carries the node's rights, only while the task is open, and shows nothing of
/// the node's token, which stays off the boot script.
pub fn task_token(node_token: &str, node: &str, task: TaskId) -> String {
    let mac = task_mac(&blake3::hash(node_token.as_bytes()), node, task);
    format!("{TASK_TOKEN_PREFIX}{task}_{}", mac.to_hex())
}
