//! Store tests: frames, the reader's frame cache, gc of partly dead frames, damage, format.

use super::*;
use crate::imaging::extent::Extent;
use crate::imaging::fs::Filesystem;
use crate::imaging::manifest::{ChunkRef, FORMAT, Region};
use crate::imaging::partition::{Layout, Partition, TableKind};

/// `n` bytes of text-like data (compressible), different for each `seed`.
fn text(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let words = [
        "fog ", "image ", "chunk ", "frame ", "store ", "deploy ", "capture ", "disk ",
    ];
    let mut out = format!("{seed}:").into_bytes();
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(words[(x % 8) as usize].as_bytes());
    }
    out.truncate(n);
    out
}

/// `n` incompressible bytes, different for each `seed`.
fn random(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Commits image `name` whose data is `runs` (each handed to the writer as one run).
fn commit_image(store: &Store, name: &str, runs: &[Vec<Vec<u8>>]) -> u64 {
    commit_image_with(store, name, runs, |_| {})
}

/// [`commit_image`], showing the writer to `before_commit` once every run is in.
fn commit_image_with(
    store: &Store,
    name: &str,
    runs: &[Vec<Vec<u8>>],
    before_commit: impl FnOnce(&StoreWriter),
) -> u64 {
    let writer = store.writer().expect("writer");
    let mut manifest = writer.manifest_writer().expect("manifest");
    let mut data_bytes = 0u64;
    let mut count = 0u64;
    for run in runs {
        let chunks: Vec<(ChunkId, &[u8])> = run.iter().map(|d| (ChunkId::of(d), &d[..])).collect();
        writer.put_run(&chunks).expect("put_run");
        for (id, data) in &chunks {
            manifest
                .push_chunk(&ChunkRef {
                    id: *id,
                    len: data.len() as u32,
                })
                .expect("push");
            data_bytes += data.len() as u64;
            count += 1;
        }
    }
    let chunks = manifest.end_chunks();
    let extents = manifest.write_extents(&[Extent::new(0, data_bytes)]).expect("extents");
    let header = Header {
        format: FORMAT,
        name: name.into(),
        created: 0,
        source: "test".into(),
        layout: Layout {
            table: TableKind::None,
            sector_size: 512,
            disk_size: data_bytes,
            partitions: vec![Partition {
                number: 0,
                offset: 0,
                len: data_bytes,
                type_id: String::new(),
                name: String::new(),
            }],
            backup_gpt_len: 0,
            extended: false,
        },
        regions: vec![Region {
            partition: Some(0),
            offset: 0,
            len: data_bytes,
            filesystem: Filesystem::Raw,
            used_bytes: data_bytes,
            extents,
            chunks,
            min_len: None,
            shrunk: false,
        }],
        chunk_count: count,
        data_bytes,
    };
    manifest.finish(&header).expect("finish");
    before_commit(&writer);
    let new = writer.new_chunks();
    writer.commit(name).expect("commit");
    new
}

/// Every frame of every pack.
fn frames(store: &Store) -> Vec<Frame> {
    let mut out = Vec::new();
    for entry in fs::read_dir(store.packs_dir()).expect("packs") {
        let name = entry.expect("entry").file_name();
        let number = parse_pack_name(name.to_str().expect("utf-8")).expect("a pack name");
        let mut reader = FrameReader::open(&store.packs_dir(), number).expect("open pack");
        while let Some(frame) = reader.next_frame().expect("frame") {
            out.push(frame);
        }
    }
    out
}

fn packs_bytes(store: &Store) -> u64 {
    fs::read_dir(store.packs_dir())
        .expect("packs")
        .map(|e| e.expect("entry").metadata().expect("meta").len())
        .sum()
}

#[test]
fn consecutive_chunks_share_a_frame_and_compress_better_together() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path().join("s")).expect("store");
    let run: Vec<Vec<u8>> = (0..16).map(|i| text(i, 16 * 1024)).collect();
    assert_eq!(commit_image(&store, "a", std::slice::from_ref(&run)), 16);
    let frames = frames(&store);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].chunks.len(), 16);
    assert_eq!(frames[0].stored.first(), Some(&chunk::TAG_ZSTD));
    let alone: usize = run.iter().map(|c| chunk::encode(c).len()).sum();
    assert!(frames[0].stored.len() < alone, "{} >= {alone}", frames[0].stored.len());
    let reader = store.reader().expect("reader");
    for data in &run {
        assert_eq!(reader.get(&ChunkId::of(data)).expect("get").as_ref(), Some(data));
    }
    assert!(store.verify().expect("verify").is_ok());
}

#[test]
fn known_chunks_are_not_stored_again_and_runs_split_into_frames() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path().join("s")).expect("store");
    let run: Vec<Vec<u8>> = (0..40).map(|i| random(i, 16 * 1024)).collect();
    assert_eq!(commit_image(&store, "a", std::slice::from_ref(&run)), 40);
    // 640 KiB in one run: frames of about FRAME_TARGET, raw since the data is random.
    let first = frames(&store);
    assert_eq!(first.len(), 3);
    assert!(first.iter().all(|f| f.stored.first() == Some(&chunk::TAG_RAW)));
    // The same data again plus two new chunks and a repeat within the run: two chunks stored.
    let mut again = run.clone();
    again.insert(7, random(100, 5000));
    again.push(random(101, 7000));
    again.push(random(101, 7000));
    assert_eq!(commit_image(&store, "b", &[again]), 2);
    assert!(store.verify().expect("verify").is_ok());
}

#[test]
fn scattered_new_chunks_of_many_runs_share_one_frame() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path().join("s")).expect("store");
    let runs: Vec<Vec<Vec<u8>>> = (0..4)
        .map(|f| (0..16).map(|i| text(f * 100 + i, 16 * 1024)).collect())
        .collect();
    commit_image(&store, "a", &runs);
    assert_eq!(frames(&store).len(), 4);
    // A re-capture that changed one chunk in each run: the four new chunks are one frame.
    let mut changed = runs.clone();
    for (f, run) in changed.iter_mut().enumerate() {
        run[5] = text(9000 + f as u64, 16 * 1024);
    }
    assert_eq!(commit_image(&store, "b", &changed), 4);
    let all = frames(&store);
    assert_eq!(all.len(), 5);
    assert!(all.iter().any(|f| f.chunks.len() == 4));
    assert!(store.verify().expect("verify").is_ok());
    let reader = store.reader().expect("reader");
    for data in changed.iter().flatten() {
        assert_eq!(reader.get(&ChunkId::of(data)).expect("get").as_ref(), Some(data));
    }
}

#[test]
fn sequential_and_interleaved_reads_decode_each_frame_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path().join("s")).expect("store");
    let runs: Vec<Vec<Vec<u8>>> = (0..3)
        .map(|f| (0..16).map(|i| text(f * 100 + i, 16 * 1024)).collect())
        .collect();
    commit_image(&store, "a", &runs);
    assert_eq!(frames(&store).len(), 3);
    let all: Vec<&Vec<u8>> = runs.iter().flatten().collect();

    let reader = store.reader().expect("reader");
    for data in &all {
        assert_eq!(reader.get(&ChunkId::of(data)).expect("get").as_ref(), Some(*data));
    }
    assert_eq!(reader.frames_decoded(), 3);
    // Across frames, back and forth: still cached.
    for i in 0..16 {
        for run in runs.iter().rev() {
            assert_eq!(reader.get(&ChunkId::of(&run[i])).expect("get").as_ref(), Some(&run[i]));
        }
    }
    assert_eq!(reader.frames_decoded(), 3);

    // Threads asking for the same frames at once wait for one decode.
    let reader = store.reader().expect("reader");
    std::thread::scope(|s| {
        for t in 0..4 {
            let (reader, all) = (&reader, &all);
            s.spawn(move || {
                for data in all.iter().skip(t) {
                    assert_eq!(reader.get(&ChunkId::of(data)).expect("get").as_ref(), Some(*data));
                }
            });
        }
    });
    assert_eq!(reader.frames_decoded(), 3);
    assert_eq!(reader.get(&ChunkId::of(b"absent")).expect("get"), None);
}

#[test]
fn cache_evicts_old_frames_and_reads_them_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path().join("s")).expect("store");
    let frame_count = FRAME_CACHE as u64 + 8;
    // Runs of half a frame each get a frame of their own.
    let half = chunk::FRAME_TARGET / 2;
    let runs: Vec<Vec<Vec<u8>>> = (0..frame_count).map(|f| vec![text(f, half)]).collect();
    commit_image(&store, "a", &runs);
    assert_eq!(frames(&store).len() as u64, frame_count);
    let reader = store.reader().expect("reader");
    for _ in 0..2 {
        for run in &runs {
            assert_eq!(reader.get(&ChunkId::of(&run[0])).expect("get").as_ref(), Some(&run[0]));
        }
    }
    // A cycle longer than the cache misses every time.
    assert_eq!(reader.frames_decoded(), 2 * frame_count);
}

#[test]
fn gc_reframes_partly_dead_frames_and_keeps_whole_live_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path().join("s")).expect("store");
    let mixed: Vec<Vec<u8>> = (0..16).map(|i| text(i, 16 * 1024)).collect();
    let only_a: Vec<Vec<u8>> = (0..16).map(|i| text(1000 + i, 16 * 1024)).collect();
    let only_b: Vec<Vec<u8>> = (0..16).map(|i| text(2000 + i, 16 * 1024)).collect();
    commit_image(&store, "a", &[mixed.clone(), only_a.clone()]);
    // b shares every third chunk of the first frame of a, then has a frame of its own.
    let shared: Vec<Vec<u8>> = mixed.iter().step_by(3).cloned().collect();
    commit_image(&store, "b", &[shared.clone(), only_b.clone()]);
    assert_eq!(frames(&store).len(), 3);
    let before = packs_bytes(&store);

    store.remove_image("a").expect("rm");
    let report = store.gc().expect("gc");
    assert_eq!(report.chunks_removed, 32 - shared.len() as u64);
    assert_eq!(report.chunks_kept, 16 + shared.len() as u64);
    let after = frames(&store);
    // b's own frame copied as it was; the shared chunks framed again without the dead ones.
    let chunk_count: usize = after.iter().map(|f| f.chunks.len()).sum();
    assert_eq!(chunk_count, 16 + shared.len());
    assert!(after.iter().any(|f| f.chunks.len() == 16));
    assert!(after.iter().any(|f| f.chunks.len() == shared.len()));
    assert!(report.bytes_freed > 0 && packs_bytes(&store) + report.bytes_freed == before);
    assert!(store.verify().expect("verify").is_ok());
    let reader = store.reader().expect("reader");
    for data in shared.iter().chain(&only_b) {
        assert_eq!(reader.get(&ChunkId::of(data)).expect("get").as_ref(), Some(data));
    }
    for data in only_a
        .iter()
        .chain(mixed.iter().skip(1))
        .filter(|d| !shared.contains(d))
    {
        assert!(!reader.has(&ChunkId::of(data)).expect("read"));
    }

    store.remove_image("b").expect("rm");
    store.gc().expect("gc");
    assert_eq!(store.stats().expect("stats").chunks, 0);
    assert_eq!(packs_bytes(&store), 0);
}

#[test]
fn gc_removes_what_an_uncommitted_writer_left() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path().join("s")).expect("store");
    let kept: Vec<Vec<u8>> = (0..4).map(|i| text(i, 8192)).collect();
    commit_image(&store, "a", std::slice::from_ref(&kept));
    {
        let writer = store.writer().expect("writer");
        let data = text(99, 8192);
        writer.put_run(&[(ChunkId::of(&data), &data[..])]).expect("put");
        // Killed before commit: the pack with its frame stays; no run names it.
    }
    let report = store.gc().expect("gc");
    assert_eq!(report.staging_removed, 1);
    assert_eq!(report.chunks_kept, 4);
    assert_eq!(frames(&store).iter().map(|f| f.chunks.len()).sum::<usize>(), 4);
    assert!(store.verify().expect("verify").is_ok());
}

/// Flips a byte in the middle of the stored bytes of the frame holding `data`.
fn damage_frame_of(store: &Store, data: &[u8]) -> Vec<ChunkId> {
    let id = ChunkId::of(data);
    let loc = Index::load(&store.index_dir())
        .expect("index")
        .get(&id)
        .expect("read")
        .expect("indexed");
    let path = pack_path(&store.packs_dir(), loc.pack);
    let mut bytes = fs::read(&path).expect("pack");
    let at = loc.offset as usize + loc.start as usize + 1 + loc.chunk_len as usize / 2;
    let at = if bytes.get(loc.offset as usize) == Some(&chunk::TAG_RAW) {
        at
    } else {
        loc.offset as usize + loc.len as usize / 2
    };
    bytes[at] ^= 0x20;
    fs::write(&path, bytes).expect("write pack");
    frames(store)
        .into_iter()
        .find(|f| f.offset == loc.offset)
        .map(|f| f.chunks.iter().map(|c| c.0).collect())
        .expect("the frame")
}

#[test]
fn a_damaged_compressed_frame_is_an_error_naming_the_chunk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path().join("s")).expect("store");
    let run: Vec<Vec<u8>> = (0..8).map(|i| text(i, 16 * 1024)).collect();
    commit_image(&store, "a", std::slice::from_ref(&run));
    let in_frame = damage_frame_of(&store, &run[3]);
    let reader = store.reader().expect("reader");
    for data in &run {
        let id = ChunkId::of(data);
        match reader.get(&id) {
            Err(Error::ChunkCorrupt { chunk, .. }) => assert_eq!(chunk, id.to_hex()),
            Ok(got) => assert_eq!(got.as_ref(), Some(data), "wrong bytes returned"),
            Err(other) => panic!("unexpected error {other}"),
        }
    }
    let report = store.verify().expect("verify runs");
    assert!(!report.corrupt.is_empty());
    assert!(
        report
            .corrupt
            .iter()
            .all(|c| in_frame.iter().any(|id| id.to_hex() == *c))
    );
    // gc refuses to carry a damaged frame's chunks over, and removes nothing.
    commit_image(&store, "b", &[vec![run[0].clone()]]);
    store.remove_image("a").expect("rm");
    let before = packs_bytes(&store);
    assert!(store.gc().is_err());
    assert_eq!(packs_bytes(&store), before);
}

#[test]
fn a_damaged_raw_frame_spoils_only_the_chunk_holding_the_byte() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path().join("s")).expect("store");
    let run: Vec<Vec<u8>> = (0..8).map(|i| random(i, 16 * 1024)).collect();
    commit_image(&store, "a", std::slice::from_ref(&run));
    // A raw frame's bytes are the chunks themselves: damage the middle of chunk 5.
    let id = ChunkId::of(&run[5]);
    let loc = Index::load(&store.index_dir())
        .expect("index")
        .get(&id)
        .expect("read")
        .expect("indexed");
    let path = pack_path(&store.packs_dir(), loc.pack);
    let mut bytes = fs::read(&path).expect("pack");
    assert_eq!(bytes[loc.offset as usize], chunk::TAG_RAW);
    bytes[loc.offset as usize + 1 + loc.start as usize + 100] ^= 1;
    fs::write(&path, bytes).expect("write pack");
    let report = store.verify().expect("verify runs");
    assert_eq!(report.corrupt, vec![id.to_hex()]);
    let reader = store.reader().expect("reader");
    assert!(matches!(reader.get(&id), Err(Error::ChunkCorrupt { .. })));
    assert_eq!(reader.get(&ChunkId::of(&run[4])).expect("get").as_ref(), Some(&run[4]));
}

#[test]
fn a_store_of_the_previous_format_is_refused_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("s");
    Store::open(&root).expect("store");
    fs::write(root.join(MARKER), "fog content-addressed store, format 2 (packs)\n").expect("marker");
    let err = Store::open(&root).expect_err("old format");
    let message = err.to_string();
    assert!(
        message.contains("format 2") && message.contains("format 3"),
        "{message}"
    );
}

#[test]
fn frames_go_as_stored_when_mostly_asked_for_and_cut_down_when_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path().join("s")).expect("store");
    let run: Vec<Vec<u8>> = (0..16).map(|i| text(i, 16 * 1024)).collect();
    commit_image(&store, "a", std::slice::from_ref(&run));
    let stored = frames(&store).remove(0).stored;
    let reader = store.reader().expect("reader");
    let mut ids: Vec<ChunkId> = run.iter().map(|d| ChunkId::of(d)).collect();
    ids.push(ChunkId::of(b"absent"));

    let whole = reader.frames(&ids).expect("frames");
    assert_eq!(whole.len(), 1);
    assert_eq!(whole[0].stored, stored, "a frame mostly asked for goes as stored");
    assert_eq!(whole[0].parts.len(), 16, "the absent id is in no part");
    let got = whole[0].chunks(&ids).expect("every chunk checks");
    assert_eq!(got.iter().map(|(_, d)| d.clone()).collect::<Vec<_>>(), run);

    // Two chunks of sixteen (and one of them twice): the frame is cut down to the two.
    let sparse = [ids[5], ids[9], ids[5]];
    let cut = reader.frames(&sparse).expect("frames");
    assert_eq!(cut.len(), 1);
    assert_eq!(chunk::decode_whole(&cut[0].stored).map(|p| p.len()), Ok(2 * 16 * 1024));
    let got = cut[0].chunks(&sparse).expect("every chunk checks");
    assert_eq!(got.len(), 3);
    assert_eq!(got[2], (ids[5], run[5].clone()));

    // A frame damaged in the pack reaches the receiver, whose check names a chunk of it.
    let in_frame = damage_frame_of(&store, &run[3]);
    let damaged = store
        .reader()
        .expect("reader")
        .frames(&ids)
        .expect("sent as stored, unchecked");
    match damaged[0].chunks(&ids) {
        Err(Error::ChunkCorrupt { chunk, .. }) => assert!(in_frame.iter().any(|id| id.to_hex() == chunk)),
        other => panic!("expected a corrupt chunk, got {other:?}"),
    }
}

#[test]
fn a_writer_past_its_memory_spills_and_still_stores_each_chunk_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path().join("s"))
        .expect("store")
        .with_memory_mib(MIN_MEMORY_MIB);
    let in_memory = store.budget.pending_entries();
    // Four times what the writer keeps in memory, then the first quarter again: those repeats
    // were spilled long before and must be found there, not stored twice.
    let unique = 4 * in_memory;
    let chunk = |n: usize| format!("chunk {n:>12} of a capture larger than memory").into_bytes();
    let mut runs: Vec<Vec<Vec<u8>>> = (0..unique)
        .step_by(16)
        .map(|s| (s..s + 16).map(chunk).collect())
        .collect();
    runs.extend(
        (0..in_memory)
            .step_by(16)
            .map(|s| (s..s + 16).map(chunk).collect::<Vec<_>>()),
    );
    let new = commit_image_with(&store, "big", &runs, |writer| {
        let spilled = fs::read_dir(&writer.staging)
            .expect("staging")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("spill-"))
            })
            .count();
        assert!(spilled > 0, "nothing was spilled");
    });
    assert_eq!(new, unique as u64);
    assert_eq!(store.stats().expect("stats").chunks, unique as u64);
    assert_eq!(
        fs::read_dir(store.root.join("tmp")).expect("tmp").count(),
        0,
        "spills removed at commit"
    );
    let reader = store.reader().expect("reader");
    for n in (0..unique).step_by(97) {
        assert_eq!(reader.get(&ChunkId::of(&chunk(n))).expect("get"), Some(chunk(n)));
    }
    assert!(store.verify().expect("verify").is_ok());
}

#[test]
fn commits_merge_runs_by_size_tier() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path().join("s")).expect("store");
    for image in 0..20u64 {
        let run: Vec<Vec<u8>> = (0..4).map(|i| text(image * 10 + i, 4096)).collect();
        commit_image(&store, &format!("i{image}"), &[run]);
        let runs = Index::load(&store.index_dir()).expect("index").runs().len();
        assert!(runs < TIER_RUNS, "{runs} runs after {} commits", image + 1);
    }
    // Tier 0 was merged at the 8th commit and again (with the 7 after) at the 15th: one merged
    // run and the 5 newest.
    let index = Index::load(&store.index_dir()).expect("index");
    assert_eq!(index.runs().len(), 1 + 5);
    assert_eq!(store.stats().expect("stats").chunks, 80);
    assert!(store.verify().expect("verify").is_ok());
}

#[test]
fn readers_load_the_index_while_commits_compact_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path().join("s")).expect("store");
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let committer = scope.spawn(|| {
            for image in 0..120u64 {
                let run: Vec<Vec<u8>> = (0..2).map(|i| text(image * 10 + i, 2048)).collect();
                commit_image(&store, &format!("i{image}"), &[run]);
            }
            done.store(true, Ordering::Relaxed);
        });
        let mut loads = 0u64;
        while !done.load(Ordering::Relaxed) {
            // Each load lists the runs and opens them while commits merge and remove runs.
            let reader = store.reader().expect("a load while runs are replaced");
            assert!(reader.index.runs().len() < 2 * TIER_RUNS);
            loads += 1;
        }
        committer.join().expect("committer");
        assert!(loads > 0);
    });
    assert_eq!(store.stats().expect("stats").chunks, 240);
}
