//! The store's key layout. Everything lives in ONE sled tree under key
//! prefixes, so a commit (data + journal record + next tx id) is one atomic
//! sled batch:
//!
//! | prefix | contents |
//! | --- | --- |
//! | `d <tree name> 0x00 <key>` | data of a named tree (the default tree is "") |
//! | `j <tx id, u64 big-endian>` | journal records (`krepis.v1.JournalRecord`) |
//! | `m <name>` | metadata: format marker, next tx id |
//!
//! Private to the crate: the layout is not part of the ABI.

use crate::error::{KernelError, KernelResult};
use std::collections::HashMap;

pub(crate) const DATA: u8 = b'd';
pub(crate) const JOURNAL: u8 = b'j';
pub(crate) const META_FORMAT: &[u8] = b"mformat";
pub(crate) const META_NEXT_TX: &[u8] = b"mnext_tx";
/// The value of [`META_FORMAT`] in a store this version can open.
pub(crate) const FORMAT: &[u8] = b"krepis-store-v1";
pub const MAX_TREE_NAME_BYTES: usize = 255;

/// `d <tree> 0x00`: the key prefix of a named tree.
pub fn tree_prefix(tree: &str) -> KernelResult<Vec<u8>> {
    if tree.len() > MAX_TREE_NAME_BYTES || tree.as_bytes().contains(&0) {
        return Err(KernelError::invalid_argument(format!(
            "tree names are at most {MAX_TREE_NAME_BYTES} bytes without NUL, got {tree:?}"
        ))
        .with_detail("field", "tree"));
    }
    let mut prefix = Vec::with_capacity(tree.len() + 2);
    prefix.push(DATA);
    prefix.extend_from_slice(tree.as_bytes());
    prefix.push(0);
    Ok(prefix)
}

/// Validates tree names and resolves each one's key prefix (once per tree).
pub fn prefixes_for<'a>(
    trees: impl IntoIterator<Item = &'a str>,
) -> KernelResult<HashMap<String, Vec<u8>>> {
    let mut prefixes: HashMap<String, Vec<u8>> = HashMap::new();
    for tree in trees {
        if !prefixes.contains_key(tree) {
            prefixes.insert(tree.to_owned(), tree_prefix(tree)?);
        }
    }
    Ok(prefixes)
}

/// The sled key of `key` in the tree whose prefix is `prefix`.
pub fn data_key(prefix: &[u8], key: &[u8]) -> Vec<u8> {
    let mut composite = Vec::with_capacity(prefix.len() + key.len());
    composite.extend_from_slice(prefix);
    composite.extend_from_slice(key);
    composite
}

/// `j <tx id big-endian>`: journal keys sort by tx id.
pub fn journal_key(tx_id: u64) -> [u8; 9] {
    let mut key = [JOURNAL; 9];
    key[1..].copy_from_slice(&tx_id.to_be_bytes());
    key
}

/// The tx id of a journal key.
pub fn tx_of(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(1..9)?.try_into().ok()?))
}

/// Printable form of a key for error messages.
pub fn show_key(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(text) if !text.chars().any(char::is_control) => text.to_owned(),
        _ => key
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect::<String>(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_sorts_trees_apart_and_journal_by_tx() {
        let a = data_key(&tree_prefix("a").unwrap(), b"k");
        let ab = data_key(&tree_prefix("ab").unwrap(), b"");
        // "a\0k" < "ab\0": a tree's keys never interleave with a longer name's.
        assert!(a < ab);
        assert!(journal_key(255) < journal_key(256));
        assert_eq!(tx_of(&journal_key(42)), Some(42));
        assert!(tree_prefix("x\0y").is_err());
        assert!(tree_prefix(&"t".repeat(MAX_TREE_NAME_BYTES + 1)).is_err());
        assert_eq!(show_key(b"\x01\xff"), "01ff");
    }
}
