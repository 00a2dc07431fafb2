"""`sd-fsmis --check-imports`: a failed import names the module or data file at the root of its error."""

from __future__ import annotations

import sys
import textwrap

import pytest

from sd_fsmis import import_check


@pytest.fixture
def broken_packages(tmp_path, monkeypatch):
    """Packages failing at import as in a frozen bundle: a missing module, a missing data file."""
    data_pkg = tmp_path / "needs_data"
    data_pkg.mkdir()
    (data_pkg / "__init__.py").write_text(
        textwrap.dedent(
            """
            from pathlib import Path
            try:
                DATA = (Path(__file__).parent / "depends.json").read_text()
            except OSError as exc:
                raise FileNotFoundError("Cannot load dependency data") from exc
            """
        )
    )
    wrapper = tmp_path / "lazy_wrapper.py"
    wrapper.write_text(
        textwrap.dedent(
            """
            try:
                import needs_data
            except Exception as exc:
                raise RuntimeError("Failed to import lazy_wrapper.models") from exc
            """
        )
    )
    (tmp_path / "needs_module.py").write_text("import module_that_is_not_bundled\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for name in ("needs_data", "lazy_wrapper", "needs_module"):
        sys.modules.pop(name, None)


def test_root_cause_names_the_missing_data_file_through_the_chain(broken_packages):
    count, failures = import_check.check_imports(["lazy_wrapper", "json"])
    assert count == 2
    [failure] = failures
    assert failure.imported == "lazy_wrapper"
    assert "depends.json" in failure.missing and failure.missing.startswith("data file")
    assert "needs_data" in failure.missing  # shown from the package folder on, as inside a bundle
    assert "RuntimeError" in failure.line()


def test_root_cause_names_the_missing_module(broken_packages):
    _, [failure] = import_check.check_imports(["needs_module"])
    assert failure.missing == "module 'module_that_is_not_bundled'"


def test_lazy_attribute_failures_are_reported(broken_packages):
    _, [failure] = import_check.check_imports([], {"json": ["loads", "no_such_name"]})
    assert failure.imported == "json.no_such_name"


def test_application_modules_cover_core_and_ui():
    names = import_check.application_modules()
    assert "sd_fsmis.cli" in names and "sd_fsmis.commands.segment" in names
    assert any(n.startswith("sd_fsmis.core.") for n in names)
    assert any(n.startswith("sd_fsmis.ui.") for n in names)
    assert not any(n.endswith("__main__") for n in names)
