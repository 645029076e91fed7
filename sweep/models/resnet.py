"""`resnet18`, `resnet34`, `resnet50`: torchvision ResNets cut and re-headed the fastai way, on 1-channel input.

fastai's recipe (body = the ResNet up to its pooling, first conv summed over RGB so ImageNet filters still
respond to a single channel; head = concat pooling + BN/dropout/linear layers) is the strong transfer-learning
default for spectrograms. torchvision would download missing weights, so the model is built without weights
and the state dict is read from the torch cache only (compute nodes have no internet).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from sweep.checkpoint import load_weights
from sweep.models.registry import MODELS, ModelSpec, WeightsMissing, torch_cache
from sweep.schema import Field

ARCHS = ("resnet18", "resnet34", "resnet50")


class ResNet(nn.Module):
    def __init__(self, body: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(1)  # brings log-mel levels (about -14..5) to the scale ImageNet filters expect
        self.body = body
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.norm(x)))


def weights_file(arch: str) -> tuple[str, Path]:
    """(url, local path) of the ImageNet weights fastai would use (torchvision's DEFAULT)."""
    import torchvision  # ~5 s to import: only a ResNet with pretrained weights asks

    url = torchvision.models.get_model_weights(arch).DEFAULT.url
    return url, torch_cache() / Path(urlparse(url).path).name


def check_weights(cfg: Mapping[str, Any]) -> None:
    url, path = weights_file(cfg["name"])
    if not path.is_file():
        torch_home = torch_cache().parents[1]  # torch_cache() is TORCH_HOME/hub/checkpoints
        raise WeightsMissing(
            f"ImageNet weights for {cfg['name']} ({path.name}) are not in the torch cache {path.parent}. "
            f"On a login node with internet, fetch them into the same cache: TORCH_HOME={torch_home} "
            f"python -c \"import torchvision; torchvision.models.{cfg['name']}(weights='DEFAULT')\" "
            f"(or download {url} to {path}); or set model.pretrained: false"
        )


PARAMS = {
    "dropout": Field(float, 0.5, low=0.0, high=1.0),  # fastai head `ps`: last layer's dropout, half before it
    "concat_pool": Field(bool, True),  # head pools avg and max concatenated (fastai) or avg only
}


def build(cfg: Mapping[str, Any], n_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    import torchvision  # ~5 s with fastai's ~9 s: only a ResNet build (or its weights check) needs them
    from fastai.torch_core import apply_init
    from fastai.vision.learner import create_body, create_head

    model = torchvision.models.get_model(cfg["name"], weights=None)  # weights=None never downloads
    if cfg["pretrained"]:
        check_weights(cfg)
        model.load_state_dict(load_weights(weights_file(cfg["name"])[1]))
    n_features = model.fc.in_features
    # pretrained=True here only tells fastai to sum the loaded conv1 over RGB; it fetches nothing
    body = create_body(model, n_in=1, pretrained=cfg["pretrained"], cut=-2)
    head = create_head(n_features, n_classes, ps=cfg["dropout"], concat_pool=cfg["concat_pool"])
    apply_init(head, nn.init.kaiming_normal_)  # as fastai's create_vision_model does
    return ResNet(body, head)


for _arch in ARCHS:
    MODELS.add(_arch, ModelSpec(PARAMS, build, pretrained=True, check_weights=check_weights))
