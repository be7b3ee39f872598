"""The shared config behaviour: allowlisted dicts, YAML, error wording."""

from __future__ import annotations

import pytest
import yaml

from aq_search import InvalidInputError
from aq_search.techniques import AdaRoundParams, BatchNormFoldConfig, BiasCorrectionConfig, CLEConfig, registered_techniques


@pytest.mark.parametrize(
    "config",
    [
        BatchNormFoldConfig(fold_into_following=False),
        CLEConfig(replace_relu6="unclipped", num_std=2, relu6_clip_tolerance=0.01),
        AdaRoundParams(
            num_batches=3, num_iterations=500, beta_range=(10, 3), use_quantized_inputs=True, learning_rate=1e-2, seed=11
        ),
        BiasCorrectionConfig(num_batches=3),
    ],
)
def test_non_default_configs_round_trip(config: object) -> None:
    cls = type(config)
    data = config.to_dict()  # type: ignore[attr-defined]
    assert all(isinstance(v, (bool, int, float, str, list)) for v in data.values())
    assert cls.from_dict(yaml.safe_load(yaml.safe_dump(data))) == config  # type: ignore[attr-defined]
    assert hash(config) == hash(cls.from_dict(data))  # type: ignore[attr-defined]


def test_unknown_key_is_named_with_the_source() -> None:
    with pytest.raises(InvalidInputError, match=r"Unknown key\(s\) \['num_batch'\] for AdaRoundParams in space.yaml"):
        AdaRoundParams.from_dict({"num_batch": 2}, where="space.yaml")
    with pytest.raises(InvalidInputError, match="needs a mapping"):
        CLEConfig.from_dict([("num_std", 3)])  # type: ignore[arg-type]


def test_registry_ids_match_config_classes() -> None:
    specs = registered_techniques()
    assert {"bnf", "cle", "adaround", "bc"} <= set(specs)
    assert all(spec.config_class.technique == key for key, spec in specs.items())
    assert {s.acts_on for s in specs.values()} == {"model", "scheme", "sim"}
