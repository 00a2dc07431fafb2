"""The installers' files: scripts parse; desktop entry, MIME types, Info.plist and Inno Setup script agree;
the icons are there, and the Linux install script installs into a home and the uninstall script removes
exactly what it added (run against a small fake bundle: the real one is built by `make bundle-check`)."""

from __future__ import annotations

import ast
import configparser
import os
import plistlib
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGING = ROOT / "packaging"
LINUX = PACKAGING / "linux"
RESOURCES = ROOT / "resources"
ICON_SIZES = (16, 24, 32, 48, 64, 128, 256, 512)
SCRIPTS = sorted([*PACKAGING.glob("*.sh"), *PACKAGING.glob("*/*.sh")])
MIME_NS = "{http://www.freedesktop.org/standards/shared-mime-info}"


def desktop_entry() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(interpolation=None, delimiters=("=",))
    parser.optionxform = str  # keys are case-sensitive
    parser.read(LINUX / "sd-fsmis.desktop.in", encoding="utf-8")
    return parser


def mime_types() -> dict[str, list[str]]:
    root = ET.parse(LINUX / "sd-fsmis-nifti.xml").getroot()
    return {
        node.get("type"): [glob.get("pattern") for glob in node.findall(f"{MIME_NS}glob")]
        for node in root.findall(f"{MIME_NS}mime-type")
    }


# ------------------------------------------------------------------------------------------ static checks
def test_the_scripts_parse_and_are_executable():
    assert {p.name for p in SCRIPTS} >= {
        "build.sh",
        "check-bundle.sh",
        "check-install.sh",
        "install.sh",
        "uninstall.sh",
        "make-dmg.sh",
    }
    for script in SCRIPTS:
        subprocess.run(["bash", "-n", str(script)], check=True)
        assert os.access(script, os.X_OK), f"{script} is not executable"
        assert script.read_text(encoding="utf-8").startswith("#!/usr/bin/env bash\n")
        assert "set -euo pipefail" in script.read_text(encoding="utf-8")


def test_desktop_entry_categories_mime_types_and_icon():
    entry = desktop_entry()["Desktop Entry"]
    assert entry["Type"] == "Application" and entry["Name"] == "SD-FSMIS" and entry["Terminal"] == "false"
    assert entry["Categories"].split(";")[:2] == ["Science", "MedicalSoftware"]
    assert entry["Exec"] == '"@EXEC@" gui %F'  # the `gui` sub-command takes the files to open
    assert entry["Icon"] == "sd-fsmis"
    wanted = [t for t in entry["MimeType"].split(";") if t]
    assert set(wanted) == {"application/x-nifti", "application/x-nifti-gz", "application/dicom"}
    # the NIfTI types are ours (freedesktop has application/dicom, not NIfTI): defined with their globs
    types = mime_types()
    assert types == {"application/x-nifti": ["*.nii"], "application/x-nifti-gz": ["*.nii.gz"]}


@pytest.mark.skipif(not shutil.which("desktop-file-validate"), reason="desktop-file-validate not installed")
def test_desktop_entry_validates(tmp_path):
    path = tmp_path / "sd-fsmis.desktop"
    path.write_text(
        (LINUX / "sd-fsmis.desktop.in")
        .read_text(encoding="utf-8")
        .replace("@EXEC@", "/opt/sd-fsmis/sd-fsmis")
    )
    subprocess.run(["desktop-file-validate", str(path)], check=True)


def test_info_plist_declares_the_document_types():
    with open(PACKAGING / "macos" / "Info.plist", "rb") as handle:
        plist = plistlib.load(handle)
    assert plist["CFBundleIdentifier"] == "org.sd-fsmis.desktop" and plist["CFBundleName"] == "SD-FSMIS"
    assert plist["NSHighResolutionCapable"] is True
    declared = {t["UTTypeIdentifier"]: t for t in plist["UTImportedTypeDeclarations"]}
    extensions = {
        ext for t in declared.values() for ext in t["UTTypeTagSpecification"]["public.filename-extension"]
    }
    assert extensions == {"nii", "nii.gz", "dcm"}
    used = {uti for doc in plist["CFBundleDocumentTypes"] for uti in doc["LSItemContentTypes"]}
    assert used == set(declared)
    assert "CFBundleExecutable" not in plist  # PyInstaller's BUNDLE names the executable
    entitlements = plistlib.loads((PACKAGING / "macos" / "entitlements.plist").read_bytes())
    assert entitlements["com.apple.security.cs.allow-unsigned-executable-memory"] is True


def test_inno_setup_script_spans_disks_and_has_shortcuts_and_associations():
    text = (PACKAGING / "windows" / "sd-fsmis.iss").read_text(encoding="utf-8")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith(";")]
    setup = dict(line.split("=", 1) for line in lines[lines.index("[Setup]") + 1 :] if "=" in line)
    assert setup["DiskSpanning"] == "yes"  # torch bundles exceed the 2 GB of a single setup file
    assert setup["ChangesAssociations"] == "yes"
    assert setup["ArchitecturesInstallIn64BitMode"] == "x64compatible"
    assert setup["AppId"].startswith("{{")  # a literal brace: the GUID stays the same for upgrades
    assert (PACKAGING / "windows" / setup["SetupIconFile"].replace("\\", "/")).resolve() == (
        RESOURCES / "sd-fsmis.ico"
    )
    assert re.search(r'Source: "\{#BundleDir\}\\\*".*recursesubdirs', text)
    assert '#define BundleDir "..\\..\\dist\\sd-fsmis"' in text
    assert re.search(r'Name: "\{autoprograms\}\\\{#AppName\}"; Filename: "\{app\}\\\{#AppExe\}"', text)
    assert re.search(r'Name: "\{autodesktop\}\\\{#AppName\}".*Tasks: desktopicon', text)
    for extension in (".nii", ".dcm", ".gz"):
        assert f'Subkey: "Software\\Classes\\{extension}' in text
    assert '#define AppExe "sd-fsmis-gui.exe"' in text  # the windowed executable the spec builds on Windows
    assert '""{app}\\{#AppExe}"" gui ""%1""' in text


def test_spec_is_a_one_folder_bundle_of_the_whole_application():
    source = (PACKAGING / "sd-fsmis.spec").read_text(encoding="utf-8")
    ast.parse(source)
    assert "exclude_binaries=True" in source and "COLLECT(" in source  # one folder, not one file
    for needed in ("diffusers", "transformers", "pydicom.pixels", "highdicom", "pylibjpeg", "copy_metadata"):
        assert needed in source
    assert '"pyz+py"' in source  # transformers and diffusers read their own sources
    assert (PACKAGING / "launcher.py").is_file()
    assert "freeze_support" in (PACKAGING / "launcher.py").read_text(encoding="utf-8")
    assert 'info_plist["CFBundleIdentifier"]' in source


def test_make_targets_and_ci_build_the_bundle():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^bundle: package-setup$", makefile, re.M)
    assert re.search(r"^bundle-check: bundle$", makefile, re.M)
    assert re.search(r'pip install --quiet --no-build-isolation \$\(PIP_C\) -e "\.\[dev,package\]"', makefile)
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert ci.index("make test") < ci.index("make bundle-check")
    ignored = (ROOT / ".gitignore").read_text(encoding="utf-8").split()
    assert "build/" in ignored and "dist/" in ignored


def test_every_dependency_is_pinned_in_the_lock_within_its_range():
    """requirements/constraints.txt (uv pip compile) pins each requirement of pyproject, inside its range."""
    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    lock = (ROOT / "requirements" / "constraints.txt").read_text(encoding="utf-8")
    assert lock.startswith("# This file was autogenerated by uv")  # generated, not written by hand
    env = default_environment()
    pins: dict[str, str] = {}
    for line in lock.splitlines():
        if not line or line.startswith(" ") or line.startswith("#"):
            continue
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate(env):
            pins[req.name.lower().replace("_", "-")] = str(req.specifier).removeprefix("==")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    wanted = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        wanted += extra
    wanted += [r for r in (ROOT / "requirements" / "tools.in").read_text().split("\n") if r and r[0] != "#"]
    for text in wanted:
        req = Requirement(text)
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{name} is not pinned in requirements/constraints.txt (run make lock)"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} is outside {req}"
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "CONSTRAINTS ?= requirements/constraints.txt" in makefile
    assert re.search(r"^lock: ", makefile, re.M) and "uv pip compile" in makefile
    assert re.search(r"^check-latest:", makefile, re.M) and "CONSTRAINTS= " in makefile


# ---------------------------------------------------------------------------------------------- icons
def test_icons_exist_in_every_size_and_are_package_data():
    from PIL import Image

    for size in ICON_SIZES:
        with Image.open(RESOURCES / f"sd-fsmis-{size}.png") as image:
            assert image.size == (size, size) and image.mode == "RGBA"
            assert image.getpixel((size // 2, size // 2))[3] == 255  # opaque centre, transparent corners
            assert image.getpixel((0, 0))[3] == 0
    with Image.open(RESOURCES / "sd-fsmis.ico") as ico:
        assert {(16, 16), (32, 32), (48, 48), (256, 256)} <= set(ico.info["sizes"])
    with Image.open(RESOURCES / "sd-fsmis.icns") as icns:
        assert icns.format == "ICNS"
    ET.parse(RESOURCES / "sd-fsmis.svg")
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"][
        "package-data"
    ]
    assert {"*.svg", "*.png", "*.ico", "*.icns"} <= set(patterns["sd_fsmis.resources"])


def test_make_icons_renders_the_svg(tmp_path):
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import make_icons; "
        "sys.exit(make_icons.main(__import__('pathlib').Path(sys.argv[2])))"
    )
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    command = [sys.executable, "-c", code, str(PACKAGING), str(tmp_path)]
    subprocess.run(command, check=True, env=env, timeout=120)
    import numpy as np
    from PIL import Image

    with Image.open(tmp_path / "sd-fsmis-64.png") as new, Image.open(RESOURCES / "sd-fsmis-64.png") as old:
        assert new.size == old.size == (64, 64)
        difference = np.abs(np.asarray(new, dtype=int) - np.asarray(old, dtype=int)).mean()
        assert difference < 2.0  # the committed files are this script's output


# ------------------------------------------------------------------------------ install / uninstall
@pytest.fixture
def unpacked(tmp_path) -> Path:
    """An unpacked tarball as build.sh makes it, with a tiny stand-in for the bundle."""
    top = tmp_path / "sd-fsmis-0.1.0-linux-x86_64"
    bundle = top / "sd-fsmis"
    (bundle / "_internal").mkdir(parents=True)
    (bundle / "_internal" / "library.so").write_bytes(b"\0" * 64)
    (bundle / "sd-fsmis").write_text("#!/bin/sh\necho 'sd-fsmis 0.1.0'\n")
    (bundle / "sd-fsmis").chmod(0o755)
    for name in ("install.sh", "uninstall.sh", "README.txt"):
        shutil.copy2(LINUX / name, top / name)
    (top / "share" / "icons").mkdir(parents=True)
    for name in ("sd-fsmis.desktop.in", "sd-fsmis-nifti.xml"):
        shutil.copy2(LINUX / name, top / "share" / name)
    for path in [*RESOURCES.glob("sd-fsmis-*.png"), RESOURCES / "sd-fsmis.svg"]:
        shutil.copy2(path, top / "share" / "icons" / path.name)
    (top / "VERSION").write_text("0.1.0\n")
    return top


def _home(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    home = tmp_path / "home"
    (home / ".local" / "share" / "applications").mkdir(parents=True)
    (home / ".local" / "share" / "applications" / "other.desktop").write_text("[Desktop Entry]\n")
    (home / "notes.txt").write_text("the user's file")
    env = {
        "HOME": str(home),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
    }
    return home, env


def _tree(folder: Path) -> dict[str, str]:
    """Every path under ``folder``, with the text of the small text files (what a user would notice)."""
    texts = (".txt", ".desktop")
    return {
        str(p.relative_to(folder)): (
            p.read_text(encoding="utf-8") if p.is_file() and p.suffix in texts else ""
        )
        for p in folder.rglob("*")
    }


def _run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, env=env, capture_output=True, encoding="utf-8", timeout=60)


def test_install_adds_the_menu_entry_and_uninstall_removes_exactly_that(unpacked, tmp_path):
    home, env = _home(tmp_path)
    before = _tree(home)
    result = _run([str(unpacked / "install.sh")], env)
    assert result.returncode == 0, result.stderr
    prefix = home / ".local" / "opt" / "sd-fsmis"
    data = home / ".local" / "share"
    desktop = data / "applications" / "sd-fsmis.desktop"
    assert (prefix / "sd-fsmis").is_file() and (prefix / "_internal" / "library.so").is_file()
    assert (prefix / "uninstall.sh").is_file() and (prefix / ".install-manifest").is_file()
    link = home / ".local" / "bin" / "sd-fsmis"
    assert link.is_symlink() and os.readlink(link) == str(prefix / "sd-fsmis")
    assert _run([str(link), "--version"], env).stdout.strip() == "sd-fsmis 0.1.0"
    text = desktop.read_text(encoding="utf-8")
    assert f'Exec="{prefix}/sd-fsmis" gui %F' in text and f"TryExec={prefix}/sd-fsmis" in text
    assert "@EXEC@" not in text
    for size in ICON_SIZES:
        assert (data / "icons" / "hicolor" / f"{size}x{size}" / "apps" / "sd-fsmis.png").is_file()
    assert (data / "icons" / "hicolor" / "scalable" / "apps" / "sd-fsmis.svg").is_file()
    assert (data / "mime" / "packages" / "sd-fsmis-nifti.xml").is_file()
    manifest = (prefix / ".install-manifest").read_text(encoding="utf-8")
    assert f"f {desktop}" in manifest and f"l {link}" in manifest and f"d {prefix}" in manifest
    assert "other.desktop" not in manifest  # a folder that existed is not recorded as ours

    result = _run([str(prefix / "uninstall.sh")], env)
    assert result.returncode == 0, result.stderr
    assert _tree(home) == before  # the user's files stay; nothing of ours is left


def test_install_again_upgrades_and_a_foreign_folder_is_refused(unpacked, tmp_path):
    home, env = _home(tmp_path)
    before = _tree(home)
    prefix = tmp_path / "apps" / "SD FSMIS"  # a space in the path: quoted in the menu entry
    args = [str(unpacked / "install.sh"), "--prefix", str(prefix), "--bindir", str(tmp_path / "bin")]
    assert _run(args, env).returncode == 0
    (unpacked / "sd-fsmis" / "_internal" / "new.so").write_bytes(b"\0")
    (prefix / "_internal" / "library.so").unlink()  # the old version's file must not matter
    result = _run(args, env)
    assert result.returncode == 0, result.stderr
    assert "Removing the installation" in result.stdout
    assert (prefix / "_internal" / "new.so").is_file()
    desktop = home / ".local" / "share" / "applications" / "sd-fsmis.desktop"
    assert f'Exec="{prefix}/sd-fsmis" gui %F' in desktop.read_text(encoding="utf-8")
    assert _run([str(unpacked / "uninstall.sh"), "--prefix", str(prefix)], env).returncode == 0
    assert _tree(home) == before
    assert not prefix.exists() and not (tmp_path / "apps").exists() and not (tmp_path / "bin").exists()

    foreign = tmp_path / "somebody-else"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    result = _run([str(unpacked / "install.sh"), "--prefix", str(foreign)], env)
    assert result.returncode != 0 and "not an SD-FSMIS installation" in result.stderr
    assert (foreign / "keep.txt").read_text(encoding="utf-8") == "mine"
    result = _run([str(unpacked / "uninstall.sh"), "--prefix", str(foreign)], env)
    assert result.returncode != 0 and "no SD-FSMIS installation" in result.stderr
    assert (foreign / "keep.txt").is_file()


def test_install_refuses_a_path_a_menu_entry_cannot_hold(unpacked, tmp_path):
    home, env = _home(tmp_path)
    before = _tree(home)
    result = _run([str(unpacked / "install.sh"), "--prefix", str(tmp_path / "a$b")], env)
    assert result.returncode != 0 and "choose another --prefix" in result.stderr
    assert _tree(home) == before and not (tmp_path / "a$b").exists()


def test_install_without_menu_adds_only_the_application(unpacked, tmp_path):
    home, env = _home(tmp_path)
    before = _tree(home)
    assert _run([str(unpacked / "install.sh"), "--no-menu"], env).returncode == 0
    assert not (home / ".local" / "share" / "applications" / "sd-fsmis.desktop").exists()
    assert (home / ".local" / "opt" / "sd-fsmis" / "sd-fsmis").is_file()
    assert _run([str(home / ".local" / "opt" / "sd-fsmis" / "uninstall.sh")], env).returncode == 0
    assert _tree(home) == before


# ---------------------------------------------------------------------------------------------- layout
PACKAGE_ROOTS = {"app": "sd_fsmis", "core": "sd_fsmis.core", "ui": "sd_fsmis.ui"}


def test_every_sub_package_is_installed():
    """pyproject lists every folder with an __init__.py (a forgotten one is missing from the wheel)."""
    import tomllib

    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["tool"]["setuptools"]["packages"]
    )
    for folder, package in PACKAGE_ROOTS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / folder).parts
            name = ".".join([package, *parts])
            assert name in listed, f"{name} ({init.parent}) is not in pyproject's packages"


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [
        ("core", ("PySide6", "pyqtgraph", "sd_fsmis.ui")),
        ("ui", ("torch", "diffusers", "transformers", "SimpleITK")),
    ],
)
def test_layers_import_only_downwards(layer, forbidden):
    """core never imports Qt (nor ui); ui never imports torch, diffusers, transformers or SimpleITK."""
    import ast

    for path in (ROOT / layer).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert not any(name == f or name.startswith(f + ".") for f in forbidden), (
                    f"{path.relative_to(ROOT)} imports {name}"
                )
