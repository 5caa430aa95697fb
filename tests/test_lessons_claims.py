"""Every number in a lesson's prose is printed by a cell of that lesson, or re-derived in tests/lesson_claims.py.

nbval keeps the stored outputs true; this test keeps the prose tied to them, so that a number in the text that no cell
prints (a typo, a figure from an older run, a claim nobody measured) fails.

What counts as a number: digits ("204,042", "0.42", "1e-5", "89%") and the number words from "three" up ("eleven",
"a million"). "one" and "two" are left out: they are far more often "a module" or "a pair" than counts.
What is not a claim: everything in code (fenced blocks and `inline code`), link targets, references to units,
sections, patients and parts ("unit 05", "section 3", "§2", "P7", "Part C"), versions ("torch 2.13"), years,
and list or heading ordinals ("1. ", "## 4. ").
A number is backed when the same value appears in the lesson's stored outputs or in its code (the sizes, seeds and
rates a cell uses), at the precision the prose writes: "0.42" is backed by a printed 0.419. A number word is a count,
backed only by an integer ("twelve" not by a printed 12.0). Numbers in plotting code (figure sizes, font sizes,
positions) back nothing. A number that nothing backs must be listed in lesson_claims.py.

The net is coarse on purpose: small integers appear in almost every lesson's code, so "three" is nearly always
backed. It catches what matters: a count, a measurement or a quoted figure that the lesson does not print.
"""

import re
from dataclasses import dataclass

import nbformat
import pytest

from conftest import ROOT
from lesson_claims import CLAIMS, Claim

LESSONS = sorted((ROOT / "lessons").glob("[0-9][0-9]_*.ipynb"))

WORDS = dict(three=3, four=4, five=5, six=6, seven=7, eight=8, nine=9, ten=10, eleven=11, twelve=12,
             thirteen=13, fourteen=14, fifteen=15, sixteen=16, seventeen=17, eighteen=18, nineteen=19,
             twenty=20, thirty=30, forty=40, fifty=50, sixty=60, seventy=70, eighty=80, ninety=90,
             hundred=100, thousand=1000, million=10**6, billion=10**9)
NUMBER = re.compile(r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?:e([-+]?\d+))?(?![\w])")
WORD = re.compile(r"\b(" + "|".join(WORDS) + r")\b", re.IGNORECASE)
NOT_CLAIMS = [re.compile(pattern, re.MULTILINE) for pattern in (
    r"```.*?```",                                                 # fenced code
    r"`[^`\n]*`",                                                 # inline code
    r"\]\([^)]*\)",                                               # link targets
    r"\b[Uu]nits? \d+(?:\s*(?:–|-|to|and|,)\s*\d+)*",             # unit 05, units 01–06
    r"\b[Ss]ections? \d+(?:\s*(?:–|-|to|and|,)\s*\d+)*",          # section 3
    r"§\d+|\bP\d+\b|\bPart [A-Z]\b",                              # §2, P7, Part C
    r"\b(?:torch|PyTorch|Python|nbgrader) \d+(?:\.\d+)+",         # versions
    r"\b(?:199\d|20[0-3]\d)\b",                                   # years
    r"^\s*#*\s*\d+\.\s",                                          # "1. " list items, "## 4. " headings
)]
PLOTTING = re.compile(r"\b(?:plt|ax|axes|fig|left|right)\b|figsize|fontsize|zorder|bbox")


@dataclass(frozen=True)
class Number:
    text: str         # as written
    value: float      # its magnitude
    decimals: int     # digits after the point, as written
    scientific: bool  # written with an exponent: compared in significant digits
    context: str = ""

    @property
    def is_word(self):
        return self.text[0].isalpha()

    def backed_by(self, value, written_as_integer=True):
        """Whether a value that a cell prints or uses backs this number. A number word is a count: only an
        integer written as such backs it ("twelve" is not backed by a printed 12.0)."""
        value = abs(value)
        if self.is_word:
            return written_as_integer and value == self.value
        if self.scientific:
            return value > 0 and f"{value:.{self.decimals}e}" == f"{self.value:.{self.decimals}e}"
        return value == self.value or round(value, self.decimals) == self.value


def numbers(text, words=True):
    """The numbers written in `text`, with 60 characters of context each."""
    found = []
    for match in NUMBER.finditer(text):
        whole, fraction, exponent = match.groups()
        value = float(whole.replace(",", "") + (fraction or "") + (f"e{exponent}" if exponent else ""))
        found.append((match, Number(match.group(0), value, len(fraction) - 1 if fraction else 0, bool(exponent))))
    if words:
        found += [(m, Number(m.group(0), float(WORDS[m.group(0).lower()]), 0, False)) for m in WORD.finditer(text)]
    return [Number(n.text, n.value, n.decimals, n.scientific,
                   " ".join(text[max(0, m.start() - 60):m.end() + 60].split())) for m, n in found]


def prose(markdown):
    """A markdown cell with everything that is not a claim blanked out."""
    for pattern in NOT_CLAIMS:
        markdown = pattern.sub(" ", markdown)
    return markdown


def output_text(cell):
    texts = []
    for output in cell.get("outputs", []):
        if output.output_type == "stream":
            texts.append(output.text)
        elif "data" in output and "image/png" not in output.data:  # a figure's text is only its repr
            texts.append(output.data.get("text/plain", ""))
    return "\n".join(texts)


def backing_values(notebook):
    """(value, written as an integer) for every value a lesson prints or uses in its code (outside plotting)."""
    values = set()
    for cell in notebook.cells:
        if cell.cell_type == "code":
            code = "\n".join(line for line in cell.source.splitlines() if not PLOTTING.search(line))
            values |= {(n.value, n.decimals == 0 and not n.scientific)
                       for n in numbers(code + "\n" + output_text(cell), words=False)}
    return values


def unbacked(notebook):
    """(cell index, number) for every number of the prose that neither an output nor the code backs."""
    values = backing_values(notebook)
    return [(index, number) for index, cell in enumerate(notebook.cells) if cell.cell_type == "markdown"
            for number in numbers(prose(cell.source)) if not any(number.backed_by(*v) for v in values)]


def registered(lesson, notebook, index, number, claims):
    flat = " ".join(notebook.cells[index].source.split())
    return next((c for c in claims if c.lesson == lesson and c.number == number.text and c.phrase in flat), None)


def uncovered(lesson, notebook, claims=CLAIMS):
    return [(i, n) for i, n in unbacked(notebook) if registered(lesson, notebook, i, n, claims) is None]


def claim_problem(claim: Claim):
    """None when the claim's function re-derives its number; else what is wrong."""
    stated = numbers(claim.number)
    if len(stated) != 1:
        return f"{claim.number!r} is not one number"
    derived = claim.derive()
    if isinstance(derived, bool):
        return None if derived else f"{claim.number}: the property re-derived by {claim.derive.__name__} is False"
    if not stated[0].backed_by(derived):
        return f"{claim.number} in {claim.lesson}: re-derived as {derived}"
    return None


def stale(claim: Claim, notebook):
    """A registered claim whose number is no longer in the prose of the cell that holds its phrase."""
    return not any(n.text == claim.number and registered(claim.lesson, notebook, index, n, [claim]) is claim
                   for index, cell in enumerate(notebook.cells) if cell.cell_type == "markdown"
                   for n in numbers(prose(cell.source)))


def read(path):
    return nbformat.read(path, as_version=4)


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_every_prose_number_is_printed_or_registered(path):
    missing = uncovered(path.stem, read(path))
    assert not missing, (
        f"{path.name}: numbers in the text that no cell prints. Print them in a cell, or list them with the code "
        f"that re-derives them in tests/lesson_claims.py:\n" +
        "\n".join(f"  cell {i}: {n.text!r} in “…{n.context}…”" for i, n in missing))


@pytest.mark.parametrize("claim", CLAIMS, ids=lambda c: f"{c.lesson}:{c.number}")
def test_registered_claim_is_re_derived(claim):
    assert claim_problem(claim) is None, claim_problem(claim)
    assert not stale(claim, read(ROOT / "lessons" / f"{claim.lesson}.ipynb")), (
        f"{claim.lesson}: no {claim.number!r} in a cell that says {claim.phrase!r}; update or remove the entry")


def plant(path, tmp_path, old, new):
    notebook = read(path)
    cell = next(c for c in notebook.cells if c.cell_type == "markdown" and old in c.source)
    cell.source = cell.source.replace(old, new, 1)
    copy = tmp_path / path.name
    nbformat.write(notebook, copy)
    return read(copy)


def test_a_planted_number_fails(tmp_path):
    lesson = ROOT / "lessons" / "01_registration.ipynb"
    assert uncovered(lesson.stem, read(lesson)) == []
    planted = plant(lesson, tmp_path, "The 784-256-10 MLP has 204,042 parameters",
                    "The 784-256-10 MLP has 204,043 parameters, about 0.73 of them in the stem, and eleven hook dicts")
    assert [n.text for _, n in uncovered(lesson.stem, planted)] == ["204,043", "0.73", "eleven"]


def test_rounding_backs_a_number_only_at_its_written_precision():
    printed = 0.419
    assert numbers("0.42")[0].backed_by(printed) and numbers("0.4")[0].backed_by(printed)
    assert not numbers("0.41")[0].backed_by(printed) and not numbers("0.5")[0].backed_by(printed)
    assert numbers("9.0e+05")[0].backed_by(899_892.6) and not numbers("8.9e+05")[0].backed_by(899_892.6)
    assert numbers("twelve")[0].backed_by(12) and not numbers("twelve")[0].backed_by(12.0, written_as_integer=False)


def test_references_versions_and_code_are_not_claims():
    text = "Unit 05, units 01–06, section 3, §2, P7, Part C, torch 2.13, in 2024:\n1. `x = 16384`\n## 4. Heading"
    assert numbers(prose(text)) == []


def test_a_wrong_registered_claim_fails():
    wrong_count = Claim("02_toy_module", "seven", "builds the full", lambda: 6, "planted")
    wrong_property = Claim("04_containers", "1,043,202", "You may read", lambda: False, "planted")
    assert "re-derived as 6" in claim_problem(wrong_count)
    assert "is False" in claim_problem(wrong_property)
    moved = Claim("04_containers", "1,043,202", "a phrase no lesson has", lambda: True, "planted")
    assert stale(moved, read(ROOT / "lessons" / "04_containers.ipynb"))
