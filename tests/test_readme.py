"""The README's examples run as written."""

import os
import re
import subprocess
import sys
from pathlib import Path

README = (Path(__file__).parents[1] / "README.md").read_text()


def test_the_python_example_runs(tmp_path, data_dir):
    [example] = re.findall(r"### From Python\n.*?```python\n(.*?)```", README, re.S)
    result = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, text=True,
                            capture_output=True, env={**os.environ, "CNNLAB_DATA": str(data_dir)},
                            timeout=600)
    assert result.returncode == 0, result.stderr
    accuracy, top = result.stdout.splitlines()[-2:]
    assert 0.5 < float(accuracy) <= 1
    assert top.startswith("[(") and (tmp_path / "runs/notebook/last.pt").is_file()


def test_the_example_recipe_in_the_readme_is_the_builtin_custom_recipe(tmp_path):
    from cnnlab.recipe import builtin, load_file

    block = README.split("This is the study's custom network as a recipe:")[1]
    [toml] = re.findall(r"```toml\n(.*?)```", block, re.S)[:1]
    (tmp_path / "custom.toml").write_text(toml)
    assert load_file(tmp_path / "custom.toml") == builtin("custom")
