"""The packages' man pages and version against the code: every option of replctl and
replengined, every parameter and action of the agent is in its page, and pyproject.toml,
debian/changelog, the RPM spec, the man pages and `replctl --version` give one version."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import replengine
from replengine.cli.main import build_parser
from replengine.config import loader
from replengine.pacemaker.params import metadata_xml

REPO = Path(__file__).resolve().parents[2]
MAN = REPO / "packaging" / "man"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def page(name: str) -> str:
    """A roff page as plain text enough for a substring test: no font escapes, '-' for '\\-'."""
    text = (MAN / name).read_text()
    return re.sub(r"\\f[BIRP]", "", text).replace("\\-", "-")


def long_options(parser) -> set[str]:
    return {
        s for a in parser._actions for s in a.option_strings if s.startswith("--") and s != "--help"
    }


def test_replctl_page_has_every_verb_and_option():
    text = page("replctl.8")
    parser = build_parser()
    assert long_options(parser) <= set(re.findall(r"--[a-z-]+", text))
    verbs = next(a for a in parser._actions if a.dest == "verb").choices
    missing = []
    for verb, sub in verbs.items():
        if not re.search(rf"^(\.B[RI]? )?{verb}\b", text, re.M):
            missing.append(verb)
        missing += [f"{verb} {o}" for o in long_options(sub) if o not in text]
    assert not missing, f"replctl.8 lacks {missing}"


def test_replengined_page_has_every_option():
    out = subprocess.run(
        [sys.executable, "-m", "replengine.daemon", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    options = set(re.findall(r"--[a-z][a-z-]+", out)) - {"--help"}
    assert options and options <= set(re.findall(r"--[a-z-]+", page("replengined.8")))


def test_agent_page_has_every_parameter_and_action():
    text = page("ocf_replengine_replengine.7")
    meta = ET.fromstring(metadata_xml().split("\n", 2)[2])
    params = [p.get("name") for p in meta.iter("parameter")]
    actions = {(a.get("name"), a.get("timeout")) for a in meta.iter("action")}
    assert params and all(re.search(rf"^\.BR? {p}\b", text, re.M) for p in params), params
    for name, timeout in actions:
        assert re.search(rf"^{re.escape(name)} +timeout={timeout}", text, re.M), name


def test_config_page_has_every_key():
    text = page("replengine.toml.5")
    sections = {"[resource]": loader._RESOURCE_KEYS, "[nodes.<name>]": loader._NODE_KEYS}
    missing = []
    for title, keys in sections.items():
        body = text.split(f".SH {title}\n", 1)[1].split("\n.SH ", 1)[0]
        missing += [f"{title} {k}" for k in keys if not re.search(rf"^\.BR? {k}\b", body, re.M)]
    assert not missing, f"replengine.toml.5 lacks {missing}"


def test_one_version():
    assert replengine.__version__ == VERSION
    out = subprocess.run(
        [sys.executable, "-m", "replengine.cli", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.strip() == f"replctl {VERSION}"
    changelog = (REPO / "packaging" / "debian" / "changelog").read_text()
    assert changelog.startswith(f"replengine ({VERSION}) ")
    spec = (REPO / "packaging" / "rpm" / "replengine.spec").read_text()
    assert re.search(rf"^Version: +{re.escape(VERSION)}$", spec, re.M)
    assert re.search(rf"^\* .* - {re.escape(VERSION)}-1$", spec, re.M)  # %changelog
    for name in ("replctl.8", "replengined.8", "replengine.toml.5", "ocf_replengine_replengine.7"):
        assert f'"replengine {VERSION}"' in (MAN / name).read_text(), name


@pytest.mark.parametrize("name", sorted(p.name for p in MAN.iterdir()))
def test_man_page_renders_without_warnings(name):
    if subprocess.run(["sh", "-c", "command -v man"], capture_output=True).returncode:
        pytest.skip("man-db not installed")
    proc = subprocess.run(
        ["man", "--warnings", "-l", str(MAN / name)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "MANWIDTH": "80", "LANG": "C.UTF-8"},
    )
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
