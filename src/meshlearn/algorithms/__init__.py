"""Decentralized-learning algorithms, written once for every engine."""

from meshlearn.algorithms.base import Algorithm, RoundContext
from meshlearn.algorithms.dpsgd import DPSGD
from meshlearn.algorithms.federated import FedAvg, ParameterServer
from meshlearn.sharing import Sharing

ALGORITHMS: dict[str, type[Algorithm]] = {"dpsgd": DPSGD, "fedavg": FedAvg, "parameter_server": ParameterServer}


def build(name: str, sharing: Sharing, **options) -> Algorithm:
    if name not in ALGORITHMS:
        raise ValueError(f"algorithm.name = {name!r} is unknown; use one of {sorted(ALGORITHMS)}")
    return ALGORITHMS[name](sharing, **options)


__all__ = ["Algorithm", "RoundContext", "DPSGD", "FedAvg", "ParameterServer", "ALGORITHMS", "build"]
