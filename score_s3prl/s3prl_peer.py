"""A pytest plugin that runs s3prl's own unit tests on this stack: ``compat.apply()`` first.

s3prl 0.4.18's offline tests (its repository's ``test/`` folder) are a peer check of the shims:
they exercise ``torchaudio.save``/``load``/``info`` and ``sox_effects`` the way s3prl itself does.
Usage (README "s3prl's own tests")::

    python -m pytest -p score_s3prl.s3prl_peer S3PRL_CHECKOUT/test/test_sox.py ...
"""

from __future__ import annotations

import pytest

from .stack import require_loadable


def pytest_configure(config: pytest.Config) -> None:
    require_loadable()
    from . import compat

    compat.apply()
