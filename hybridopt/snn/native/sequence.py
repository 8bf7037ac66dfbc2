"""The whole sequence in native code: :func:`native_sequence`, an autograd function over ``sequence.cpp``.

Forward runs all ``T`` steps of :func:`~hybridopt.snn.step.network_step` in one call and
keeps, besides the small per-step values, each plastic ``H`` (and ``E``) every ``K`` steps
(``K = ceil(sqrt(T))`` unless the spec's ``checkpoint_interval`` says otherwise).  Backward is
one call that recomputes each chunk of ``K`` steps and walks it in reverse, summing the dense
weights' gradients over the non-zero rows of their inputs as it goes (spikes are sparse):

    dW_in = sum_t x_t^T g_t      dW = sum_t s_{t-1}^T g_t      dW_out = sum_t s_t^T gy_t

(``g_t``: the gradient on the hidden current, ``gy_t`` on the readout); a modulator's
``dw_M = sum_t [x_t, s_t]^T gz_t`` (``gz_t`` on its drive; ``[x_t, s_t, y_t]`` where the modulator
reads the output) is one matrix product here, and a gate's ``dw_G`` likewise.  The
values are the reference's up to float rounding: the same operations per element, with sums in
another order.  Runs on CPU tensors of float32 or float64 with the built-in rule
families and modes (:data:`NATIVE_RULES`, :data:`NATIVE_MODES`).
"""

from __future__ import annotations

import ctypes
import math
import weakref
from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from hybridopt.snn.catalogue import PROJECTIONS
from hybridopt.snn.native.build import NetArgs, library
from hybridopt.snn.neurons import LIFState
from hybridopt.snn.plasticity import PlasticState
from hybridopt.snn.step import NetworkParams, NetworkState, StepConstants
from hybridopt.snn.tape import BufferPool

if TYPE_CHECKING:
    from hybridopt.snn.spec import NetworkSpec

__all__ = ["NATIVE_MODES", "NATIVE_RULES", "native_sequence", "supports"]

NATIVE_RULES = {"hebbian": 1, "oja": 2, "bcm": 3, "stdp": 4, "abcd": 5}
_ABCD = ("A", "B", "C", "D")
NATIVE_MODES = {"plain": 0, "neuromodulated": 1, "retroactive": 2}
_SURROGATES = {"fast_sigmoid": 0, "arctan": 1}
_DTYPES = {torch.float32: "f32", torch.float64: "f64"}

# per plastic projection: the inputs after the shared ones, in this order (None where unused)
_P_IN = ("alpha", "eta", "mod_a", "mod_b", "eta_E", "w_M", "b_M", "w_G", "b_G", "a_plus", "a_minus", "tau_phi", *_ABCD,
         "H", "pre_trace", "post_trace", "E", "phi", "drive")  # fmt: skip


def supports(spec: NetworkSpec) -> Optional[str]:
    """``None`` when the native kernel runs this network's structure, else why not."""
    for name in PROJECTIONS:
        p = spec.projection(name)
        if p.plastic and (p.rule not in NATIVE_RULES or p.modulation not in NATIVE_MODES):
            return f"{name}: {p.rule}/{p.modulation} has no native kernel"
    if spec.surrogate not in _SURROGATES:
        return f"surrogate {spec.surrogate!r} has no native kernel"
    return None


def _ptr(t: Optional[Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


def _own(t: Tensor) -> Tensor:
    """A contiguous copy of ``t``'s values that the kernel may write (detached)."""
    return t.detach().clone(memory_format=torch.contiguous_format)


def _c(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.detach().contiguous()


class _Borrowed:
    """The work tensors one sequence borrowed from its network's pool: they go back when the
    graph that holds them dies (or at once, without one), so the next sequences reuse memory
    that is already mapped instead of faulting in fresh pages."""

    def __init__(self, pool: BufferPool):
        self.pool, self.items = pool, []  # type: tuple[BufferPool, list[Tensor]]
        weakref.finalize(self, pool.give, self.items)  # holds the list, not this object

    def take(self, dtype: torch.dtype, *shape: int) -> Tensor:
        t = self.pool.take(torch.Size(shape), dtype, torch.device("cpu"))
        self.items.append(t)
        return t

    def give_back(self) -> None:
        self.pool.give(self.items)
        self.items.clear()


class _Meta:
    """What a call needs besides tensors: the spec's structure and its float constants."""

    def __init__(self, spec: NetworkSpec, consts: StepConstants, T: int, pool: BufferPool):
        self.spec, self.pool = spec, pool
        self.plastic = [k for k, n in enumerate(PROJECTIONS) if spec.projection(n).plastic]
        self.beta, self.theta, self.kappa = float(consts.beta), float(consts.theta), float(consts.readout_decay)
        self.lam = [float(v) for v in consts.trace_decay]
        self.h_max = [float(v) for v in consts.h_max]
        self.mtau = [float(v) for v in consts.modulator_tau]
        k = spec.checkpoint_interval
        self.K = max(1, math.isqrt(max(T, 1) - 1) + 1) if not k else min(k, T)
        self.store = torch.is_grad_enabled()  # checkpoints for backward


class _NativeSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, meta: _Meta, *flat: Optional[Tensor]):  # type: ignore[override]
        lib = library()
        x, W_in, W_rec, W_out, b_hid, b_out, v0, s0, y0, *pf = flat
        B, T, n_in = x.shape
        N, n_out = W_rec.shape[0], W_out.shape[1]
        dt = x.dtype
        tape = _Borrowed(meta.pool)
        new = lambda *shape: tape.take(dt, *shape)  # noqa: E731
        xT = new(T, B, n_in).copy_(x.detach().transpose(0, 1))
        net = NetArgs(T=T, B=B, n_in=n_in, N=N, n_out=n_out, K=meta.K, store=int(meta.store))
        spec = meta.spec
        net.reset = 0 if spec.reset == "zero" else 1
        net.surrogate = _SURROGATES[spec.surrogate]
        net.winners = spec.winners
        net.beta, net.theta, net.slope, net.kappa = meta.beta, meta.theta, float(spec.slope), meta.kappa
        consts_keep = [xT, _c(W_in), _c(b_hid), _c(W_rec), _c(W_out), _c(b_out), _c(v0), _c(s0), _c(y0)]
        net.x, net.W_in, net.b_hid, net.W_rec, net.W_out, net.b_out, net.v0, net.s0, net.y0 = map(_ptr, consts_keep)
        v_all = new(T, B, N)
        s_all, y_all = torch.empty(T, B, N, dtype=dt), torch.empty(T, B, n_out, dtype=dt)  # the outputs' own
        net.v_all, net.s_all, net.y_all = v_all.data_ptr(), s_all.data_ptr(), y_all.data_ptr()
        n_ck = T // meta.K + 1
        tapes: dict[int, dict[str, Optional[Tensor]]] = {}
        finals: list[Tensor] = []
        for j, k in enumerate(meta.plastic):
            a = dict(zip(_P_IN, pf[j * len(_P_IN) : (j + 1) * len(_P_IN)]))
            ps = spec.projection(PROJECTIONS[k])
            n_pre, n_post = a["alpha"].shape
            p = net.p[k]
            p.rule, p.mode = NATIVE_RULES[ps.rule], NATIVE_MODES[ps.modulation]
            p.n_pre, p.n_post = n_pre, n_post
            p.h_max, p.lam, p.mtau = meta.h_max[k], meta.lam[k], meta.mtau[k]
            tp: dict[str, Optional[Tensor]] = {n: _c(a[n]) for n in ("alpha", "eta", "mod_a", "mod_b")}
            tp |= {f"c{n}": _c(a[n]) for n in _ABCD}
            p.n_eta = (tp["eta"] if tp["eta"] is not None else tp["mod_a"]).numel() if p.mode != 2 else 1
            if a["eta_E"] is not None:
                e = float(a["eta_E"])
                p.c, p.c_inside = min(max(e, 0.0), 1.0), int(0.0 <= e <= 1.0)
            if a["tau_phi"] is not None:
                tau = float(a["tau_phi"])
                p.tau, p.tau_inside = max(tau, 1.0), int(tau >= 1.0)
            if a["a_plus"] is not None:
                p.a_plus, p.a_minus = float(a["a_plus"]), float(a["a_minus"])
            reads_y = spec.modulator_reads_output
            for w_name, b_name, tag, zx_name in (("w_M", "b_M", "M", "zx"), ("w_G", "b_G", "G", "zgx")):
                if a[w_name] is None:  # not modulated / not gated
                    continue
                # the drive's parts: on s and y (read per step in C++), and x . w[:n_in] + b for all T
                w = a[w_name].detach()
                tp[f"w_{tag}_s"] = w[n_in : n_in + N].contiguous()
                tp[f"w_{tag}_y"] = w[n_in + N :].contiguous() if reads_y else None
                zx = torch.mv(xT.view(T * B, n_in), w[:n_in], out=new(T * B)).add_(a[b_name].detach())
                tp[zx_name] = zx.view(T, B)
            if a["w_M"] is not None:
                tp["M_all"] = new(T, B)
            if a["w_G"] is not None:  # gated: the gate, and the ungated tanh(zbar)
                tp["G_all"], tp["Mu_all"] = new(T, B), new(T, B)
            names = ("H", "pre_trace", "post_trace", "E", "phi", "drive")
            st = {n: (None if a[n] is None else _own(a[n])) for n in names}
            tp |= {"H": st["H"], "E": st["E"], "xpre": st["pre_trace"], "xpost": st["post_trace"], "phi": st["phi"]}
            tp["zb"] = st["drive"]
            tp["xpre_all"], tp["xpost_all"] = new(T, B, n_pre), new(T, B, n_post)
            tp["phi_all"] = new(T, B, n_post) if st["phi"] is not None else None
            tp["H_ck"] = new(n_ck, B, n_pre, n_post) if meta.store else None
            tp["E_ck"] = new(n_ck, B, n_pre, n_post) if meta.store and st["E"] is not None else None
            for name, t in tp.items():
                if name in ("alpha", "eta", "mod_a", "mod_b", "w_M_s", "w_M_y", "zx", "w_G_s", "w_G_y", "zgx", "cA",
                            "cB", "cC", "cD", "H", "E", "xpre", "xpost", "phi", "zb", "xpre_all", "xpost_all",
                            "phi_all", "M_all", "H_ck", "E_ck", "G_all", "Mu_all"):  # fmt: skip
                    setattr(p, name, _ptr(t))
            # the final state is an output: the context keeps only its shapes (an output held by the
            # node that made it would be a reference cycle through C++, never freed)
            tp["shapes"] = {n: (None if t is None else t.shape) for n, t in st.items()}  # type: ignore[assignment]
            for n in ("H", "E", "xpre", "xpost", "phi", "zb"):
                tp.pop(n)
            tapes[k] = tp
            finals += [st["H"], st["pre_trace"], st["post_trace"]]
            finals += [t for t in (st["E"], st["phi"], st["drive"]) if t is not None]
        getattr(lib, f"hyb_forward_{_DTYPES[dt]}")(ctypes.byref(net))
        if not meta.store:  # nothing will read the tape
            tape.give_back()
        ctx.meta, ctx.net, ctx.tapes, ctx.keep, ctx.borrowed = meta, net, tapes, consts_keep, tape
        ctx.v_all, ctx.pf = v_all, [None if t is None else t.detach() for t in pf]
        ctx.s_all, ctx.y_all = s_all, y_all  # not outputs themselves (their views are): no cycle
        ys, ss = y_all.transpose(0, 1), s_all.transpose(0, 1)
        return (ys, ss, v_all[-1].clone(), s_all[-1].clone(), y_all[-1].clone(), *finals)

    @staticmethod
    @once_differentiable
    def backward(ctx, gys: Optional[Tensor], gss: Optional[Tensor], *g_final: Optional[Tensor]):  # type: ignore[override]
        lib = library()
        meta, net, tapes = ctx.meta, ctx.net, ctx.tapes
        xT, s_all = ctx.keep[0], ctx.s_all
        W_in, b_hid, W_rec, W_out, b_out = ctx.keep[1:6]
        T, B, n_in = xT.shape
        N, n_out = net.N, net.n_out
        dt = xT.dtype

        work = _Borrowed(meta.pool)

        def own(g: Optional[Tensor], *shape: int, pooled: bool = False) -> Tensor:
            out = work.take(dt, *shape) if pooled else torch.empty(*shape, dtype=dt)
            return out.zero_() if g is None else out.copy_(g)

        gy_all = own(None if gys is None else gys.transpose(0, 1), T, B, n_out, pooled=True)
        gs_all = own(None if gss is None else gss.transpose(0, 1), T, B, N, pooled=True)
        gcur = work.take(dt, T, B, N)
        gv, gs, gy, *g_states = g_final
        gv, gs, gy = own(gv, B, N), own(gs, B, N), own(gy, B, n_out)
        net.gs_all, net.gy_all, net.gcur_all = gs_all.data_ptr(), gy_all.data_ptr(), gcur.data_ptr()
        net.gv, net.gs, net.gy = gv.data_ptr(), gs.data_ptr(), gy.data_ptr()
        dense = [torch.zeros_like(w) for w in (W_in, b_hid, W_rec, W_out, b_out)]
        net.gW_in, net.gb_hid, net.gW_rec, net.gW_out, net.gb_out = (t.data_ptr() for t in dense)
        grads: dict[int, dict[str, Optional[Tensor]]] = {}
        it = iter(g_states)
        for k in meta.plastic:
            tp, p = tapes[k], net.p[k]
            sh = tp["shapes"]
            g = {
                "H": own(next(it), *sh["H"]),
                "xpre": own(next(it), *sh["pre_trace"]),
                "xpost": own(next(it), *sh["post_trace"]),
                "E": own(next(it), *sh["E"]) if sh["E"] is not None else None,
                "phi": own(next(it), *sh["phi"]) if sh["phi"] is not None else None,
                "drive": own(next(it), *sh["drive"]) if sh["drive"] is not None else None,
                "alpha": torch.zeros_like(tp["alpha"]),
                "eta": None if tp["eta"] is None else torch.zeros_like(tp["eta"]),
                "mod_a": None if tp["mod_a"] is None else torch.zeros_like(tp["mod_a"]),
                "mod_b": None if tp["mod_b"] is None else torch.zeros_like(tp["mod_b"]),
                "z": torch.zeros(T, B, dtype=dt) if tp.get("M_all") is not None else None,
                "zg": torch.zeros(T, B, dtype=dt) if tp.get("G_all") is not None else None,
            }
            g |= {f"c{n}": None if tp[f"c{n}"] is None else torch.zeros_like(tp[f"c{n}"]) for n in _ABCD}
            p.gH, p.gE, p.gxpre, p.gxpost, p.gphi, p.gzb = map(
                _ptr, (g["H"], g["E"], g["xpre"], g["xpost"], g["phi"], g["drive"])
            )
            p.g_alpha, p.g_eta, p.g_mod_a, p.g_mod_b, p.g_z, p.g_zg = map(
                _ptr, (g["alpha"], g["eta"], g["mod_a"], g["mod_b"], g["z"], g["zg"])
            )
            p.g_cA, p.g_cB, p.g_cC, p.g_cD = (_ptr(g[f"c{n}"]) for n in _ABCD)
            p.g_c = p.g_a_plus = p.g_a_minus = p.g_tau = 0.0
            grads[k] = g
        getattr(lib, f"hyb_backward_{_DTYPES[dt]}")(ctypes.byref(net))

        X, S = xT.view(T * B, n_in), s_all.view(T * B, N)
        features = (X, S, ctx.y_all.view(T * B, n_out)) if meta.spec.modulator_reads_output else (X, S)
        gW_in, gb_hid, gW_rec, gW_out, gb_out = dense
        out: list[Optional[Tensor]] = [None, gW_in, gW_rec, gW_out, gb_hid, gb_out, gv, gs, gy]  # x: none
        pf = ctx.pf
        for j, k in enumerate(meta.plastic):
            a = dict(zip(_P_IN, pf[j * len(_P_IN) : (j + 1) * len(_P_IN)]))
            g, p = grads[k], net.p[k]
            scalar = lambda v: torch.tensor(v, dtype=dt)  # noqa: E731
            gz, gzg = g["z"], g["zg"]
            out += [
                g["alpha"],
                g["eta"],
                g["mod_a"],
                g["mod_b"],
                None if a["eta_E"] is None else scalar(p.g_c if p.c_inside else 0.0),
                None if gz is None else torch.cat([f.t() @ gz.view(-1) for f in features]),
                None if gz is None else gz.sum(),
                None if gzg is None else torch.cat([f.t() @ gzg.view(-1) for f in features]),
                None if gzg is None else gzg.sum(),
                None if a["a_plus"] is None else scalar(p.g_a_plus),
                None if a["a_minus"] is None else scalar(p.g_a_minus),
                None if a["tau_phi"] is None else scalar(p.g_tau),
                *(g[f"c{n}"] for n in _ABCD),
                g["H"],
                g["xpre"],
                g["xpost"],
                g["E"],
                g["phi"],
                g["drive"],
            ]
        work.give_back()  # what backward used (the tape stays: a second backward reads it)
        return (None, *out)


def native_sequence(
    params: NetworkParams,
    spec: NetworkSpec,
    consts: StepConstants,
    x: Tensor,
    state: NetworkState,
    pool: Optional[BufferPool] = None,
) -> Optional[tuple[Tensor, Tensor, NetworkState]]:
    """Run a ``B x T x N_in`` sequence in the native kernel: ``(y, s, final state)`` as
    :meth:`PlasticSNN.forward <hybridopt.snn.network.PlasticSNN.forward>` returns them, or
    ``None`` when it does not apply here (another device or dtype, a structure without a native
    kernel, no library)."""
    if x.device.type != "cpu" or x.dtype not in _DTYPES or supports(spec) is not None or library() is None:
        return None
    meta = _Meta(spec, consts, x.shape[1], pool if pool is not None else BufferPool())
    flat: list[Any] = [x, params.input.W, params.recurrent.W, params.readout.W, params.b_hidden, params.b_out]
    flat += [state.lif.v, state.lif.s, state.y]
    for k in meta.plastic:
        name = PROJECTIONS[k]
        pp, st = getattr(params, name), getattr(state, name)
        m, c = pp.mod, pp.coeffs
        flat += [pp.alpha, m.eta, m.mod_a, m.mod_b, m.eta_E, pp.w_M, pp.b_M, pp.w_G, pp.b_G]
        flat += [c.get("a_plus"), c.get("a_minus"), c.get("tau_phi"), *(c.get(n) for n in _ABCD)]
        drive = None
        if spec.projection(name).filtered:  # a state without the filter yet starts it from zero
            drive = st.drive if st.drive is not None else st.H.new_zeros(st.H.shape[0])
        flat += [st.H, st.pre_trace, st.post_trace, st.E, st.phi, drive]
    ys, ss, v, s, y, *finals = _NativeSequence.apply(meta, *flat)
    plastic: dict[str, Optional[PlasticState]] = {n: None for n in PROJECTIONS}
    it = iter(finals)
    for k in meta.plastic:
        name = PROJECTIONS[k]
        st = getattr(state, name)
        H, pre, post = next(it), next(it), next(it)
        E = next(it) if st.E is not None else None
        phi = next(it) if st.phi is not None else None
        drive = next(it) if spec.projection(name).filtered else None
        plastic[name] = PlasticState(H=H, pre_trace=pre, post_trace=post, E=E, phi=phi, drive=drive)
    return ys, ss, NetworkState(lif=LIFState(v=v, s=s), y=y, **plastic)
