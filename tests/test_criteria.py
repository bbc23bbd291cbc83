"""The six criteria against independent references on tiny networks, and the score cache."""

from __future__ import annotations

import copy
import itertools
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from _nets import randomize_bn
from torch import nn
from torch.utils.data import TensorDataset

from searchprune.criteria import _base as base
from searchprune.criteria import cached_scores, compute_scores, get_criterion
from searchprune.data import Split
from searchprune.models import CifarResNet
from searchprune.prune import prune_model
from searchprune.space import ChannelGroup, Member, SearchSpace


# -- fixtures -------------------------------------------------------------------------------
class FakeData:
    """What the criteria use of a DataBundle: ``calib`` and ``train_set()``."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, name: str = "fake") -> None:
        self.name = name
        self.calib = Split(x, y)
        self._train = TensorDataset(x, y)

    def train_set(self, augment: bool = False) -> TensorDataset:
        return self._train


def _resnet(shortcut: str, images: int = 12, hw: int = 8, seed: int = 0, widths=(16, 32, 64)):
    torch.manual_seed(seed)
    model = randomize_bn(CifarResNet(8, 10, shortcut, in_channels=3, widths=widths), seed)
    x = torch.randn(images, 3, hw, hw)
    y = torch.randint(0, 10, (images,))
    return model, SearchSpace.from_model(model, x[:1]), FakeData(x, y)


def _group(*members: tuple[str, str, list[int]]) -> ChannelGroup:
    n = len(members[0][2])
    ms = tuple(Member(name, role, tuple(idxs), tuple(range(n))) for name, role, idxs in members)
    return ChannelGroup("g", n, ms, True, "residual")


def _space(*groups: ChannelGroup):
    return SimpleNamespace(prunable=list(groups))


def _bn_members(model, group):
    return [model.get_submodule(m.module) for m in group.members
            if m.role == "out" and isinstance(model.get_submodule(m.module), nn.BatchNorm2d)]


# -- L1 / L2 / GM ---------------------------------------------------------------------------
def _two_producers():
    torch.manual_seed(1)
    net = nn.Module()
    net.a = nn.Conv2d(3, 4, 3)
    net.b = nn.Conv2d(2, 4, 1)
    net.c = nn.Conv2d(4, 5, 1)
    perm = [2, 0, 3, 1]  # group channel k is channel perm[k] of b
    group = _group(("a", "out", [0, 1, 2, 3]), ("b", "out", perm), ("c", "in", [0, 1, 2, 3]))
    return net, group, perm


def test_norms_of_concatenated_filters_of_two_producers():
    net, group, perm = _two_producers()
    l1 = compute_scores("l1", net, _space(group))["g"]
    l2 = compute_scores("l2", net, _space(group))["g"]
    for k in range(4):
        v = torch.cat([net.a.weight[k].flatten(), net.b.weight[perm[k]].flatten()]).double()
        assert l1[k].item() == pytest.approx(v.abs().sum().item(), rel=1e-6)
        assert l2[k].item() == pytest.approx(v.norm().item(), rel=1e-6)


def test_gm_is_the_distance_sum_of_concatenated_filters():
    net, group, perm = _two_producers()
    gm = compute_scores("gm", net, _space(group))["g"]
    v = [torch.cat([net.a.weight[k].flatten(), net.b.weight[perm[k]].flatten()]).double()
         for k in range(4)]
    for i in range(4):
        want = sum((v[i] - v[j]).norm().item() for j in range(4))
        assert gm[i].item() == pytest.approx(want, rel=1e-6)


def test_gm_prunes_the_geometric_median_first():
    net = nn.Module()
    net.conv = nn.Conv2d(2, 5, 1, bias=False)
    filters = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.1, 0.1], [0.0, 1.0], [0.0, -1.0]])
    with torch.no_grad():
        net.conv.weight.copy_(filters.view(5, 2, 1, 1))
    gm = compute_scores("gm", net, _space(_group(("conv", "out", list(range(5))))))["g"]
    assert gm.argmin().item() == 2  # the filter nearest the median
    # the median has the smallest distance sum, so keeping 4 drops exactly it
    kept = torch.topk(gm, 4).indices.tolist()
    assert 2 not in kept


# -- TE -------------------------------------------------------------------------------------
class _SharedGate(nn.Module):
    """``module(x) * z[roots]`` on the module's channels ``idxs``: an explicit gate z = 1."""

    def __init__(self, module, z, idxs, roots):
        super().__init__()
        self.module, self.z, self.idxs, self.roots = module, z, idxs, roots

    def forward(self, x):
        out = self.module(x)
        gate = torch.ones(out.shape[1]).index_put((self.idxs,), self.z[self.roots])
        return out * gate.view(1, -1, 1, 1)


def _gate_reference(model, space, x, y, shortcut_out: bool):
    """dL/dz for one shared explicit gate per group, inserted after every BN member (and the
    option-A shortcut, whose output channel vanishes with the group channel)."""
    ref = copy.deepcopy(model)
    gates = {}
    for g in space.prunable:
        z = torch.ones(g.channels, requires_grad=True)
        gates[g.name] = z
        for m in g.members:
            mod = ref.get_submodule(m.module)
            parametric = isinstance(mod, (nn.Conv2d, nn.Linear))
            if m.role != "out" or parametric or (not shortcut_out and
                                                  not isinstance(mod, nn.BatchNorm2d)):
                continue
            parent, _, leaf = m.module.rpartition(".")
            setattr(ref.get_submodule(parent), leaf,
                    _SharedGate(mod, z, torch.tensor(m.idxs), torch.tensor(m.root_idxs)))
    loss = F.cross_entropy(ref(x), y)
    grads = torch.autograd.grad(loss, list(gates.values()))
    return {name: g.double().square() for name, g in zip(gates, grads)}


@pytest.mark.parametrize("shortcut", ["pad", "projection"])
def test_te_equals_the_squared_gradient_of_an_explicit_gate(shortcut):
    model, space, data = _resnet(shortcut)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    te = compute_scores("te", model, space, data, batches=1, batch_size=len(data.calib))
    want = _gate_reference(model, space, data.calib.x, data.calib.y, shortcut_out=True)
    for name, w in want.items():
        assert torch.allclose(te[name], w, rtol=1e-4, atol=1e-12), name
    # no parameter, gradient or BN statistic touched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_te_equals_the_bn_parameter_form():
    model, space, data = _resnet("projection")
    te = compute_scores("te", model, space, data, batches=1, batch_size=len(data.calib))
    ref = copy.deepcopy(model)
    loss = F.cross_entropy(ref(data.calib.x), data.calib.y)
    loss.backward()
    for g in space.prunable:
        total = torch.zeros(g.channels, dtype=torch.float64)
        for m in g.members:
            bn = ref.get_submodule(m.module)
            if m.role == "out" and isinstance(bn, nn.BatchNorm2d):
                v = bn.weight * bn.weight.grad + bn.bias * bn.bias.grad
                total.index_add_(0, torch.tensor(m.root_idxs), v.double()[list(m.idxs)])
        assert torch.allclose(te[g.name], total.square(), rtol=1e-4, atol=1e-12)


def test_te_averages_squares_over_batches():
    model, space, data = _resnet("projection", images=12)
    two = compute_scores("te", model, space, data, batches=2, batch_size=6, seed=3)
    loader = torch.utils.data.DataLoader(data.train_set(), batch_size=6, shuffle=True,
                                         generator=torch.Generator().manual_seed(3))
    parts = [_gate_reference(model, space, x, y, shortcut_out=True) for x, y in loader]
    for name in two:
        want = (parts[0][name] + parts[1][name]) / 2
        assert torch.allclose(two[name], want, rtol=1e-4, atol=1e-12)


# -- ES -------------------------------------------------------------------------------------
def _es_brute(weight: torch.Tensor, a: torch.Tensor, stride: int, pad: int) -> torch.Tensor:
    """The PFP definition, loop by loop (conv weight ``(m, n, k, k)``, input ``(B, n, H, W)``)."""
    eps = torch.finfo(torch.float32).eps
    if a.min() < 0:
        a = torch.cat([a.clamp(min=0), (-a).clamp(min=0)])
    a = F.pad(a, (pad, pad, pad, pad)).double()
    w = weight.double()
    m, n, k, _ = w.shape
    out_h = (a.shape[2] - k) // stride + 1
    out_w = (a.shape[3] - k) // stride + 1
    s = torch.zeros(n, dtype=torch.float64)
    for b, i, ph, pw in itertools.product(range(a.shape[0]), range(m), range(out_h), range(out_w)):
        patch = a[b, :, ph * stride : ph * stride + k, pw * stride : pw * stride + k]
        zp = (w[i].clamp(min=0) * patch).sum()
        zn = (w[i].clamp(max=0) * patch).sum()
        for j, qh, qw in itertools.product(range(n), range(k), range(k)):
            v, x = w[i, j, qh, qw], patch[j, qh, qw]
            gp = v * x / zp if v > 0 and zp.abs() > eps else 0.0
            gn = v * x / zn if v < 0 and zn.abs() > eps else 0.0
            s[j] = max(s[j], float(gp), float(gn))
    return s


class _Tiny(nn.Module):
    def __init__(self, relu: bool, stride: int):
        super().__init__()
        self.conv0 = nn.Conv2d(2, 3, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(3)
        self.act = nn.ReLU() if relu else nn.Identity()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, stride=stride)
        self.bn1 = nn.BatchNorm2d(4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def features(self, x):
        return self.act(self.bn0(self.conv0(x)))

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(self.features(x))))
        return self.fc(self.pool(h).flatten(1))


@pytest.mark.parametrize("relu,stride", [(True, 1), (False, 2)])
def test_es_matches_a_brute_force_loop(relu, stride):
    torch.manual_seed(2)
    net = randomize_bn(_Tiny(relu, stride))
    x = torch.randn(2, 2, 5, 5)
    g0 = _group(("conv0", "out", [0, 1, 2]), ("bn0", "out", [0, 1, 2]), ("conv1", "in", [0, 1, 2]))
    g1 = ChannelGroup("h", 4, (Member("conv1", "out", (0, 1, 2, 3), (0, 1, 2, 3)),
                               Member("fc", "in", (3, 2, 1, 0), (0, 1, 2, 3))), True, "internal")
    es = compute_scores("es", net, _space(g0, g1), FakeData(x, torch.zeros(2, dtype=torch.long)))
    assert not any(m._forward_pre_hooks for m in net.modules())
    with torch.no_grad():
        a0 = net.features(x)
        pooled = net.pool(torch.relu(net.bn1(net.conv1(a0)))).flatten(1)
    want0 = _es_brute(net.conv1.weight.detach(), a0, stride, 1)
    assert torch.allclose(es["g"], want0, rtol=1e-4)
    # FC after pooling: a 1x1 "conv" on the pooled features; fc channel 3 - k is group channel k
    want1 = _es_brute(net.fc.weight.detach().view(3, 4, 1, 1), pooled.view(2, 4, 1, 1), 1, 0)
    assert torch.allclose(es["h"], want1.flip(0), rtol=1e-4)


# -- KL -------------------------------------------------------------------------------------
def _kl_ref(p_logits, q_logits, direction="pq"):
    lp, lq = F.log_softmax(p_logits.double(), -1), F.log_softmax(q_logits.double(), -1)
    if direction == "qp":
        lp, lq = lq, lp
    return (lp.exp() * (lp - lq)).sum(-1).mean().item()


@pytest.mark.parametrize("direction", ["pq", "qp"])
def test_kl_matches_zeroing_gamma_and_beta_one_channel_at_a_time(direction):
    model, space, data = _resnet("projection", images=10, widths=(4, 6, 8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kl = compute_scores("kl", model, space, data, direction=direction, batch_size=4, replicas=3)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    x = data.calib.x
    with torch.no_grad():
        p = model(x)
        for g in space.prunable:
            for j in range(g.channels):
                ref = copy.deepcopy(model)
                for m in g.members:
                    bn = ref.get_submodule(m.module)
                    if m.role == "out" and isinstance(bn, nn.BatchNorm2d):
                        c = dict(zip(m.root_idxs, m.idxs))[j]
                        bn.weight[c] = 0.0
                        bn.bias[c] = 0.0
                want = _kl_ref(p, ref(x), direction)
                assert kl[g.name][j].item() == pytest.approx(want, rel=1e-3, abs=1e-9)


def test_kl_matches_the_physically_pruned_network_with_option_a_shortcuts():
    model, space, data = _resnet("pad", images=6, widths=(4, 6, 8))
    kl = compute_scores("kl", model, space, data, replicas=3, batch_size=4)
    x = data.calib.x
    with torch.no_grad():
        p = model(x)
        for g in space.prunable:
            for j in range(g.channels):
                keep = torch.tensor([c for c in range(g.channels) if c != j])
                want = _kl_ref(p, prune_model(model, space, {g.name: keep})(x))
                assert kl[g.name][j].item() == pytest.approx(want, rel=1e-3, abs=1e-9)


# -- a useless channel scores lowest --------------------------------------------------------
@pytest.mark.parametrize("name", ["te", "es", "kl"])
def test_a_dead_channel_scores_lowest(name):
    model, space, data = _resnet("projection", images=16)
    dead = {"layer1.residual": 5, "layer1.0.conv1": 3}
    with torch.no_grad():
        for gname, j in dead.items():
            for bn in _bn_members(model, space.group(gname)):
                bn.weight[j] = 0.0
                bn.bias[j] = 0.0
    scores = compute_scores(name, model, space, data, **({"batches": 2, "batch_size": 8}
                                                          if name == "te" else {}))
    for gname, j in dead.items():
        assert scores[gname].argmin().item() == j
        assert scores[gname][j] <= 1e-12 < scores[gname].sort().values[1]


@pytest.mark.parametrize("name", ["l1", "l2"])
def test_a_zero_filter_scores_lowest(name):
    model, space, _ = _resnet("projection")
    group = space.group("layer1.0.conv1")
    with torch.no_grad():
        model.get_submodule("layer1.0.conv1").weight[7] = 0.0
    assert compute_scores(name, model, space)[group.name].argmin().item() == 7


# -- plumbing -------------------------------------------------------------------------------
def test_unknown_option_is_a_config_error():
    from searchprune.errors import ConfigError

    with pytest.raises(ConfigError):
        get_criterion("kl", nonsense=1)
    with pytest.raises(ConfigError, match="direction"):
        get_criterion("kl", direction="sideways")


def test_cached_scores_are_reused_from_memory_and_disk(tmp_path, monkeypatch):
    model, space, data = _resnet("projection")
    first = cached_scores("es", model, space, data, cache_dir=tmp_path, images=4)
    files = list((tmp_path / "scores").glob("*.pt"))
    assert len(files) == 1 and not list((tmp_path / "scores").glob(".*tmp"))

    def boom(*args, **kwargs):
        raise AssertionError("recomputed")

    monkeypatch.setattr(get_criterion("es").__class__, "scores", boom)
    again = cached_scores("es", model, space, data, cache_dir=tmp_path, images=4)
    monkeypatch.setattr(base, "_MEMORY", {})  # a fresh worker: only the file is left
    from_disk = cached_scores("es", model, space, data, cache_dir=tmp_path, images=4)
    for name in first:
        assert torch.equal(first[name], again[name]) and torch.equal(first[name], from_disk[name])
    # other options, weights or data are other keys
    with pytest.raises(AssertionError, match="recomputed"):
        cached_scores("es", model, space, data, cache_dir=tmp_path, images=5)
    with torch.no_grad():
        model.conv1.weight.mul_(2)
    with pytest.raises(AssertionError, match="recomputed"):
        cached_scores("es", model, space, data, cache_dir=tmp_path, images=4)


def test_cache_defaults_to_searchprune_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SEARCHPRUNE_CACHE", str(tmp_path))
    model, space, _ = _resnet("pad")
    cached_scores("l1", model, space)
    assert len(list((tmp_path / "scores").glob("l1-*.pt"))) == 1


def test_te_with_augmentation_is_seeded_from_the_study():
    """Crops and flips come from (criterion seed, data seed), not from the global RNG, so the
    cached scores match their key; the global RNG is left as it was."""
    from searchprune.data._bundle import Normalise, TrainSet
    from searchprune.data._images import ArrayImages

    model, space, _ = _resnet("pad", images=12)
    images = torch.randint(0, 256, (12, 3, 8, 8), dtype=torch.uint8)
    raw = ArrayImages(images, torch.randint(0, 10, (12,)))

    class Augmentable(FakeData):
        def __init__(self, seed: int) -> None:
            super().__init__(images.float(), raw.labels)
            self.seed = seed

        def train_set(self, augment: bool = False):
            return TrainSet(raw, torch.arange(12), Normalise(255.0, (0.5,) * 3, (0.25,) * 3),
                            augment)

    def te(data, global_seed):
        torch.manual_seed(global_seed)
        state = torch.random.get_rng_state()
        scores = compute_scores("te", model, space, data, batches=2, batch_size=6, augment=True)
        assert torch.equal(torch.random.get_rng_state(), state)
        return scores

    a, b, other = te(Augmentable(0), 1), te(Augmentable(0), 2), te(Augmentable(5), 1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.allclose(a[k], other[k]) for k in a)
