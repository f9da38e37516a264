"""The built-in attacks: each message against its formula on small hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from meshlearn import plugins
from meshlearn.byzantine import library
from meshlearn.byzantine.attacks import AttackView
from meshlearn.byzantine.library import (ALIE, IPM, Dissensus, GaussianNoise, LabelFlip, SignFlip, Spectral,
                                         fiedler_vector)
from meshlearn.sharing.base import Received, received_chunks
from meshlearn.streams import Stream, seed_of
from meshlearn.topology.schedule import RoundGraph

# Five nodes, 3 and 4 Byzantine. Honest links 0–1 and 1–2 (weight 0.25 each: the honest subgraph is a
# path with equal weights); 3 talks to 0 and 4, 4 to 0, 2 and 3.
MIXING = np.array([
    [0.45, 0.25, 0.00, 0.10, 0.20],
    [0.25, 0.50, 0.25, 0.00, 0.00],
    [0.00, 0.25, 0.55, 0.00, 0.20],
    [0.10, 0.00, 0.00, 0.60, 0.30],
    [0.20, 0.00, 0.20, 0.30, 0.30],
])
MODELS = torch.tensor([[1.0, 2.0], [3.0, -2.0], [5.0, 0.0], [7.0, 7.0], [-1.0, 4.0]])
BYZANTINE = torch.tensor([False, False, False, True, True])
ATTACKERS = torch.tensor([3, 4])
# craft's rows for a per-receiver attack: 3 → 0, 3 → 4, then 4 → 0, 4 → 2, 4 → 3


def omniscient_view(models: torch.Tensor = MODELS) -> AttackView:
    return AttackView(rnd=2, ids=ATTACKERS, own=models[ATTACKERS], start=models[ATTACKERS], num_nodes=5,
                      num_byzantine=2, models=models, byzantine=BYZANTINE, graph=RoundGraph.from_mixing(MIXING))


def rushing_view(received: Received | None, own: torch.Tensor, num_nodes: int = 10,
                 num_byzantine: int = 3) -> AttackView:
    ids = torch.arange(7, 7 + len(own))
    return AttackView(rnd=1, ids=ids, own=own, start=own, num_nodes=num_nodes, num_byzantine=num_byzantine,
                      received=received)


def hand_received() -> Received:
    """Attacker row 0 got [1, 0], [3, 4], [5, 2]; row 1 got [6, −1]; row 2 nothing. Padding holds 99s,
    which a rule must never read."""
    values = torch.full((3, 3, 2), 99.0)
    values[0] = torch.tensor([[1.0, 0.0], [3.0, 4.0], [5.0, 2.0]])
    values[1, 0] = torch.tensor([6.0, -1.0])
    mask = torch.tensor([[True, True, True], [True, False, False], [False, False, False]])
    senders = torch.tensor([[0, 1, 2], [0, -1, -1], [-1, -1, -1]])
    weights = torch.tensor([[0.2, 0.2, 0.2], [0.5, 0.0, 0.0], [0.0, 0.0, 0.0]])
    return Received(torch.arange(3), senders, weights, mask, values, torch.tensor([0.4, 0.5, 1.0]))


OWN3 = torch.tensor([[10.0, -20.0], [0.5, 0.5], [2.0, -4.0]])


def test_each_attack_declares_what_it_reads():
    flags = {cls: (cls.rushing, cls.omniscient, cls.per_receiver)
             for cls in (SignFlip, GaussianNoise, LabelFlip, ALIE, IPM, Dissensus, Spectral)}
    assert flags == {SignFlip: (False, False, False), GaussianNoise: (False, False, False),
                     LabelFlip: (False, False, False), ALIE: (True, False, False), IPM: (True, False, False),
                     Dissensus: (False, True, True), Spectral: (False, True, True)}
    assert [cls.name for cls in flags] == ["sign_flip", "gaussian", "label_flip", "alie", "ipm", "dissensus",
                                           "spectral"]


def test_options_are_checked_against_their_ranges():
    where = "byzantine.options"
    assert plugins.check_options("attack", "alie", {}, where, obj=ALIE) == {"z": None}
    assert plugins.check_options("attack", "dissensus", {}, where, obj=Dissensus) == {"epsilon": 1.5}
    assert plugins.check_options("attack", "ipm", {}, where, obj=IPM) == {"epsilon": 0.1}
    with pytest.raises(ValueError, match="byzantine.options.scale = -1"):
        plugins.check_options("attack", "sign_flip", {"scale": -1}, where, obj=SignFlip)
    with pytest.raises(ValueError, match="byzantine.options.std = 0"):
        plugins.check_options("attack", "gaussian", {"std": 0}, where, obj=GaussianNoise)


def test_sign_flip_sends_the_scaled_negated_own_model_in_float32():
    own = torch.tensor([[1.0, -2.0], [0.5, 4.0]], dtype=torch.float64)
    view = AttackView(rnd=1, ids=torch.tensor([0, 1]), own=own, start=own)
    sent = SignFlip().craft(view)
    assert sent.dtype == torch.float32
    assert torch.equal(sent, torch.tensor([[-1.0, 2.0], [-0.5, -4.0]]))
    assert torch.equal(SignFlip(scale=2.0).craft(view), torch.tensor([[-2.0, 4.0], [-1.0, -8.0]]))


def test_gaussian_noise_depends_only_on_seed_node_and_round():
    own = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.0, 1.0]])
    attack = GaussianNoise(std=0.5, seed=11)
    sent = attack.craft(AttackView(rnd=4, ids=torch.tensor([3, 8]), own=own, start=own))
    for row, node in enumerate([3, 8]):
        generator = torch.Generator().manual_seed(seed_of(11, Stream.ATTACK, node, 4))
        torch.testing.assert_close(sent[row], own[row] + 0.5 * torch.randn(3, generator=generator), rtol=0, atol=0)
    # node 8 alone, or after another attacker, draws the same noise; other rounds and seeds draw other noise
    alone = attack.craft(AttackView(rnd=4, ids=torch.tensor([8]), own=own[1:], start=own[1:]))
    assert torch.equal(alone[0], sent[1])
    assert not torch.equal(sent[0] - own[0], sent[1] - own[1])
    later = attack.craft(AttackView(rnd=5, ids=torch.tensor([3, 8]), own=own, start=own))
    assert not torch.isclose(later, sent).any()
    assert not torch.isclose(GaussianNoise(std=0.5, seed=12).craft(
        AttackView(rnd=4, ids=torch.tensor([3, 8]), own=own, start=own)), sent).any()


def test_label_flip_trains_on_mirrored_labels_and_sends_its_model():
    assert torch.equal(LabelFlip().labels(torch.tensor([0, 3, 9]), 10), torch.tensor([9, 6, 0]))
    assert torch.equal(LabelFlip().labels(torch.tensor([0, 1, 2]), 3), torch.tensor([2, 1, 0]))
    own = torch.tensor([[1.5, -2.0]])
    assert torch.equal(LabelFlip().craft(AttackView(rnd=1, ids=torch.tensor([0]), own=own, start=own)), own)


def test_alie_sends_mean_minus_z_unbiased_std_of_what_it_received():
    sent = ALIE(z=1.5).craft(rushing_view(hand_received(), OWN3))
    # row 0: per coordinate 1, 3, 5 and 0, 4, 2: μ = (3, 2), unbiased σ = √(8/2) = 2 → μ − 3 = (0, −1)
    # row 1: one message, σ = 0 → the message; row 2: nothing received → its own model
    torch.testing.assert_close(sent, torch.tensor([[0.0, -1.0], [6.0, -1.0], [2.0, -4.0]]), rtol=0, atol=1e-6)


def test_alie_default_z_is_the_reference_z_max():
    # n = 10, f = 3: s = ⌊10/2 + 1⌋ − 3 = 3, Φ⁻¹((10 − 3 − 3)/(10 − 3)) = Φ⁻¹(4/7) = 0.1800124
    assert ALIE.z_max(10, 3) == pytest.approx(0.18001237, abs=1e-8)
    sent = ALIE().craft(rushing_view(hand_received(), OWN3, num_nodes=10, num_byzantine=3))
    z = 0.18001237
    torch.testing.assert_close(sent[0], torch.tensor([3.0 - 2 * z, 2.0 - 2 * z]), rtol=0, atol=1e-6)
    # n = 7, f = 2: s = 2, Φ⁻¹(3/5) = 0.2533471
    assert ALIE.z_max(7, 2) == pytest.approx(0.25334710, abs=1e-8)
    with pytest.raises(ValueError, match="byzantine.options.z"):
        ALIE().craft(rushing_view(hand_received(), OWN3, num_nodes=10, num_byzantine=6))


def test_alie_and_ipm_on_what_an_engine_hands_them():
    # received_chunks as the engines build it: attacker row 0 got the three honest models, row 1 only
    # node 2's, row 2 nothing
    honest = torch.tensor([[1.0, 0.0], [3.0, 4.0], [5.0, 2.0]])
    indptr = np.array([0, 3, 4, 4])
    got = next(received_chunks(indptr, np.array([0, 1, 2, 2]), np.full(4, 0.25, dtype=np.float32),
                               torch.tensor([0.25, 0.75, 1.0]), honest, np.array([0, 1, 2, 2])))
    view = rushing_view(got, OWN3)
    torch.testing.assert_close(ALIE(z=1.0).craft(view), torch.tensor([[1.0, 0.0], [5.0, 2.0], [2.0, -4.0]]),
                               rtol=0, atol=1e-6)
    torch.testing.assert_close(IPM(epsilon=2.0).craft(view), torch.tensor([[-6.0, -4.0], [-10.0, -4.0],
                                                                           [-4.0, 8.0]]), rtol=0, atol=1e-6)


def test_ipm_sends_minus_epsilon_times_the_mean_received():
    sent = IPM().craft(rushing_view(hand_received(), OWN3))
    # means (3, 2) and (6, −1); row 2 got nothing: −0.1 times its own model (2, −4)
    torch.testing.assert_close(sent, torch.tensor([[-0.3, -0.2], [-0.6, 0.1], [-0.2, 0.4]]), rtol=0, atol=1e-6)
    # nobody received anything at all (no slots): every attacker falls back on its own model
    torch.testing.assert_close(IPM(epsilon=0.5).craft(rushing_view(None, OWN3)), -0.5 * OWN3, rtol=0, atol=0)


def test_dissensus_reverses_each_receivers_honest_pull():
    sent = Dissensus().craft(omniscient_view())
    # to 0: honest pull 0.25·(x1 − x0) = (0.5, −1) over Byzantine weight 0.1 + 0.2 → x0 − 1.5·(5/3, −10/3)
    # to 2: 0.25·(x1 − x2) = (−0.5, −0.5) over 0.2 → x2 − 1.5·(−2.5, −2.5)
    # 3 → 4 and 4 → 3 go to Byzantine receivers: the sender's own model
    expected = torch.tensor([[-1.5, 7.0], [7.0, 7.0], [-1.5, 7.0], [8.75, 3.75], [-1.0, 4.0]])
    assert sent.dtype == torch.float32
    torch.testing.assert_close(sent, expected, rtol=0, atol=1e-5)


def test_dissensus_with_epsilon_one_freezes_a_gossip_averaging_receiver():
    sent = Dissensus(epsilon=1.0).craft(omniscient_view())
    # receiver 0 averages 0.45·x0 + 0.25·x1 + 0.1·(from 3) + 0.2·(from 4): it stays at x0 = (1, 2)
    mixed = 0.45 * MODELS[0] + 0.25 * MODELS[1] + 0.1 * sent[0] + 0.2 * sent[2]
    torch.testing.assert_close(mixed, MODELS[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(sent[0], torch.tensor([-2.0 / 3.0, 16.0 / 3.0]), rtol=0, atol=1e-5)


def test_fiedler_vector_of_the_honest_path():
    # honest path 0 –0.25– 1 –0.25– 2: L = 0.25·[[1, −1, 0], [−1, 2, −1], [0, −1, 1]], λ2 = 0.25, u = (1, 0, −1)/√2
    u = fiedler_vector(RoundGraph.from_mixing(MIXING), np.array([0, 1, 2]))
    assert np.allclose(np.abs(u), [1 / math.sqrt(2), 0.0, 1 / math.sqrt(2)], atol=1e-12)
    assert u[0] == pytest.approx(-u[2], abs=1e-12)
    assert np.array_equal(fiedler_vector(RoundGraph.from_mixing(MIXING), np.array([1])), [0.0])


def test_fiedler_vector_from_the_sparse_solver_matches_the_dense_one(monkeypatch):
    # a weighted path of 6 nodes (distinct eigenvalues), with a node 6 outside the honest set
    n = 7
    mixing = np.zeros((n, n))
    for i, w in enumerate([0.1, 0.3, 0.2, 0.25, 0.15, 0.3]):
        mixing[i, i + 1] = mixing[i + 1, i] = w
    np.fill_diagonal(mixing, 1 - mixing.sum(1))
    graph, honest = RoundGraph.from_mixing(mixing), np.arange(6)
    dense = fiedler_vector(graph, honest)
    monkeypatch.setattr(library, "_DENSE_EIGEN_LIMIT", 2)
    sparse = fiedler_vector(graph, honest)
    assert np.allclose(sparse * np.sign(sparse[0]), dense * np.sign(dense[0]), atol=1e-8)
    adjacency = mixing[:6, :6].copy()
    np.fill_diagonal(adjacency, 0.0)
    laplacian = np.diag(adjacency.sum(1)) - adjacency
    eigenvalues = np.linalg.eigvalsh(laplacian)
    assert np.allclose(laplacian @ dense, eigenvalues[1] * dense, atol=1e-10)


def test_spectral_pushes_each_receiver_along_its_fiedler_component():
    sent = Spectral().craft(omniscient_view())
    # ⟨u, X_H⟩ = (x0 − x2)/√2 = (−4, 2)/√2; to 0: x0 + u0·that = x0 + (−2, 1); to 2: x2 + (2, −1).
    # Nodes 0 and 2, at the ends of the path, are pushed apart; Byzantine receivers get the sender's model.
    expected = torch.tensor([[-1.0, 3.0], [7.0, 7.0], [-1.0, 3.0], [7.0, -1.0], [-1.0, 4.0]])
    assert sent.dtype == torch.float32
    torch.testing.assert_close(sent, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(Spectral(scale=2.0).craft(omniscient_view())[[0, 3]],
                               torch.tensor([[-3.0, 4.0], [9.0, -2.0]]), rtol=0, atol=1e-5)


def test_spectral_reuses_its_fiedler_vector_until_the_graph_or_byzantine_set_changes(monkeypatch):
    calls = []
    real = library.fiedler_vector
    monkeypatch.setattr(library, "fiedler_vector", lambda graph, honest: calls.append(honest.tolist()) or
                        real(graph, honest))
    attack, view = Spectral(), omniscient_view()
    attack.craft(view)
    attack.craft(AttackView(rnd=3, ids=ATTACKERS, own=view.own, start=view.start, models=MODELS * 2,
                            byzantine=BYZANTINE.clone(), graph=view.graph))
    assert calls == [[0, 1, 2]]
    attack.craft(AttackView(rnd=3, ids=torch.tensor([4]), own=MODELS[[4]], start=MODELS[[4]], models=MODELS,
                            byzantine=torch.tensor([False, False, False, False, True]), graph=view.graph))
    attack.craft(omniscient_view())   # a new graph object
    assert calls == [[0, 1, 2], [0, 1, 2, 3], [0, 1, 2]]


def test_spectral_sends_the_receivers_own_model_when_honest_models_agree():
    agreeing = MODELS.clone()
    agreeing[:3] = torch.tensor([2.0, -1.0])
    sent = Spectral(scale=5.0).craft(omniscient_view(agreeing))
    torch.testing.assert_close(sent[[0, 2, 3]], agreeing[[0, 0, 2]], rtol=0, atol=1e-6)
