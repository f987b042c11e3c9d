"""Safety rules the code must keep, checked on the source itself so that a new module cannot slip past.

- checkpoints are read with `torch.load(..., weights_only=True)` (a pickle can run code);
- YAML is read with `yaml.safe_load` (the full loader can build arbitrary objects);
- every file the package writes goes to a temporary name inside `thrombus.io.atomic_path` first;
- every shell command of a rule quotes (`:q`) what can carry a path or a user's string.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from conftest import REPO

SOURCES = sorted((REPO / "thrombus").rglob("*.py"))
PYTHON = SOURCES + sorted((REPO / "benchmarks").glob("*.py")) + sorted((REPO / "scripts").rglob("*.py"))
RULES = sorted((REPO / "workflow").rglob("*.smk")) + [REPO / "Snakefile"]

# Calls that write a file, by attribute name, with the modules they must be called on (None: any object).
WRITERS = {"save": {"torch", "nib", "np"}, "savefig": None, "to_csv": None, "image_write": None, "copyfile": None,
           "write_text": None, "write_bytes": None, "to_filename": None}


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and (getattr(n.func, "attr", None) == name or getattr(n.func, "id", None) == name)]


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def _inside_atomic_path(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.With) and any(
            isinstance(item.context_expr, ast.Call) and getattr(item.context_expr.func, "id", "") == "atomic_path"
            for item in node.items
        ):
            return True
    return False


@pytest.mark.parametrize("path", PYTHON, ids=lambda p: str(p.relative_to(REPO)))
def test_checkpoints_are_loaded_weights_only(path: Path) -> None:
    for call in _calls(ast.parse(path.read_text()), "load"):
        if getattr(call.func, "value", None) is not None and getattr(call.func.value, "id", "") == "torch":
            flags = {k.arg: getattr(k.value, "value", None) for k in call.keywords}
            assert flags.get("weights_only") is True, f"{path}:{call.lineno}: torch.load without weights_only=True"


@pytest.mark.parametrize("path", PYTHON + RULES, ids=lambda p: str(p.relative_to(REPO)))
def test_yaml_is_read_safely(path: Path) -> None:
    unsafe = re.findall(r"yaml\.(load|full_load|unsafe_load|load_all)\(", path.read_text())
    assert not unsafe, f"{path}: yaml.{unsafe[0]}; use yaml.safe_load"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_files_are_written_under_a_temporary_name(path: Path) -> None:
    if path.name == "io.py":
        return  # atomic_path itself, and the helpers built on it
    tree = ast.parse(path.read_text())
    parents = _parents(tree)
    for name, modules in WRITERS.items():
        for call in _calls(tree, name):
            if name == "to_csv" and not call.args:
                continue  # to_csv() without a path returns the text, written by io.write_text
            if isinstance(call.func, ast.Name):
                continue  # thrombus.io.write_text / write_json: atomic themselves
            if modules is not None and getattr(call.func.value, "id", "") not in modules:
                continue  # a method of ours (Trainer.save), which writes through atomic_path
            assert _inside_atomic_path(call, parents), f"{path}:{call.lineno}: .{name}() outside atomic_path"
    for call in _calls(tree, "open"):
        mode = call.args[1] if len(call.args) > 1 else next((k.value for k in call.keywords if k.arg == "mode"), None)
        if isinstance(mode, ast.Constant) and set(str(mode.value)) & set("wax"):
            assert _inside_atomic_path(call, parents), f"{path}:{call.lineno}: open(..., {mode.value!r}) outside atomic_path"


# Placeholders a shell command may use unquoted: numbers, names the schemas restrict to [A-Za-z0-9_],
# and the flags and path lists common.smk quotes itself with shlex.quote (masks, scales, transform, images, adc).
UNQUOTED_OK = re.compile(
    r"threads|wildcards\.\w+|params\.(seed|resume|sequence|sequences|reference_sequence|derive_adc|transform"
    r"|experiments|subsets|masks|scales|images|adc)"
)


def _shell_commands(text: str) -> list[str]:
    """The string literals of each `shell:` block (indented lines after the directive)."""
    blocks = re.findall(r"^(\s+)shell:\n((?:\1\s+.*\n)+)", text, flags=re.MULTILINE)
    return ["".join(re.findall(r'"((?:[^"\\]|\\.)*)"', body)) for _, body in blocks]


@pytest.mark.parametrize("path", RULES, ids=lambda p: str(p.relative_to(REPO)))
def test_shell_commands_quote_paths_and_strings(path: Path) -> None:
    commands = _shell_commands(path.read_text())
    directives = len(re.findall(r"^\s+shell:$", path.read_text(), flags=re.MULTILINE))
    assert len(commands) == directives, f"{path}: {directives} shell directives, {len(commands)} parsed"
    for command in commands:
        for placeholder in re.findall(r"(?<!\{)\{([^{}]+)\}(?!\})", command):
            if placeholder.endswith(":q"):
                continue
            assert UNQUOTED_OK.fullmatch(placeholder), f"{path}: {{{placeholder}}} in a shell command is not quoted"


def test_flag_params_are_quoted_where_they_are_built() -> None:
    """The flag parameters (masks, scales) go into the command unquoted because they hold several words;
    each path in them is quoted by the function that builds them."""
    common = (REPO / "workflow" / "rules" / "common.smk").read_text()
    body = common[common.index("def optional_flags"):].split("\ndef ", 1)[0]
    assert "shlex.quote(" in body, body
