"""Multi-step flows, each one tool to the LLM.

The registry in core/tools lists these flows and they build on core/tools:
importing it first lets a flow module be imported on its own.
"""

import core.tools  # noqa: F401
