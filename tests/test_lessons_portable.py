"""The lessons' stored outputs do not depend on the CPU they were made on.

`make test` runs nbval on the lessons with torch's native kernels (AVX2 or AVX-512, several threads). This test runs
nbval on every lesson once more, with torch's portable kernels (ATEN_CPU_CAPABILITY=default) and one thread, so that
a printed value whose last digits depend on the CPU's vector width or on the thread count fails here as well, on
any machine.
"""

import os
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT

LESSONS = sorted((ROOT / "lessons").glob("[0-9][0-9]_*.ipynb"))
FORCED = {"ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def ipython_startup(folder, report):
    """An IPython profile whose startup file sets one torch thread and writes what each kernel runs with."""
    startup = folder / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-one-thread.py").write_text(textwrap.dedent(f"""\
        import torch

        torch.set_num_threads(1)
        with open({str(report)!r}, "a") as kernel_log:
            kernel_log.write(f"{{torch.backends.cpu.get_cpu_capability()}} {{torch.get_num_threads()}}\\n")
        del kernel_log
    """))


@pytest.mark.notebooks
def test_lessons_reproduce_on_portable_kernels_and_one_thread(tmp_path):
    report = tmp_path / "kernels.txt"
    ipython_startup(tmp_path / "ipython", report)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}  # a clean inner pytest
    env.update(FORCED, IPYTHONDIR=str(tmp_path / "ipython"))
    # pyproject's addopts give the inner run --nbval, the current environment's kernel and the sanitizers.
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", *map(str, LESSONS)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, (
        f"a lesson's stored output differs under {FORCED}: print a comparison against a tolerance instead of "
        f"the digits\n{done.stdout[-6000:]}{done.stderr[-2000:]}")
    kernels = report.read_text().splitlines() if report.exists() else []
    assert kernels == ["DEFAULT 1"] * len(LESSONS), f"the kernels did not run as forced: {kernels}"
