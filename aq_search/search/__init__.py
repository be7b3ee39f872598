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
from ._space import (
    AIMET_SCHEME_CANDIDATES,
    STAGES,
    SearchSpace,
    builtin_spaces,
    load_search_space,
    validate_ordering,
)

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
    "pipeline_from_dict",
    "run_pipeline",
    "suggest_pipeline",
    "validate_ordering",
]
