"""``runcue.instrument()``: turn OpenTelemetry on for a cue, without importing it until then.

The implementation lives in ``_otel``, which imports ``opentelemetry`` at its top; this
module only checks the arguments and imports ``_otel`` when asked, so ``import runcue`` and
any cue that is not instrumented never load OpenTelemetry.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import anyio.from_thread

if TYPE_CHECKING:
    from types import TracebackType

    from ._cue import Cue

__all__ = ["INSTALL_HINT", "Instrumentation", "instrument"]

INSTALL_HINT = "pip install 'runcue[otel]'"

AttributeValue = str | bool | int | float


class Instrumentation:
    """A cue's OpenTelemetry instrumentation, as :func:`instrument` returns it.

    :meth:`close` turns it off (also when used as ``with runcue.instrument(cue): ...``).
    """

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop listening; end the spans of attempts still running; a second call does nothing.

        The counts of queued and running work drop by what this instrumentation added for
        work that has not finished, and the window gauges stop reporting this cue. (The
        instruments themselves stay registered with the meter provider: OpenTelemetry has no
        way to remove one.)
        """
        raise NotImplementedError

    def __enter__(self) -> Instrumentation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def instrument(
    cue: Cue,
    tracer_provider: Any = None,
    meter_provider: Any = None,
    *,
    attributes: Mapping[str, AttributeValue] | None = None,
) -> Instrumentation:
    """Report ``cue`` to OpenTelemetry: a span per attempt and metrics per service.

    ::

        instrumentation = runcue.instrument(cue)     # the global providers
        ...
        instrumentation.close()                      # off again

    Every attempt is a span named after its task, from the handler's start to its end, with
    the attributes ``runcue.task``, ``runcue.service``, ``runcue.work.id``,
    ``runcue.attempt``, ``runcue.wait_seconds`` (from queued, or from the previous
    attempt's end, to this start) and ``runcue.outcome`` (``completed``, ``failed``,
    ``retried``, ``rate_limited`` or ``cancelled``). A retry (and a start again after a
    ``RateLimited`` pause) is linked to the previous attempt's span. The span's parent is
    the span that was current where ``cue.submit()`` was called, if any.

    Metrics, with ``runcue.service`` and ``runcue.task`` attributes: ``runcue.work.queued``
    and ``runcue.work.running`` (up-down counters), the counters ``runcue.work.started``
    (attempts), ``.completed``, ``.failed``, ``.retried``, ``.skipped``, ``.cancelled``, the
    histograms ``runcue.work.wait_time`` and ``runcue.work.run_time`` (seconds; run time
    also by ``runcue.outcome``), and per rate window (``runcue.service``,
    ``runcue.window.period`` in seconds) the gauges ``runcue.limit.window.used`` and
    ``runcue.limit.window.limit``.

    It is a listener (:meth:`Cue.subscribe`): it adds nothing to a cue that is not
    instrumented, and OpenTelemetry is imported only by this call.

    :param tracer_provider: an OpenTelemetry ``TracerProvider`` (default: the global one).
    :param meter_provider: an OpenTelemetry ``MeterProvider`` (default: the global one).
    :param attributes: added to every span and measurement, e.g. ``{"runcue.cue": "ocr"}``
        to tell two cues apart.
    :raises ImportError: without OpenTelemetry's API installed (the message says
        ``pip install 'runcue[otel]'``).
    :raises TypeError: for something else than a ``Cue``, a provider of the wrong kind, or
        attributes that OpenTelemetry cannot carry.
    """
    from ._cue import Cue

    if not isinstance(cue, Cue):
        msg = f"instrument() needs a runcue.Cue as its first argument, got {cue!r}"
        raise TypeError(msg)
    extra = _checked_attributes(attributes)
    try:
        from . import _otel
    except ImportError as exc:
        if not (exc.name or "").startswith("opentelemetry"):
            raise
        msg = (
            "runcue.instrument() reports to OpenTelemetry, whose API package is not"
            f" installed; install it with: {INSTALL_HINT}"
        )
        raise ImportError(msg, name="opentelemetry") from exc
    if "token" not in inspect.signature(anyio.from_thread.run_sync).parameters:
        msg = (
            "runcue.instrument() needs anyio >= 4.11 (its window gauges read the cue on its"
            f" event loop); install it with: {INSTALL_HINT}"
        )
        raise ImportError(msg, name="anyio")
    return _otel.instrument(cue, tracer_provider, meter_provider, extra)


def _checked_attributes(attributes: Mapping[str, AttributeValue] | None) -> dict[str, Any]:
    if attributes is None:
        return {}
    if not isinstance(attributes, Mapping):
        msg = f"attributes must be a mapping of str to str/bool/int/float, got {attributes!r}"
        raise TypeError(msg)
    for key, value in attributes.items():
        if not isinstance(key, str) or not isinstance(value, AttributeValue):
            msg = (
                f"attributes must map str to str/bool/int/float, got {key!r}: {value!r};"
                " convert the value to one of those"
            )
            raise TypeError(msg)
    return dict(attributes)
