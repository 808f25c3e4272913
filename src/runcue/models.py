"""The data models under the names runcue 0.2 used (``from runcue.models import ...``)."""

from ._task import TaskSpec as TaskType
from ._work import PriorityContext as PriorityContext
from ._work import WorkState as WorkState
from ._work import WorkUnit as WorkUnit

__all__ = ["PriorityContext", "TaskType", "WorkState", "WorkUnit"]
