"""runcue: run interdependent, rate-limited background work in parallel inside your program.

Declare services (limits), tasks (handlers) and two checks on your own artifacts --
``is_ready`` and ``is_stale`` -- then submit work; runcue decides when each piece runs.
"""

from ._artifacts import Artifact as Artifact
from ._artifacts import File as File
from ._artifacts import atomic_write as atomic_write
from ._cue import Cue as Cue
from ._durations import Exponential as Exponential
from ._durations import Uniform as Uniform
from ._errors import CostTooLargeError as CostTooLargeError
from ._errors import CueFull as CueFull
from ._errors import CueStateError as CueStateError
from ._errors import HandlerTimeout as HandlerTimeout
from ._errors import InvalidRateError as InvalidRateError
from ._errors import LeaseLost as LeaseLost
from ._errors import PendingTimeout as PendingTimeout
from ._errors import QuotaExhausted as QuotaExhausted
from ._errors import RateLimited as RateLimited
from ._errors import RuncueError as RuncueError
from ._errors import StallTimeout as StallTimeout
from ._errors import SubmitDeadlock as SubmitDeadlock
from ._errors import UnknownServiceError as UnknownServiceError
from ._errors import UnknownTaskError as UnknownTaskError
from ._errors import WorkCancelled as WorkCancelled
from ._errors import WorkNotFound as WorkNotFound
from ._errors import WorkTimeout as WorkTimeout
from ._events import EVENT_KINDS as EVENT_KINDS
from ._events import WorkEvent as WorkEvent
from ._forecast import ForecastReport as ForecastReport
from ._forecast import ServiceForecast as ServiceForecast
from ._forecast import WaitForecast as WaitForecast
from ._graph import GraphReport as GraphReport
from ._instrument import Instrumentation as Instrumentation
from ._instrument import instrument as instrument
from ._plan import Plan as Plan
from ._plan import PlanEntry as PlanEntry
from ._progress import progress as progress
from ._progress import render_stats as render_stats
from ._rate import RateSpec as RateSpec
from ._rate import parse_rate as parse_rate
from ._redis import RedisStore as RedisStore
from ._stats import CueStats as CueStats
from ._stats import LimitState as LimitState
from ._stats import RateWindowStats as RateWindowStats
from ._stats import ServiceStats as ServiceStats
from ._store import CostStore as CostStore
from ._store import Grant as Grant
from ._store import Store as Store
from ._stream import WorkStream as WorkStream
from ._task import Backoff as Backoff
from ._task import TaskSpec as TaskSpec
from ._tenants import Tenants as Tenants
from ._timeline import Timeline as Timeline
from ._timeline import trace as trace
from ._work import PriorityContext as PriorityContext
from ._work import WorkState as WorkState
from ._work import WorkUnit as WorkUnit

__version__ = "0.3.0"

__all__ = [
    "Artifact",
    "Backoff",
    "CostTooLargeError",
    "CostStore",
    "Cue",
    "EVENT_KINDS",
    "Exponential",
    "File",
    "ForecastReport",
    "Grant",
    "GraphReport",
    "CueFull",
    "CueStateError",
    "CueStats",
    "HandlerTimeout",
    "Instrumentation",
    "InvalidRateError",
    "LeaseLost",
    "LimitState",
    "QuotaExhausted",
    "PendingTimeout",
    "Plan",
    "PlanEntry",
    "PriorityContext",
    "RateLimited",
    "RateSpec",
    "RateWindowStats",
    "RedisStore",
    "RuncueError",
    "ServiceForecast",
    "ServiceStats",
    "StallTimeout",
    "Store",
    "SubmitDeadlock",
    "TaskSpec",
    "Tenants",
    "Timeline",
    "Uniform",
    "UnknownServiceError",
    "UnknownTaskError",
    "WaitForecast",
    "WorkCancelled",
    "WorkEvent",
    "WorkNotFound",
    "WorkState",
    "WorkStream",
    "WorkTimeout",
    "WorkUnit",
    "atomic_write",
    "instrument",
    "parse_rate",
    "progress",
    "render_stats",
    "trace",
]

for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("runcue._"):
        _obj.__module__ = "runcue"
del _name, _obj
