"""Mutation test: classic bugs planted one at a time in every reference answer must lose points.

tests/mutation_lab.py finds the mutation sites in every answer cell of every solutions/NN_*/
notebook (a ModuleList made a list, a Parameter or a buffer made a plain tensor, eval and train
swapped, a hook handle never removed, `with torch.no_grad()` dropped, super().__init__() dropped,
an off-by-one, zero_grad()/step()/backward() dropped, .detach() inserted, an operator or a
comparison swapped, a return or an assignment dropped...) and grades each mutant with the hidden
tests. At least 95% of all mutants must fail a test; docs/grading-security.md lists the survivors
and why each one is equivalent or accepted.
"""

import json
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from conftest import ASSIGNMENTS, ROOT, tool_env

pytestmark = pytest.mark.slow

RUNNER = Path(__file__).parent / "mutation_lab.py"
# Survivors read and found equivalent: (assignment, cell, operator, start of the mutated text) -> why.
# docs/grading-security.md lists every survivor, these and the test gaps.
EQUIVALENT = {
    ("02_toy_module", "toy_module", "with torch.no_grad() removed", "with torch.no_grad():\n            for key, value in state_dict"):
        "load_state_dict copies into state_dict()'s detached tensors: copy_ needs no no_grad there",
    ("05_hooks", "nonfinite_answer", "with torch.no_grad() removed", "with torch.no_grad():\n            model(*inputs)"):
        "the probe only reads outputs: with or without a graph, the same modules are found",
    ("03_parameters_buffers", "ema_answer", "insert .detach()", "self.get_buffer("):
        "a buffer does not require grad; detach() shares its storage, so in-place updates still land",
    ("06_call_and_export", "export_answer", "True <-> False", "True"):
        "keepdim=False: the (out,) mean broadcasts over the batch exactly as the (1, out) one",
    ("07_debugging_clinic", "p5_answer", "off by one", "10"):
        "the 10-class head is replaced right away: its size never matters",
    ("07_debugging_clinic", "p8_answer", "True <-> False", "False"):
        "persistent=True: the mask is then also in state_dict; every behaviour the exercise asks for is kept",
    ("07_debugging_clinic", "p11_answer", "True <-> False", "False"):
        "parameters(recurse=True) with the `seen` set still counts each tensor once",
}
KILL_RATE = 0.95  # issue 13's acceptance
PARALLEL = 2


def notebooks() -> list[Path]:
    return sorted(p for a in ASSIGNMENTS for p in (ROOT / "solutions" / a).glob("*.ipynb"))


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """assignment -> list of mutant records, grading PARALLEL notebooks at a time."""
    folder = tmp_path_factory.mktemp("mutants")
    todo, running, results = list(notebooks()), {}, defaultdict(list)
    started = time.monotonic()
    while todo or running:
        while todo and len(running) < PARALLEL:
            path = todo.pop(0)
            out, err = folder / f"{path.stem}.jsonl", folder / f"{path.stem}.err"
            with open(out, "w") as stdout, open(err, "w") as stderr:
                running[path] = (subprocess.Popen([sys.executable, str(RUNNER), str(path)], env=tool_env(),
                                                  stdout=stdout, stderr=stderr), out, err)
        for path, (process, out, err) in list(running.items()):
            if process.poll() is None:
                continue
            del running[path]
            assert process.returncode == 0, f"mutation run of {path} failed:\n{err.read_text()[-3000:]}"
            results[path.parent.name] += [json.loads(line) for line in out.read_text().splitlines()
                                          if line.startswith("{")]
        time.sleep(0.2)
    report = folder / "report.json"
    report.write_text(json.dumps(results, indent=1))
    results["_seconds"] = time.monotonic() - started
    return results


def equivalent(assignment: str, record: dict) -> str | None:
    for (a, cell, operator, start), why in EQUIVALENT.items():
        if (a, cell) == (assignment, record["cell"]) and record["operator"].startswith(operator) \
                and record["original"].startswith(start):
            return why
    return None


def survivors_text(results) -> str:
    lines = []
    for assignment in sorted(a for a in results if not a.startswith("_")):
        for r in results[assignment]:
            if not r["killed"]:
                lines.append(f"{assignment} {r['cell']} line {r['line']}: {r['operator']}: {r['original']!r}")
    return "\n".join(lines)


def test_every_assignment_has_mutants(graded):
    for path in notebooks():
        assert graded[path.parent.name], f"no mutation site found in {path}: are its answers marked BEGIN/END SOLUTION?"


def test_at_least_95_percent_of_mutants_lose_points(graded):
    """Counted over every mutant, equivalent ones included (they cannot lose points, whatever the tests)."""
    rows = [r for a, records in graded.items() if not a.startswith("_") for r in records]
    killed = sum(r["killed"] for r in rows)
    rates = {a: f"{sum(r['killed'] for r in rs)}/{len(rs)}" for a, rs in graded.items() if not a.startswith("_")}
    assert killed / len(rows) >= KILL_RATE, \
        f"{killed}/{len(rows)} mutants killed ({rates}); survivors:\n{survivors_text(graded)}"


def test_classic_bugs_are_all_caught(graded):
    """The bugs the course is about never survive: containers, Parameter/buffer, modes, hooks, no_grad, super()."""
    classic = ("container -> plain", "nn.Parameter -> plain tensor", "register_buffer -> plain attribute",
               "eval <-> train", "hook handle never removed", "with torch.no_grad() removed",
               "super().__init__() removed", "zero_grad() removed", "training=... -> True",
               "self.training -> not self.training")
    escaped = [f"{a} {r['cell']} line {r['line']}: {r['operator']}: {r['original']!r}"
               for a, rs in graded.items() if not a.startswith("_") for r in rs
               if not r["killed"] and r["operator"].startswith(classic) and not equivalent(a, r)]
    assert not escaped, "classic bugs that the tests miss:\n" + "\n".join(escaped)
