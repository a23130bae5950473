"""selfimprove/host_memory.py: the launch's one restart with glibc's huge-page tunable."""

import os
import subprocess
import sys

import pytest

from selfimprove.host_memory import (environment_with_huge_pages, transparent_huge_pages_mode)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINUX = dict(system="linux", libc="glibc", thp_mode="madvise")


def test_the_tunable_is_added_once_and_other_tunables_are_kept():
  assert environment_with_huge_pages({"A": "1"}, **LINUX) == {
      "A": "1", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
  assert environment_with_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, **LINUX) == {
      "GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"}
  # Set already: by the restart itself (no second restart), or by the user, who may opt out with 0.
  assert environment_with_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, **LINUX) is None
  assert environment_with_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, **LINUX) is None


@pytest.mark.parametrize("where", [dict(system="darwin"), dict(libc="musl"), dict(libc=""),
                                   dict(thp_mode="never"), dict(thp_mode="")])
def test_nothing_to_do_without_linux_glibc_and_transparent_huge_pages(where):
  assert environment_with_huge_pages({}, **{**LINUX, **where}) is None


def test_the_kernel_mode_is_the_bracketed_word(tmp_path):
  path = tmp_path / "enabled"
  path.write_text("always [madvise] never\n")
  assert transparent_huge_pages_mode(str(path)) == "madvise"
  path.write_text("[always] madvise never\n")
  assert transparent_huge_pages_mode(str(path)) == "always"
  assert transparent_huge_pages_mode(str(tmp_path / "missing")) == ""


def test_a_script_restarts_once_as_the_same_process_with_the_same_arguments():
  environment = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  if environment_with_huge_pages(environment) is None:
    pytest.skip("this machine has no glibc with transparent huge pages: nothing to restart")
  script = ("import os, sys\n"
            f"sys.path.insert(0, {ROOT!r})\n"
            "print('start', os.getpid(), sys.argv[1:], flush=True)\n"
            "from selfimprove.host_memory import reexec_with_huge_pages\n"
            "reexec_with_huge_pages()\n"
            "print('running', os.getpid(), sys.argv[1:], os.environ['GLIBC_TUNABLES'])\n")
  result = subprocess.run([sys.executable, "-c", script, "--flag=1"], env=environment,
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  pid = lines[0].split()[1]
  assert lines == [f"start {pid} ['--flag=1']", f"start {pid} ['--flag=1']",
                   f"running {pid} ['--flag=1'] glibc.malloc.hugetlb=1"]


def test_no_restart_under_a_debugger_or_tracer():
  environment = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  script = ("import os, sys\n"
            f"sys.path.insert(0, {ROOT!r})\n"
            "sys.settrace(lambda *args: None)\n"
            "from selfimprove.host_memory import reexec_with_huge_pages\n"
            "reexec_with_huge_pages()\n"
            "sys.settrace(None)\n"
            "print('running', os.environ.get('GLIBC_TUNABLES'))\n")
  result = subprocess.run([sys.executable, "-c", script], env=environment,
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines() == ["running None"]
