from __future__ import annotations

from collections.abc import Callable
from types import FrameType
from typing import Any

from monitor.state.sites import RawSite, SiteCapture, format_site

LIBRARY = "/site-packages/fakelib/"

# A stand-in for SQLAlchemy: frames whose file is under the library prefix. `pool_checkout`
# plays the instrumented pool; `engine_connect` and `session_execute` are two call paths of
# different depths into it.
_LIBRARY_SOURCE = """
def pool_checkout(take):
    return take()

def raw_connection(take):
    return pool_checkout(take)

def engine_connect(take):
    return raw_connection(take)

def session_execute(take):
    return engine_connect(take)

def call_back(function):
    return function()
"""
library: dict[str, Any] = {}
exec(compile(_LIBRARY_SOURCE, LIBRARY + "engine.py", "exec"), library)


def names(site: RawSite) -> list[str]:
    return [code.co_name for code, _ in site]


def taker(capture: SiteCapture) -> Callable[[], RawSite]:
    # skip 2: capture itself and this lambda, so the walk starts at the pool frame
    return lambda: capture.capture(2)


def direct_caller(capture: SiteCapture) -> RawSite:
    site: RawSite = library["engine_connect"](taker(capture))
    return site


def session_caller(capture: SiteCapture) -> RawSite:
    site: RawSite = library["session_execute"](taker(capture))
    return site


def route(capture: SiteCapture, caller: Callable[[SiteCapture], RawSite]) -> RawSite:
    return caller(capture)


def test_library_frames_are_skipped_and_app_frames_kept_innermost_first() -> None:
    capture = SiteCapture((LIBRARY,))
    site = route(capture, direct_caller)
    assert names(site)[:2] == ["direct_caller", "route"]
    frame = format_site(site)[0]
    assert frame.filename == __file__
    assert "engine_connect" in frame.source  # the line that took the connection


def test_the_remembered_path_gives_the_same_site_as_the_walk() -> None:
    capture = SiteCapture((LIBRARY,))
    sites = [route(capture, direct_caller) for _ in range(2)]  # walks, then jumps
    assert len(capture._paths) == 1
    assert format_site(sites[1]) == format_site(sites[0])


def test_paths_of_different_depths_are_told_apart() -> None:
    capture = SiteCapture((LIBRARY,))
    for _ in range(3):  # alternate, so each capture may hit the other path's remembered depth
        assert names(route(capture, direct_caller))[0] == "direct_caller"
        assert names(route(capture, session_caller))[0] == "session_caller"


def test_at_most_max_kept_frames_and_none_past_the_library() -> None:
    capture = SiteCapture((LIBRARY,), max_kept=2)
    assert names(route(capture, direct_caller)) == ["direct_caller", "route"]

    def wrapped() -> RawSite:
        return direct_caller(capture)

    # a library frame above the app stops the walk: framework plumbing is not the site
    site: RawSite = library["call_back"](wrapped)
    assert names(site) == ["direct_caller", "wrapped"]
    assert names(SiteCapture((LIBRARY,), max_kept=1).capture(1)) == [
        "test_at_most_max_kept_frames_and_none_past_the_library"
    ]


def test_a_stack_without_app_frames_continues_in_the_outer_frame() -> None:
    # An async engine runs the pool in a greenlet: the app's frames are in the parent greenlet.
    everything = ("/", "<")
    assert SiteCapture(everything).capture(1) == ()
    outer = _module_frame("app/handlers.py")
    site = SiteCapture(everything, outer_frame=lambda: outer).capture(1)
    assert [code.co_filename for code, _ in site] == ["app/handlers.py"]


def _module_frame(filename: str) -> FrameType:
    namespace: dict[str, Any] = {}
    exec(compile("import sys\nframe = sys._getframe()", filename, "exec"), namespace)
    frame: FrameType = namespace["frame"]
    return frame


def test_code_cache_is_bounded() -> None:
    capture = SiteCapture((LIBRARY,))
    for index in range(25_000):  # code objects made at run time, as templates and exec do
        code = compile("lambda: 0", f"/app/generated_{index}.py", "eval")
        capture._is_library(code)
    assert len(capture._codes) <= 20_000
    assert names(route(capture, direct_caller))[0] == "direct_caller"


def view(capture: SiteCapture, through_helper: bool) -> RawSite:
    if through_helper:
        return helper(capture)
    site: RawSite = library["session_execute"](taker(capture))
    return site


def helper(capture: SiteCapture) -> RawSite:
    # one app frame more and one library frame less: `view` sits at the same depth as before
    site: RawSite = library["engine_connect"](taker(capture))
    return site


def test_a_remembered_depth_never_skips_an_app_frame_inside_it() -> None:
    capture = SiteCapture((LIBRARY,))
    assert names(view(capture, through_helper=False))[0] == "view"
    assert names(view(capture, through_helper=True))[:2] == ["helper", "view"]
