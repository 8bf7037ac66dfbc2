"""Pools per input position sharing one plastic state, a centred input and weight normalisation:
hand-worked values, the pools' summed update, sample independence, the kernel they run on and
the config's errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hybridopt import api
from hybridopt.config import ConfigError, network_spec, parse_config
from hybridopt.snn.kernels import COMPILE_MIN_CPU_S, STEPWISE_COMPILE_MIN_CPU_S, KernelBudget
from hybridopt.snn.network import NetworkSpec, PlasticSNN, ProjectionSpec
from hybridopt.snn.plasticity import ModulationParams, PlasticState, plastic_current, plasticity_step
from hybridopt.snn.step import hidden_input
from tests.conftest import CONFIGS

# 7 channels: positions (0, 1) and (2, 3), shared 4, 5, 6 (the cue association's layout, 2 bits a bank)
POSITIONS = ((0, 1), (2, 3))
SHARED = (4, 5, 6)


def _spec(**kw) -> NetworkSpec:
    base = dict(n_in=7, n_out=1, hidden=5, input_gain=2.0, share_positions=True, positions=POSITIONS)
    return NetworkSpec(**(base | {"shared_channels": SHARED} | kw))


def test_normalised_weight_keeps_each_columns_length():
    # W's column (3, 4) has length 5; alpha H = (-3, 0) turns it to (0, 4), rescaled to (0, 5)
    W = torch.tensor([[3.0], [4.0]])
    alpha = torch.ones(2, 1)
    H = torch.tensor([[[-3.0], [0.0]]])
    pre = torch.tensor([[1.0, 1.0]])
    assert plastic_current(pre, W, alpha, H).item() == pytest.approx(4.0)  # (0 + 4)
    assert plastic_current(pre, W, alpha, H, normalise=True).item() == pytest.approx(5.0)  # (0 + 5)
    # any state: every unit's effective weight vector is as long as W's column
    gen = torch.Generator().manual_seed(0)
    W, alpha = torch.randn(6, 4, generator=gen), torch.rand(6, 4, generator=gen)
    H = torch.randn(3, 6, 4, generator=gen)
    # row i of the current of one-hot inputs is W_eff's row i (each sample's own H)
    W_eff = torch.stack([plastic_current(torch.eye(6), W, alpha, h.expand(6, 6, 4), normalise=True) for h in H])
    assert torch.allclose(W_eff.norm(dim=1), W.norm(dim=0).expand(3, 4), atol=1e-5)


def test_hidden_input_gives_each_pool_its_position_centred_and_the_shared_channels():
    x = torch.tensor([[1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0]])
    rows = hidden_input(_spec(centre_input=True), x)
    # pool 0: (1, 0) less its mean 0.5; pool 1: (1, 1) less 1; both: the shared (1, 0, 1)
    assert rows.tolist() == [[0.5, -0.5, 1.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0, 1.0]]
    assert hidden_input(_spec(), x).tolist() == [[1.0, 0.0, 1.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0, 1.0]]
    flat = NetworkSpec(n_in=7, n_out=1, hidden=5, centre_input=True)
    assert torch.allclose(hidden_input(flat, x), x - 5.0 / 7.0)


def test_pools_sum_their_updates_into_one_state():
    """``H' = H + eta (D(H, pool 0) + D(H, pool 1))``: two pools' rows give the sum of the changes
    each makes alone from the same ``H`` (Oja's ``D`` reads ``H``; the clip is out of reach)."""
    gen = torch.Generator().manual_seed(1)
    B, n_pre, n_post = 3, 4, 5
    H = torch.randn(B, n_pre, n_post, generator=gen, dtype=torch.float64) * 0.1
    pre = (torch.rand(B * 2, n_pre, generator=gen) < 0.5).double()
    post = (torch.rand(B * 2, n_post, generator=gen) < 0.5).double()
    traces = (torch.rand(B * 2, n_pre, generator=gen).double(), torch.rand(B * 2, n_post, generator=gen).double())
    mod = ModulationParams(eta=torch.full((n_post,), 0.3, dtype=torch.float64))
    kw = dict(trace_decay=0.8, h_max=100.0, coeffs={}, mod=mod)
    both = plasticity_step("oja", "plain", PlasticState(H, *traces), pre, post, positions=2, **kw)
    change = torch.zeros_like(H)
    for p in (0, 1):
        rows = slice(p, None, 2)  # sample b's pool p is row 2 b + p
        st = PlasticState(H, traces[0][rows], traces[1][rows])
        alone = plasticity_step("oja", "plain", st, pre[rows], post[rows], **kw)
        change += alone.H - H
        assert torch.equal(both.pre_trace[rows], alone.pre_trace)  # traces stay per pool
    assert torch.allclose(both.H, H + change, atol=1e-12)
    assert not torch.allclose(change, torch.zeros_like(H))


def _pools_net(modulation: str) -> PlasticSNN:
    spec = _spec(
        centre_input=True,
        winners=2,
        input=ProjectionSpec(rule="hebbian", modulation=modulation, normalise=True, alpha_init=0.5),
        recurrent=ProjectionSpec(rule="oja"),
        readout=ProjectionSpec(rule="hebbian", modulation=modulation),
    )
    return PlasticSNN(spec, seed=3).double()


X = (torch.rand(3, 40, 7, generator=torch.Generator().manual_seed(2)) < 0.4).double()


def test_a_sample_in_a_batch_runs_as_it_does_alone():
    net = _pools_net("neuromodulated")
    y, s, state = net(X)
    assert s.shape == (3, 40, 10) and state.input.H.shape == (3, 5, 5) and state.lif.v.shape == (6, 5)
    assert 0 < s.mean() < 0.4 and (s.view(3, 40, 2, 5).sum(3) <= 2).all()  # 2 winners per pool
    for b in range(3):
        y1, s1, _ = net(X[b : b + 1])
        assert torch.allclose(y1, y[b : b + 1], atol=1e-10) and torch.equal(s1, s[b : b + 1])


def test_the_positions_are_interchangeable():
    """Swapping the two positions' channels swaps the pools and leaves the readout, which reads
    their summed spikes, as it was (no neuromodulator here: it reads the input's channels as they
    are, each with its own weight)."""
    net = _pools_net("plain")
    y, s, _ = net(X)
    y2, s2, _ = net(X[:, :, [2, 3, 0, 1, 4, 5, 6]])
    assert torch.allclose(y2, y, atol=1e-10) and y.abs().sum() > 0
    assert torch.equal(s2.view(3, 40, 2, 5).flip(2), s.view(3, 40, 2, 5))


def test_the_options_run_on_the_step_kernels_and_train_through_them(tmp_path: Path):
    spec = _spec(input=ProjectionSpec(rule="hebbian"))
    assert PlasticSNN(spec).kernel_for(4) == "reference"  # no budget declared: no compile paid
    normalised = PlasticSNN(NetworkSpec(n_in=7, n_out=1, input=ProjectionSpec(rule="hebbian", normalise=True)))
    assert normalised.kernel_for(4) == "reference"
    # a compile is weighed against plain autograd here: two CPU-minutes repay it
    normalised.set_budget(KernelBudget(steps=1000, cpu_s=STEPWISE_COMPILE_MIN_CPU_S - 1.0))
    assert normalised.kernel_for(4) == "reference"
    normalised.set_budget(KernelBudget(steps=1000, cpu_s=STEPWISE_COMPILE_MIN_CPU_S))
    assert normalised.kernel_for(4) == "compiled" and normalised.kernel_for(4, grad=False) == "compiled"
    assert STEPWISE_COMPILE_MIN_CPU_S < COMPILE_MIN_CPU_S
    over = ["network.share_positions=true", "network.centre_input=true", "plasticity.input.normalise=true"]
    over.append("train.steps=2")
    run = api.train(CONFIGS / "smoke.yaml", tracking_uri=f"sqlite:///{tmp_path / 'm.db'}", overrides=over)
    assert not run.failed and 0.0 <= run.fitness <= 1.0
    cfg = run.config
    spec = network_spec(cfg, 2 * cfg.task.cue_bits + 3, 1)
    assert spec.positions == (tuple(range(8)), tuple(range(8, 16))) and spec.shared_channels == (16, 17, 18)
    assert spec.shape("input") == (11, 16)


def test_pools_that_do_not_read_the_shared_channels():
    """``pools_read_shared: false``: each pool reads its position's channels only (the input
    projection is ``n_pos x hidden``), so the hidden spikes do not depend on the shared channels,
    while a neuromodulator still reads them (its plastic readout then does)."""
    raw = {"task": {"name": "cue_association"}, "plasticity": {"input": {"rule": "hebbian"}}}
    over = ["network.share_positions=true", "network.pools_read_shared=false", "network.hidden=5"]
    cfg = parse_config(raw, over)
    spec = network_spec(cfg, 2 * cfg.task.cue_bits + 3, 1)
    assert spec.shared_channels == () and spec.shape("input") == (cfg.task.cue_bits, 5)
    readout = ProjectionSpec(rule="hebbian", modulation="neuromodulated")
    net = PlasticSNN(_spec(shared_channels=(), readout=readout), seed=3).double()
    assert net.projections["input"].W.shape == (2, 5)
    with torch.no_grad():
        net.projections["readout"].w_M.fill_(1.0)  # the modulator reads every channel, the shared ones too
    X2 = X.clone()
    X2[:, :, 4:] = 1.0 - X2[:, :, 4:]  # the shared channels changed, the positions' as they were
    y, s, _ = net(X)
    y2, s2, _ = net(X2)
    assert torch.equal(s2, s) and s.sum() > 0
    assert not torch.allclose(y2, y)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["task.name=pattern_memory", "network.share_positions=true"], "'pattern_memory' declares no input positions"),
        (["network.kernel=native", "network.centre_input=true"], r"network.centre_input run\(s\) on the compiled"),
        (["network.kernel=fused", "plasticity.input.normalise=true"], r"plasticity.input.normalise run\(s\) on the"),
    ],
)
def test_config_errors_name_the_option(overrides: list[str], message: str):
    raw = {"task": {"name": "cue_association"}, "plasticity": {"input": {"rule": "hebbian"}}}
    if overrides[0] == "task.name=pattern_memory":
        raw["task"] = {"name": "pattern_memory"}
        overrides = overrides[1:]
    with pytest.raises(ConfigError, match=message):
        parse_config(raw, overrides)


def test_pools_read_shared_without_pools_has_no_effect():
    """Without ``share_positions`` there are no pools: ``pools_read_shared: false`` builds the
    same network as the default (a search may choose the two apart without failing a candidate)."""
    raw = {"task": {"name": "cue_association"}, "plasticity": {"input": {"rule": "hebbian"}}}
    n_in = 2 * parse_config(raw).task.cue_bits + 3
    plain = network_spec(parse_config(raw), n_in, 1)
    moot = network_spec(parse_config(raw, ["network.pools_read_shared=false"]), n_in, 1)
    assert moot.shape("input") == plain.shape("input") == (n_in, plain.hidden)
    assert moot.positions == plain.positions and moot.shared_channels == plain.shared_channels
