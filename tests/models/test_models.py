"""Models by name: the WRN family of the paper and the small CPU net, with widths that scale."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import models
from models.registry import Normalized
from models.wrn import BasicBlock
from tuner.errors import ConfigError


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_wrn_34_10_has_the_papers_parameter_count():
    model = models.create_model("wrn", width=10, num_classes=10, in_channels=3)
    assert n_params(model) == pytest.approx(46.2e6, rel=0.002)


def test_wrn_depth_is_6n_plus_4_and_every_block_is_used():
    model = models.create_model("wrn", width=1, num_classes=10, in_channels=3, depth=16)
    assert len(model.blocks) == 6
    out = model(torch.rand(2, 3, 32, 32))
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters()), "a parameter is not on the forward path"
    with pytest.raises(ConfigError, match="6n\\+4"):
        models.create_model("wrn", width=1, num_classes=10, in_channels=3, depth=20)


@pytest.mark.parametrize("name", ["cnn", "wrn"])
def test_parameter_count_grows_with_width(name):
    kwargs = dict(num_classes=10, in_channels=3, depth=10 if name == "wrn" else None)
    counts = [n_params(models.create_model(name, width=w, **kwargs)) for w in (1, 2, 4)]
    assert counts[0] < counts[1] < counts[2]


def test_unknown_model_and_bad_width_are_config_errors():
    assert models.list_models() == ["cnn", "wrn"]
    with pytest.raises(ConfigError, match="unknown model 'vit'"):
        models.create_model("vit", width=1, num_classes=10, in_channels=3)
    with pytest.raises(ConfigError, match="width"):
        models.create_model("cnn", width=0, num_classes=10, in_channels=3)


def test_normalization_lives_inside_the_model():
    torch.manual_seed(0)
    model = models.create_model("cnn", width=1, num_classes=10, in_channels=3,
                                normalize=([0.5, 0.4, 0.3], [0.2, 0.2, 0.2]))
    assert isinstance(model, Normalized)
    x = torch.rand(4, 3, 32, 32)
    model.eval()
    expected = model.model((x - torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)) / 0.2)
    torch.testing.assert_close(model(x), expected)
    assert {"mean", "std"} <= set(model.state_dict())


@pytest.mark.parametrize("in_planes, out_planes, stride", [(16, 16, 1), (16, 32, 2)])
def test_wrn_block_is_the_trades_pre_activation_block(in_planes, out_planes, stride):
    """BN-ReLU-conv, BN-ReLU-conv; the identity shortcut adds the raw input, a projection takes the
    pre-activated one (as the TRADES code does), written out here with torch.nn.functional."""
    torch.manual_seed(0)
    block = BasicBlock(in_planes, out_planes, stride)
    for bn in (block.bn1, block.bn2):  # statistics that differ from the identity, so BN is not a no-op
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
    block.eval()
    x = torch.randn(2, in_planes, 8, 8)

    def bn_relu(bn, t):
        return F.relu(F.batch_norm(t, bn.running_mean, bn.running_var, bn.weight, bn.bias, eps=bn.eps))

    pre = bn_relu(block.bn1, x)
    out = F.conv2d(bn_relu(block.bn2, F.conv2d(pre, block.conv1.weight, stride=stride, padding=1)),
                   block.conv2.weight, padding=1)
    shortcut = x if block.shortcut is None else F.conv2d(pre, block.shortcut.weight, stride=stride)
    assert (block.shortcut is None) == (in_planes == out_planes and stride == 1)
    with torch.no_grad():
        torch.testing.assert_close(block(x), out + shortcut)


def test_cnn_channels_are_base_times_width_doubling_per_stage():
    model = models.create_model("cnn", width=3, num_classes=10, in_channels=1)
    convs = [m for m in model if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4 * 3, 8 * 3, 16 * 3]
    assert [c.stride for c in convs] == [(1, 1), (2, 2), (2, 2)]
