//! The multicast carousel's plan: objects placed in any order give the unicast deploy's disk;
//! an object whose bytes are not its chunks writes nothing.

use fogcore::imaging::capture::{CaptureOptions, capture};
use fogcore::imaging::carousel::Plan;
use fogcore::imaging::deploy::{DeployOptions, deploy, prepare};
use fogcore::imaging::replica::LocalStore;
use fogcore::imaging::store::Store;
use fogcore::progress::NoProgress;

use crate::tools::*;

#[test]
fn objects_placed_in_any_order_give_the_unicast_disk_and_bad_ones_write_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = ext4_source_disk(dir.path(), 14);
    let store = Store::open(dir.path().join("store")).expect("store");
    capture(&store, &source, "img", &CaptureOptions::default(), &NoProgress).expect("capture");
    let options = DeployOptions::default();
    let unicast = dir.path().join("unicast.img");
    deploy(&store, "img", &unicast, &options, &NoProgress).expect("deploy");

    let manifest = store.manifest("img").expect("manifest");
    let plan = Plan::build(&manifest).expect("plan");
    assert!(plan.len() > 8, "{} objects", plan.len());
    let again = Plan::build(&manifest).expect("plan again");
    for k in 0..plan.len() {
        assert_eq!(plan.object(k), again.object(k), "plans differ at object {k}");
    }
    let local = LocalStore::new(store.clone());

    let target = dir.path().join("multicast.img");
    let writer = prepare(&manifest, &target, &options)
        .expect("prepare")
        .into_writer()
        .expect("writer");
    let needed = plan.needed(&writer.regions());
    // A damaged object (one byte flipped in a frame) and another object's bytes are refused
    // whole, before anything of theirs is written.
    let first = needed.iter().position(|n| *n).expect("a needed object");
    let mut damaged = plan.payload(&local, first).expect("payload");
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x40;
    assert!(
        plan.place(first, &damaged, &writer).is_err(),
        "a damaged object was placed"
    );
    let other = plan.payload(&local, first + 1).expect("payload");
    assert!(
        plan.place(first, &other, &writer).is_err(),
        "another object's bytes were placed"
    );
    assert_eq!(allocated_bytes(&target), 0, "a refused object wrote something");

    // Every needed object, in a shuffled order.
    let mut order: Vec<usize> = (0..plan.len()).filter(|&k| needed[k]).collect();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for i in (1..order.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        order.swap(i, (seed % (i as u64 + 1)) as usize);
    }
    let mut placed = 0;
    for k in order {
        let payload = plan.payload(&local, k).expect("payload");
        let fragments = payload.len().div_ceil(fogcore::net::multicast::wire::FRAGMENT);
        assert!(
            fragments <= plan.max_fragments(k, fogcore::net::multicast::wire::FRAGMENT),
            "object {k}: {fragments} fragments, past the bound receivers accept"
        );
        placed += plan.place(k, &payload, &writer).expect("place").plain_bytes;
    }
    assert_eq!(placed, writer.data_bytes(), "placed bytes");
    writer
        .finish(&store.reader().expect("reader"), &NoProgress)
        .expect("finish");
    assert!(
        std::fs::read(&unicast).expect("unicast") == std::fs::read(&target).expect("multicast"),
        "the disks differ"
    );
}
