"""The README's and the documentation's examples work as written: every shell command is
checked against what it names (cnnlab's own arguments and recipe keys, make targets,
scripts, extras, test markers), every Python example runs, and the generated pages show
what cnnlab generates."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from cnnlab.cli import build_parser, main
from cnnlab.recipe import builtin, load_file, parse_assignments

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

REPO = Path(__file__).parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def blocks(language: str) -> list[tuple[str, str]]:
    """(page, code) of every fenced block in that language, README and docs alike."""
    return [(str(page.relative_to(REPO)), code) for page in PAGES
            for code in re.findall(rf"^```{language}\n(.*?)^```", page.read_text(), re.S | re.M)]


def commands() -> list[tuple[str, list[str]]]:
    """Every command of the shell examples: continuation lines joined, comments and
    leading VAR=value settings dropped."""
    found = []
    for page, code in blocks("sh"):
        for line in code.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            while argv and re.fullmatch(r"[A-Z_]+=\S*", argv[0]):
                argv = argv[1:]
            if argv:
                found.append((page, argv))
    return found


def check_cnnlab(argv: list[str]) -> None:
    """Parses as cnnlab parses it; every --set is a recipe key with a valid value."""
    args = build_parser().parse_args(argv[1:])
    builtin("custom").with_overrides(parse_assignments(getattr(args, "set", None) or []))
    for arg in argv:
        if arg.startswith("examples/"):
            assert (REPO / arg).is_file(), arg


def check_make(argv: list[str]) -> None:
    targets = re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.M)
    assert set(argv[1:]) <= set(targets), f"no such make target in {argv}"


def check_python(argv: list[str]) -> None:
    assert (REPO / argv[1]).is_file(), f"{argv[1]} is not in the repository"


def check_pip(argv: list[str]) -> None:
    extras = set(PYPROJECT["project"]["optional-dependencies"])
    for arg in argv[2:]:
        if match := re.fullmatch(r"cnnlab\[([\w,-]+)\]", arg):
            assert set(match[1].split(",")) <= extras, f"no such extra: {arg}"


def check_pytest(argv: list[str]) -> None:
    markers = {m.split(":")[0] for m in PYPROJECT["tool"]["pytest"]["ini_options"]["markers"]}
    expression = argv[argv.index("-m") + 1] if "-m" in argv else ""
    assert set(expression.split()) - {"not", "and", "or"} <= markers, expression


CHECKS = {"cnnlab": check_cnnlab, "make": check_make, "python": check_python,
          "pip": check_pip, ".venv/bin/pytest": check_pytest}


@pytest.mark.parametrize("page, argv", commands(), ids=lambda x: x if isinstance(x, str) else "")
def test_every_shell_command_works_as_written(page: str, argv: list[str]) -> None:
    assert argv[0] in CHECKS, f"{page}: no check for {shlex.join(argv)}"
    CHECKS[argv[0]](argv)


@pytest.mark.parametrize("page, code", blocks("python"))
def test_every_python_example_runs(tmp_path, data_dir, page: str, code: str) -> None:
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, text=True,
                            capture_output=True, env={**os.environ, "CNNLAB_DATA": str(data_dir)},
                            timeout=600)
    assert result.returncode == 0, f"{page}: {result.stderr}"
    if "runs/notebook" in code:  # the notebook example prints its accuracy and a prediction
        accuracy, top = result.stdout.splitlines()[-2:]
        assert 0.5 < float(accuracy) <= 1
        assert top.startswith("[(") and (tmp_path / "runs/notebook/last.pt").is_file()


def test_every_file_the_pages_name_is_there() -> None:
    """Paths in inline code (`results/study/REPORT.md`, `python results/x/measure.py ...`)
    name files and folders of the repository, so a moved file cannot leave a page behind."""
    spans = [(page, span) for page in PAGES
             for span in re.findall(r"`([^`\n]+)`", page.read_text())]
    named = [(page.name, word.rstrip(".,:;)")) for page, span in spans for word in span.split()
             if re.match(r"(results|examples|src|tests|experiments)/", word)
             and not re.search(r"[<>{}*]", word)]
    missing = [f"{page}: {path}" for page, path in named if not (REPO / path).exists()]
    assert not missing


def test_the_example_recipe_is_the_builtin_custom_recipe(tmp_path) -> None:
    page = (REPO / "docs/recipes.md").read_text()
    block = page.split("This is the study's custom network as a recipe:")[1]
    [toml] = re.findall(r"```toml\n(.*?)```", block, re.S)[:1]
    (tmp_path / "custom.toml").write_text(toml)
    assert load_file(tmp_path / "custom.toml") == builtin("custom")


def test_the_recipe_page_shows_the_table_of_cnnlab_recipe_keys(capsys) -> None:
    """The table is generated when the site is built, so docs and code cannot drift."""
    spec = importlib.util.spec_from_file_location("hooks", REPO / "docs/hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    rendered = hooks.on_page_markdown((REPO / "docs/recipes.md").read_text())
    assert main(["recipe", "keys"]) == 0
    assert capsys.readouterr().out.strip() in rendered


def test_the_readme_is_a_front_door() -> None:
    assert len((REPO / "README.md").read_text().splitlines()) <= 150
