//! The boot environment: the kernel and initramfs a host boots to run the agent
//! (`fog bootenv build`). The initramfs holds busybox, the `fog` binary with the shared
//! libraries it needs, the NIC and disk drivers of the kernel (with what they depend on, in load
//! order) and an `/init` that takes a lease on every card and runs what `fog.action=` says
//! (see `init.sh`). It is a cpio (newc) archive written here, zstd-compressed (Debian kernels
//! have `CONFIG_RD_ZSTD`), the same bytes for the same inputs.

pub mod cpio;
pub mod kmod;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::error::{Error, IoContext, Result};
use crate::fsutil::{DEFAULT_MODE, write_durably, write_durably_with};
use cpio::{Archive, Entry};

/// `/init`: mounts, modules, DHCP, then the action of the kernel command line.
pub const INIT_SCRIPT: &str = include_str!("init.sh");
/// udhcpc's hook: address, default route, DNS.
pub const UDHCPC_SCRIPT: &str = include_str!("udhcpc.script");

/// The filesystem tools a resizing deploy runs on the host (see [`crate::imaging::resize`]),
/// carried from the build machine's Debian packages (e2fsprogs, ntfs-3g, xfsprogs, btrfs-progs)
/// with their libraries.
pub const RESIZE_TOOLS: &[&str] = &["e2fsck", "resize2fs", "ntfsresize", "ntfsfix", "xfs_growfs", "btrfs"];

/// What to build from; unset fields are found on this system.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Where `vmlinuz` and `initrd.img` go.
    pub out: PathBuf,
    /// The kernel (default: the newest `/boot/vmlinuz-*`).
    pub kernel: Option<PathBuf>,
    /// Its module tree (default: `/lib/modules/<version of the kernel's file name>`).
    pub modules: Option<PathBuf>,
    /// busybox (default: `busybox` on PATH, else `/bin/busybox`); a dynamic one brings its libraries.
    pub busybox: Option<PathBuf>,
    /// The `fog` binary (default: the running executable).
    pub fog: Option<PathBuf>,
    /// Modules to carry (default: [`kmod::DEFAULT_MODULES`]).
    pub module_names: Option<Vec<String>>,
    /// Keep the debug sections of `fog` (by default they are stripped when `strip` is on PATH).
    pub no_strip: bool,
    /// zstd level (default 9).
    pub level: Option<i32>,
    /// Where kernels are looked for (default `/boot`) and module trees (default `/lib/modules`).
    pub search: Option<(PathBuf, PathBuf)>,
}

/// What was built.
#[derive(Debug, Clone, Serialize)]
pub struct BuildReport {
    /// The kernel written (`OUT/vmlinuz`) and where it came from.
    pub kernel: PathBuf,
    /// Its source.
    pub kernel_source: PathBuf,
    /// Kernel bytes.
    pub kernel_bytes: u64,
    /// The kernel carries an Authenticode signature (Debian's signed kernels do): the signed
    /// chain (shim, GRUB) boots it with Secure Boot on. It is copied unchanged.
    pub kernel_signed: bool,
    /// Modules carried without a signature: a kernel locked down by Secure Boot refuses them.
    pub unsigned_modules: Vec<String>,
    /// The initramfs written (`OUT/initrd.img`).
    pub initrd: PathBuf,
    /// Its compressed size.
    pub initrd_bytes: u64,
    /// The archive before compression.
    pub uncompressed_bytes: u64,
    /// Files, links and directories in it.
    pub entries: usize,
    /// The module tree used.
    pub module_dir: PathBuf,
    /// Modules carried, in load order.
    pub modules: Vec<String>,
    /// Requested modules built into this kernel.
    pub builtin: Vec<String>,
    /// Requested modules this kernel does not have.
    pub missing: Vec<String>,
    /// busybox used, and whether it is static.
    pub busybox: PathBuf,
    /// True when busybox needs no shared libraries.
    pub busybox_static: bool,
    /// The fog binary used.
    pub fog: PathBuf,
    /// True when its debug sections were stripped.
    pub fog_stripped: bool,
    /// Shared libraries copied (for fog, busybox and the tools).
    pub libraries: Vec<PathBuf>,
    /// The resize tools carried ([`RESIZE_TOOLS`] found on this machine).
    pub tools: Vec<PathBuf>,
    /// The resize tools not installed here: deploys from this environment keep those
    /// filesystems' sizes.
    pub tools_missing: Vec<String>,
    /// Seconds the build took.
    pub seconds: f64,
}

/// True when `image` is a PE file (an EFI-stub kernel) whose certificate table (data directory
/// 4, where Authenticode signatures live) is not empty.
pub fn pe_is_signed(image: &[u8]) -> bool {
    let u16_at = |at: usize| image.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |at: usize| {
        image
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let Some(pe) = u32_at(0x3c).map(|v| v as usize) else {
        return false;
    };
    if image.get(pe..pe + 4) != Some(b"PE\0\0") {
        return false;
    }
    let optional = pe + 4 + 20;
    let directories = match u16_at(optional) {
        Some(0x10b) => optional + 96,  // PE32
        Some(0x20b) => optional + 112, // PE32+
        _ => return false,
    };
    let certificates = directories + 4 * 8;
    u32_at(certificates + 4).is_some_and(|size| size > 0)
}

/// Compares version strings the way `sort -V` does for kernel names: digit runs as numbers.
fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn parts(s: &str) -> Vec<(bool, String)> {
        let mut out: Vec<(bool, String)> = Vec::new();
        for c in s.chars() {
            let digit = c.is_ascii_digit();
            match out.last_mut() {
                Some((d, run)) if *d == digit => run.push(c),
                _ => out.push((digit, c.to_string())),
            }
        }
        out
    }
    let (pa, pb) = (parts(a), parts(b));
    for (x, y) in pa.iter().zip(pb.iter()) {
        let ord = match (x, y) {
            ((true, x), (true, y)) => {
                let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
                x.len().cmp(&y.len()).then_with(|| x.cmp(y))
            }
            ((_, x), (_, y)) => x.cmp(y),
        };
        if ord.is_ne() {
            return ord;
        }
    }
    pa.len().cmp(&pb.len())
}

/// The newest `vmlinuz-<version>` in `boot` and the module tree of that version under
/// `modules_root`.
pub fn find_kernel(boot: &Path, modules_root: &Path) -> Result<(PathBuf, PathBuf)> {
    let mut versions: Vec<String> = std::fs::read_dir(boot)
        .map_err(|e| Error::io(boot, e))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("vmlinuz-").map(str::to_string))
        .collect();
    versions.sort_by(|a, b| version_cmp(a, b));
    let version = versions.pop().ok_or_else(|| {
        Error::invalid(
            "kernel",
            boot.join("vmlinuz-*").display().to_string(),
            "no kernel found (install linux-image-amd64, or pass --kernel PATH --modules DIR)",
        )
    })?;
    Ok((boot.join(format!("vmlinuz-{version}")), modules_root.join(version)))
}

/// The shared libraries `binary` needs, as `ldd` prints them (the loader included); empty for
/// a static binary. A library ldd cannot find is an error naming it.
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = std::process::Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|e| Error::invalid("binary", binary.display().to_string(), format!("cannot run ldd: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    parse_ldd(&text).map_err(|lib| {
        Error::invalid(
            "binary",
            binary.display().to_string(),
            format!("needs {lib}, which ldd cannot find"),
        )
    })
}

/// The library paths of `ldd` output; `Err(name)` for a library marked `not found`.
pub fn parse_ldd(text: &str) -> std::result::Result<Vec<PathBuf>, String> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim) {
        let path = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    return Err(name.trim().to_string());
                }
                rest.split_whitespace().next().unwrap_or("")
            }
            None => line.split_whitespace().next().unwrap_or(""),
        };
        // linux-vdso.so.1 has no file; "not a dynamic executable" and "statically linked" none.
        if path.starts_with('/') && !libs.iter().any(|l: &PathBuf| l == Path::new(path)) {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::invalid(what, path.display().to_string(), e.to_string()))
}

fn find_busybox() -> Result<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("busybox")).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/bin/busybox")])
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::invalid(
                "busybox",
                "busybox",
                "not on PATH nor /bin/busybox (install busybox-static, or pass --busybox PATH)",
            )
        })
}

/// `fog` without its debug sections, through `strip` when it is installed; `None` otherwise.
fn stripped(fog: &Path, work: &Path) -> Option<Vec<u8>> {
    let out = work.join("fog.stripped");
    let status = std::process::Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&out)
        .arg(fog)
        .status()
        .ok()?;
    let bytes = status.success().then(|| std::fs::read(&out).ok()).flatten();
    let _ = std::fs::remove_file(&out);
    bytes
}

/// Builds `vmlinuz` and `initrd.img` in `options.out`.
pub fn build(options: &BuildOptions) -> Result<BuildReport> {
    let started = Instant::now();
    let (kernel, module_dir) = match (&options.kernel, &options.modules) {
        (Some(k), Some(m)) => (k.clone(), m.clone()),
        (Some(k), None) => {
            let name = k.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let version = name.strip_prefix("vmlinuz-").ok_or_else(|| {
                Error::invalid(
                    "kernel",
                    k.display().to_string(),
                    "its name says no version (vmlinuz-VERSION): pass --modules DIR",
                )
            })?;
            (k.clone(), PathBuf::from("/lib/modules").join(version))
        }
        (None, modules) => {
            let (boot, root) = options
                .search
                .clone()
                .unwrap_or_else(|| (PathBuf::from("/boot"), PathBuf::from("/lib/modules")));
            let (k, m) = find_kernel(&boot, &root)?;
            (k, modules.clone().unwrap_or(m))
        }
    };
    let kernel_bytes = read(&kernel, "kernel")?;
    if !module_dir.is_dir() {
        return Err(Error::invalid(
            "module directory",
            module_dir.display().to_string(),
            "not a directory (pass --modules DIR, the kernel's /lib/modules/VERSION)",
        ));
    }
    let index = kmod::ModuleIndex::load(&module_dir)?;
    let wanted: Vec<String> = options
        .module_names
        .clone()
        .unwrap_or_else(|| kmod::DEFAULT_MODULES.iter().map(|s| s.to_string()).collect());
    let closure = index.closure(&wanted);

    let busybox = match &options.busybox {
        Some(b) => b.clone(),
        None => find_busybox()?,
    };
    let fog = match &options.fog {
        Some(f) => f.clone(),
        None => std::env::current_exe().map_err(|e| Error::io("the running fog executable", e))?,
    };

    let mut archive = Archive::new();
    for dir in [
        "dev", "proc", "sys", "run", "tmp", "etc", "root", "sbin", "usr/bin", "usr/sbin",
    ] {
        archive.add(dir, Entry::Dir(0o755));
    }
    // The kernel opens /dev/console before /init mounts devtmpfs.
    archive.add("dev/console", Entry::CharDev(0o600, 5, 1));
    archive.add("init", Entry::File(0o755, INIT_SCRIPT.as_bytes().to_vec()));
    archive.add(
        "etc/udhcpc/default.script",
        Entry::File(0o755, UDHCPC_SCRIPT.as_bytes().to_vec()),
    );
    archive.add("bin/busybox", Entry::File(0o755, read(&busybox, "busybox")?));
    archive.add("bin/sh", Entry::Symlink("busybox".into()));

    std::fs::create_dir_all(&options.out).map_err(|e| Error::io(&options.out, e))?;
    let fog_bytes = if options.no_strip {
        None
    } else {
        stripped(&fog, &options.out)
    };
    let fog_stripped = fog_bytes.is_some();
    let fog_bytes = match fog_bytes {
        Some(b) => b,
        None => read(&fog, "fog binary")?,
    };
    archive.add("bin/fog", Entry::File(0o755, fog_bytes));

    let busybox_libs = shared_libraries(&busybox)?;
    let busybox_static = busybox_libs.is_empty();
    let mut libraries = shared_libraries(&fog)?;
    for lib in busybox_libs {
        if !libraries.contains(&lib) {
            libraries.push(lib);
        }
    }
    let mut tools = Vec::new();
    let mut tools_missing = Vec::new();
    for name in RESIZE_TOOLS {
        match crate::tools::find_tool(name) {
            Some(path) => {
                archive.add(
                    &format!("usr/sbin/{name}"),
                    Entry::File(0o755, read(&path, "resize tool")?),
                );
                for lib in shared_libraries(&path)? {
                    if !libraries.contains(&lib) {
                        libraries.push(lib);
                    }
                }
                tools.push(path);
            }
            None => tools_missing.push(name.to_string()),
        }
    }
    libraries.sort();
    for lib in &libraries {
        // The loader path (/lib64/ld-linux-x86-64.so.2) is often a link: carry the file's bytes.
        let bytes = read(lib, "shared library")?;
        archive.add(&lib.to_string_lossy(), Entry::File(0o755, bytes));
    }

    let mut order = String::new();
    let mut unsigned_modules = Vec::new();
    for (name, rel) in &closure.load {
        let bytes = kmod::read_module(&module_dir.join(rel))?;
        if !kmod::is_signed(&bytes) {
            unsigned_modules.push(name.clone());
        }
        archive.add(&format!("lib/modules/{name}.ko"), Entry::File(0o644, bytes));
        order.push_str(name);
        order.push('\n');
    }
    archive.add("lib/modules/order", Entry::File(0o644, order.into_bytes()));

    // Each file whole or not at all: a node serving the old pair never sees half a file.
    let initrd = options.out.join("initrd.img");
    let vmlinuz = options.out.join("vmlinuz");
    let uncompressed_bytes = write_durably_with(&initrd, DEFAULT_MODE, |file| {
        let tmp = initrd.with_extension("tmp");
        let mut encoder = zstd::Encoder::new(file, options.level.unwrap_or(9)).at(&tmp)?;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
        encoder.multithread(threads).at(&tmp)?;
        let mut out = std::io::BufWriter::new(encoder);
        let n = archive.write_to(&mut out).at(&tmp)?;
        let encoder = out.into_inner().map_err(|e| Error::io(&tmp, e.into_error()))?;
        encoder.finish().at(&tmp)?.flush().at(&tmp)?;
        Ok(n)
    })?;
    write_durably(&vmlinuz, &kernel_bytes)?;
    let initrd_bytes = std::fs::metadata(&initrd).map_err(|e| Error::io(&initrd, e))?.len();

    Ok(BuildReport {
        kernel: vmlinuz,
        kernel_source: kernel,
        kernel_bytes: kernel_bytes.len() as u64,
        kernel_signed: pe_is_signed(&kernel_bytes),
        unsigned_modules,
        initrd,
        initrd_bytes,
        uncompressed_bytes,
        entries: archive.len(),
        module_dir,
        modules: closure.load.into_iter().map(|(n, _)| n).collect(),
        builtin: closure.builtin,
        missing: closure.missing,
        busybox,
        busybox_static,
        fog,
        fog_stripped,
        libraries,
        tools,
        tools_missing,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_every_library_and_the_loader() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd6b1f2000)\n\
            \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f0b4a5e0000)\n\
            \tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007f0b4a501000)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0b4a320000)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007f0b4b8e0000)\n";
        let libs = parse_ldd(text).expect("libs");
        assert_eq!(
            libs,
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libm.so.6",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        assert!(parse_ldd("\tnot a dynamic executable\n").expect("static").is_empty());
        assert_eq!(
            parse_ldd("\tlibfoo.so.2 => not found\n"),
            Err("libfoo.so.2".to_string())
        );
    }

    #[test]
    fn the_newest_kernel_wins_by_version_not_by_text() {
        let dir = tempfile::tempdir().expect("tempdir");
        for v in ["6.1.0-9-amd64", "6.1.0-10-amd64", "5.10.0-30-amd64"] {
            std::fs::write(dir.path().join(format!("vmlinuz-{v}")), b"k").expect("write");
        }
        std::fs::write(dir.path().join("config-6.9.0"), b"c").expect("write");
        let (k, m) = find_kernel(dir.path(), Path::new("/lib/modules")).expect("kernel");
        assert_eq!(k, dir.path().join("vmlinuz-6.1.0-10-amd64"));
        assert_eq!(m, Path::new("/lib/modules/6.1.0-10-amd64"));
        let empty = tempfile::tempdir().expect("tempdir");
        let e = find_kernel(empty.path(), Path::new("/lib/modules")).expect_err("none");
        assert!(
            e.to_string().contains("vmlinuz-*") && e.to_string().contains("--kernel"),
            "{e}"
        );
    }

    #[test]
    fn missing_inputs_are_errors_naming_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut options = BuildOptions {
            out: dir.path().join("out"),
            kernel: Some(dir.path().join("no-such-vmlinuz")),
            modules: Some(dir.path().to_path_buf()),
            ..BuildOptions::default()
        };
        let e = build(&options).expect_err("no kernel");
        assert!(e.to_string().contains("no-such-vmlinuz"), "{e}");
        std::fs::write(dir.path().join("vmlinuz-x"), b"k").expect("write");
        options.kernel = Some(dir.path().join("vmlinuz-x"));
        options.modules = Some(dir.path().join("no-modules"));
        let e = build(&options).expect_err("no modules");
        assert!(e.to_string().contains("no-modules"), "{e}");
        options.modules = Some(dir.path().to_path_buf());
        let e = build(&options).expect_err("no modules.dep");
        assert!(e.to_string().contains("modules.dep"), "{e}");
    }

    /// A real build from this system's kernel and modules (skipped without one): the archive
    /// holds /init, busybox with /bin/sh, the "fog" binary and its loader, and the virtio NIC
    /// driver after everything it needs.
    #[test]
    fn builds_from_this_systems_kernel() {
        let Ok((kernel, modules)) = find_kernel(Path::new("/boot"), Path::new("/lib/modules")) else {
            eprintln!("no kernel in /boot: skipped");
            return;
        };
        let Ok(busybox) = find_busybox() else {
            eprintln!("no busybox: skipped");
            return;
        };
        if !modules.join("modules.dep").is_file() {
            eprintln!("no {}: skipped", modules.display());
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let options = BuildOptions {
            out: dir.path().join("out"),
            kernel: Some(kernel.clone()),
            modules: Some(modules),
            busybox: Some(busybox.clone()),
            // Any dynamic binary stands in for fog here.
            fog: Some(busybox),
            module_names: Some(vec!["virtio_net".into(), "no_such_driver".into()]),
            no_strip: true,
            ..BuildOptions::default()
        };
        let report = build(&options).expect("build");
        assert_eq!(report.missing, ["no_such_driver"]);
        assert_eq!(report.modules.last().map(String::as_str), Some("virtio_net"));
        assert_eq!(
            std::fs::read(dir.path().join("out/vmlinuz")).expect("vmlinuz"),
            std::fs::read(&kernel).expect("kernel")
        );
        let packed = std::fs::read(dir.path().join("out/initrd.img")).expect("initrd");
        assert_eq!(packed.get(..4), Some(&[0x28, 0xb5, 0x2f, 0xfd][..]), "zstd magic");
        let entries = cpio::read(&zstd::decode_all(&packed[..]).expect("zstd")).expect("cpio");
        let find = |name: &str| entries.iter().find(|e| e.0 == name);
        assert_eq!(find("init").map(|e| e.2.as_slice()), Some(INIT_SCRIPT.as_bytes()));
        assert_eq!(find("bin/sh").map(|e| e.2.as_slice()), Some(&b"busybox"[..]));
        assert!(find("bin/fog").is_some_and(|e| e.1 & 0o111 != 0));
        assert!(find("dev/console").is_some_and(|e| e.1 & 0o170000 == 0o020000));
        assert!(find("etc/udhcpc/default.script").is_some());
        for lib in &report.libraries {
            assert!(
                find(lib.to_string_lossy().trim_start_matches('/')).is_some(),
                "{}",
                lib.display()
            );
        }
        let order = find("lib/modules/order").map(|e| String::from_utf8_lossy(&e.2).into_owned());
        let order: Vec<String> = order.unwrap_or_default().lines().map(str::to_string).collect();
        assert_eq!(order, report.modules);
        for m in &order {
            let ko = find(&format!("lib/modules/{m}.ko")).expect("module file");
            assert_eq!(ko.2.get(..4), Some(&b"\x7fELF"[..]), "{m} is a plain ELF object");
            // Carried as the kernel package signed it (decompressed, never stripped).
            assert_eq!(kmod::is_signed(&ko.2), !report.unsigned_modules.contains(m), "{m}");
        }
        // A distribution's kernel with its modules (Debian signs both) stays signed.
        if report.kernel_signed {
            assert!(report.unsigned_modules.is_empty(), "{:?}", report.unsigned_modules);
        }
    }

    #[test]
    fn signatures_are_recognised() {
        // A PE32+ header whose certificate directory (entry 4) has a size, and one without.
        let mut pe = vec![0u8; 512];
        pe[0..2].copy_from_slice(b"MZ");
        pe[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        pe[0x80..0x84].copy_from_slice(b"PE\0\0");
        let optional = 0x80 + 24;
        pe[optional..optional + 2].copy_from_slice(&0x20bu16.to_le_bytes());
        assert!(!pe_is_signed(&pe));
        let size_at = optional + 112 + 4 * 8 + 4;
        pe[size_at..size_at + 4].copy_from_slice(&1024u32.to_le_bytes());
        assert!(pe_is_signed(&pe));
        assert!(!pe_is_signed(b"MZ"));
        assert!(!pe_is_signed(
            b"\x7fELF not a PE file at all, and long enough to hold a header offset"
        ));
        assert!(kmod::is_signed(b"\x7fELF...~Module signature appended~\n"));
        assert!(!kmod::is_signed(b"\x7fELF..."));
        // This system's kernel, when it is a distribution's signed one.
        if let Ok((kernel, _)) = find_kernel(Path::new("/boot"), Path::new("/lib/modules"))
            && let Ok(bytes) = std::fs::read(&kernel)
            && osslsigncode_finds_a_signature(&kernel)
        {
            assert!(pe_is_signed(&bytes), "{}", kernel.display());
        }
    }

    /// `osslsigncode extract-signature` finds a signature (false without the tool).
    fn osslsigncode_finds_a_signature(file: &Path) -> bool {
        let out = std::env::temp_dir().join(format!("fog-sig-{}", std::process::id()));
        let found = std::process::Command::new("osslsigncode")
            .args(["extract-signature", "-in"])
            .arg(file)
            .arg("-out")
            .arg(&out)
            .output()
            .is_ok_and(|o| o.status.success());
        let _ = std::fs::remove_file(&out);
        found
    }

    fn busybox() -> Option<&'static str> {
        ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .find(|p| Path::new(p).is_file())
    }

    /// The boot menu's "Join a multicast session": the name typed and the leased address make
    /// the receiver's command line (`fog` and `finish` stand in for the real ones).
    #[test]
    fn init_joins_the_session_named_at_the_console_on_the_leased_address() {
        let Some(busybox) = busybox() else {
            eprintln!("busybox not installed: skipped");
            return;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let init = dir.path().join("init");
        std::fs::write(&init, INIT_SCRIPT).expect("write");
        std::fs::write(dir.path().join("fog-ip-eth0"), "10.99.0.57\n").expect("write");
        let run = |typed: &str| {
            let out = std::process::Command::new(busybox)
                .args(["sh", "-c"])
                .arg(format!(
                    ". {}; fog() {{ echo \"fog $*\"; }}; finish() {{ echo \"finish $1\"; }}; sleep() {{ :; }}; \
                     FOG_DISK=largest; FOG_MASTER=http://10.99.0.1:8080; do_join < \"$1\"",
                    init.display()
                ))
                .arg("sh")
                .arg({
                    let input = dir.path().join("typed");
                    std::fs::write(&input, typed).expect("write");
                    input
                })
                .env("FOG_INIT_LIB", "1")
                .env("FOG_RUN", dir.path())
                .output()
                .expect("busybox sh");
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).to_string()
        };
        let named = run("win11\n");
        assert!(
            named.contains(
                "fog multicast receive --interface 10.99.0.57 --wait 600 --only-from 10.99.0.1 --session win11 \
                 --disk-rule largest\n"
            ),
            "{named}"
        );
        assert!(named.contains("finish reboot"), "{named}");
        let first = run("\n");
        assert!(
            first.contains(
                "fog multicast receive --interface 10.99.0.57 --wait 600 --only-from 10.99.0.1 --disk-rule largest\n"
            ),
            "{first}"
        );
    }

    /// The init's command-line parser, run by busybox sh as the boot environment runs it.
    #[test]
    fn init_reads_fog_arguments_from_the_command_line() {
        let Some(busybox) = busybox() else {
            eprintln!("busybox not installed: skipped");
            return;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let init = dir.path().join("init");
        std::fs::write(&init, INIT_SCRIPT).expect("write");
        let cmdline = "initrd=initrd.img console=tty0 console=ttyS0,115200n8 fog.master=http://10.0.0.1:8080 \
            fog.node=site-a fog.task=42 fog.action=deploy fog.mac=52:54:00:12:34:56 fog.token=fogt_42_ab=c \
            fog.image=win11 quiet fog.disk=/dev/nvme0n1 fog.unknown=x *";
        let out = std::process::Command::new(busybox)
            .args(["sh", "-c"])
            .arg(format!(
                ". {}; parse_cmdline \"$1\"; echo \"$FOG_MASTER|$FOG_NODE|$FOG_TASK|$FOG_ACTION|$FOG_MAC|$FOG_TOKEN|$FOG_IMAGE|$FOG_DISK\"",
                init.display()
            ))
            .arg("sh")
            .arg(cmdline)
            .env("FOG_INIT_LIB", "1")
            .output()
            .expect("busybox sh");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "http://10.0.0.1:8080|site-a|42|deploy|52:54:00:12:34:56|fogt_42_ab=c|win11|/dev/nvme0n1"
        );
    }
}
