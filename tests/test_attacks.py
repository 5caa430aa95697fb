"""The attack corpus (tests/attacks/*.py) through stock nbgrader 0.9.6 and through our pipeline.

Each attack is a blank release notebook plus code where a student can put it (an answer cell, a cell
they add), or, for the attacks that bend torch's own answers, a wrong answer plus that code. One run
per configuration grades every attack as a student of the lab assignment (tests/grading_lab.py):
"stock" is `nbgrader autograde` with the repo's configuration less our preprocessors (nbgrader's
defaults put back); "ours" is `python -m grader autograde`, the parallel autograder instructors are
told to use (warm forked kernels), with the repo's nbgrader_config.py (tests/test_autograde.py shows
it grades exactly as plain `nbgrader autograde` with that configuration). Every attack must earn
what the blank earns (0) under ours, and be flagged where stock gave it points; under stock it earns
what its file says, which is the comparison table of docs/grading-security.md (a test keeps the two
equal). Attacks on what people see rather than on the score say so (``effect``): hidden test code in
the feedback, a script that runs in formgrader or in the feedback; ours must show neither.

A third run, "nbgrader", is the stock command (`nbgrader autograde`) with the repo's configuration: it grades
the honest cases and the attacks on the launch path (grading_lab.LAUNCH_PATH: what the kernel's and the re-run's
processes can reach, which the two commands start differently), which must fail there as under ours.

The honest cases (``honest_*``) are correct answers written in ways the defences once mistook for
attacks (%%time, %%capture, torch.compile, a temporary checkpoint, DataLoader workers): full marks
and no flag under both commands (stock, which has no defence, does not grade them). Those that start
processes need the OS sandbox, which lets graded code do so (``needs: processes``); without it they
must fail, and the test says so (strict xfail).

The same runs grade the reference (full marks in each) and a correct answer whose model makes torch
raise a UserWarning when it is built. Inside a check the warning is captured (grader.checks.report.quiet);
the lab's last test builds the model outside any check, so the warning reaches the cell's stderr,
which stock nbgrader scores as 0. Ours scores the re-run's verdict, which a warning does not change.
"""

import nbformat
import pytest

import grading_lab as lab
from conftest import ASSIGNMENTS, ROOT
from grading_lab import ATTACKS, HONEST

pytestmark = pytest.mark.notebooks
slow = pytest.mark.slow

TABLE_PAGES = (ROOT / "README.md", ROOT / "docs" / "grading-security.md")  # each holds the table between the markers
TABLE_START, TABLE_END = "<!-- attack table: start -->", "<!-- attack table: end -->"


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """{"stock": {student: (score, flagged)}, "ours": {...}}, the courses, and the seconds and logs of each run."""
    lab_run = lab.graded_lab(tmp_path_factory)
    results = {config: lab.scores(course) for config, course in lab_run["courses"].items()}
    return {**results, "courses": lab_run["courses"], "seconds": lab_run["seconds"], "logs": lab_run["logs"]}


def effect_seen(course, attack) -> bool:
    """Did the attack get what it aims at, beyond the score: hidden test code in its feedback, its script where a
    browser runs it (formgrader's view of the autograded notebook, or the feedback page)?"""
    feedback = lab.feedback_html(course, attack.name)
    if attack.effect == "leak":
        page = lab.text_of(feedback)
        return any(line in page or line in feedback for line in lab.hidden_lines(lab.lab_source()))
    if attack.effect == "script":
        return any(lab.runs_script(page, "grader-xss-marker") for page in (lab.formgrader_html(course, attack.name),
                                                                           feedback))
    return False


def test_the_corpus_is_varied():
    assert len(ATTACKS) >= 20
    assert {a.where.split()[0] for a in ATTACKS} == {"added", "answer", "replace"}
    assert sum(a.stock > 0 for a in ATTACKS) >= 10, "most attacks should beat stock nbgrader, or they prove little"


@slow
def test_reference_full_marks_and_blank_zero_in_every_configuration(graded):
    for config in ("stock", "ours", "nbgrader"):
        assert graded[config]["reference"] == (lab.MAX_SCORE, False), config
        assert graded[config]["blank"][0] == 0, config


@slow
@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: a.name)
def test_attack_earns_what_the_blank_earns(graded, attack):
    assert graded["ours"][attack.name][0] == graded["ours"]["blank"][0] == 0, graded["logs"]["ours"][-4000:]


@slow
@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: a.name)
def test_stock_nbgrader_gives_what_the_table_says(graded, attack):
    assert graded["stock"][attack.name][0] == attack.stock


@slow
def test_attacks_that_beat_stock_are_flagged_by_ours(graded):
    """Where stock nbgrader gave points, ours scored 0 *and* flagged the notebook for the instructor, unless the OS
    sandbox let the attempt run (processes are allowed there) and held it: the attack says how (``contained``)."""
    sandboxed = lab.allows_processes(graded["courses"]["ours"])
    unflagged = [a.name for a in ATTACKS if a.stock > 0 and not graded["ours"][a.name][1]
                 and not (sandboxed and a.contained)]
    assert not unflagged


@slow
@pytest.mark.parametrize("attack", [a for a in ATTACKS if a.effect != "score"], ids=lambda a: a.name)
def test_attacks_on_what_people_see_work_on_stock_only(graded, attack):
    """Hidden tests in the feedback, a script in formgrader: stock shows them (the attack is real), ours does not."""
    assert effect_seen(graded["courses"]["stock"], attack), f"{attack.name} does nothing even to stock nbgrader"
    assert not effect_seen(graded["courses"]["ours"], attack)


@slow
@pytest.mark.parametrize("attack", [a for a in ATTACKS if a.name in lab.LAUNCH_PATH], ids=lambda a: a.name)
def test_launch_path_attack_fails_under_nbgrader_autograde_too(graded, attack):
    """The stock command with the course's configuration: bwrap starts each kernel, the re-run forks in a sandbox."""
    score, flagged = graded["nbgrader"][attack.name]
    assert score == graded["nbgrader"]["blank"][0] == 0, graded["logs"]["nbgrader"][-4000:]
    assert flagged or (attack.contained and lab.allows_processes(graded["courses"]["nbgrader"]))


@slow
@pytest.mark.parametrize("config", ["nbgrader", "ours"])
@pytest.mark.parametrize("case", HONEST, ids=lambda a: a.name)
def test_honest_case_keeps_full_marks_unflagged(graded, request, case, config):
    if case.needs == "processes" and not lab.allows_processes(graded["courses"][config]):
        request.applymarker(pytest.mark.xfail(strict=True, reason="it starts processes, which only the OS sandbox "
                                                                 "lets graded code do; the sandbox is off"))
    assert graded[config][case.name] == (lab.MAX_SCORE, False), graded["logs"][config][-4000:]


@slow
def test_nbgrader_export_reads_the_scores(graded, tmp_path):
    """The gradebook stays nbgrader's: `nbgrader export` lists what the re-run's verdicts scored."""
    import csv

    from conftest import nbgrader

    course = lab.copy_course(graded["courses"]["ours"], tmp_path / "course")
    nbgrader("export", "--to", str(tmp_path / "grades.csv"), cwd=course)
    rows = {row["student_id"]: float(row["score"]) for row in csv.DictReader((tmp_path / "grades.csv").open())}
    assert rows["reference"] == lab.MAX_SCORE and rows["01_input_transformer"] == rows["blank"] == 0


@slow
def test_torch_warnings_never_zero_a_correct_answer(graded):
    assert graded["ours"]["reference_warns"] == (lab.MAX_SCORE, False)
    # stock nbgrader scores the direct-call test (1 point), whose stderr got the warning, as 0
    assert graded["stock"]["reference_warns"][0] == lab.MAX_SCORE - 1


EFFECTS = {"leak": ("; hidden tests in the feedback", "; none in the feedback"),
           "script": ("; its script runs in formgrader", "; no script left")}


def markdown_table() -> str:
    rows = ["| Attack | Where | Stock nbgrader 0.9.6 | Ours |", "| --- | --- | --- | --- |"]
    for attack in ATTACKS:
        stock = f"{attack.stock:g} / {lab.MAX_SCORE:g}" + (" (full marks)" if attack.stock == lab.MAX_SCORE else "")
        seen, gone = EFFECTS.get(attack.effect, ("", ""))
        rows.append(f"| `{attack.name}`: {attack.title} | {attack.where} | {stock}{seen} | 0 / {lab.MAX_SCORE:g}{gone} |")
    return "\n".join(rows)


def write_tables() -> None:
    """Regenerate the table between the markers of every page: `python tests/test_attacks.py`."""
    for page in TABLE_PAGES:
        before, rest = page.read_text().split(TABLE_START, 1)
        page.write_text(f"{before}{TABLE_START}\n{markdown_table()}\n{TABLE_END}{rest.split(TABLE_END, 1)[1]}")


@pytest.mark.parametrize("page", TABLE_PAGES, ids=lambda p: p.name)
def test_the_documented_table_is_the_corpus(page):
    text = page.read_text()
    assert TABLE_START in text and TABLE_END in text, f"{page.name} lost its attack table markers"
    table = text.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0].strip()
    assert table == markdown_table(), f"regenerate the table in {page.name}: python tests/test_attacks.py"


# ---------------------------------------------------------------- every assignment, through the re-run alone (fast)

@pytest.fixture(scope="module")
def rerunner():
    from grader.grading.rerun import Rerunner

    return Rerunner(cell_timeout=120)


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_blank_release_fails_every_test_of_the_rerun(rerunner, assignment, tmp_path):
    """The re-run alone, on each real unit (the reference's full marks through it: tests/test_assignments.py)."""
    from grader.grading.rerun import source_program

    for path in sorted((ROOT / "exercises" / assignment).glob("*.ipynb")):
        outcomes = rerunner.run(source_program(nbformat.read(path, as_version=4)), tmp_path, course_root=str(ROOT))
        passed = [o.grade_id for o in outcomes if o.kind == "test" and o.passed]
        assert not passed and any(o.kind == "test" for o in outcomes), f"{path.name}: the blank passes {passed}"


if __name__ == "__main__":
    write_tables()
