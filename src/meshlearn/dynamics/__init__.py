"""Node dynamics: how nodes come and go (availability) and how fast they compute."""

from meshlearn.dynamics.availability import Availability, read_trace
from meshlearn.dynamics.compute import late, training_times

__all__ = ["Availability", "read_trace", "training_times", "late"]
