"""Huge pages for XLA's host buffers (Linux, glibc): a launch restarts itself once with them on.

XLA:CPU allocates each call's temporaries as one block (430 MB for the `tiny` preset's training
step at batch 8 x 256, 4 GB for `small`'s) with `posix_memalign`, and frees it when the call
ends. glibc serves a block that large with a fresh `mmap` and unmaps it on free, so every call
page-faults all its temporaries in again, 4 KiB at a time: 110k faults per `tiny` training
step, about a third of its time (bench/README.md). glibc's `glibc.malloc.hugetlb=1` tunable
makes it map such blocks with transparent huge pages (`madvise`), 2 MiB per fault: `tiny`'s
step 0.27 -> 0.19 s. The cost is in the first call of a large step (`small`: +5 s), while the
kernel assembles the 2 MiB pages.

glibc reads tunables only when a process starts, so `reexec_with_huge_pages` restarts the
process once, the same command with `GLIBC_TUNABLES` set. Launch scripts call it first thing.
A `glibc.malloc.hugetlb` the caller already set is kept, so
`GLIBC_TUNABLES=glibc.malloc.hugetlb=0` turns this off. Nothing happens on other C libraries,
other systems, or where transparent huge pages are off.
"""

from __future__ import annotations

import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb"
TRANSPARENT_HUGE_PAGES = "/sys/kernel/mm/transparent_hugepage/enabled"


def transparent_huge_pages_mode(path: str = TRANSPARENT_HUGE_PAGES) -> str:
  """The kernel's mode, the bracketed word of e.g. "always [madvise] never"; "" if unknown."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return ""
  start, end = text.find("["), text.find("]")
  return text[start + 1:end] if 0 <= start < end else ""


def environment_with_huge_pages(environ, *, system: str = sys.platform,
                                libc: str | None = None, thp_mode: str | None = None):
  """`environ` plus the tunable, or None where there is nothing to do (see the module doc)."""
  libc = platform.libc_ver()[0] if libc is None else libc
  thp_mode = transparent_huge_pages_mode() if thp_mode is None else thp_mode
  if not system.startswith("linux") or libc != "glibc" or thp_mode not in ("madvise", "always"):
    return None
  tunables = environ.get("GLIBC_TUNABLES", "")
  if TUNABLE in tunables:
    return None
  environment = dict(environ)
  environment["GLIBC_TUNABLES"] = f"{tunables}:{TUNABLE}=1" if tunables else f"{TUNABLE}=1"
  return environment


def reexec_with_huge_pages() -> None:
  """Restarts this process with `glibc.malloc.hugetlb=1` unless it has it (or cannot use it).

  Call it first thing in a script's `__main__`, before any work or thread: the process is
  replaced by the same command line (same pid, arguments and interpreter flags). Under a
  debugger or tracer (`sys.gettrace()`) it does nothing, so a breakpoint session is not restarted.
  """
  if sys.gettrace() is not None or not sys.orig_argv:
    return   # under a debugger or tracer (which a restart would drop), or an embedded interpreter
  environment = environment_with_huge_pages(os.environ)
  if environment is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, sys.orig_argv, environment)
