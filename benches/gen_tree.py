#!/usr/bin/env python3
"""Deterministic generator of a Linux-install-like file tree for the imaging benchmark.

  gen_tree.py tree OUT --mb N [--variant V]   write the tree (variant 0 is the base system)
  gen_tree.py mutate OUTDIR CMDS --mb N    modified copies of ~1% of the base files and ~5 new
                                          files, plus the debugfs commands that put them in place

Everything follows from the fixed seeds below and N: the same N gives the same bytes.
"""
import argparse
import os
import random
import sys

SEED = 20240601
MTIME = 1717200000  # fixed times, so that mkfs gives the same bytes every run
TEXT_KINDS = ("conf", "src", "log", "doc", "locale")


def vocabulary():
    rng = random.Random(SEED ^ 0x5EED)
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    weights = [12, 9, 8, 8, 7, 7, 6, 6, 6, 4, 4, 3, 3, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1]
    words = set()
    while len(words) < 6000:
        words.add("".join(rng.choices(letters, weights, k=rng.randint(2, 11))))
    words = sorted(words)
    rng.shuffle(words)
    words += ["=", "{", "}", "();", "0", "1", "true", "false", "/usr/lib", "#", "return", "if", "None", "self"]
    # Zipf-like frequencies: a few words are very common, most are rare.
    cum, total = [], 0.0
    for i in range(len(words)):
        total += 1.0 / (i + 8)
        cum.append(total)
    return words, cum


WORDS, CUM = vocabulary()
DAEMONS = ["systemd", "kernel", "sshd", "cron", "dbus-daemon", "NetworkManager", "rsyslogd", "dhclient", "apt", "snapd"]


_VOCABS = {}


def vocab(kind):
    """65536 tokens for one kind of text: Zipf-distributed words and, about one in ten, a line
    start in the style of the kind (log prefix, config key, indentation)."""
    if kind not in _VOCABS:
        rng = random.Random(SEED + TEXT_KINDS.index(kind))
        words = rng.choices(WORDS, cum_weights=CUM, k=65536)
        starts = []
        for _ in range(4096):
            if kind == "log":
                starts.append("\n2024-%02d-%02dT%02d:%02d:%02d host %s[%d]:" % (
                    rng.randint(1, 12), rng.randint(1, 28), rng.randint(0, 23), rng.randint(0, 59),
                    rng.randint(0, 59), rng.choice(DAEMONS), rng.randint(1, 40000)))
            elif kind == "conf":
                starts.append("\n%s =" % rng.choice(WORDS[:2000]) if rng.random() < 0.8 else "\n#")
            elif kind == "src":
                starts.append("\n" + "    " * rng.randint(0, 3))
            elif kind == "locale":
                starts.append("\n%d\t" % rng.randint(0, 65535))
            else:
                starts.append("\n" if rng.random() < 0.8 else "\n\n")
        _VOCABS[kind] = [rng.choice(starts) if rng.random() < 0.1 else " " + w for w in words]
    return _VOCABS[kind]


def text_lines(rng, nbytes, kind):
    """nbytes of text of the given kind (ends with a newline)."""
    tokens = vocab(kind)
    parts, size = [], 0
    while size < nbytes:
        idx = memoryview(rng.randbytes(2 * ((nbytes - size) // 6 + 64))).cast("H")
        piece = "".join([tokens[i] for i in idx]).encode()
        parts.append(piece)
        size += len(piece)
    return (b"".join(parts)[:max(nbytes - 1, 0)].lstrip(b"\n") + b"\n").rjust(nbytes, b" ")


def content(kind, size, seed):
    rng = random.Random(seed)
    if kind in TEXT_KINDS:
        return text_lines(rng, size, kind)
    return rng.randbytes(size)  # binaries, compressed docs, archives: incompressible


def lognormal_size(rng, median, sigma, lo, hi):
    return int(min(hi, max(lo, rng.lognormvariate(0, sigma) * median)))


def plan(total, variant=0):
    """The file list: (path, kind, size, seed), in a fixed order."""
    rng = random.Random(SEED)
    files = []
    seeds = iter(range(SEED * 1000, SEED * 1000 + 10_000_000))
    npkg = max(20, total // (4 << 20))
    pkgs = sorted({"".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(3, 9))) + ("-%d" % rng.randint(0, 9) if rng.random() < 0.2 else "") for _ in range(npkg)})

    def fill(budget, make):
        used = 0
        while used < budget:
            path, kind, size = make()
            size = min(size, max(budget - used, 1))
            files.append((path, kind, size, next(seeds)))
            used += size

    counter = [0]

    def uniq():
        counter[0] += 1
        return counter[0]

    # Configuration files under /etc: many small, compressible.
    fill(total * 10 // 100, lambda: ("/etc/%s/%s%d.conf" % (rng.choice(pkgs), rng.choice(WORDS[:400]), uniq()), "conf", lognormal_size(rng, 2500, 1.0, 60, 64 << 10)))
    # Documentation text and man-like pages.
    fill(total * 6 // 100, lambda: ("/usr/share/doc/%s/%s%d.txt" % (rng.choice(pkgs), rng.choice(WORDS[:400]), uniq()), "doc", lognormal_size(rng, 5000, 1.0, 100, 256 << 10)))
    # Compressed docs (.gz): small and incompressible.
    fill(total * 4 // 100, lambda: ("/usr/share/man/man%d/%s%d.%d.gz" % (rng.randint(1, 8), rng.choice(WORDS[:600]), uniq(), rng.randint(1, 8)), "gz", lognormal_size(rng, 2500, 0.8, 200, 64 << 10)))
    # Source files / scripts (python modules, headers).
    fill(total * 10 // 100, lambda: ("/usr/lib/python3/dist-packages/%s/%s%d.py" % (rng.choice(pkgs), rng.choice(WORDS[:400]), uniq()), "src", lognormal_size(rng, 8000, 1.0, 200, 512 << 10)))
    # Executables and shared libraries: random content.
    fill(total * 28 // 100, lambda: ((("/usr/bin/%s%d" % (rng.choice(WORDS[:800]), uniq())) if rng.random() < 0.4 else ("/usr/lib/x86_64-linux-gnu/lib%s.so.%d" % (rng.choice(WORDS[:800]), uniq()))), "bin", lognormal_size(rng, 60 << 10, 1.3, 4 << 10, 16 << 20)))
    # A few large logs (compressible).
    fill(total * 12 // 100, lambda: ("/var/log/%s%d.log" % (rng.choice(DAEMONS), uniq()), "log", lognormal_size(rng, 16 << 20, 0.6, 1 << 20, 64 << 20)))
    # A large compressible locale archive.
    files.append(("/usr/lib/locale/locale-archive", "locale", total * 8 // 100, next(seeds)))
    # A few large incompressible files: kernel, initrd, cached packages.
    fill(total * 12 // 100, lambda: (rng.choice(["/boot/initrd.img-%d", "/boot/vmlinuz-%d", "/var/cache/apt/archives/pkg%d.deb", "/opt/app/data%d.pak"]) % uniq(), "bin", lognormal_size(rng, 24 << 20, 0.7, 4 << 20, 96 << 20)))
    # Duplicates: the same file shipped twice (copies, not hard links).
    base = list(files)
    dup_budget, used = total * 10 // 100, 0
    while used < dup_budget:
        path, kind, size, seed = rng.choice(base)
        if size > dup_budget // 4:
            continue
        d, name = path.rsplit("/", 1)
        files.append(("/usr/share/%s/copy%d-%s" % (rng.choice(pkgs), uniq(), name), kind, size, seed))
        used += size

    if variant:
        vrng = random.Random(SEED + 7919 * variant)
        out = []
        for f in files:
            r = vrng.random()
            if r < 0.025:  # a package upgrade replaced it: new content, similar size
                out.append((f[0], f[1], max(1, int(f[2] * vrng.uniform(0.9, 1.1))), f[3] + 1_000_000_000 * variant))
            elif r < 0.05:  # a small edit (config change, log grew a few lines)
                out.append((f[0], f[1], f[2], ("edit", f[3], variant)))
            else:
                out.append(f)
        files = out
        # A few packages added.
        for p in range(3):
            name = "vpkg%d-%d" % (variant, p)
            budget = max(total // 400, 256 << 10)
            used = 0
            while used < budget:
                kind = vrng.choice(["bin", "bin", "src", "conf", "doc"])
                size = lognormal_size(vrng, 20 << 10, 1.2, 200, 4 << 20)
                d = {"bin": "/usr/lib/" + name, "src": "/usr/lib/python3/dist-packages/" + name, "conf": "/etc/" + name, "doc": "/usr/share/doc/" + name}[kind]
                files.append(("%s/f%d" % (d, uniq()), kind, size, vrng.randrange(1 << 60)))
                used += size
    return files


def edit(data, kind, rng):
    """A small change: a few lines replaced (text) or a few bytes rewritten (binary)."""
    if kind in TEXT_KINDS:
        lines = data.split(b"\n")
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(lines))
            lines[i] = text_lines(rng, rng.randint(20, 120), kind).rstrip(b"\n")
        if rng.random() < 0.5:
            lines.insert(rng.randrange(len(lines)), text_lines(rng, 60, kind).rstrip(b"\n"))
        return b"\n".join(lines)
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        n = min(len(data), rng.randint(8, 256))
        at = rng.randrange(len(data) - n + 1)
        data[at:at + n] = rng.randbytes(n)
    return bytes(data)


def materialise(spec):
    path, kind, size, seed = spec
    if isinstance(seed, tuple):
        _, base_seed, variant = seed
        return edit(content(kind, size, base_seed), kind, random.Random(base_seed * 31 + variant))
    return content(kind, size, seed)


def write_tree(out, files):
    made = set()
    for spec in files:
        full = out + spec[0]
        d = os.path.dirname(full)
        if d not in made:
            os.makedirs(d, exist_ok=True)
            made.add(d)
        with open(full, "wb") as fh:
            fh.write(materialise(spec))
        os.utime(full, (MTIME, MTIME))
    for d in sorted(made | {out}, key=len, reverse=True):
        while d.startswith(out):
            os.utime(d, (MTIME, MTIME))
            d = os.path.dirname(d)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["tree", "mutate"])
    ap.add_argument("out")
    ap.add_argument("cmds", nargs="?")
    ap.add_argument("--mb", type=int, required=True, help="size of the filesystem in MiB; the tree fills about half")
    ap.add_argument("--variant", type=int, default=0)
    args = ap.parse_args()
    total = args.mb * (1 << 20) // 2
    files = plan(total, args.variant)
    if args.mode == "tree":
        write_tree(args.out, files)
        print("%d files, %d bytes" % (len(files), sum(f[2] for f in files)))
        return
    # mutate: ~1% of the files get a small edit; ~5 new files appear.
    rng = random.Random(SEED + 1)
    chosen = rng.sample(range(len(files)), max(1, len(files) // 100))
    os.makedirs(args.out, exist_ok=True)
    changed = 0
    with open(args.cmds, "w") as cmds:
        for n, i in enumerate(sorted(chosen)):
            path, kind, size, seed = files[i]
            data = edit(content(kind, size, seed), kind, random.Random(seed + 17))
            local = os.path.join(args.out, "m%d" % n)
            with open(local, "wb") as fh:
                fh.write(data)
            cmds.write("rm %s\nwrite %s %s\n" % (path, local, path))
            changed += size
        new = [("/etc/newapp.conf", "conf", 2048), ("/var/log/newapp.log", "log", 256 << 10),
               ("/usr/share/doc/newapp/README", "doc", 64 << 10), ("/usr/bin/newapp", "bin", 1 << 20),
               ("/usr/lib/x86_64-linux-gnu/libnewapp.so.1", "bin", 128 << 10)]
        cmds.write("mkdir /usr/share/doc/newapp\n")
        for n, (path, kind, size) in enumerate(new):
            local = os.path.join(args.out, "n%d" % n)
            with open(local, "wb") as fh:
                fh.write(content(kind, size, SEED + 100 + n))
            cmds.write("write %s %s\n" % (local, path))
    print("%d files edited (%d bytes of files), %d new files" % (len(chosen), changed, len(new)))


if __name__ == "__main__":
    sys.exit(main())
