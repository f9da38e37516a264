"""Byzantine nodes: which nodes attack (``placement``) and what they send (``attacks``)."""

from meshlearn.byzantine.attacks import Attack, AttackView
from meshlearn.byzantine.library import ALIE, IPM, Dissensus, GaussianNoise, LabelFlip, SignFlip, Spectral
from meshlearn.byzantine.placement import byzantine_nodes

ATTACKS: dict[str, type[Attack]] = {
    cls.name: cls for cls in (SignFlip, GaussianNoise, LabelFlip, ALIE, IPM, Dissensus, Spectral)
}

__all__ = ["Attack", "AttackView", "byzantine_nodes", "SignFlip", "GaussianNoise", "LabelFlip", "ALIE", "IPM",
           "Dissensus", "Spectral", "ATTACKS"]
