"""Progress meters for long, jitted work (a strategy object, as in diffrax).

Training runs as a sequence of compiled chunks; after each chunk the driver calls
``meter.update(n, **diagnostics)``.  Pass :class:`NoProgressMeter` (or
``progress_bar=False``) to silence it.
"""

from __future__ import annotations

__all__ = ["ProgressMeter", "TqdmProgressMeter", "NoProgressMeter", "as_progress_meter"]


class ProgressMeter:
    """Interface of a progress meter: ``start``, ``update`` and ``close``.

    Subclass it to send training progress elsewhere (a log file, a notebook
    widget) and pass an instance as ``progress_bar`` to
    :func:`numpyro_jko.jko.fit`.

    Examples
    --------
    A meter that prints one line per update:

    >>> class PrintMeter(ProgressMeter):
    ...     def start(self, total, description):
    ...         self.done, self.total = 0, total
    ...     def update(self, n, **diagnostics):
    ...         self.done += n
    ...         print(f"{self.done}/{self.total}", diagnostics)
    ...     def close(self):
    ...         print("done")
    >>> meter = PrintMeter()
    >>> meter.start(20, "JKO")
    >>> meter.update(10, layer="C1/2", loss=0.5)
    10/20 {'layer': 'C1/2', 'loss': 0.5}
    >>> meter.close()
    done
    """

    def start(self, total: int, description: str) -> None:  # pragma: no cover
        """Begin a run of ``total`` units of work (training iterations and layers).

        Examples
        --------
        >>> NoProgressMeter().start(100, "JKO")
        """
        raise NotImplementedError

    def update(self, n: int, **diagnostics) -> None:  # pragma: no cover
        """Record ``n`` more units done, with the latest diagnostics.

        :func:`numpyro_jko.jko.fit` passes ``layer`` (``"C1/4"``, ``"R2"``...),
        ``loss``, ``tau``, ``log_c`` and ``rej`` (the last rejection rate).

        Examples
        --------
        >>> NoProgressMeter().update(10, layer="C1/4", loss=0.25)
        """
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover
        """End the run; called even when training raises.

        Examples
        --------
        >>> NoProgressMeter().close()
        """
        raise NotImplementedError


class NoProgressMeter(ProgressMeter):
    """Shows nothing.

    Examples
    --------
    >>> NoProgressMeter().update(1, loss=0.0)
    """

    def start(self, total, description):
        """Do nothing.

        Examples
        --------
        >>> NoProgressMeter().start(10, "JKO")
        """

    def update(self, n, **diagnostics):
        """Do nothing.

        Examples
        --------
        >>> NoProgressMeter().update(10, loss=0.5)
        """

    def close(self):
        """Do nothing.

        Examples
        --------
        >>> NoProgressMeter().close()
        """


class TqdmProgressMeter(ProgressMeter):
    """A tqdm bar whose postfix shows the latest diagnostics (loss, rejection rate...).

    Parameters
    ----------
    leave : bool
        Keep the bar on screen when done.
    disable : bool or None
        Passed to tqdm: ``True`` hides the bar, ``None`` hides it when the output
        is not a terminal.

    Examples
    --------
    >>> meter = TqdmProgressMeter(disable=True)  # disabled: no bar in doctests
    >>> meter.start(5, "JKO")
    >>> meter.update(5, loss=1.25)
    >>> meter.close()
    """

    def __init__(self, leave: bool = True, disable: bool | None = None):
        self.leave = leave
        self.disable = disable
        self._bar = None

    def start(self, total, description):
        """Open a new bar of ``total`` steps (closing any open one).

        Examples
        --------
        >>> meter = TqdmProgressMeter(disable=True)
        >>> meter.start(100, "JKO")
        >>> meter.close()
        """
        from tqdm.auto import tqdm

        self.close()
        self._bar = tqdm(
            total=total, desc=description, leave=self.leave, disable=self.disable
        )

    def update(self, n, **diagnostics):
        """Advance the bar by ``n`` and show ``diagnostics`` as its postfix.

        Floats are shown to 4 significant digits; a no-op before :meth:`start`.

        Examples
        --------
        >>> meter = TqdmProgressMeter(disable=True)
        >>> meter.start(100, "JKO")
        >>> meter.update(50, layer="C1/2", loss=0.123456)
        >>> meter.close()
        """
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
        """Replace the text in front of the bar (a no-op when no bar is open).

        Examples
        --------
        >>> meter = TqdmProgressMeter(disable=True)
        >>> meter.start(10, "JKO")
        >>> meter.set_description("JKO (refit)")
        >>> meter.close()
        """
        if self._bar is not None:
            self._bar.set_description(description, refresh=False)

    def close(self):
        """Close the bar; safe to call more than once.

        Examples
        --------
        >>> meter = TqdmProgressMeter(disable=True)
        >>> meter.start(10, "JKO")
        >>> meter.close()
        >>> meter.close()
        """
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def as_progress_meter(progress_bar) -> ProgressMeter:
    """Accept ``True``/``False`` or a :class:`ProgressMeter` instance.

    ``True`` gives a :class:`TqdmProgressMeter`, ``False`` a
    :class:`NoProgressMeter`; a meter is returned as it is.

    Examples
    --------
    >>> type(as_progress_meter(False)).__name__
    'NoProgressMeter'
    >>> type(as_progress_meter(True)).__name__
    'TqdmProgressMeter'
    >>> meter = NoProgressMeter()
    >>> as_progress_meter(meter) is meter
    True
    """
    if isinstance(progress_bar, ProgressMeter):
        return progress_bar
    return TqdmProgressMeter() if progress_bar else NoProgressMeter()
