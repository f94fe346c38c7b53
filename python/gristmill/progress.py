"""The one progress-bar helper every stage uses.

``progress_bar(enabled, desc=..., total=..., unit=...)`` is a tqdm bar on stderr, or, when
``enabled`` is false, a stand-in with the same methods that does nothing and is falsy
(``bar.write if bar else print`` still prints). Both are context managers.

tqdm is a base dependency (small, pure Python, nothing of its own to install): progress is
on by default in every stage, including the byte-level ones a plain ``pip install gristmill``
runs, so it is imported plainly here rather than quietly dropped when missing.
"""

from __future__ import annotations

import weakref
from typing import Any

__all__ = ["NoBar", "close_all", "progress_bar"]

# Bars still open, so that the command line can end them before printing an error (a bar
# left mid-line would swallow the start of the message).
_open_bars: weakref.WeakSet = weakref.WeakSet()


class NoBar:
    """Stands in for a tqdm bar when progress is off: every method does nothing."""

    n = 0
    total = None

    def __bool__(self) -> bool:
        return False

    def update(self, n: float = 1) -> None:
        self.n += n

    def refresh(self, *args: Any, **kwargs: Any) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def set_postfix_str(self, *args: Any, **kwargs: Any) -> None:
        pass

    def set_description(self, *args: Any, **kwargs: Any) -> None:
        pass

    def write(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> NoBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


def progress_bar(enabled: bool, *, desc: str | None = None, total: float | None = None,
                 unit: str = "it", **options: Any):
    """A tqdm bar (``tqdm.auto``: a widget in notebooks) when ``enabled``, else a :class:`NoBar`.

    Args:
        enabled: show the bar (the stages' ``progress`` argument).
        desc, total, unit: as tqdm takes them; ``options`` are passed on (``initial``,
            ``unit_scale``, ``smoothing``, ...).
    """
    if not enabled:
        return NoBar()
    from tqdm.auto import tqdm

    bar = tqdm(desc=desc, total=total, unit=unit, **{"dynamic_ncols": True, **options})
    _open_bars.add(bar)
    return bar


def close_all() -> None:
    """Closes every bar still open (before an error message is printed)."""
    for bar in list(_open_bars):
        try:
            bar.close()
        except Exception:  # a bar half torn down already: nothing more to show
            pass
