"""The lessons' quantitative claims that no cell prints, each with the code that re-derives it.

tests/test_lessons_claims.py requires every number in a lesson's prose to be printed by a cell of the same lesson.
A number that no cell can print (the size of an assignment, a wrong figure quoted from elsewhere) is listed here
instead: the lesson, the number as the prose writes it, a phrase of its sentence that pins it to its place, and a
function that re-derives it. `derive` returns the value (compared at the precision the prose writes), or a bool for
a property that must hold. An entry whose number is gone from its lesson, or is now printed there, fails the test.
"""

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nbformat
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Claim:
    lesson: str                       # the lesson's file name without .ipynb
    number: str                       # as the prose writes it: "1,043,202", "six"
    phrase: str                       # words from the same markdown cell
    derive: Callable[[], float | bool]
    why: str                          # where the number comes from


def _release_headings(assignment):
    """The markdown headings of an assignment's student release."""
    notebook = next((ROOT / "exercises" / assignment).glob("*.ipynb"))
    cells = nbformat.read(notebook, as_version=4).cells
    return [line for cell in cells if cell.cell_type == "markdown" for line in cell.source.splitlines()
            if line.startswith("#")]


def toy_module_stages():
    """Unit 02's release builds ToyModule in stages: `## Part A (2 points): stage 1, registration`, ..."""
    return len({m.group(1) for line in _release_headings("02_toy_module") for m in re.finditer(r"stage (\d+)", line)})


def clinic_patients():
    """Unit 07's release has one section per patient: `## Patient 1 (2 points): the model will not build`, ..."""
    return len({m.group(1) for line in _release_headings("07_debugging_clinic")
                for m in re.finditer(r"^## Patient (\d+)\b", line)})


def residual_mlp_parameters():
    """The residual MLP of lesson 04, section 6, counted by torch."""

    class ResidualBlock(nn.Module):
        def __init__(self, width, hidden):
            super().__init__()
            self.f = nn.Sequential(nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                   nn.Linear(hidden, width), nn.BatchNorm1d(width))

    with torch.device("meta"):  # shapes only, no memory
        model = nn.Sequential(nn.Linear(784, 256), nn.BatchNorm1d(256), nn.ReLU(),
                              *(ResidualBlock(256, 128) for _ in range(4)), nn.Linear(256, 10))
    return sum(p.numel() for p in model.parameters())


CLAIMS = [
    Claim("02_toy_module", "six", "builds the full `ToyModule` in",
          toy_module_stages, "the stages of exercises/02_toy_module"),
    Claim("04_containers", "1,043,202", "You may read that this model has",
          lambda: residual_mlp_parameters() != 1_043_202,
          "a tutorial's wrong count, quoted; the lesson prints torch's (470,794)"),
    Claim("07_debugging_clinic", "twelve", "a symptom → cause table that covers the twelve patients",
          clinic_patients, "the patients of exercises/07_debugging_clinic"),
    Claim("07_debugging_clinic", "twelve", "twelve patients, each with a symptom",
          clinic_patients, "the patients of exercises/07_debugging_clinic"),
]
