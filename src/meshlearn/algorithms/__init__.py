"""Decentralized-learning algorithms, written once for every engine."""

from meshlearn.algorithms.asynchronous import ADPSGD, AsyncAlgorithm, AsyncContext, GossipLearning, Message
from meshlearn.algorithms.base import Algorithm, RoundContext
from meshlearn.algorithms.deprl import DePRL
from meshlearn.algorithms.ditto import Ditto
from meshlearn.algorithms.dpsgd import DPSGD
from meshlearn.algorithms.federated import STC, FedAvg, ParameterServer
from meshlearn.algorithms.finetune import FineTuned
from meshlearn.algorithms.local import LocalOnly
from meshlearn.algorithms.pens import PENS

ALGORITHMS: dict[str, type[Algorithm]] = {
    cls.name: cls for cls in (DPSGD, LocalOnly, FineTuned, DePRL, Ditto, PENS, FedAvg, ParameterServer, STC,
                              GossipLearning, ADPSGD)
}

__all__ = ["Algorithm", "AsyncAlgorithm", "RoundContext", "AsyncContext", "Message", "DPSGD", "FedAvg",
           "ParameterServer", "STC", "GossipLearning", "ADPSGD", "LocalOnly", "FineTuned", "DePRL", "Ditto", "PENS",
           "ALGORITHMS"]
