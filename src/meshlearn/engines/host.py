"""The nodes one process hosts, set up the same way by every engine.

The simulators host every node of a run, a worker of the networked engines its share: in
each case a ``NodeHost`` holds the nodes' stacked state, their local trainer, the algorithm
(with its sharing scheme), the evaluator and the per-node traffic counters, so that a new
piece of node state is added once for every engine.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from meshlearn import metrics, streams
from meshlearn.byzantine.adversary import Adversary
from meshlearn.checkpoint import CheckpointError, decode, encode
from meshlearn.evaluation import Evaluation, Evaluator
from meshlearn.nodes import NodeBatch
from meshlearn.sharing.base import dense_average
from meshlearn.streams import Stream
from meshlearn.topology.schedule import RoundGraph, TopologySchedule

__all__ = ["NodeHost", "InProcessEngine", "evaluate_if_due", "AVAILABILITY_METRICS"]

AVAILABILITY_METRICS = ("online", "rounds_online")
"""Per-node counters under churn: online this round (1/0), and rounds online so far."""


class NodeHost:
    """Builds and holds the nodes ``node_ids`` of an ``Experiment``.

    ``counters`` are cumulative int64 per-node figures the engine updates (``messages_lost``
    always; ``bytes_uncompressed`` with a lossless stage; engines add their own);
    ``node_metrics()`` is what a round report carries per node.
    """

    def __init__(self, experiment, node_ids: list[int]):
        self.experiment = experiment
        self.local_ids = [int(node) for node in node_ids]
        self.nodes = NodeBatch(torch.tensor(self.local_ids, dtype=torch.int64),
                               experiment.initial_params(self.local_ids))
        self.trainer = experiment.make_trainer(self.local_ids)
        self.trainer.init_state(self.nodes)
        self.algorithm = experiment.make_algorithm()
        self.algorithm.setup(self.nodes, experiment)
        self.evaluator = Evaluator(experiment)
        b = len(self.local_ids)
        self.bytes_sent = np.zeros(b, dtype=np.int64)      # cumulative, per node
        self.header_bytes = np.zeros(b, dtype=np.int64)    # the header part of bytes_sent
        self.counters = {"messages_lost": np.zeros(b, dtype=np.int64)}   # incoming messages lost
        self.codec = experiment.config.sharing.compression
        if self.codec != "none":   # what bytes_sent would be without the lossless stage
            self.counters["bytes_uncompressed"] = np.zeros(b, dtype=np.int64)
        self.message_bytes = 0                              # size of one of the last messages sent
        self.last_loss = torch.full((b,), float("nan"))
        self.honest = experiment.honest(self.local_ids)     # False for the Byzantine nodes
        self.adversary = Adversary(experiment, self.local_ids) if experiment.config.byzantine else None
        self.online: np.ndarray | None = None               # with churn: who (of all N) is online this round
        if experiment.availability is not None:             # round 0 (the first evaluation): everyone is online
            self.counters.update(online=np.ones(b, dtype=np.int64), rounds_online=np.zeros(b, dtype=np.int64))

    def play_round(self, rnd: int) -> torch.Tensor:
        """The algorithm's round ``rnd`` for the hosted nodes; returns their training loss.
        With churn the offline nodes do not train (``present``), the round's graphs leave them
        out, and whatever the round did to their models and state is undone."""
        if self.adversary:
            self.adversary.begin_round(self.nodes)
        if self.experiment.availability is None:
            return self.algorithm.round(self.nodes, rnd, self)
        here = self.count_online(rnd)
        if self.experiment.config.availability.on_return == "pull":
            self.pull_on_return(rnd)
        away = torch.from_numpy(np.flatnonzero(~here))
        kept = self.nodes.params[away].clone(), {name: t[away].clone() for name, t in self.nodes.state.items()}
        loss = self.algorithm.round(self.nodes, rnd, self)
        self.nodes.params[away] = kept[0]
        for name, rows in kept[1].items():
            self.nodes.state[name][away] = rows
        loss[away] = float("nan")
        return loss

    def count_online(self, rnd: int) -> np.ndarray:
        """Who is online in round ``rnd`` (``online``, all N), counted per hosted node; returns
        the hosted nodes' mask."""
        self.online = self.experiment.availability.online(rnd)
        here = self.online[self.nodes.ids.numpy()]
        self.counters["online"][:] = here
        self.counters["rounds_online"] += here
        return here

    def pull_on_return(self, rnd: int) -> dict[int, int]:
        """Nodes back online in round ``rnd`` first take the model of a random neighbour that
        is online (one exchange, before the algorithm's round, on every host alike); returns
        who pulled from whom."""
        availability, seed = self.experiment.availability, self.experiment.config.seed
        back = np.flatnonzero(availability.online(rnd) & ~availability.online(rnd - 1)) if rnd > 1 else []
        graph, sources = self.graph(rnd), {}
        for node in back:
            senders = graph.senders_of(int(node))
            if len(senders):
                pick = streams.generator(seed, Stream.AVAILABILITY, int(node), rnd, 1).integers(len(senders))
                sources[int(node)] = int(senders[pick])
        if sources:
            n = self.experiment.num_nodes
            self_weight = np.ones(n)
            self_weight[list(sources)] = 0.0
            pull = RoundGraph.from_links(n, list(sources), list(sources.values()), np.ones(len(sources)), self_weight,
                                         "pull on return")
            inbox = self.exchange(self.nodes, {"params": self.nodes.params}, rnd, graph=pull)
            # the pulled model where it arrived (a lost pull renormalizes to the own model)
            self.nodes.params.copy_(dense_average(self.nodes.params, inbox, lambda payload: payload["params"]))
        return sources

    def present(self, nodes: NodeBatch, active: torch.Tensor | None) -> torch.Tensor | None:
        """``active`` (default: all of ``nodes``) less the nodes offline this round."""
        if self.online is None:
            return active
        here = torch.from_numpy(self.online[nodes.ids.numpy()])
        return here if active is None else active & here

    def state_dict(self) -> dict:
        """Everything that decides the hosted nodes' future (see ``meshlearn.checkpoint``):
        models and per-node state, the trainer's and the algorithm's state, the counters."""
        return {"nodes": self.local_ids, "params": self.nodes.params, "state": dict(self.nodes.state),
                "last_loss": self.last_loss, "bytes_sent": self.bytes_sent, "header_bytes": self.header_bytes,
                "counters": dict(self.counters), "message_bytes": self.message_bytes,
                "trainer": self.trainer.state_dict(), "algorithm": self.algorithm.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state_dict()``'s state. Tensors and counters are copied in place, so
        whatever holds a reference to them (an engine's alias of a counter) sees the values."""
        if list(state["nodes"]) != self.local_ids:
            raise ValueError(f"the checkpoint holds nodes {_span(state['nodes'])}, this process hosts "
                             f"{_span(self.local_ids)}: resume with the same engine and number of workers")
        self.nodes.params.copy_(state["params"])
        for name, value in state["state"].items():
            if name in self.nodes.state and self.nodes.state[name].shape == value.shape:
                self.nodes.state[name].copy_(value)
            else:
                self.nodes.state[name] = value.to(self.nodes.params.device, copy=True)
        self.last_loss.copy_(state["last_loss"])
        for mine, saved in ((self.bytes_sent, state["bytes_sent"]), (self.header_bytes, state["header_bytes"]),
                            *((self.counters.setdefault(name, np.zeros_like(v)), v)
                              for name, v in state["counters"].items())):
            mine[:] = saved
        self.message_bytes = int(state["message_bytes"])
        self.trainer.load_state_dict(state["trainer"])
        self.algorithm.load_state_dict(state["algorithm"])

    def peer_views(self):
        """The peer-sampling views (``topology.kind = 'peer_sampling'``) this host keeps, if any."""
        return None

    def node_metrics(self) -> dict[str, np.ndarray]:
        """Per-node figures of a round report: the counters, the privacy spent (DP), the bytes
        of peer sampling, and the sharing scheme's own counters."""
        out = {name: values.copy() for name, values in self.counters.items()}
        if self.experiment.config.topology.kind == "peer_sampling":
            views = self.peer_views()
            out["view_bytes"] = views.sent_bytes[self.local_ids] if views is not None else np.zeros(
                len(self.local_ids), dtype=np.int64)
        if self.experiment.config.privacy.dp is not None:
            out["epsilon"] = self.trainer.epsilon(self.local_ids)
        out.update(self.algorithm.sharing.node_metrics(self.local_ids))
        return out


class InProcessEngine(NodeHost):
    """An engine that hosts every node in this process (the simulators): its state is at hand
    between rounds, so a stop signal lets the round in progress end and the run checkpoint."""

    checkpointable = True
    """It can save a checkpoint (the networked engines: unless a worker failed or the run spans machines)."""

    def start(self) -> None:
        """Nothing to launch: every node lives in this process."""

    def checkpoint(self, rnd: int, due: bool) -> dict[int, bytes] | None:
        """The encoded state after round ``rnd`` when a checkpoint is ``due`` (one host: 0)."""
        return {0: encode(self.state_dict())} if due else None

    def restore(self, hosts: dict[int, bytes], rnd: int) -> None:
        """Continue from the state ``checkpoint`` saved after round ``rnd``."""
        state = decode(hosts[0])
        try:
            self.load_state_dict(state)
        except (KeyError, IndexError, TypeError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"the checkpoint does not fit this run ({type(exc).__name__}: {exc}); start the "
                                  "run again") from None


def _span(ids) -> str:
    ids = list(ids)
    return f"{ids[0]}..{ids[-1]} ({len(ids)})" if ids else "none"


def evaluate_if_due(evaluator: Evaluator, nodes: NodeBatch, topology: TopologySchedule,
                    rnd: int, honest: np.ndarray | None = None) -> tuple[Evaluation | None, float]:
    """Round ``rnd``'s evaluation of all ``nodes`` (None when not due) and the seconds it
    took; shared by the synchronous and the asynchronous simulator so both report alike.
    Consensus and the average model are over the ``honest`` rows (default: all)."""
    if not evaluator.due(rnd):
        return None, 0.0
    t0 = time.perf_counter()
    params = nodes.params
    evaluation = evaluator.local(nodes.ids, params)
    kept = params if honest is None or honest.all() else params[torch.from_numpy(np.flatnonzero(honest))]
    evaluation.consensus_distance = metrics.consensus_distance(kept)
    evaluator.average(evaluation, kept.mean(0))
    evaluation.topology = topology.graph(rnd).describe()
    return evaluation, time.perf_counter() - t0
