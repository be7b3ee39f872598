"""Every error class lives in ``aq_search._errors`` and is the same object where it used to be importable."""

import aq_search
from aq_search import _errors
from aq_search.export import OnnxExportError, ResultLoadError


def test_error_classes_are_defined_once_in_errors_module() -> None:
    assert OnnxExportError is _errors.OnnxExportError and ResultLoadError is _errors.ResultLoadError
    for name in _errors.__all__:
        cls = getattr(_errors, name)
        assert cls.__module__ == "aq_search._errors", name
        assert issubclass(cls, _errors.AQSearchError), name
        assert getattr(aq_search, name) is cls, name
