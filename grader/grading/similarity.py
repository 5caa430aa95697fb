"""Similar answers: students whose answer cells stay alike once names, literals and layout are set aside.

For the instructor to review, never to penalise: short exercises with one natural solution make
honest answers alike, and nothing here changes a grade.

Each answer cell becomes a list of tokens (Python's `tokenize`): comments and layout are dropped,
strings and numbers become placeholders, and every name the student chose becomes its order of
first appearance in the cell (``v1``, ``v2``...), so that renamed variables still match. Keywords,
builtins, dunders (``__init__``), attributes of anything but ``self`` (``nn.Linear``, ``x.view``)
and the names the course gives (those in the release's stub and locked cells: ``torch``, ``nn``,
the function and argument names of the stub) are kept. Runs of K tokens (shingles) make one set per student and cell. As
MOSS does, shingles of the release's own stub are dropped, and so are those that more than a share
of the class wrote (what everyone writes). Two students' similarity is the Jaccard index of their
sets over all the notebook's answer cells; pairs at or above the threshold are listed, and groups
of students linked by such pairs are shown together.
"""

import builtins
import io
import keyword
import re
import tokenize
from dataclasses import dataclass
from itertools import combinations

KEPT = frozenset(dir(builtins)) | frozenset(keyword.kwlist) | frozenset(keyword.softkwlist) | {"self", "cls"}
SHINGLE = 5          # tokens per shingle
MIN_SHINGLES = 12    # fewer of a student's own shingles than this: too little code to compare
COMMON_SHARE = 0.5   # a shingle more than this share of the class wrote is left out (only from 20 students on)
COMMON_MIN_CLASS = 20
SKIPPED = (tokenize.COMMENT, tokenize.NL, tokenize.ENCODING, tokenize.ENDMARKER)
PLACEHOLDERS = {tokenize.NEWLINE: ";", tokenize.INDENT: ">", tokenize.DEDENT: "<", tokenize.STRING: '"',
                tokenize.NUMBER: "#"}
_WORDS = re.compile(r"[A-Za-z_]\w*|\d[\w.]*|\S")


def given_names(sources) -> frozenset:
    """The names that appear in code the course gives (stubs, locked cells): kept as they are."""
    names = set()
    for source in sources:
        names.update(text for kind, text in _raw_tokens(source) if kind == tokenize.NAME)
    return frozenset(names)


def _raw_tokens(source: str):
    """(type, text) of a cell's tokens; a cell Python cannot tokenize is split into words and symbols."""
    try:
        return [(t.type, t.string) for t in tokenize.generate_tokens(io.StringIO(source).readline)]
    except (tokenize.TokenError, SyntaxError):
        return [(tokenize.NAME if w[0].isalpha() or w[0] == "_" else tokenize.NUMBER if w[0].isdigit()
                 else tokenize.OP, w) for w in _WORDS.findall(source)]


def tokens(source: str, given: frozenset = frozenset()) -> list[str]:
    """The cell's tokens with the student's own names numbered in order of first appearance."""
    names: dict[str, str] = {}
    found: list[str] = []
    for kind, text in _raw_tokens(source):
        if kind in SKIPPED:
            continue
        if kind in PLACEHOLDERS:
            text = PLACEHOLDERS[kind]
        elif not text.strip():
            continue
        elif kind == tokenize.NAME and text not in KEPT and text not in given and not text.startswith("__"):
            attribute = len(found) >= 2 and found[-1] == "." and found[-2] != "self"
            if not attribute:
                text = names.setdefault(text, f"v{len(names) + 1}")
        found.append(text)
    return found


def shingles(cell_tokens: list[str], k: int = SHINGLE) -> set[int]:
    if len(cell_tokens) < k:
        return {hash(tuple(cell_tokens))} if cell_tokens else set()
    return {hash(tuple(cell_tokens[i:i + k])) for i in range(len(cell_tokens) - k + 1)}


@dataclass
class Pair:
    first: str
    second: str
    score: float   # Jaccard index of the two students' shingles, 0..1
    shared: int    # shingles in common


def fingerprints(answers: dict[str, dict[str, str]], stubs: dict[str, str], given: frozenset,
                 k: int = SHINGLE) -> dict[str, set]:
    """student -> the set of (cell, shingle) of their answer cells, without the stub's own shingles."""
    stub_shingles = {cell: shingles(tokens(source, given), k) for cell, source in stubs.items()}
    found = {}
    for student, cells in answers.items():
        own = set()
        for cell, source in cells.items():
            own |= {(cell, s) for s in shingles(tokens(source, given), k) - stub_shingles.get(cell, set())}
        found[student] = own
    return found


def similar_pairs(answers: dict[str, dict[str, str]], stubs: dict[str, str] | None = None,
                  given: frozenset = frozenset(), threshold: float = 0.8, k: int = SHINGLE,
                  common_share: float = COMMON_SHARE, min_shingles: int = MIN_SHINGLES) -> list[Pair]:
    """Pairs of students whose answers (student -> cell -> source) are at least `threshold` alike, best first."""
    prints = fingerprints(answers, stubs or {}, given, k)
    if len(prints) >= COMMON_MIN_CLASS:
        counts: dict = {}
        for own in prints.values():
            for item in own:
                counts[item] = counts.get(item, 0) + 1
        limit = common_share * len(prints)
        common = {item for item, count in counts.items() if count > limit}
        prints = {student: own - common for student, own in prints.items()}
    compared = sorted(student for student, own in prints.items() if len(own) >= min_shingles)
    pairs = []
    for first, second in combinations(compared, 2):
        a, b = prints[first], prints[second]
        shared = len(a & b)
        if shared and shared / (len(a) + len(b) - shared) >= threshold:
            pairs.append(Pair(first, second, shared / (len(a) + len(b) - shared), shared))
    return sorted(pairs, key=lambda p: (-p.score, p.first, p.second))


def groups(pairs: list[Pair]) -> list[list[str]]:
    """Students linked by similar pairs (connected components), largest first."""
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for pair in pairs:
        parent[root(pair.first)] = root(pair.second)
    members: dict[str, list[str]] = {}
    for student in parent:
        members.setdefault(root(student), []).append(student)
    return sorted((sorted(m) for m in members.values()), key=lambda m: (-len(m), m))
