"""Mutation testing of the assignments: plant one classic bug in a reference answer, grade, repeat.

`mutants(source, lines)` yields the mutants of one answer cell: each operator edits one AST node
inside the cell's `### BEGIN/END SOLUTION` region (the part a student writes), and a mutant
that does not compile is dropped (a syntax error proves nothing about the tests).

`python tests/mutation_lab.py NOTEBOOK` grades every mutant of a source notebook and prints one JSON
line per mutant. Grading is the re-run's program (grader.grading.rerun.source_program): the locked cells as
the source holds them, hidden tests included, and the answer cells, in order, in one namespace.
The runner executes the cells once; at each answer cell it forks one child per mutant, which runs
the mutated cell and the rest of the notebook and stops at the first test that fails (the mutant
is killed: it loses points). torch runs on one thread, so that forking after torch work is safe.
"""

import ast
import json
import os
import re
import signal
import sys
import tempfile
from pathlib import Path

SOLUTION = re.compile(r"^\s*### (BEGIN|END) SOLUTION\s*$")
TIME_LIMIT = 60  # seconds a mutant may run before it counts as killed (a hang scores 0)


def solution_lines(source: str) -> set[int]:
    """1-based line numbers between `### BEGIN SOLUTION` and `### END SOLUTION`."""
    inside, found = False, set()
    for number, line in enumerate(source.splitlines(), 1):
        match = SOLUTION.match(line)
        if match:
            inside = match.group(1) == "BEGIN"
        elif inside:
            found.add(number)
    return found


def _dotted(node) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _call_name(node) -> str:
    return _dotted(node.func) if isinstance(node, ast.Call) else ""


CONTAINERS = {"nn.ModuleList": "list", "torch.nn.ModuleList": "list", "nn.ModuleDict": "dict",
              "torch.nn.ModuleDict": "dict", "nn.ParameterList": "list", "nn.ParameterDict": "dict"}
BINARY = {ast.Add: "-", ast.Sub: "+", ast.Mult: "+", ast.Div: "*", ast.FloorDiv: "*", ast.Pow: "*", ast.MatMult: "*"}
COMPARE = {ast.Lt: "<=", ast.LtE: "<", ast.Gt: ">=", ast.GtE: ">", ast.Eq: "!=", ast.NotEq: "==",
           ast.In: "not in", ast.NotIn: "in", ast.Is: "is not", ast.IsNot: "is"}
NO_GRAD = ("torch.no_grad", "torch.inference_mode", "torch.enable_grad")


class _Edits(ast.NodeVisitor):
    """Collects (operator, node, replacement) for nodes that start inside the solution region."""

    def __init__(self, source: str, lines: set[int]):
        self.source, self.lines, self.found = source, lines, []

    def text(self, node) -> str:
        return ast.get_source_segment(self.source, node)

    def add(self, operator: str, node, replacement: str) -> None:
        if node.lineno in self.lines:
            self.found.append((operator, node, replacement))

    def visit_Call(self, node):
        name = _call_name(node)
        if name in CONTAINERS:
            self.add("container -> plain " + CONTAINERS[name], node.func, CONTAINERS[name])
        if name in ("nn.Parameter", "torch.nn.Parameter") and node.args:
            self.add("nn.Parameter -> plain tensor", node, self.text(node.args[0]))
        if isinstance(node.func, ast.Attribute) and node.func.attr in ("eval", "train") and not node.args:
            self.add("eval <-> train", node.func, f"{self.text(node.func.value)}.{'train' if node.func.attr == 'eval' else 'eval'}")
        if isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name) \
                and node.func.value.id == "self" and node.func.attr not in ("register_buffer", "register_parameter",
                                                                            "add_module", "register_module"):
            self.add("insert .detach()", node, f"({self.text(node)}).detach()")
        for keyword in node.keywords:
            if keyword.arg == "training":
                self.add("training=... -> True", keyword.value, "True")
        self.generic_visit(node)

    def visit_Expr(self, node):
        call = node.value
        name = _call_name(call)
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute):
            if call.func.attr == "register_buffer" and len(call.args) >= 2 and isinstance(call.args[0], ast.Constant):
                target = f"{self.text(call.func.value)}.{call.args[0].value}"
                self.add("register_buffer -> plain attribute", node, f"{target} = {self.text(call.args[1])}")
            elif call.func.attr == "remove" and not call.args:
                self.add("hook handle never removed", node, "pass")
            elif call.func.attr == "zero_grad":
                self.add("zero_grad() removed", node, "pass")
            elif name.startswith("super") and call.func.attr == "__init__":
                self.add("super().__init__() removed", node, "pass")
            elif call.func.attr in ("step", "backward"):
                self.add(f"{call.func.attr}() removed", node, "pass")
        self.generic_visit(node)

    def visit_With(self, node):
        if any(_call_name(item.context_expr) in NO_GRAD for item in node.items) and node.body[0].lineno > node.lineno:
            body = "\n".join(self.source.splitlines()[node.body[0].lineno - 1: node.end_lineno])
            self.add("with torch.no_grad() removed", node, f"if True:\n{body}")
        self.generic_visit(node)

    def visit_Attribute(self, node):
        if isinstance(node.value, ast.Name) and node.value.id == "self" and node.attr == "training" \
                and isinstance(node.ctx, ast.Load):
            self.add("self.training -> not self.training", node, "(not self.training)")
        self.generic_visit(node)

    def visit_Constant(self, node):
        if type(node.value) is int:
            self.add("off by one", node, str(node.value + 1))
        elif type(node.value) is bool:
            self.add("True <-> False", node, str(not node.value))

    def visit_BinOp(self, node):
        swap = BINARY.get(type(node.op))
        if swap:
            self.add(f"arithmetic operator -> {swap}", node, f"({self.text(node.left)}) {swap} ({self.text(node.right)})")
        self.generic_visit(node)

    def visit_Compare(self, node):
        if len(node.ops) == 1 and type(node.ops[0]) in COMPARE:
            new = COMPARE[type(node.ops[0])]
            self.add(f"comparison -> {new}", node, f"{self.text(node.left)} {new} {self.text(node.comparators[0])}")
        self.generic_visit(node)

    def visit_Return(self, node):
        if node.value is not None and not (isinstance(node.value, ast.Constant) and node.value.value is None):
            self.add("return None", node, "return None")
        self.generic_visit(node)

    def visit_Assign(self, node):
        self.add("assignment deleted", node, "pass")
        self.generic_visit(node)

    def visit_AugAssign(self, node):
        self.add("assignment deleted", node, "pass")
        self.generic_visit(node)


def mutants(source: str):
    """(operator, line, original text, mutated cell source) for every mutant of an answer cell."""
    lines = solution_lines(source)
    if not lines:
        return
    tree = ast.parse(source)
    edits = _Edits(source, lines)
    edits.visit(tree)
    seen = set()
    for operator, node, replacement in edits.found:
        start = _char_offset(source, node.lineno, node.col_offset)
        end = _char_offset(source, node.end_lineno, node.end_col_offset)
        mutated = source[:start] + replacement + source[end:]
        if mutated == source or mutated in seen:
            continue
        try:
            compile(mutated, "<mutant>", "exec")
        except SyntaxError:
            continue
        seen.add(mutated)
        yield operator, node.lineno, source[start:end], mutated


def _char_offset(source: str, line: int, col: int) -> int:
    """ast's (line, UTF-8 byte column) as an index into `source`."""
    lines = source.splitlines(keepends=True)
    before = sum(len(text) for text in lines[: line - 1])
    return before + len(lines[line - 1].encode()[:col].decode(errors="ignore"))


# ---------------------------------------------------------------- grading the mutants of one notebook

def grade(notebook_path: str):
    import nbformat
    import torch

    torch.set_num_threads(1)  # torch's thread pool does not survive fork: stay on one thread
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from grader.grading import rerun

    program = rerun.source_program(nbformat.read(notebook_path, as_version=4))
    os.chdir(tempfile.mkdtemp(prefix="mutants-"))
    quiet = open(os.devnull, "w")
    sys.stdout = quiet
    namespace = {"__name__": "__main__", "get_ipython": lambda: None, "display": lambda *a, **k: None}

    def run(index, first_source):
        """Run program[index:], the first cell with `first_source`: the first failing test, or None."""
        for position in range(index, len(program)):
            kind, grade_id, source = program[position]
            failed = run_cell(kind, grade_id, first_source if position == index else source, namespace)
            if failed and kind == "test":
                return f"{grade_id}: {failed}"
        return None

    for index, (kind, grade_id, source) in enumerate(program):
        if kind == "answer":
            for operator, line, original, mutated in mutants(source):
                reader, writer = os.pipe()
                pid = os.fork()
                if pid == 0:
                    os.close(reader)
                    signal.alarm(TIME_LIMIT)
                    verdict = run(index, mutated)
                    os.write(writer, json.dumps(verdict).encode())
                    os._exit(0)
                os.close(writer)
                data = b""
                while chunk := os.read(reader, 65536):
                    data += chunk
                os.close(reader)
                _, status = os.waitpid(pid, 0)
                verdict = json.loads(data) if data else f"the mutant ended the process (status {status})"
                print(json.dumps({"cell": grade_id, "operator": operator, "line": line, "original": original[:200],
                                  "killed": verdict is not None, "by": verdict}),
                      file=sys.__stdout__, flush=True)
        failed = run_cell(kind, grade_id, source, namespace)
        if failed and kind == "test":
            raise SystemExit(f"the unmutated reference fails {grade_id}: {failed}")


def run_cell(kind: str, grade_id: str, source: str, namespace: dict) -> str | None:
    """Execute one cell; its error in one line, or None."""
    try:
        exec(compile(source, f"<{kind} cell {grade_id}>", "exec"), namespace)
    except BaseException as error:  # noqa: BLE001 - a test that raises anything loses its points
        message = str(error).splitlines()[0] if str(error) else ""
        return f"{type(error).__name__}: {message}"
    return None


if __name__ == "__main__":
    grade(sys.argv[1])
