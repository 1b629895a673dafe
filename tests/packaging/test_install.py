"""A non-editable install works away from the checkout: the wheel, its configs and its entry points.

The package is built into a wheel from a copy of the source (so the checkout gets no ``build/``),
installed with ``pip install --no-deps --target`` (torch and Detectron2 come from the test's own
environment), and exercised from an empty folder with ``PYTHONPATH`` naming only the installed
copy, so nothing can be found through the checkout or its editable install.
"""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted(p.relative_to(REPO / "perforation_d2").as_posix()
                 for p in (REPO / "perforation_d2" / "configs").rglob("*.yaml"))


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(site folder, wheel path, env, empty cwd) of a fresh non-editable install."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    src.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "perforation_d2", src / "perforation_d2", symlinks=False,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(src)],
                   check=True, cwd=tmp, capture_output=True)
    (wheel,) = (tmp / "dist").glob("perforation_d2-*.whl")
    site = tmp / "site"
    subprocess.run([*pip, "install", "--no-deps", "--no-compile", "--target", str(site), str(wheel)],
                   check=True, cwd=tmp, capture_output=True)
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "datasets").mkdir()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(PYTHONPATH=str(site), DETECTRON2_DATASETS=str(elsewhere / "datasets"))
    return site, wheel, env, elsewhere


# Runs in ONE fresh interpreter (each start imports torch and Detectron2: seconds on a busy
# machine): what is imported, where the configs are, a config built from them, and the commands'
# --help run as `python -m perforation_d2 ...` runs them (runpy, as -m does).
PROBE = """
import contextlib, io, json, runpy, sys
import perforation_d2, perforation_d2.config as c
from detectron2.config import get_cfg
from importlib.metadata import entry_points
cfg = get_cfg(); c.add_perforation_config(cfg)
cfg.merge_from_file(str(c.config_path("quick/retinanet_tconv_T5.yaml")))
from perforation_d2.engine.trainer import resolve_config_file
readme_spelling = resolve_config_file("configs/retinanet_R50_FPN_tconv_T5.yaml")
helps = {}
for argv in ([], ["train"], ["demo"]):
    sys.argv = ["perforation_d2", *argv, "--help"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            runpy.run_module("perforation_d2", run_name="__main__", alter_sys=True)
            code = None
        except SystemExit as stop:
            code = stop.code
    helps[" ".join(argv)] = [code, out.getvalue()]
(script,) = [ep for ep in entry_points(group="console_scripts") if ep.name == "perforation-d2"]
print(json.dumps({"module_file": perforation_d2.__file__, "config_dir": str(c.CONFIG_DIR),
                  "num_frames": cfg.MODEL.TEMPORAL.NUM_FRAMES, "helps": helps, "readme_spelling": readme_spelling,
                  "entry_point": script.value, "entry_point_site": str(script.dist.locate_file(""))}))
"""


@pytest.fixture(scope="module")
def probe(installed) -> dict:
    proc = _run([sys.executable, "-c", PROBE], installed)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _run(argv: list[str], installed, timeout: float = 300) -> subprocess.CompletedProcess:
    _site, _wheel, env, cwd = installed
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_wheel_ships_every_config(installed):
    _site, wheel, _env, _cwd = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    assert CONFIGS and {f"perforation_d2/{name}" for name in CONFIGS} <= names
    assert not any(name.startswith("tests/") for name in names)


def test_installed_copy_is_imported_and_finds_its_configs(installed, probe):
    site = installed[0]
    assert Path(probe["module_file"]).resolve() == (site / "perforation_d2" / "__init__.py").resolve()
    assert Path(probe["config_dir"]).resolve() == (site / "perforation_d2" / "configs").resolve()
    assert probe["num_frames"] == 5  # the quick T=5 config, merged through its _BASE_ chain
    # `--config-file configs/...` (the README's spelling, relative to a checkout) finds the packaged file.
    assert Path(probe["readme_spelling"]).resolve() == (
        site / "perforation_d2" / "configs" / "retinanet_R50_FPN_tconv_T5.yaml").resolve()


@pytest.mark.parametrize("command", ["", "train", "demo"])
def test_module_commands_run_from_any_folder(probe, command):
    code, stdout = probe["helps"][command]
    assert code in (0, None) and "usage:" in stdout


def test_console_script_entry_point(installed, probe):
    site, wheel, _env, _cwd = installed
    with zipfile.ZipFile(wheel) as archive:
        (entry_file,) = [n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt")]
        entry_points = configparser.ConfigParser()
        entry_points.read_string(archive.read(entry_file).decode())
    assert entry_points["console_scripts"]["perforation-d2"].strip() == "perforation_d2.cli:main"
    assert probe["entry_point"] == "perforation_d2.cli:main"
    assert Path(probe["entry_point_site"]).resolve() == site.resolve()  # the installed copy's metadata
    proc = _run([str(site / "bin" / "perforation-d2"), "--help"], installed)  # the script pip made of it
    assert proc.returncode == 0, proc.stderr
    assert "benchmark" in proc.stdout and "demo" in proc.stdout
