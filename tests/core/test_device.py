"""The GPU path computes what the CPU path computes: bf16 autocast within stated tolerances, channels_last
and the GPU-held augmentation exactly; settings a device cannot honour are refused in one line.

Everything runs on the CPU (CPU autocast supports bf16; the GPU-side augmentation is the same code
on a CPU tensor); the tests marked `cuda` repeat the device-specific parts on a GPU and skip without one.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

import models
from tuner.core import device as placement
from tuner.core.attacks import pgd_linf
from tuner.core.data import CROP_PADDING, Split, batches, random_crop_flip
from tuner.core.device import autocast, check_precision, memory_format, place_data, place_model
from tuner.core.objectives import AttackSettings, cross_entropy_to, get_objective, kl_to
from tuner.core.training import count_split, make_optimizer, prepare, run_trial, train_one_epoch
from tuner.errors import ConfigError

CPU = torch.device("cpu")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def batch(digits):
    return digits.val.images[:256], digits.val.labels[:256]


# --- bf16 autocast against fp32 ---------------------------------------------------------------

def test_bf16_logits_within_one_percent_of_fp32(undefended, batch):
    """bf16 keeps 8 significant bits: the logits' relative error is a few 1e-3 (measured 0.004); allowed 0.01."""
    x, _ = batch
    with torch.no_grad():
        fp32 = undefended(x)
        with autocast("bf16", CPU):
            bf16 = undefended(x)
    assert bf16.dtype == torch.bfloat16
    assert ((bf16.float() - fp32).norm() / fp32.norm()) < 0.01
    assert (bf16.argmax(1) == fp32.argmax(1)).float().mean() > 0.98


def test_bf16_training_loss_and_gradient_agree_with_fp32_at_the_same_adversarial_inputs(undefended, batch):
    """At fixed x and x', the TRADES loss differs by < 2% and the parameter gradient's cosine similarity is > 0.99."""
    x, y = batch
    model = copy.deepcopy(undefended).train()
    with torch.no_grad():
        clean = model.eval()(x)
    x_adv = pgd_linf(model, x, kl_to(clean), epsilon=0.1, step_size=0.03, steps=5, start="normal").x_adv
    model.train()

    def loss_and_grad(precision):
        model.zero_grad()
        with autocast(precision, CPU):
            logits = model(x)
            loss = F.cross_entropy(logits, y) + 6 * F.kl_div(F.log_softmax(model(x_adv), 1), F.softmax(logits, 1),
                                                            reduction="batchmean")
        loss.backward()
        return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()])

    (loss32, grad32), (loss16, grad16) = loss_and_grad("fp32"), loss_and_grad("bf16")
    assert abs(loss16 - loss32) / loss32 < 0.02
    assert F.cosine_similarity(grad16, grad32, dim=0) > 0.99


def test_bf16_trades_attack_is_as_strong_as_fp32(undefended, batch):
    """The TRADES attack started at x + 0.001·N: its clean logits and first step run in fp32 whatever the
    autocast (in bf16 the first step's gradient is below the logits' resolution, and a bf16 attack
    reached 0.85 of the fp32 KL). Measured in fp32 over 4 random starts, the bf16-trained attack's KL
    is at least 0.95 of fp32's."""
    x, y = batch
    attack = AttackSettings(0.1, 0.03, 5)
    captured = {}

    def kl_reached(precision):
        kls = []
        for seed in range(4):
            torch.manual_seed(seed)
            real = get_objective("trades")
            with autocast(precision, CPU):
                value = real(copy.deepcopy(undefended).train(), x, y, lam=1.0, attack=attack)
            kls.append(value.regularizer.item())
        captured[precision] = kls
        return sum(kls) / len(kls)

    assert kl_reached("bf16") >= 0.95 * kl_reached("fp32"), captured


def test_fp32_block_inside_a_bf16_region_computes_in_fp32(undefended, batch):
    """Evaluation (eval_precision fp32) stays fp32 even when called from inside a bf16 region."""
    x, _ = batch
    with torch.no_grad(), autocast("bf16", CPU), autocast("fp32", CPU):
        inner = undefended(x)
    with torch.no_grad():
        assert torch.equal(inner, undefended(x))


def test_a_bf16_trial_trains_in_bf16_and_evaluates_in_fp32(quick):
    """Per training batch, the K − 1 later attack steps and the loss's two forwards run in bf16 (the clean
    forward and the first step in fp32); every evaluation forward runs in fp32."""
    prepared = prepare(quick.replace(precision="bf16", device="cpu"))
    prepared = dataclasses.replace(prepared, data=dataclasses.replace(prepared.data, train=prepared.data.train[:128]))
    seen = []
    prepared.model[0].register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    optimizer, _ = make_optimizer(prepared.model, prepared.config)
    train_one_epoch(prepared.model, optimizer, prepared, epoch=1)
    batches_run = 128 // quick.batch_size
    assert seen.count(torch.bfloat16) == batches_run * (quick.train_steps - 1 + 2)
    assert seen.count(torch.float32) == batches_run * 2
    seen.clear()
    count_split(prepared, prepared.data.val[:32])
    assert set(seen) == {torch.float32}


# --- channels_last ----------------------------------------------------------------------------

@pytest.mark.parametrize("name,in_channels,size", [("cnn", 1, 8), ("wrn", 3, 16)])
def test_channels_last_gives_the_same_outputs_gradients_and_update(name, in_channels, size):
    """NHWC sums the convolutions in another order: logits and input gradients agree to 1e-5, the SGD
    update at the same adversarial inputs to 1e-4 of its norm, and the attack's pixels on 99%
    (a pixel whose gradient is ~0 may take the other sign). Random starts are drawn in memory
    order, so they differ between the formats: the attack here starts at x."""
    torch.manual_seed(0)
    model = models.create_model(name, width=1, num_classes=10, in_channels=in_channels, depth=10 if name == "wrn" else None)
    nhwc = place_model(copy.deepcopy(model), CPU, channels_last=True, compile=False)
    assert nhwc.state_dict().keys() == model.state_dict().keys()
    assert next(p for p in nhwc.parameters() if p.dim() == 4).is_contiguous(memory_format=torch.channels_last)
    before = torch.cat([p.detach().flatten() for p in model.parameters()])
    x = torch.rand(32, in_channels, size, size)
    y = torch.randint(0, 10, (32,))
    with torch.no_grad():
        x_fixed = (x + 0.02 * torch.randn_like(x)).clamp(0, 1)
    results = []
    for m, fmt in ((model, torch.contiguous_format), (nhwc, torch.channels_last)):
        xm, x_adv = x.contiguous(memory_format=fmt), x_fixed.contiguous(memory_format=fmt)
        with torch.no_grad():
            logits = m.eval()(xm)
        point = x_adv.clone().requires_grad_(True)
        (input_grad,) = torch.autograd.grad(F.cross_entropy(m(point), y), point)
        attacked = pgd_linf(m, xm, cross_entropy_to(y), epsilon=0.03, step_size=0.01, steps=3, start="none").x_adv
        m.train()
        optimizer = torch.optim.SGD(m.parameters(), lr=0.1)
        train_logits = m(xm)
        loss = F.cross_entropy(train_logits, y) + 6 * F.kl_div(F.log_softmax(m(x_adv), 1), F.softmax(train_logits, 1),
                                                               reduction="batchmean")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        update = torch.cat([p.detach().flatten() for p in m.parameters()]) - before
        results.append((logits, input_grad, attacked, update))
    (logits_a, grad_a, adv_a, update_a), (logits_b, grad_b, adv_b, update_b) = results
    torch.testing.assert_close(logits_a, logits_b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_a, grad_b, rtol=1e-4, atol=1e-5 * grad_a.abs().max().item())
    assert (update_a - update_b).norm() <= 1e-4 * update_a.norm()
    assert (adv_a == adv_b).float().mean() >= 0.99


def test_batches_come_in_the_memory_format_asked_for(digits):
    x, y = next(batches(digits.val, 16, device=CPU, memory_format=memory_format(True)))
    assert x.is_contiguous(memory_format=torch.channels_last) and y.shape == (16,)


# --- augmentation where the data is held ------------------------------------------------------

def crop_offsets(source: torch.Tensor, out: torch.Tensor, padding: int) -> torch.Tensor:
    """Per image, the (dy, dx, flip) at which `out` is the crop of the zero-padded source (asserting exactly one)."""
    n, c, h, w = source.shape
    padded = F.pad(source, (padding,) * 4)
    windows = padded.unfold(2, h, 1).unfold(3, w, 1)  # n, c, 2p+1, 2p+1, h, w
    candidates = torch.stack([windows, windows.flip(-1)], dim=4)  # n, c, dy, dx, flip, h, w
    match = (candidates == out[:, :, None, None, None]).flatten(-2).all(-1).all(1)  # n, dy, dx, flip
    hits = match.nonzero()
    assert len(hits) == n and torch.equal(hits[:, 0], torch.arange(n)), "every output is exactly one crop of its source"
    return hits[:, 1:]


def chi_square_uniform(offsets: torch.Tensor, padding: int) -> float:
    side = 2 * padding + 1
    cells = (offsets[:, 0] * side + offsets[:, 1]) * 2 + offsets[:, 2]
    counts = torch.bincount(cells, minlength=side * side * 2).double()
    expected = len(offsets) / len(counts)
    return float(((counts - expected) ** 2 / expected).sum())


# chi-square with 161 degrees of freedom (81 crops × 2 flips): its 0.999 quantile is 222
CHI2_161_999 = 222.0


def augmented(split: Split, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The training batches' images (augmented where `split` is held), with the source image of each."""
    generator = torch.Generator().manual_seed(0)
    held = Split(split.images.to(device), torch.arange(len(split), device=device))  # labels: the source index
    xs, idx = zip(*batches(held, 500, shuffle=True, generator=generator, augment=True, device=device))
    return torch.cat(xs).cpu(), torch.cat(idx).cpu()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=cuda)])
def test_augmentation_is_an_exact_random_crop_and_flip_with_uniform_offsets(device):
    """Every output equals the crop of the zero-padded source at some offset, flipped or not; the
    81 × 2 outcomes are uniform: chi-square over 16,200 images below its 0.999 quantile (the test
    is seeded, hence deterministic; offsets drawn from 0..2p − 1 only would give about 4,300)."""
    torch.manual_seed(0)
    source = Split(torch.rand(16_200, 1, 8, 8) + 0.1, torch.zeros(16_200, dtype=torch.long))
    out, idx = augmented(source, device)
    offsets = crop_offsets(source.images[idx], out, CROP_PADDING)
    assert chi_square_uniform(offsets, CROP_PADDING) < CHI2_161_999
    # flips independent of the crop: the flip rate is about 1/2 for every dx
    for dx in range(2 * CROP_PADDING + 1):
        rate = offsets[offsets[:, 1] == dx, 2].double().mean()
        assert abs(rate - 0.5) < 0.05


def test_gpu_side_code_on_cpu_tensors_draws_the_same_distribution_as_the_cpu_path():
    """The augmentation with its generator on the data's device (the GPU path) and with a CPU generator
    on CPU data (the CPU path) give the same distribution of crops and flips (chi-square test of
    homogeneity of the two samples' 162 outcomes, below its 0.999 quantile)."""
    torch.manual_seed(1)
    x = torch.rand(8_100, 1, 8, 8) + 0.1
    cpu_path = crop_offsets(x, random_crop_flip(x, CROP_PADDING, generator=torch.Generator().manual_seed(1)), CROP_PADDING)
    device_path = crop_offsets(x, random_crop_flip(x, CROP_PADDING, generator=torch.Generator(x.device).manual_seed(2)),
                               CROP_PADDING)
    side = 2 * CROP_PADDING + 1
    counts = [torch.bincount((o[:, 0] * side + o[:, 1]) * 2 + o[:, 2], minlength=side * side * 2).double()
              for o in (cpu_path, device_path)]
    total = counts[0] + counts[1]
    expected = [total * c.sum() / total.sum() for c in counts]
    statistic = sum(((c - e) ** 2 / e).sum() for c, e in zip(counts, expected))
    assert statistic < CHI2_161_999


@cuda
def test_cuda_batches_of_cpu_data_come_through_pinned_memory_and_gpu_data_stays(digits):
    gpu = torch.device("cuda")
    x, y = next(batches(digits.val, 64, device=gpu))
    assert x.device.type == y.device.type == "cuda"
    held = place_data(digits, gpu)
    assert held.train.images.device.type == "cuda"  # 1,797 digits fit
    x, _ = next(batches(held.train, 64, shuffle=True, generator=torch.Generator().manual_seed(0), augment=True, device=gpu))
    assert x.device.type == "cuda"


def test_on_a_cpu_the_data_stays_where_it_is(digits):
    assert place_data(digits, CPU) is digits


# --- settings a device cannot honour ----------------------------------------------------------

@pytest.mark.parametrize("value,message", [("fp16", "precision must be one of fp32, bf16, got 'fp16' .*loss scaling.*: set "),
                                           ("double", "precision must be one of fp32, bf16, got 'double': set ")])
def test_unknown_precision_is_a_one_line_config_error(quick, value, message):
    with pytest.raises(ConfigError, match=message) as error:
        quick.replace(precision=value)
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="eval_" + message):
        quick.replace(eval_precision=value)


def test_bf16_on_a_gpu_without_bf16_is_refused_with_the_fix(monkeypatch):
    """The capability query is the only stand-in: a pre-Ampere GPU (compute capability 7.0)."""
    monkeypatch.setattr(placement.torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    monkeypatch.setattr(placement.torch.cuda, "get_device_name", lambda device=None: "Tesla V100-SXM2-16GB")
    with pytest.raises(ConfigError, match="precision bf16 needs a GPU with bfloat16.*V100.*set precision: fp32"):
        check_precision("bf16", torch.device("cuda", 0))
    check_precision("fp32", torch.device("cuda", 0))
    check_precision("bf16", CPU)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_this_machine_lacks_or_an_unknown_device_is_a_config_error(quick):
    with pytest.raises(ConfigError, match="device cuda is not available here.*--device auto or cpu"):
        prepare(quick.replace(device="cuda"))
    with pytest.raises(ConfigError, match="unknown device 'gpu0'"):
        prepare(quick.replace(device="gpu0"))


def test_other_new_settings_are_validated(quick):
    with pytest.raises(ConfigError, match="channels_last must be true or false"):
        quick.replace(channels_last="yes")
    with pytest.raises(ConfigError, match="val_epoch_examples must be a positive integer or null"):
        quick.replace(val_epoch_examples=0)


# --- torch.compile ----------------------------------------------------------------------------

@pytest.mark.slow
def test_compile_compiles_the_models_forward_in_place(quick):
    """`compile: true` compiles the model's forward (one graph compiled here: the clean eval forward;
    the attack loop stays Python and calls it); outputs and state-dict keys are the eager ones."""
    eager = prepare(quick.replace(device="cpu"))
    compiled = prepare(quick.replace(device="cpu", compile=True))
    assert compiled.model.state_dict().keys() == eager.model.state_dict().keys()
    compiled.model.load_state_dict(eager.model.state_dict())
    x = eager.data.val.images[:64]
    with torch.no_grad():
        torch.testing.assert_close(compiled.model.eval()(x), eager.model.eval()(x), rtol=1e-4, atol=1e-5)
    assert compiled.model._compiled_call_impl is not None and eager.model._compiled_call_impl is None


@cuda
def test_cuda_bf16_trial_step_and_fp32_evaluation(quick, tmp_path):
    gpu_config = quick.replace(epochs=1, device="cuda", precision="bf16", channels_last=True)
    metrics = run_trial(prepare(gpu_config), work_dir=tmp_path, log=None)
    assert 0 <= metrics["test_robust_acc"] <= metrics["test_natural_acc"] <= 1
