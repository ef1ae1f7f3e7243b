"""The command line: its name, version and help, and what ``info`` says of huge pages."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tomllib

import pytest

import anonshm
from anonshm._cli import _shmem_hugepages, main
from tests.conftest import ROOT, child_env

# Runs a [project.scripts] entry point as the script pip writes for it does: import
# the module, call the function with no arguments (it reads sys.argv itself).
_LAUNCHER = """
import importlib, sys
module, _, function = sys.argv.pop(1).partition(":")
sys.exit(getattr(importlib.import_module(module), function)())
"""


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=60, env=child_env(), check=False
    )


def console_script() -> str:
    with open(ROOT / "pyproject.toml", "rb") as file:
        scripts = tomllib.load(file)["project"]["scripts"]
    assert list(scripts) == ["anonshm"]
    return str(scripts["anonshm"])


def test_python_m_anonshm_names_itself_so() -> None:
    result = run([sys.executable, "-m", "anonshm", "--help"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m anonshm ")
    error = run([sys.executable, "-m", "anonshm", "bogus"])
    assert error.returncode == 2
    assert "python -m anonshm: error: argument command: invalid choice" in error.stderr


def test_the_console_script_names_itself_anonshm() -> None:
    result = run([sys.executable, "-c", _LAUNCHER, console_script(), "--help"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: anonshm [-h]")
    error = run([sys.executable, "-c", _LAUNCHER, console_script(), "bogus"])
    assert error.returncode == 2
    assert error.stderr.splitlines()[-1].startswith("anonshm: error: ")
    assert "python -m" not in error.stderr


def test_the_installed_console_script_names_itself_anonshm() -> None:
    try:
        [entry] = importlib.metadata.entry_points(group="console_scripts", name="anonshm")
    except ValueError:
        pytest.skip("anonshm is not installed (pip install -e .)")
    assert entry.value == console_script()
    script = os.path.join(os.path.dirname(sys.executable), "anonshm")
    if not os.path.exists(script):
        pytest.skip(f"the console script is not beside {sys.executable}")
    result = run([script, "--help"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: anonshm [-h]")


@pytest.mark.parametrize(
    "argv",
    [
        [sys.executable, "-m", "anonshm", "--version"],
        [sys.executable, "-c", _LAUNCHER, "anonshm.__main__:main", "--version"],
    ],
    ids=["python-m", "console-script"],
)
def test_version(argv: list[str]) -> None:
    result = run(argv)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"anonshm {anonshm.__version__}\n"


@pytest.mark.parametrize("command", [[], ["demo"], ["info"], ["ps"]], ids=repr)
def test_help_is_for_humans(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        main([*command, "--help"])
    assert exit.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {' '.join(['anonshm', *command])} [-h]")
    for markup in ("``", ":func:", ":meth:", ":class:", "`"):
        assert markup not in out, f"reST {markup!r} in the help:\n{out}"


def test_the_description_names_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    description = capsys.readouterr().out.split("\n\n")[1]
    for command in ("demo", "info", "ps"):
        assert f"{command} " in description


def _sysfs_word(path: str) -> str | None:
    try:
        with open(path) as file:
            words = file.read().split()
    except OSError:
        return None
    return next((word[1:-1] for word in words if word.startswith("[")), None)


def test_info_says_what_the_shmem_setting_means_for_hugepages() -> None:
    result = run([sys.executable, "-m", "anonshm", "info"])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    [index] = [i for i, line in enumerate(lines) if "transparent hugepages for shmem" in line]
    setting = lines[index].split("transparent hugepages for shmem")[1].split()[0]
    meaning = lines[index + 1].strip()
    thp = "/sys/kernel/mm/transparent_hugepage"
    expected = _sysfs_word(f"{thp}/shmem_enabled")
    own = _sysfs_word(f"{thp}/hugepages-2048kB/shmem_enabled")
    if expected not in (None, "deny", "force") and own not in (None, "inherit"):
        expected = own
    assert setting == (expected or "unavailable")
    assert "map(hugepages=True)" in meaning


_ALL = "always within_size advise never deny force"


def _chosen(word: str, words: str = _ALL) -> str:
    return words.replace(word, f"[{word}]")


@pytest.mark.parametrize(
    ("setting", "gets", "needs_the_flag"),
    [
        ("advise", True, True),
        ("always", True, False),
        ("within_size", True, False),
        ("never", False, False),
        ("deny", False, False),
        ("force", True, False),
    ],
)
def test_each_shmem_setting_is_explained(setting: str, gets: bool, needs_the_flag: bool) -> None:
    label, meaning = _shmem_hugepages(_chosen(setting), None)
    assert label == setting
    assert "map(hugepages=True)" in meaning
    assert meaning.startswith("no huge pages") is not gets
    assert meaning.startswith("only map(hugepages=True)") is needs_the_flag


def test_the_huge_page_sizes_own_setting_wins_unless_deny_or_force() -> None:
    own = "always inherit within_size advise [never]"
    label, meaning = _shmem_hugepages(_chosen("advise"), own, "hugepages-2048kB")
    assert label == "never (from hugepages-2048kB; the global shmem_enabled says advise)"
    assert meaning.startswith("no huge pages")
    inherit = "always [inherit] within_size advise never"
    assert _shmem_hugepages(_chosen("advise"), inherit)[0] == "advise"
    assert _shmem_hugepages(_chosen("force"), own)[0] == "force"
    assert _shmem_hugepages(_chosen("deny"), "[always] inherit")[0] == "deny"


def test_a_kernel_without_shmem_huge_pages_says_so() -> None:
    label, meaning = _shmem_hugepages(None, None)
    assert label == "unavailable"
    assert meaning.startswith("map(hugepages=True) gets no huge pages")
