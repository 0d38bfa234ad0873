"""Progress meters for long, jitted work (a strategy object, as in diffrax).

Training runs as a sequence of compiled chunks; after each chunk the driver calls
``meter.update(n, **diagnostics)``.  Pass :class:`NoProgressMeter` (or
``progress_bar=False``) to silence it.
"""

from __future__ import annotations

__all__ = ["ProgressMeter", "TqdmProgressMeter", "NoProgressMeter", "as_progress_meter"]


class ProgressMeter:
    """Interface of a progress meter: ``start``, ``update`` and ``close``.

    Examples
    --------
    >>> meter = NoProgressMeter()
    >>> meter.start(10, "train")
    >>> meter.update(10, loss=0.1)
    >>> meter.close()
    """

    def start(self, total: int, description: str) -> None:  # pragma: no cover
        raise NotImplementedError

    def update(self, n: int, **diagnostics) -> None:  # pragma: no cover
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover
        raise NotImplementedError


class NoProgressMeter(ProgressMeter):
    """Shows nothing.

    Examples
    --------
    >>> NoProgressMeter().update(1, loss=0.0)
    """

    def start(self, total, description):
        pass

    def update(self, n, **diagnostics):
        pass

    def close(self):
        pass


class TqdmProgressMeter(ProgressMeter):
    """A tqdm bar whose postfix shows the latest diagnostics (loss, rejection rate...).

    Parameters
    ----------
    leave : bool
        Keep the bar on screen when done.

    Examples
    --------
    >>> meter = TqdmProgressMeter(disable=True)
    >>> meter.start(5, "JKO")
    >>> meter.update(5, loss=1.25)
    >>> meter.close()
    """

    def __init__(self, leave: bool = True, disable: bool | None = None):
        self.leave = leave
        self.disable = disable
        self._bar = None

    def start(self, total, description):
        from tqdm.auto import tqdm

        self.close()
        self._bar = tqdm(
            total=total, desc=description, leave=self.leave, disable=self.disable
        )

    def update(self, n, **diagnostics):
        if self._bar is None:
            return
        if diagnostics:
            self._bar.set_postfix(
                {
                    k: (f"{v:.4g}" if isinstance(v, float) else v)
                    for k, v in diagnostics.items()
                },
                refresh=False,
            )
        self._bar.update(n)

    def set_description(self, description: str) -> None:
        if self._bar is not None:
            self._bar.set_description(description, refresh=False)

    def close(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def as_progress_meter(progress_bar) -> ProgressMeter:
    """Accept ``True``/``False`` or a :class:`ProgressMeter` instance.

    Examples
    --------
    >>> type(as_progress_meter(False)).__name__
    'NoProgressMeter'
    """
    if isinstance(progress_bar, ProgressMeter):
        return progress_bar
    return TqdmProgressMeter() if progress_bar else NoProgressMeter()
