"""offline/walk.c, the replay's packet loop, compiles cleanly with every warning gcc has for it: replay builds it with
-Wall at run time and only a failed build is noticed there (it then falls back to the slow Python loop), so a
warning, such as an unsequenced `k++` inside the expression that reads `k`, must fail here instead."""

from __future__ import annotations

import shutil
import subprocess

from skyguard import wire
from skyguard.offline import fastwalk
from tests.conftest import skip_or_fail


def test_walk_c_builds_without_a_warning(tmp_path):
    cc = shutil.which("gcc")
    if cc is None:
        skip_or_fail("no gcc to build offline/walk.c with")
    out = tmp_path / "walk.so"
    r = subprocess.run([cc, *fastwalk.CFLAGS, "-Wextra", "-Werror", f"-I{wire.bpf_dir()}", "-o", str(out),
                        str(fastwalk.SOURCE)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert out.stat().st_size > 0
