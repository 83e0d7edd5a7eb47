//! A manifest file as received from the network: opened, then walked (header, extents, chunks)
//! and hashed, as a deploy or a replication does.
#![no_main]

use fog_fuzz::{check_extents, expect_variant, scratch_path, write_seeds};
use fogcore::imaging::manifest::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: write_seeds("manifest"), |data: &[u8]| {
    let path = scratch_path("manifest");
    std::fs::write(&path, data).expect("scratch file");
    let m = match Manifest::open(&path, "fuzz") {
        Ok(m) => m,
        Err(e) => return expect_variant(&e, "manifest"),
    };
    for r in &m.header.regions {
        let end = r.offset.checked_add(r.len).expect("region end overflows");
        assert!(end <= m.header.layout.disk_size, "region past the disk: {r:?}");
        match m.extents(r) {
            Ok(extents) => check_extents(&extents, r.len),
            Err(e) => expect_variant(&e, "manifest"),
        }
        for chunk in m.chunks(r) {
            if let Err(e) = chunk {
                expect_variant(&e, "manifest");
                break;
            }
        }
    }
    if let Err(e) = m.check() {
        expect_variant(&e, "manifest");
    }
});
