"""The pre-flight checklist, automated: ``run_checklist`` and ``python -m dsnb.checklist RECIPE.yaml``.

``checks`` holds one decision per check (a ``CheckRow``: pass / warn / fail / n.a., the measured value
beside its threshold and the reason), ``shift`` the data-shift measures, ``measure`` the short run,
thread timing and checkpoint round trip, ``run`` puts them together. Taught in notebook 11.
"""

from dsnb.checklist.checks import CheckRow
from dsnb.checklist.run import Checklist, run_checklist

__all__ = ["CheckRow", "Checklist", "run_checklist"]
