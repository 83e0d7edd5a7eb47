"""Serial console filter: each line prefixed with the seconds since start, ANSI codes removed."""
import re
import sys
import time

start = time.monotonic()
noise = re.compile(rb"\x1b\[[0-9;?]*[a-zA-Z]|\x1bc|\x08|\r")
for line in sys.stdin.buffer:
    text = noise.sub(b"", line).strip()
    if text:
        print(f"[{time.monotonic() - start:7.2f}] {text.decode(errors='replace')}", flush=True)
