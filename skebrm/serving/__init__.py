"""An OpenRLHF-compatible reward server for :class:`~skebrm.RefinedRewardModel` (FastAPI).

``skebrm-serve --model DIR`` runs it; :func:`create_app` builds the app for a bundle in
process. Needs the ``serve`` extra (``pip install 'skebrm[serve]'``).
"""

from skebrm.serving.app import (
    RequestError,
    ServerSettings,
    create_app,
    parse_json,
    parse_reward_request,
    special_tokens,
    strip_token_sources,
)
from skebrm.serving.batcher import MicroBatcher, ServerBusyError

__all__ = [
    "MicroBatcher",
    "RequestError",
    "ServerBusyError",
    "ServerSettings",
    "create_app",
    "parse_json",
    "parse_reward_request",
    "special_tokens",
    "strip_token_sources",
]
