"""The CLIP inside TUNA: a ``CLIPModel`` whose scalar parameters are (1,) vectors, which DeepSpeed can broadcast."""

from __future__ import annotations

from torch import nn
from transformers import CLIPModel


class VectorScaleCLIPModel(CLIPModel):
    """A ``CLIPModel`` whose ``logit_scale`` has shape (1,) from construction on, as TUNA saves it: DeepSpeed's
    partitioned construction (ZeRO-3 ``zero.Init``) broadcasts each parameter as bytes when its module's
    ``__init__`` returns, which a 0-d tensor cannot be viewed as. Same state-dict keys and forward as CLIPModel."""

    def __init__(self, config) -> None:  # noqa: ANN001 - a CLIPConfig
        super().__init__(config)
        vectorize_scalar_parameters(self)


def vectorize_scalar_parameters(module: nn.Module) -> None:
    """Turn 0-d parameters (CLIP's ``logit_scale``) into shape (1,): DeepSpeed broadcasts every parameter as
    bytes, which a 0-d tensor cannot be viewed as; the value and its use (broadcast in products) are unchanged."""
    for sub in module.modules():
        for name, p in list(sub._parameters.items()):
            if p is not None and p.dim() == 0:
                sub._parameters[name] = nn.Parameter(p.detach().reshape(1), requires_grad=p.requires_grad)


__all__ = ["VectorScaleCLIPModel", "vectorize_scalar_parameters"]
