"""Node dynamics: how nodes come and go (availability)."""

from meshlearn.dynamics.availability import Availability, read_trace

__all__ = ["Availability", "read_trace"]
