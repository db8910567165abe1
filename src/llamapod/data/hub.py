"""Is the Hugging Face hub reachable? Asked once, quickly, before any hub call: offline,
``datasets`` and ``transformers`` otherwise retry for half a minute before failing."""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from urllib.parse import urlparse

HUB_TIMEOUT_S = 3.0


def hub_host() -> str:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    return urlparse(endpoint).hostname or "huggingface.co"


def offline_forced() -> bool:
    return any(os.environ.get(var, "").lower() in ("1", "true", "yes", "on")
               for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"))


@lru_cache(maxsize=1)
def hub_reachable() -> bool:
    if offline_forced():
        return False
    try:
        with socket.create_connection((hub_host(), 443), timeout=HUB_TIMEOUT_S):
            return True
    except OSError:
        return False


def use_local_cache_only() -> None:
    """Put huggingface_hub/datasets in offline mode so they answer from the cache at once."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    import sys

    # Constants are read at import; patch them where the libraries are already loaded.
    if "huggingface_hub" in sys.modules:
        import huggingface_hub.constants as hub_constants

        hub_constants.HF_HUB_OFFLINE = True
    if "datasets" in sys.modules:
        import datasets.config

        datasets.config.HF_HUB_OFFLINE = True
        if hasattr(datasets.config, "HF_DATASETS_OFFLINE"):
            datasets.config.HF_DATASETS_OFFLINE = True
