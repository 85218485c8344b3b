"""The project exception survives the trips a user error takes between processes."""

import copy
import pickle

from mammoxai.errors import MammoXAIError, first_of


def test_a_user_error_survives_pickling_with_its_parts():
    """A worker process (the synthetic-study renderer, a data-loader worker) sends its errors to the parent
    pickled; the default pickling of an exception with a three-part ``__init__`` fails on unpickling."""
    error = MammoXAIError("scan.dcm", "Modality is CT, not a mammogram (MG/DX)", "pass an MG or DX image")
    for copied in (pickle.loads(pickle.dumps(error)), copy.copy(error)):
        assert type(copied) is MammoXAIError
        assert (copied.source, copied.problem, copied.fix) == (error.source, error.problem, error.fix)
        assert str(copied) == "scan.dcm: Modality is CT, not a mammogram (MG/DX) (pass an MG or DX image)"
    assert str(pickle.loads(pickle.dumps(MammoXAIError("size", "is 3")))) == "size: is 3"


def test_first_of_names_up_to_the_limit_and_counts_the_rest():
    assert first_of(["a", "b", "c", "d"], 2) == "a, b and 2 more"
    assert first_of(["a", "b"], 2) == first_of(["a", "b"], 3) == "a, b"
    assert first_of([], 3) == ""
