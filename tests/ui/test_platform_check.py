"""Before the window opens on X11: missing system libraries of Qt's xcb plugin give one line naming them."""

from __future__ import annotations

from sd_fsmis.ui import platform_check
from sd_fsmis.ui.platform_check import XCB_LIBRARIES, uses_xcb, xcb_problem

X11 = {"DISPLAY": ":0"}


def test_xcb_is_used_on_x11_only():
    assert uses_xcb(X11, "linux")
    assert not uses_xcb({"DISPLAY": ":0", "WAYLAND_DISPLAY": "wayland-0"}, "linux")  # Qt takes wayland
    assert not uses_xcb({"DISPLAY": ":0", "QT_QPA_PLATFORM": "offscreen"}, "linux")
    assert uses_xcb({"QT_QPA_PLATFORM": "xcb"}, "linux")
    assert not uses_xcb(X11, "win32") and not uses_xcb(X11, "darwin")


def test_missing_libraries_are_named_with_the_install_commands():
    missing = {"libxcb-icccm.so.4", "libxcb-keysyms.so.1", "libxcb-cursor.so.0"}
    line = xcb_problem(X11, "linux", loads=lambda soname: soname not in missing)
    assert "\n" not in line
    for soname in missing:
        assert soname in line
    assert "sudo apt install libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1" in line
    assert "sudo dnf install xcb-util-cursor xcb-util-wm xcb-util-keysyms" in line


def test_nothing_to_say_when_all_load_or_without_x11():
    assert xcb_problem(X11, "linux", loads=lambda soname: True) == ""
    assert xcb_problem({"WAYLAND_DISPLAY": "w"}, "linux", loads=lambda soname: False) == ""


def test_the_real_loader_finds_a_library_that_is_there_and_not_one_that_is_not():
    assert platform_check._loads("libc.so.6")
    assert not platform_check._loads("libsd-fsmis-no-such-library.so.0")
    assert len({lib.soname for lib in XCB_LIBRARIES}) == len(XCB_LIBRARIES)


def test_the_application_stops_with_the_line_before_qt_aborts(monkeypatch, capsys):
    from sd_fsmis.ui import application

    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    monkeypatch.setattr(platform_check, "_loads", lambda soname: soname != "libxcb-icccm.so.4")
    assert [lib.soname for lib in platform_check.missing_xcb_libraries()] == ["libxcb-icccm.so.4"]
    monkeypatch.setattr("sys.platform", "linux")
    assert application.run_application() == 2
    err = capsys.readouterr().err
    assert err.startswith("sd-fsmis: error: the window cannot open") and "libxcb-icccm4" in err
