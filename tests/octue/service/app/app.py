"""A minimal Octue Twined app: `{"x": n}` -> `{"doubled": 2n}`; `{"fail": "why"}` raises.

octue's runner imports this module (`app.py` in the service's `app_source_path`) and calls
`run(analysis)`; the input values were validated against `twine.json` before, and the output
values are validated when the analysis is finalised.
"""

import logging

logger = logging.getLogger(__name__)


class OctueAppFailure(Exception):
    """What the app raises when asked to fail (octue sends its name and message to the asker)."""


def run(analysis):
    values = analysis.input_values
    if "fail" in values:
        raise OctueAppFailure(f"octue-app was asked to fail: {values['fail']}")
    logger.info("octue-app doubles %r", values["x"])
    analysis.output_values = {"doubled": 2 * values["x"]}
