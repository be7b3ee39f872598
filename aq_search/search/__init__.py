"""The AutoQuant search: search spaces, pipelines and the Optuna study."""

from ._autoquant import AutoQuant, AutoQuantResult, CountingEval
from ._pipeline import (
    Pipeline,
    PipelineRun,
    RunContext,
    SchemeConfig,
    SchemeSelectConfig,
    Stage,
    StageError,
    StageResult,
    pipeline_from_dict,
    run_pipeline,
    suggest_pipeline,
)
from ._scheme import AIMET_SCHEME_CANDIDATES
from ._space import (
    STAGES,
    SearchSpace,
    builtin_spaces,
    load_search_space,
    validate_ordering,
)
from ._storage import make_storage
from ._task import load_task

__all__ = [
    "AIMET_SCHEME_CANDIDATES",
    "STAGES",
    "AutoQuant",
    "AutoQuantResult",
    "CountingEval",
    "Pipeline",
    "PipelineRun",
    "RunContext",
    "SchemeConfig",
    "SchemeSelectConfig",
    "SearchSpace",
    "Stage",
    "StageError",
    "StageResult",
    "builtin_spaces",
    "load_search_space",
    "load_task",
    "make_storage",
    "pipeline_from_dict",
    "run_pipeline",
    "suggest_pipeline",
    "validate_ordering",
]
