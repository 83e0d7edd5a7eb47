//! Bytes as a partition holding ntfs: probed, and its used blocks mapped, as capture does (through
//! a [`Slice`], so reads past the end are the errors capture sees).
#![no_main]

use fog_fuzz::{check_extents, expect_variant, write_seeds};
use fogcore::imaging::disk::Slice;
use fogcore::imaging::fs::ntfs;
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: write_seeds("fs_ntfs"), |data: &[u8]| {
    let disk = data.to_vec();
    let dev = Slice::new(&disk, 0, disk.len() as u64, "fuzz".into());
    if let Err(e) = ntfs::probe(&dev) {
        expect_variant(&e, "filesystem");
    }
    match ntfs::used_extents(&dev) {
        Ok(extents) => check_extents(&extents, disk.len() as u64),
        Err(e) => expect_variant(&e, "filesystem"),
    }
});
