"""The built-in LLM's address: the pool's own socket, spoken to like any OpenAI-compatible server.

With ``[llm] base_url`` empty the pool hosts the model (``[models.LLM]``) and serves
``/v1/chat/completions`` on its socket (``gpu_pool/openai_api.py``); the core's LLM
client reaches it with the openai package, the same code that talks to Ollama or vLLM.
"""

from __future__ import annotations

from typing import Any

import httpx2
import openai

from core.llm import BUILTIN_URL


def connection(pool_url: str) -> dict[str, Any]:
    """``base_url`` and ``http_client`` for ``core.llm.LLM`` to reach the pool at ``pool_url``
    (``unix:/path/to/pool.sock`` or ``http://host:port``)."""
    if pool_url.startswith("unix:"):
        transport = httpx2.AsyncHTTPTransport(uds=pool_url[len("unix:"):])
        # openai's client class keeps the SDK's defaults (timeouts, connection limits); only the transport differs
        return {"base_url": BUILTIN_URL, "http_client": openai.DefaultAsyncHttpxClient(transport=transport)}
    return {"base_url": pool_url.rstrip("/") + "/v1", "http_client": None}
