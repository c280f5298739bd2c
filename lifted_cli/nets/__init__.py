"""Networks: proximal activations, blocks in unified lifted form, and the architectures."""

from .activations import ACTIVATIONS, ProxActivation, make_activation
from .architectures import ARCHITECTURES, build_network
from .blocks import Block, UnifiedNet

__all__ = ["ACTIVATIONS", "ARCHITECTURES", "Block", "ProxActivation", "UnifiedNet",
           "build_network", "make_activation"]
