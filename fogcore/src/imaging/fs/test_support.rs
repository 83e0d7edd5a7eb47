//! Checks every filesystem module's tests make of a used-block map.

use crate::Error;
use crate::Result;
use crate::imaging::extent::Extent;

/// The map is sorted, its extents neither overlap nor touch, none is empty and all lie on a
/// device of `size` bytes.
pub fn assert_sorted_disjoint(extents: &[Extent], size: u64) {
    for pair in extents.windows(2) {
        assert!(pair[0].end() < pair[1].offset, "extents overlap or touch: {pair:?}");
    }
    for e in extents {
        assert!(e.len > 0 && e.end() <= size, "bad extent {e:?} on a {size}-byte device");
    }
}

/// `result` is [`Error::BadFilesystem`] naming `device`, with a reason (`what` says which case).
pub fn assert_bad_filesystem<T: std::fmt::Debug>(result: Result<T>, device: &str, what: &str) {
    match result {
        Err(Error::BadFilesystem { what: name, reason }) => {
            assert_eq!(name, device, "{what}: the error names the device");
            assert!(!reason.is_empty(), "{what}: the error says why");
        }
        other => panic!("{what}: expected BadFilesystem, got {other:?}"),
    }
}
