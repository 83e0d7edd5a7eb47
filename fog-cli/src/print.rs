//! Output of each command, as text for people or JSON for scripts.

use fogcore::demo::DemoReport;
use fogcore::imaging::capture::CaptureReport;
use fogcore::imaging::deploy::DeployReport;
use fogcore::imaging::manifest::Header;
use fogcore::imaging::store::{GcReport, ImageSummary, StoreStats, VerifyReport};

/// `println!` that ignores a closed stdout (`fog image ls | head`) instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

pub struct Out {
    pub json: bool,
}

pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn rate(bytes: u64, seconds: f64) -> String {
    format!("{:.0} MiB/s", bytes as f64 / (1024.0 * 1024.0) / seconds.max(1e-9))
}

impl Out {
    fn json(&self, value: &impl serde::Serialize) -> bool {
        if self.json {
            match serde_json::to_string_pretty(value) {
                Ok(text) => say!("{text}"),
                Err(e) => eprintln!("fog: cannot format output: {e}"),
            }
        }
        self.json
    }

    pub fn done(&self, message: &str) {
        if !self.json(&serde_json::json!({ "ok": true, "message": message })) {
            say!("{message}");
        }
    }

    pub fn capture(&self, r: &CaptureReport) {
        if self.json(r) {
            return;
        }
        print_capture(r);
    }

    pub fn deploy(&self, r: &DeployReport) {
        if self.json(r) {
            return;
        }
        print_deploy(r);
    }

    pub fn multicast_send(&self, r: &fogcore::net::multicast::SendReport) {
        if self.json(r) {
            return;
        }
        let done = r.receivers.iter().filter(|x| x.done).count();
        say!(
            "sent {} to {done} of {} receivers in {:.1} s (waited {:.1} s): {} objects, {} of payload, {} on the wire ({:.3}x), {} repairs, {} objects again, {} over HTTP",
            r.image,
            r.receivers.len(),
            r.send_seconds,
            r.wait_seconds,
            r.objects,
            mib(r.payload_bytes),
            mib(r.bytes_sent),
            r.bytes_sent as f64 / r.payload_bytes.max(1) as f64,
            r.repairs,
            r.objects_resent,
            r.http_objects
        );
        for x in r.receivers.iter().filter(|x| x.lost) {
            say!(
                "receiver {} stopped reporting ({:?}, {} objects placed)",
                x.receiver,
                x.mode,
                x.placed
            );
        }
    }

    pub fn multicast_receive(&self, r: &fogcore::net::multicast::ReceiveReport) {
        if self.json(r) {
            return;
        }
        say!(
            "received {} objects ({} multicast, {} HTTP; mode {:?}), {} NAKs, {} bad packets",
            r.objects,
            r.from_multicast,
            r.from_http,
            r.mode,
            r.naks,
            r.bad_packets
        );
        print_deploy(&r.deploy);
    }

    pub fn images(&self, images: &[ImageSummary]) {
        if self.json(&images) {
            return;
        }
        say!(
            "{:<24} {:>12} {:>12} {:>9} {:>6}",
            "NAME",
            "DISK",
            "DATA",
            "CHUNKS",
            "TABLE"
        );
        for i in images {
            say!(
                "{:<24} {:>12} {:>12} {:>9} {:>6}",
                i.name,
                mib(i.disk_size),
                mib(i.data_bytes),
                i.chunk_count,
                i.table
            );
        }
    }

    pub fn info(&self, h: &Header) {
        if self.json(h) {
            return;
        }
        say!("image      {}", h.name);
        say!("source     {}", h.source);
        say!(
            "disk       {} ({} bytes), {:?} table, {}-byte sectors",
            mib(h.layout.disk_size),
            h.layout.disk_size,
            h.layout.table,
            h.layout.sector_size
        );
        say!("data       {} in {} chunks", mib(h.data_bytes), h.chunk_count);
        for p in &h.layout.partitions {
            say!(
                "partition  {:>2}  start {:>12}  size {:>12}  type {} {}",
                p.number,
                p.offset,
                mib(p.len),
                p.type_id,
                p.name
            );
        }
        for r in &h.regions {
            let what = r
                .partition
                .map_or("outside partitions".to_string(), |n| format!("partition {n}"));
            let min = match (r.shrunk, r.min_len) {
                (true, _) => format!(", shrunk copy of {}", mib(r.len)),
                (false, Some(m)) => format!(", fits in {}", mib(m)),
                (false, None) => String::new(),
            };
            say!(
                "region     {what:<20} {:<5} used {}{min}",
                r.filesystem.label(),
                mib(r.used_bytes)
            );
        }
    }

    pub fn gc(&self, r: &GcReport) {
        if !self.json(r) {
            say!(
                "gc: removed {} chunks ({}), kept {}, cleared {} interrupted captures; peak memory {}",
                r.chunks_removed,
                mib(r.bytes_freed),
                r.chunks_kept,
                r.staging_removed,
                mib(r.peak_memory_bytes)
            );
        }
    }

    pub fn store_verify(&self, r: &VerifyReport) {
        if self.json(r) {
            return;
        }
        say!(
            "checked {} chunks and {} images; peak memory {}",
            r.chunks_checked,
            r.images_checked,
            mib(r.peak_memory_bytes)
        );
        for c in &r.corrupt {
            say!("corrupt chunk {c}");
        }
        for e in &r.image_errors {
            say!("{e}");
        }
        if r.is_ok() {
            say!("store is intact");
        }
    }

    pub fn stats(&self, s: &StoreStats) {
        if !self.json(s) {
            say!(
                "{} images, {} chunks, {} stored for {} of image data (x{:.2})",
                s.images,
                s.chunks,
                mib(s.stored_bytes),
                mib(s.logical_bytes),
                s.ratio()
            );
        }
    }

    pub fn demo(&self, r: &DemoReport) {
        if self.json(r) {
            return;
        }
        say!(
            "built sample disk {} (GPT: FAT32 EFI partition + ext4 with files)",
            r.source
        );
        print_capture(&r.capture);
        print_deploy(&r.deploy);
        say!("re-captured the deployed disk as {}:", r.recapture.name);
        print_capture(&r.recapture);
        self.stats(&r.store);
    }
}

fn print_capture(r: &CaptureReport) {
    say!(
        "captured {} -> image {}: {} disk, {} table, {} of used data in {:.2}s ({})",
        r.source,
        r.name,
        mib(r.disk_size),
        r.table,
        mib(r.data_bytes),
        r.seconds,
        rate(r.data_bytes, r.seconds)
    );
    for region in &r.regions {
        let what = region
            .partition
            .map_or("outside partitions".to_string(), |n| format!("partition {n}"));
        say!(
            "  {what:<20} {:<5} {} used of {}",
            region.filesystem,
            mib(region.used_bytes),
            mib(region.size)
        );
    }
    say!(
        "  {} chunks, {} new, {} added to the store ({:.1}% of the data); peak memory {}",
        r.chunks,
        r.new_chunks,
        mib(r.new_stored_bytes),
        100.0 * r.new_stored_bytes as f64 / (r.data_bytes.max(1)) as f64,
        mib(r.peak_memory_bytes)
    );
    for m in &r.minimum_sizes {
        say!(
            "  partition {} ({}) fits in {} (of {}): shrunk copy worked out in {:.1}s",
            m.partition,
            m.filesystem,
            mib(m.min_len),
            mib(m.len),
            m.seconds
        );
    }
    if let Some(e) = &r.minimum_sizes_error {
        say!("  minimum sizes not worked out ({e}): deploys need a disk of at least the source's size");
    }
}

fn print_deploy(r: &DeployReport) {
    say!(
        "deployed image {} -> {}: {} of data, {} written in {:.2}s ({}){}; peak memory {}",
        r.name,
        r.target,
        mib(r.data_bytes),
        mib(r.bytes_written),
        r.seconds,
        rate(r.data_bytes, r.seconds),
        if r.verified { ", read back and verified" } else { "" },
        mib(r.peak_memory_bytes)
    );
    say!(
        "  layout {}{}",
        r.layout,
        r.layout_note.as_ref().map(|n| format!(" ({n})")).unwrap_or_default()
    );
    for p in &r.partitions {
        let change = match (&p.fixed, p.resize, p.from_shrunk) {
            (Some(why), _, _) => format!("kept: {why}"),
            (None, Some(tool), true) => format!("from its shrunk copy, {} to fit", tool.tool()),
            (None, Some(tool), false) => format!("{} to fit", tool.tool()),
            (None, None, _) => "as captured".into(),
        };
        say!(
            "  partition {:>2} {:<5} {} -> {} at {}  {change}",
            p.number,
            p.filesystem,
            mib(p.source_len),
            mib(p.len),
            p.offset
        );
    }
    if r.partitions.iter().any(|p| p.resize.is_some()) {
        say!("  filesystem tools took {:.2}s", r.resize_seconds);
    }
}

/// `fog agent inventory` as text: what an operator reads on the console (the boot menu's
/// "system information").
pub fn inventory(inv: &fogcore::agent::inventory::Inventory) {
    let or = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    say!("vendor:   {}", or(&inv.dmi.vendor));
    say!("product:  {}", or(&inv.dmi.product));
    say!("serial:   {}", or(&inv.dmi.serial));
    say!("uuid:     {}", or(&inv.dmi.uuid));
    say!("cpu:      {} x {}", inv.cpu.count, or(&inv.cpu.model));
    say!("memory:   {}", inv.memory_bytes.map(mib).unwrap_or_else(|| "-".into()));
    for d in &inv.disks {
        say!(
            "disk:     {} {} {}{}",
            d.path.display(),
            mib(d.size_bytes),
            or(&d.model),
            if d.removable { " (removable)" } else { "" }
        );
    }
    for n in &inv.nics {
        let speed = n.speed_mbps.map(|s| format!(" {s} Mbit/s")).unwrap_or_default();
        say!("nic:      {} {}{speed}", n.name, n.mac);
    }
}
