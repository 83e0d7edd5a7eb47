//! Bytes as a whole disk: its partition table read (sector size detected, and given as 4096),
//! and for a GPT the relocation deploy computes for targets of other sizes.
#![no_main]

use fog_fuzz::{check_layout, expect_variant, write_seeds};
use fogcore::imaging::partition::{TableKind, read_layout, relocate_gpt};
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: write_seeds("partition"), |data: &[u8]| {
    let disk = data.to_vec();
    let size = disk.len() as u64;
    for sector_size in [None, Some(4096)] {
        let layout = match read_layout(&disk, sector_size) {
            Ok(l) => l,
            Err(e) => {
                expect_variant(&e, "disk");
                continue;
            }
        };
        check_layout(&layout, size);
        if layout.table == TableKind::Gpt {
            for target in [size, size / 2, size.saturating_mul(3)] {
                match relocate_gpt(&disk, layout.sector_size, target, &[]) {
                    Ok(r) => {
                        for (at, bytes) in &r.writes {
                            let end = at.checked_add(bytes.len() as u64).expect("write end overflows");
                            assert!(end <= target, "relocation writes past the target: {at}+{}", bytes.len());
                        }
                    }
                    Err(e) => expect_variant(&e, "disk"),
                }
            }
        }
    }
});
