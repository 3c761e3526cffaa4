"""labelq: a large language model as a calibrated text classifier for batch work.

The domain core. It imports nothing from `api`, `worker` or `db`; heavy engines (vLLM, torch) are
imported only inside the backend that uses them.
"""

from labelq.errors import InputError, LabelqError, NotFound, SpecError
from labelq.spec import ClassifierSpec, load_spec

__all__ = ["ClassifierSpec", "InputError", "LabelqError", "NotFound", "SpecError", "load_spec"]
__version__ = "0.1.0"
