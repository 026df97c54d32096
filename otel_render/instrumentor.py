"""The base class of otel-render's instrumentors.

Each integration (web frameworks, SQLAlchemy, APScheduler) is a
``BaseInstrumentor`` published under the ``opentelemetry_instrumentor`` entry
point group, so plain ``opentelemetry-instrument`` loads it. They differ from
the contrib instrumentors in one way: the launcher's dependency check reads the
``instruments`` extra of the *distribution*, and otel-render is one
distribution with several optional integrations. We therefore declare no
``instruments`` extra and let each instrumentor check its own
``instrumentation_dependencies()``: a missing Flask is a debug line and the
SQLAlchemy instrumentor loads anyway; an unsupported version is one warning.
This holds whichever distro loads us (ours, or ``opentelemetry-distro``, which
passes ``skip_dep_check=True``).
"""

from __future__ import annotations

import logging
from typing import Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor

from otel_render.config import get_settings

_logger = logging.getLogger("otel_render.instrumentor")


class RenderInstrumentor(BaseInstrumentor):  # pylint: disable=abstract-method
    """A ``BaseInstrumentor`` that always checks its own dependencies."""

    def instrument(self, **kwargs: Any) -> Any:
        kwargs.pop("skip_dep_check", None)
        if get_settings().sdk_disabled():
            return None
        conflict = self._check_dependency_conflicts()
        if conflict is not None:
            if conflict.found:
                _logger.warning("otel-render: %s", conflict)
            else:
                _logger.debug("otel-render: %s", conflict)
            return None
        return super().instrument(skip_dep_check=True, **kwargs)
