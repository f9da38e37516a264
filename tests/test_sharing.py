"""Sharing schemes: equivalences with D-PSGD, partial-model averaging, CHOCO's public copies,
exact byte accounting, and the same results whether nodes share a process or exchange messages."""

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from conftest import small_config
from meshlearn import topology, wire
from meshlearn.config import ConfigError, load_config, parse_config
from meshlearn.engines.reference import ReferenceDPSGD
from meshlearn.engines.sim import SimEngine, SimInbox
from meshlearn.experiment import Experiment
from meshlearn.nodes import NodeBatch
from meshlearn.sharing import ChocoSharing, Inbox, TopKSharing, compressors, partial_average

EXAMPLES = Path(__file__).parent.parent / "examples" / "sharing"

SCHEMES = {
    "full": {"name": "full"},
    "random-seed": {"name": "random", "fraction": 0.1},
    "random-explicit": {"name": "random", "fraction": 0.1, "indices": "explicit"},
    "topk": {"name": "topk", "fraction": 0.1},
    "topk-ef-indices": {"name": "topk", "fraction": 0.01, "error_feedback": True},
    "choco-topk": {"name": "choco", "gamma": 0.5},
    "choco-randomk": {"name": "choco", "gamma": 0.4, "compressor": {"name": "randomk", "fraction": 0.2}},
    "choco-qsgd": {"name": "choco", "gamma": 0.3, "compressor": {"name": "qsgd", "levels": 3, "bucket_size": 64}},
    "choco-uniform": {"name": "choco", "gamma": 0.8, "compressor": {"name": "uniform", "bits": 4}},
    "quantize-qsgd": {"name": "quantize", "levels": 7, "bucket_size": 100},
    "quantize-uniform": {"name": "quantize", "method": "uniform", "bits": 8, "bucket_size": 0},
    "topk-zstd": {"name": "topk", "fraction": 0.1, "compression": "zstd"},
    "full-lz4": {"name": "full", "compression": "lz4"},
    "choco-zstd": {"name": "choco", "gamma": 0.5, "compression": "zstd"},
    "choco-stc": {"name": "choco", "gamma": 0.3, "compressor": {"name": "stc", "fraction": 0.05}},
    "topk-elias": {"name": "topk", "options": {"fraction": 0.1, "support": "indices"}, "compression": "elias"},
    "quantize-fpzip": {"name": "quantize", "options": {"method": "fpzip", "precision": 12},
                       "compression": "elias-fpzip"},
    "choco-fpzip": {"name": "choco", "options": {"gamma": 0.5, "compressor": {"name": "fpzip", "precision": 16}},
                    "compression": "fpzip"},
    "jwins": {"name": "jwins", "options": {"fractions": [0.1, 0.3], "level": 3}},
    "jwins-fft": {"name": "jwins", "options": {"transform": "fft", "fractions": [0.2], "error_feedback": True}},
    "jwins-elias": {"name": "jwins", "options": {"fractions": [0.1, 0.3], "support": "indices"},
                    "compression": "elias-fpzip"},
}


def run_rounds(engine, rounds):
    for rnd in range(1, rounds + 1):
        engine.run_round(rnd)
    return engine


def sim(rounds=3, **overrides):
    return run_rounds(SimEngine(Experiment.build(small_config(**overrides))), rounds)


# ---------------------------------------------------------------------------
# equivalences


def test_full_through_the_interface_is_dpsgd():
    exp = Experiment.build(small_config(sharing={"name": "full"}))
    engine, ref = SimEngine(exp), ReferenceDPSGD(exp)
    for rnd in range(1, 4):
        engine.run_round(rnd)
        ref.run_round(rnd)
    assert (engine.nodes.params - ref.params()).abs().max().item() <= 1e-5


@pytest.mark.parametrize("training", [{}, {"momentum": 0.9}])
def test_choco_with_identity_compressor_is_dpsgd(training):
    cfg = small_config(sharing={"name": "choco", "gamma": 1.0, "compressor": {"name": "identity"}},
                       training={"local_steps": 3, "batch_size": 8, "lr": 0.05, **training})
    exp = Experiment.build(cfg)
    engine, ref = SimEngine(exp), ReferenceDPSGD(exp)
    for rnd in range(1, 5):
        engine.run_round(rnd)
        ref.run_round(rnd)
    assert (engine.nodes.params - ref.params()).abs().max().item() <= 1e-5


@pytest.mark.parametrize("scheme", [
    {"name": "topk", "fraction": 1.0},
    {"name": "topk", "fraction": 1.0, "error_feedback": True},
    {"name": "random", "fraction": 1.0},
])
def test_fraction_one_is_full_sharing(scheme):
    full = sim(sharing={"name": "full"})
    partial = sim(sharing=scheme)
    assert (full.nodes.params - partial.nodes.params).abs().max().item() <= 1e-5


@pytest.mark.parametrize("error_feedback", [False, True])
def test_jwins_without_a_transform_is_topk_on_the_raw_change(error_feedback):
    topk = sim(sharing={"name": "topk", "fraction": 0.1, "error_feedback": error_feedback})
    jwins = sim(sharing={"name": "jwins", "options": {"fractions": [0.1], "level": 0, "error_feedback": error_feedback}})
    assert torch.equal(topk.nodes.params, jwins.nodes.params) and (topk.bytes_sent == jwins.bytes_sent).all()


@pytest.mark.parametrize("transform", [{"wavelet": "haar"}, {"wavelet": "sym4", "level": 2}, {"transform": "fft"}])
def test_jwins_sending_every_coefficient_is_full_sharing(transform):
    full = sim(sharing={"name": "full"})
    jwins = sim(sharing={"name": "jwins", "options": {"fractions": [1.0], **transform}})
    assert (full.nodes.params - jwins.nodes.params).abs().max().item() <= 1e-5


def test_jwins_draws_one_budget_per_round_from_its_list_and_refuses_bad_options():
    cfg = parse_config({"sharing": {"name": "jwins", "options": {"fractions": [0.1, 0.5], "wavelet": "db2",
                                                                  "level": 2}}}, check_files=False)
    scheme = cfg.sharing.build(seed=7)
    nodes = NodeBatch(torch.arange(3), torch.randn(3, 1000, generator=torch.Generator().manual_seed(0)))
    scheme.setup(nodes)
    coefficients = scheme.forward(nodes.params)
    assert coefficients.shape[1] == sum(scheme.lengths) > 1000   # db2 pads at the edges
    torch.testing.assert_close(scheme.inverse(coefficients), nodes.params, atol=1e-5, rtol=0)
    budgets = [scheme.fraction(rnd) for rnd in range(1, 41)]
    assert set(budgets) == {0.1, 0.5} and budgets == [cfg.sharing.build(seed=7).fraction(r) for r in range(1, 41)]
    for rnd in (1, 2, 3):
        payload = scheme.encode(nodes, rnd)
        assert payload["values"].shape == (3, round(scheme.fraction(rnd) * coefficients.shape[1]))
        values, mask = scheme.decode_partial(payload)
        assert values.shape == coefficients.shape and mask.sum(1).tolist() == [payload["values"].shape[1]] * 3
    with pytest.raises(wire.MessageError, match="fits none of the budgets"):
        scheme.decode_partial({"values": torch.zeros(1, 7), "indices": torch.zeros(1, 7, dtype=torch.int16)})
    for options, message in [({"wavelet": "morlet"}, "not a PyWavelets discrete wavelet"),
                             ({"fractions": []}, "fractions"), ({"fractions": [0.0]}, "fractions"),
                             ({"level": 30}, "level = 30: a model of")]:
        with pytest.raises((ConfigError, ValueError), match=message):
            sim(sharing={"name": "jwins", "options": options}, rounds=1)


def test_random_seed_and_explicit_indices_give_the_same_models_for_fewer_bytes():
    seeded = sim(sharing={"name": "random", "fraction": 0.1, "indices": "seed"})
    explicit = sim(sharing={"name": "random", "fraction": 0.1, "indices": "explicit"})
    assert torch.equal(seeded.nodes.params, explicit.nodes.params)
    assert (seeded.bytes_sent < explicit.bytes_sent).all()


@pytest.mark.parametrize("scheme", ["random-seed", "quantize-qsgd", "choco-randomk"])
def test_random_schemes_follow_the_experiment_seed(scheme):
    a, b = sim(sharing=SCHEMES[scheme]), sim(sharing=SCHEMES[scheme])
    assert torch.equal(a.nodes.params, b.nodes.params)
    # Another experiment seed changes data and initial models too; hold those fixed and vary
    # only the sharing's seed, so the draws themselves must depend on it.
    cfg = parse_config({"sharing": SCHEMES[scheme]}, check_files=False)
    params = torch.randn(4, 500, generator=torch.Generator().manual_seed(0))

    def draws(seed):
        scheme_s = cfg.sharing.build(seed=seed)
        nodes = NodeBatch(torch.arange(4), params.clone())
        scheme_s.setup(nodes)
        return {k: t for k, t in scheme_s.encode(nodes, 1).items() if k != "seed"}  # seeds differ trivially

    same, other = draws(3), draws(4)
    assert all(torch.equal(same[k], t) for k, t in draws(3).items())
    assert any(not torch.equal(same[k], t) for k, t in other.items())


# ---------------------------------------------------------------------------
# partial-model averaging


def test_partial_average_hand_computed():
    # three nodes, all connected: w_ii = 1/2, w_ij = 1/4
    weights = sp.csr_matrix(np.array([[0, .25, .25], [.25, 0, .25], [.25, .25, 0]], dtype=np.float32))
    inbox = SimInbox(weights, torch.full((3,), 0.5), {
        "values": torch.tensor([[0., 2., 0.], [10., 0., 30.], [0., 0., 300.]]),
        "mask": torch.tensor([[0., 1., 0.], [1., 0., 1.], [0., 0., 1.]]),  # 0 sends x_1; 1 sends x_0, x_2; 2 sends x_2
    })
    params = torch.tensor([[1., 2., 3.], [10., 20., 30.], [100., 200., 300.]])
    out = partial_average(params, inbox, lambda p: (p["values"], p["mask"]))
    expected = torch.tensor([
        [(0.5 * 1 + 0.25 * 10) / 0.75, 2.0, 0.5 * 3 + 0.25 * 30 + 0.25 * 300],  # nobody sent x_1 to node 0
        [10.0, (0.5 * 20 + 0.25 * 2) / 0.75, (0.5 * 30 + 0.25 * 300) / 0.75],
        [(0.5 * 100 + 0.25 * 10) / 0.75, (0.5 * 200 + 0.25 * 2) / 0.75, (0.5 * 300 + 0.25 * 30) / 0.75],
    ])
    assert expected[0, 0] == 4 and expected[1, 1] == 14 and expected[2, 0] == 70
    torch.testing.assert_close(out, expected)


def test_partial_average_with_every_coordinate_sent_is_the_gossip_average():
    weights = sp.csr_matrix(np.array([[0, .3], [.6, 0]], dtype=np.float32))
    x = torch.tensor([[1., -2.], [4., 8.]])
    inbox = SimInbox(weights, torch.tensor([.7, .4]), {"x": x})
    out = partial_average(x, inbox, lambda p: (p["x"], torch.ones_like(p["x"])))
    torch.testing.assert_close(out, torch.tensor([[.7 * 1 + .3 * 4, .7 * -2 + .3 * 8], [.6 * 1 + .4 * 4, .6 * -2 + .4 * 8]]))


def test_topk_and_random_send_what_they_claim():
    size, rows = 50, torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    top = compressors.TopK(0.1)
    top.setup(size)
    payload = top.compress(rows, torch.arange(3), 1)
    values, mask = top.decompress_partial(payload)
    assert (mask.sum(1) == 5).all()
    for i in range(3):  # the 5 largest magnitudes, at their own positions
        chosen = set(rows[i].abs().topk(5).indices.tolist())
        assert set(mask[i].nonzero().flatten().tolist()) == chosen
        assert torch.equal(values[i][mask[i].bool()], rows[i][mask[i].bool()])
    rand = compressors.RandomK(0.2, "seed", seed=7)
    rand.setup(size)
    a = rand.decompress_partial(rand.compress(rows, torch.tensor([3, 7, 12]), 5))[1]
    b = rand.decompress_partial(rand.compress(rows[:1], torch.tensor([3]), 5))[1]
    c = rand.decompress_partial(rand.compress(rows[:1], torch.tensor([3]), 6))[1]
    assert torch.equal(a[0], b[0]) and not torch.equal(b, c)  # by node id and round, not by row
    assert not torch.equal(a[0], a[1])


def test_topk_error_feedback_measures_change_from_the_last_sent_values():
    def node(*values):  # one node, 100 parameters, k = 1
        return torch.tensor([[*values] + [0.0] * (100 - len(values))])

    scheme = TopKSharing(fraction=0.01, error_feedback=True)
    nodes = NodeBatch(torch.arange(1), torch.zeros(1, 100))
    scheme.setup(nodes)
    nodes.params = node(1.0, 0.6, 0.5)
    assert scheme.encode(nodes, 1)["indices"].tolist() == [[0]]  # 0.6 and 0.5 stay unsent
    nodes.params = node(1.0, 0.6, 0.9, 0.1)
    payload = scheme.encode(nodes, 2)  # changes since last sent: 0, 0.6, 0.9, 0.1
    assert payload["indices"].tolist() == [[2]] and payload["values"].tolist() == [[pytest.approx(0.9)]]
    nodes.params = node(1.0, 0.6, 0.9, 0.1)
    assert scheme.encode(nodes, 3)["indices"].tolist() == [[1]]  # the residual of round 1 is still there

    plain = TopKSharing(fraction=0.01)
    nodes = NodeBatch(torch.arange(1), torch.zeros(1, 100))
    plain.setup(nodes)
    nodes.params = node(0.0, 0.6, 0.5)
    assert plain.encode(nodes, 1)["indices"].tolist() == [[1]]


# ---------------------------------------------------------------------------
# CHOCO-SGD


def test_choco_public_copies_stay_consistent():
    cfg = small_config(sharing={"name": "choco", "gamma": 0.5, "compressor": {"name": "qsgd", "levels": 3}})
    engine = SimEngine(Experiment.build(cfg))
    scheme = engine.algorithm.sharing
    exchange = engine.exchange
    copies = torch.zeros_like(engine.nodes.params)  # what the receivers rebuild of every x̂_j

    def recording_exchange(nodes, payload, rnd):
        for j in range(cfg.nodes):  # as a receiver would: from the message alone
            msg = wire.decode(wire.encode(wire.Message("r", j, rnd, "model", {k: t[j] for k, t in payload.items()})))
            copies[j] += scheme.compressor.decompress({k: t.unsqueeze(0) for k, t in msg.tensors.items()})[0]
        return exchange(nodes, payload, rnd)

    engine.exchange = recording_exchange
    run_rounds(engine, 6)
    public = engine.nodes.state["choco_public"]
    assert public.abs().max() > 0.01
    assert torch.equal(copies, public)  # bit for bit
    neighbours = torch.from_numpy(engine.graph(1).weights.toarray()).float() @ public
    torch.testing.assert_close(engine.nodes.state["choco_neighbours"], neighbours, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("compressor", [{"name": "topk", "fraction": 0.1}, {"name": "qsgd", "levels": 3},
                                        {"name": "randomk", "fraction": 0.2}])
def test_choco_gossip_keeps_the_average_and_reaches_consensus(compressor):
    n, size = 16, 200
    graph = topology.build("regular", n, seed=1, degree=3)
    mixing = topology.mixing_matrix(graph, "metropolis_hastings").tocsr()
    off = (mixing - sp.diags(mixing.diagonal())).tocsr().astype(np.float32)
    off.eliminate_zeros()
    self_weight = torch.from_numpy(mixing.diagonal().astype(np.float32))
    scheme = ChocoSharing(gamma=0.1, compressor=compressor)
    nodes = NodeBatch(torch.arange(n), torch.randn(n, size, generator=torch.Generator().manual_seed(0)))
    scheme.setup(nodes)
    mean, spread = nodes.params.mean(0), nodes.params.var(0).sum()
    for rnd in range(1, 401):
        scheme.aggregate(nodes, SimInbox(off, self_weight, scheme.encode(nodes, rnd)))
    torch.testing.assert_close(nodes.params.mean(0), mean, atol=1e-4, rtol=0)  # symmetric W: the sum is kept
    assert nodes.params.var(0).sum() < 1e-3 * spread


# ---------------------------------------------------------------------------
# exact bytes


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_bytes_are_exact_wire_sizes(scheme):
    cfg = small_config(sharing=SCHEMES[scheme], model={"name": "mlp", "options": {"hidden": [16]}})
    engine = SimEngine(Experiment.build(cfg), run_id="abc")
    codec = cfg.sharing.compression
    payloads = []
    exchange = engine.exchange
    engine.exchange = lambda nodes, payload, rnd: (payloads.append({k: t.clone() for k, t in payload.items()}),
                                                   exchange(nodes, payload, rnd))[1]
    before = engine.bytes_sent.copy()
    run_rounds(engine, 2)
    graph = engine.experiment.graph
    for node in range(cfg.nodes):
        total = raw = 0
        for rnd, payload in enumerate(payloads, start=1):
            tensors = {k: t[node] for k, t in payload.items()}
            for dst in graph.neighbors(node):
                msg = wire.Message("abc", node, rnd, "model", tensors, {"dst": dst})
                frames = wire.encode(msg, codec)
                total += sum(len(f) for f in frames)
                raw += wire.message_nbytes(msg)
                back = wire.decode(frames)
                assert all(torch.equal(back.tensors[k], t) for k, t in tensors.items())
        assert engine.bytes_sent[node] - before[node] == total
        if codec != "none":   # what the messages would have been without the lossless stage
            assert engine.counters["bytes_uncompressed"][node] == raw
        else:
            assert total == raw and "bytes_uncompressed" not in engine.counters
    size = engine.experiment.layout.size
    body = sum(t[0].numel() * t.element_size() for t in payloads[0].values())
    expect = {"full": 1.0, "random-seed": 0.1, "quantize-qsgd": 4 / 32, "quantize-uniform": 8 / 32}
    if scheme in expect:  # and the payload is the size the scheme promises
        assert abs(body / (4 * size) - expect[scheme]) < 0.02, body / (4 * size)
    if scheme == "topk-ef-indices":
        assert "indices" in payloads[0] and payloads[0]["indices"].dtype == torch.int16
    if scheme == "topk":
        assert "bitmask" in payloads[0]
    if codec in ("elias", "fpzip", "elias-fpzip"):  # the stage shrinks what it takes: indices, rounded floats
        assert (engine.bytes_sent - before < engine.counters["bytes_uncompressed"]).all()


# ---------------------------------------------------------------------------
# the same sharing code over messages, with nodes spread over "workers"


class MessageInbox(Inbox):
    """A worker's inbox: per local receiver, its senders' decoded messages stacked, decoded at once."""

    def __init__(self, self_weight, received):
        self.self_weight = self_weight
        self.received = received  # per row: (weights (S,), stacked payload)

    def weighted_sum(self, decode):
        return torch.stack([(weights.unsqueeze(1) * decode(payload).reshape(len(weights), -1)).sum(0)
                            for weights, payload in self.received])


def perturb(nodes, rnd):
    """Stand-in for local training, a function of (node id, round) only."""
    for row, node in enumerate(nodes.ids.tolist()):
        gen = torch.Generator().manual_seed(1000 * rnd + node)
        nodes.params[row] += 0.05 * torch.randn(nodes.params.shape[1], generator=gen)


@pytest.mark.parametrize("scheme", ["random-seed", "topk-ef-indices", "choco-qsgd", "choco-randomk", "quantize-qsgd",
                                    "quantize-uniform", "topk-zstd", "jwins", "jwins-fft", "topk-elias",
                                    "quantize-fpzip"])
def test_message_passing_workers_match_the_simulator(scheme):
    cfg = parse_config({"seed": 5, "sharing": SCHEMES[scheme]}, check_files=False)
    n, size = 8, 300
    graph = topology.build("regular", n, seed=2, degree=3)
    mixing = topology.mixing_matrix(graph, "metropolis_hastings").tocsr()
    w = torch.from_numpy(mixing.toarray().astype(np.float32))
    off = (mixing - sp.diags(mixing.diagonal())).tocsr().astype(np.float32)
    off.eliminate_zeros()
    init = torch.randn(n, size, generator=torch.Generator().manual_seed(0))

    def build():
        return cfg.sharing.build(seed=cfg.seed)

    one = NodeBatch(torch.arange(n), init.clone())
    single = build()
    single.setup(one)
    workers = [NodeBatch(torch.tensor(ids), init[ids].clone()) for ids in ([3, 0, 6], [1, 2, 4, 5, 7])]
    schemes = [build() for _ in workers]
    for scheme_w, nodes in zip(schemes, workers):
        scheme_w.setup(nodes)
    for rnd in range(1, 5):
        perturb(one, rnd)
        single.aggregate(one, SimInbox(off, torch.diagonal(w).clone(), single.encode(one, rnd)))
        mail = {j: [] for j in range(n)}
        for scheme_w, nodes in zip(schemes, workers):
            perturb(nodes, rnd)
            payload = scheme_w.encode(nodes, rnd)
            for row, src in enumerate(nodes.ids.tolist()):
                for dst in graph.neighbors(src):
                    frames = [bytes(f) for f in wire.encode(wire.Message(
                        "r", src, rnd, "model", {k: t[row] for k, t in payload.items()}, {"dst": dst}),
                        cfg.sharing.compression)]
                    mail[dst].append(wire.decode(frames))
        for scheme_w, nodes in zip(schemes, workers):
            received = []
            for dst in nodes.ids.tolist():
                msgs = sorted(mail[dst], key=lambda m: m.src)
                stacked = {k: torch.stack([m.tensors[k] for m in msgs]) for k in msgs[0].tensors}
                received.append((w[dst, [m.src for m in msgs]], stacked))
            scheme_w.aggregate(nodes, MessageInbox(torch.diagonal(w)[nodes.ids].clone(), received))
    for nodes in workers:
        torch.testing.assert_close(nodes.params, one.params[nodes.ids], atol=1e-5, rtol=1e-5)
        for key, value in nodes.state.items():
            torch.testing.assert_close(value, one.state[key][nodes.ids], atol=1e-5, rtol=1e-5)


COMPRESSORS = {
    "identity": lambda: compressors.Identity(),
    "topk-indices": lambda: compressors.TopK(0.01),
    "topk-bitmask": lambda: compressors.TopK(0.2),
    "randomk-seed": lambda: compressors.RandomK(0.1, "seed", seed=1),
    "randomk-explicit": lambda: compressors.RandomK(0.3, "explicit", seed=1),
    "qsgd": lambda: compressors.QSGD(levels=5, bucket_size=64, seed=1),
    "uniform": lambda: compressors.Uniform(bits=3, bucket_size=0),
}


def compressed(name, size=300, ids=(5, 1, 9, 2)):
    comp = COMPRESSORS[name]()
    comp.setup(size)
    rows = torch.randn(len(ids), size, generator=torch.Generator().manual_seed(0))
    return comp, rows, comp.compress(rows, torch.tensor(ids), 3)


@pytest.mark.parametrize("name", list(COMPRESSORS))
def test_decoders_treat_zero_one_and_many_senders_alike(name):
    """Workers decode a 0-row template for shapes and one sender at a time; the simulator all at once."""
    comp, rows, payload = compressed(name)
    values, mask = comp.decompress_partial(payload)
    assert values.shape == mask.shape == rows.shape
    for i in range(len(rows)):
        one = comp.decompress_partial({k: t[i:i + 1] for k, t in payload.items()})
        assert torch.equal(one[0][0], values[i]) and torch.equal(one[1][0], mask[i])
        alone = comp.compress(rows[i:i + 1], torch.tensor([[5, 1, 9, 2][i]]), 3)  # a node hosted elsewhere
        assert all(torch.equal(alone[k][0], t[i]) for k, t in payload.items())
    empty = comp.decompress_partial({k: t[:0] for k, t in payload.items()})
    assert empty[0].shape == empty[1].shape == (0, rows.shape[1])


def hostile(name, payload):
    """Payloads a sender could put on the wire, each invalid for the receiver's configuration."""
    yield "missing tensor", {k: t for k, t in list(payload.items())[1:]}
    first = next(iter(payload))
    yield "no sender dimension", dict(payload, **{first: payload[first][0]})
    yield "wrong dtype", dict(payload, **{first: payload[first].to(torch.float64)})
    if len(payload) > 1:
        yield "senders disagree across tensors", dict(payload, **{first: payload[first][:1]})
    if "indices" in payload:
        idx = payload["indices"]
        for label, position, bad in (("out of bounds", -1, 300), ("negative", 0, -1), ("repeated", 0, int(idx[0, 1]))):
            changed = idx.clone()
            changed[0, position] = bad
            yield f"index {label}", dict(payload, indices=changed)
    if "bitmask" in payload:
        changed = payload["bitmask"].clone()
        changed[0, 0] ^= 1
        yield "bitmask selects k ± 1", dict(payload, bitmask=changed)
    if "seed" in payload:
        yield "negative seed", dict(payload, seed=-payload["seed"] - 1)
    if name == "qsgd":
        yield "code above 2·levels", dict(payload, codes=torch.full_like(payload["codes"], 0xFF))
        yield "negative norm", dict(payload, norms=-payload["norms"] - 1)
    if name == "uniform":
        yield "negative scale", dict(payload, scale=-payload["scale"] - 1)
    if name == "stc":
        yield "negative mean", dict(payload, mean=-payload["mean"] - 1)
        yield "signs of another k", dict(payload, signs=payload["signs"][:, :-1])


@pytest.mark.parametrize("name", list(COMPRESSORS))
def test_decoders_reject_hostile_payloads_with_a_message_error(name):
    comp, _, payload = compressed(name)
    cases = list(hostile(name, payload))
    assert len(cases) >= 3
    for label, bad in cases:
        with pytest.raises(wire.MessageError):
            comp.decompress_partial(bad)
            pytest.fail(f"accepted: {label}")


def test_decoders_reject_payloads_of_another_configuration():
    top = compressors.TopK(0.01)
    top.setup(1000)
    payload = top.compress(torch.randn(2, 1000), torch.arange(2), 1)
    other = compressors.TopK(0.02)
    other.setup(1000)
    with pytest.raises(wire.MessageError, match="disagree"):
        other.decompress(payload)
    bad = dict(payload, indices=payload["indices"].flip(1))
    with pytest.raises(wire.MessageError, match="increasing"):
        top.decompress(bad)


# ---------------------------------------------------------------------------
# quantizers


@pytest.mark.parametrize("bits", range(1, 9))
def test_bit_packing_round_trips(bits):
    codes = torch.randint(0, 2**bits, (3, 37), dtype=torch.uint8)
    packed = compressors.pack_bits(codes, bits)
    assert packed.shape == (3, (37 * bits + 7) // 8)
    assert torch.equal(compressors.unpack_bits(packed, bits, 37), codes)


def test_qsgd_is_unbiased_and_uniform_is_within_half_a_step():
    size, draws = 40, 2000
    v = torch.randn(1, size, generator=torch.Generator().manual_seed(0))
    q = compressors.QSGD(levels=2, bucket_size=16)
    q.setup(size)
    samples = torch.stack([q.decompress(q.compress(v, torch.tensor([0]), rnd)) for rnd in range(draws)])
    # within 5 standard errors of v in every coordinate (coordinates on a level have no error);
    # rounding to nearest instead would be off by up to half a level, 20 standard errors here
    error = (samples.mean(0) - v).abs()
    assert (error <= 5 * samples.std(0) / draws**0.5 + 1e-6).all(), error.max()
    assert len(set(samples[:, 0, 0].tolist())) == 2  # and it is random: two neighbouring levels
    u = compressors.Uniform(bits=8, bucket_size=16)
    u.setup(size)
    payload = u.compress(v, torch.tensor([0]), 1)
    step = payload["scale"].repeat_interleave(16, dim=1)[:, :size]
    assert ((u.decompress(payload) - v).abs() <= step / 2 + 1e-6).all()


# ---------------------------------------------------------------------------
# configuration and examples


@pytest.mark.parametrize("raw, hint", [
    ({"name": "topk", "fraction": 0}, "sharing.options.fraction = 0: Input should be greater than 0"),
    ({"name": "random", "options": {"fraction": 1.5}}, "sharing.options.fraction = 1.5: Input should be less"),
    ({"name": "topk", "gamma": 0.5}, "sharing.options.gamma is not an option of sharing.name = 'topk'; its "
                                     "options: fraction = 0.1, error_feedback = False"),
    ({"name": "full", "options": {"fraction": 0.1}}, "sharing.options.fraction is not an option"),
    ({"name": "choco", "gamma": 1.5}, "sharing.options.gamma = 1.5: Input should be less than or equal to 1"),
    ({"name": "choco", "compressor": {"name": "topk", "bits": 4}},
     "sharing.options.compressor.options.bits is not an option of sharing.options.compressor = 'topk'"),
    ({"name": "choco", "options": {"compressor": "gzip"}}, "sharing.options.compressor = 'gzip' is unknown"),
    ({"name": "quantize", "levels": 200}, "sharing.options.levels = 200: Input should be less than or equal to 127"),
    ({"name": "quantize", "method": "uniform", "bits": 9}, "sharing.options.bits = 9"),
    ({"name": "quantize", "method": "exact"}, "sharing.options.method = 'exact': Input should be 'qsgd', 'uniform' or 'fpzip'"),
    ({"name": "topk", "fraction": 0.2, "options": {"fraction": 0.1}}, "keep only options.fraction"),
    ({"name": "topk", "compression": "gzip"}, "sharing.compression"),
    ({"name": "sparse"}, "sharing.name"),
])
def test_invalid_sharing_options_name_the_key(raw, hint):
    with pytest.raises(ConfigError) as err:
        parse_config({"sharing": raw}, check_files=False)
    assert hint in str(err.value), str(err.value)


def test_defaults_are_filled_in_and_the_resolved_config_reloads():
    cfg = parse_config({"sharing": {"name": "choco"}}, check_files=False)
    assert cfg.sharing.options == {"gamma": 0.2, "compressor": {"name": "topk", "options": {"fraction": 0.1, "support": "smaller"}}}
    again = parse_config(cfg.to_toml_dict(), check_files=False)
    assert again == cfg
    assert parse_config({}, check_files=False).sharing.name == "full"


def test_example_configs_load_and_run():
    paths = sorted(EXAMPLES.glob("*.toml"))
    assert {p.stem for p in paths} >= {"full", "random", "topk", "choco", "quantize"}
    for path in paths:
        cfg = load_config(path)
        assert cfg.sharing.name == path.stem
        engine = SimEngine(Experiment.build(load_config(path, ["rounds=1"])))
        engine.run_round(1)
        assert engine.bytes_sent.min() > 0
