"""Bayesian optimisation: a Gaussian process model of the objective and log expected improvement.

How one suggestion is made (all of it a pure function of space, seed, settings, index and
history, in float64 on the CPU):

1. The first `initialTrials` suggestions are the Sobol design (the same points the sobol
   strategy gives for this seed), as is every suggestion until two trials have succeeded.
2. Finished trials become observations in the unit cube (see unitcube.py). The objective is
   turned into one to minimise, failed trials get the worst value seen (the model learns to
   avoid their region without ever calling it good) and pruned trials at least the median.
   Values are standardised and Yeo-Johnson warped, so a few terrible trials do not flatten
   the differences that matter among the good ones.
3. A GP with a Matern-5/2 kernel, one lengthscale per parameter (ARD), is fitted by
   maximising the marginal likelihood times log-normal priors on the lengthscales, the
   signal variance and the noise (see LENGTHSCALE_PRIOR_LOC). Categorical parameters enter
   as one-hot vectors scaled so that two different choices are at distance one, with their
   own lengthscale (a Hamming-distance kernel).
4. With running or pending trials, a candidate is scored by the improvement it adds to
   theirs (sequential greedy q-EI, estimated from quasi-random joint samples of the model):
   a point next to a pending one adds nothing, so parallel workers spread out, while a
   distinct point in the promising region still scores as high as it deserves.
5. Log expected improvement (Ament et al., 2023: as EI, but without the vanishing values
   and flat regions that make plain EI hard to maximise) is maximised over Sobol candidates
   and perturbations of the best trials, then refined locally around the best candidates.
   A configuration already tried or pending is never suggested again.

Past `maxModelTrials` observations the model is fitted on a subset (the best half and the
ones nearest the incumbent), which keeps a suggestion in the tens of milliseconds at
thousands of trials while keeping the region that matters most modelled in full.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Mapping, Optional, Sequence

from kubetune.api.models import Budget, Objective, Parameter
from kubetune.strategies.base import SettingsError, Strategy
from kubetune.strategies.unitcube import UnitCube, sobol_points
from kubetune.trials import TrialRecord

SOBOL_CANDIDATES = 512
LOCAL_CANDIDATES = 512
#: Past this many observations a suggestion takes three shortcuts that keep it fast (under 50 ms
#: at 100 observations on one core): the acquisition is first scored on half as many
#: candidates (each costs time in proportion to the observations; the local refinement
#: rounds still search around the best of them); the kernel's hyperparameters are fitted on
#: this many of the observations (the best half and those nearest the incumbent; 64 points
#: pin down a lengthscale per parameter, and every step of the fit factorises a matrix as
#: large as its data), and the model is then conditioned on all of them; and the fit stops at
#: a looser tolerance with a shorter L-BFGS memory (with this many observations the
#: likelihood is sharp, and the last digits of the hyperparameters do not move the
#: suggestion). Studies of up to 64 trials never take them.
FEWER_CANDIDATES_AFTER = 64
REFINE_ROUNDS = (0.1, 0.05, 0.025, 0.012, 0.006)  # perturbation scales of the local refinement rounds
REFINE_ANCHORS = 4
REFINE_SAMPLES = 64
MIN_NOISE = 1e-6
#: Joint draws of the pending trials' results and a candidate's, for the acquisition with
#: trials running. 1,024 measured better than 256 on the benchmark's learning-rate-like problem
#: at batch 4 (fewer draws make the estimate noisy enough to change which candidate wins).
BATCH_SAMPLES = 1024
FIT_ITERATIONS = 40
#: No suggestion comes closer than this to a tried or pending configuration (unit-cube distance):
#: 1% of a range is below any difference that matters in a hyperparameter, and re-measuring
#: next to a known point is how an over-confident model wastes trials.
MIN_SEPARATION = 0.01
# log(lengthscale) ~ Normal(-1, 1) in the unit cube: a lengthscale of about 0.37, give or take a
# factor of e. With the short initial design the model is fitted on a handful of points, and a
# prior that expects variation at the scale of a third of a range makes log EI look near the
# good trials rather than spread over the whole cube: on the benchmark it cut the learning-
# rate-like problem's trials to target and improved Hartmann-6 and Styblinski-Tang (centre -0.5,
# the previous value, is the comparison in docs/bayesian-optimization.md). The sqrt(d)-scaled
# prior of Hvarfner et al. (2024), centre sqrt(2) + log(d)/2 and variance 3, was far worse on
# these problems (d = 2 to 7): its long lengthscales make the model too smooth to find narrow
# optima within 30 trials (the learning-rate-like problem's median trials to target went from
# 11 to never on 30 seeds).
LENGTHSCALE_PRIOR_LOC = -1.0
LENGTHSCALE_PRIOR_VAR = 1.0
#: log(noise variance) ~ Normal(-4, 1) on the standardised, warped values.
NOISE_PRIOR_LOC = -4.0


def default_initial_trials(dimension: int) -> int:
    """Two Sobol points, one more for every 8 parameters (at most 10).

    Two are the fewest a model can be fitted on, and every trial of the design is one the model
    does not steer. A d + 1 design (the previous default, 5 to 10 trials) spent a quarter of a
    30-trial budget before the first model-guided trial. With the shorter lengthscale prior
    below, the two-point design reached the learning-rate-like problem's target in 8 trials
    where the previous defaults needed 14 (median of 30 seeds), and lowered the mean regret over
    the benchmark's problems (see docs/bayesian-optimization.md). Log EI explores on its own
    while the model knows little, so a long design buys little coverage the model would not.
    """
    return min(2 + dimension // 8, 10)


class BayesianStrategy(Strategy):
    """Gaussian-process Bayesian optimisation with log expected improvement, after a Sobol design."""

    name = "bayesian"
    settings_help = {
        "initialTrials": "number of Sobol trials before the model takes over (default: 2, plus 1 for every 8 parameters)",
        "maxModelTrials": "most observations the model is fitted on; past it, the best and the nearest to the best are kept (default 256)",
    }

    def __init__(self, parameters: Sequence[Parameter], objective: Objective, seed: int,
                 settings: Mapping[str, Any], budget: Optional[Budget] = None) -> None:
        super().__init__(parameters, objective, seed, settings, budget)
        self.cube = UnitCube(self.parameters)
        self.initial_trials = _whole_setting(self.settings, "initialTrials", default_initial_trials(self.cube.dimension), 1)
        self.max_model_trials = _whole_setting(self.settings, "maxModelTrials", 256, 20)

    def suggest(self, index: int, history: Sequence[TrialRecord]) -> Optional[dict[str, Any]]:
        if index >= self.initial_trials:
            with _one_thread():
                point = _Suggestion(self, index, history).best_point()
            if point is not None:
                return self.cube.decode(point)
        return self.cube.decode(sobol_points(self.cube.dimension, self.seed, index, 1)[0].tolist())


@contextmanager
def _one_thread():
    """Run torch on one thread for the length of a suggestion, then restore the setting.

    The model's matrices are at most a few hundred rows: splitting such small operations over
    threads costs more in synchronisation than it saves, and when the other cores are busy
    (the runner's own work, other studies) a second thread waits for a core on every
    operation. One thread measured 2x faster at 100 observations and 7x at 1,000 on a
    2-core machine under load (see docs/bayesian-optimization.md).
    """
    import torch

    previous = torch.get_num_threads()
    if previous != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if previous != 1:
            torch.set_num_threads(previous)


def _whole_setting(settings: Mapping[str, Any], key: str, default: int, minimum: int) -> int:
    value = settings.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SettingsError(key, f"must be a whole number of at least {minimum}, got {value!r}")
    return value


class _Suggestion:
    """The work of one suggestion; holds the tensors so the steps read as a sequence."""

    def __init__(self, strategy: BayesianStrategy, index: int, history: Sequence[TrialRecord]) -> None:
        import torch

        self.torch = torch
        self.strategy = strategy
        self.cube = strategy.cube
        # Seeded by (seed, index) alone: the same history gives the same candidates and answer.
        self.generator = torch.Generator().manual_seed((strategy.seed * 1_000_003 + index) % 2**63)
        self.index = index
        self.features = _FeatureMap(self.cube, torch)
        self._read_history(history)

    # -- observations -----------------------------------------------------------------------

    def _read_history(self, history: Sequence[TrialRecord]) -> None:
        torch = self.torch
        objective = self.strategy.objective
        sign = 1.0 if objective.goal == "minimize" else -1.0
        succeeded, failed, pruned, pending = [], [], [], []
        # Index order, whatever order the history came in: suggestions must not depend on it.
        for record in sorted(history, key=lambda r: (r.index, r.name)):
            point = self.cube.encode(dict(record.parameters))
            if point is None:
                continue
            if record.phase == "Succeeded":
                value = record.objective(objective)
                if value is None:
                    failed.append(point)  # finished without a usable objective: as bad as a failure
                else:
                    succeeded.append((point, sign * value))
            elif record.phase == "Failed":
                failed.append(point)
            elif record.phase == "Pruned":
                value = record.metrics.get(objective.metric)
                pruned.append((point, sign * value if value is not None and math.isfinite(value) else math.inf))
            elif record.phase in ("Pending", "Running"):
                pending.append(point)
            # Stopped trials gave no result; the engine runs their parameters again as new trials.
        self.succeeded = len(succeeded)
        if not succeeded:
            return
        values = [v for _, v in succeeded]
        worst = max(values)
        median = sorted(values)[len(values) // 2]
        # An early-stopped trial was judged unpromising: at least as bad as the median, never better.
        points = [p for p, _ in succeeded] + [p for p, _ in pruned] + failed
        y = values + [min(max(v, median), worst) for _, v in pruned] + [worst] * len(failed)
        self.u = torch.tensor(points, dtype=torch.float64)
        self.y_raw = torch.tensor(y, dtype=torch.float64)
        self.is_result = torch.zeros(len(points), dtype=torch.bool)
        self.is_result[: len(succeeded)] = True
        self.pending_u = torch.tensor(pending, dtype=torch.float64).reshape(-1, self.cube.dimension)

    # -- the whole suggestion -----------------------------------------------------------------

    def best_point(self) -> Optional[list[float]]:
        """The unit-cube point to try next, or None when there is too little data for a model."""
        if self.succeeded < 2:
            return None
        torch = self.torch
        observed = self.features(self.u)
        y = _warp(_standardise(self.y_raw, torch), torch)
        x, y, keep = self._subset(observed, y, self.strategy.max_model_trials)
        fit_x, fit_y, _ = self._subset(x, y, FEWER_CANDIDATES_AFTER)
        gp = _GaussianProcess.fit(fit_x, fit_y, self.features, torch, loose=len(y) > FEWER_CANDIDATES_AFTER)
        if len(fit_y) < len(y):
            gp = _GaussianProcess(x, y, *gp.params, torch)
        incumbent = float(y[self.is_result[keep]].min())
        pending = self.features(self.pending_u)
        if len(pending):
            seed = (self.strategy.seed * 1_000_003 + self.index) % 2**31
            acquisition = _PendingLogEI(gp, pending, incumbent, seed, torch)
        else:
            acquisition = lambda candidates: gp.log_ei(candidates, incumbent)  # noqa: E731
        anchors = self.u[keep][torch.argsort(y, stable=True)[:5]]
        return self._maximise(acquisition, anchors, taken=torch.cat([observed, pending]))

    def _subset(self, x, y, limit: int):
        """All observations, or past `limit` the best half and those nearest the incumbent."""
        torch = self.torch
        n = len(y)
        if n <= limit:
            return x, y, torch.arange(n)
        order = torch.argsort(y, stable=True)
        best = order[: limit // 2]
        rest = order[limit // 2:]
        distance = ((x[rest] - x[order[0]]) ** 2).sum(-1)
        nearest = rest[torch.argsort(distance, stable=True)[: limit - len(best)]]
        keep = torch.sort(torch.cat([best, nearest])).values
        return x[keep], y[keep], keep

    # -- acquisition maximisation -----------------------------------------------------------

    def _maximise(self, acquisition, anchors, taken) -> Optional[list[float]]:
        """The best point for `acquisition` (higher is better) at least MIN_SEPARATION from
        every point in `taken`; None when there is none (then the Sobol sequence continues)."""
        torch = self.torch
        d = self.cube.dimension
        share = 2 if len(taken) > FEWER_CANDIDATES_AFTER else 1
        candidates = torch.cat([
            sobol_points(d, (self.strategy.seed * 7919 + self.index) % 2**31, 0, SOBOL_CANDIDATES // share),
            self._perturb(anchors, LOCAL_CANDIDATES // share // len(anchors), (0.2, 0.07, 0.02)),
        ])
        scores = acquisition(self.features(candidates))
        for scale in REFINE_ROUNDS:
            top = candidates[torch.argsort(scores, descending=True, stable=True)[:REFINE_ANCHORS]]
            local = self._perturb(top, REFINE_SAMPLES, (scale,))
            candidates = torch.cat([candidates, local])
            scores = torch.cat([scores, acquisition(self.features(local))])
        order = torch.argsort(scores, descending=True, stable=True)
        for block in torch.split(order, 256):
            clear = torch.cdist(self.features(candidates[block]), taken).min(dim=1).values >= MIN_SEPARATION
            if bool(clear.any()):
                position = int(block[int(torch.argmax(clear.to(torch.int8)))])
                return candidates[position].tolist()
        return None

    def _perturb(self, anchors, per_anchor: int, scales: Sequence[float]):
        """Gaussian steps around each anchor at the given scales; each categorical choice is
        redrawn with probability 1/d."""
        torch = self.torch
        d = self.cube.dimension
        base = anchors.repeat_interleave(per_anchor, dim=0)
        scale = torch.tensor(scales, dtype=torch.float64).repeat(math.ceil(len(base) / len(scales)))[: len(base)]
        moved = base + scale[:, None] * torch.randn(base.shape, generator=self.generator, dtype=torch.float64)
        # Reflected at the walls, not clamped: clamping would pile candidates onto the boundary.
        moved = torch.remainder(moved, 2.0)
        moved = torch.where(moved > 1.0, 2.0 - moved, moved).clamp(0.0, 1.0 - 1e-12)
        categorical = self.features.categorical_columns
        if categorical:
            redraw = torch.rand(len(base), len(categorical), generator=self.generator, dtype=torch.float64) < 1.0 / d
            fresh = torch.rand(len(base), len(categorical), generator=self.generator, dtype=torch.float64)
            columns = torch.tensor(categorical)
            moved[:, columns] = torch.where(redraw, fresh, base[:, columns])
        return moved


class _FeatureMap:
    """Unit-cube points to model inputs: snapped numeric coordinates and one-hot choices.

    A finite parameter's coordinate is replaced by the centre of its slice, so the model sees
    a candidate exactly as it would see the trial once run. One-hot columns are scaled by
    1/sqrt(2), which puts two different choices at distance one.
    """

    def __init__(self, cube: UnitCube, torch) -> None:
        self.torch = torch
        self.cube = cube
        self.categorical_columns = [i for i, c in enumerate(cube.coordinates) if c.categorical]
        #: For every model input column, the parameter (and so the lengthscale) it belongs to.
        owner = []
        for i, c in enumerate(cube.coordinates):
            owner.extend([i] * (c.count if c.categorical else 1))
        self.owner = torch.tensor(owner)

    def __call__(self, u):
        torch = self.torch
        columns = []
        for i, c in enumerate(self.cube.coordinates):
            ui = u[:, i]
            if c.count is not None:
                position = torch.clamp(torch.floor(ui * c.count), max=c.count - 1)
                if c.categorical:
                    columns.append(torch.nn.functional.one_hot(position.long(), c.count).to(u.dtype) / math.sqrt(2))
                    continue
                ui = (position + 0.5) / c.count
            elif c.parameter.type == "int":  # log-scaled int: the coordinate of the rounded value
                low, high = c.low, c.high
                value = torch.round(torch.exp(low + ui * (high - low))).clamp(c.parameter.min, c.parameter.max)
                ui = (torch.log(value) - low) / (high - low)
            columns.append(ui[:, None])
        return torch.cat(columns, dim=1)



def _standardise(y, torch):
    spread = y.std() if len(y) > 1 else torch.tensor(1.0, dtype=y.dtype)
    return (y - y.mean()) / (spread if spread > 0 else 1.0)


def _warp(y, torch):
    """Yeo-Johnson power transform with the maximum-likelihood exponent, then standardised.

    Objectives are often skewed (a diverged run scores 1e6 beside good ones at 0.1); the
    transform makes them closer to Gaussian, as the GP assumes. It is monotone, so it keeps
    the order of the trials and so what counts as an improvement.
    """
    lambdas = torch.linspace(-2.0, 2.0, 41, dtype=y.dtype)
    transformed = _yeo_johnson(y[None, :], lambdas[:, None], torch)
    # Profile log-likelihood of a Gaussian after the transform, including its Jacobian.
    jacobian = (lambdas - 1.0) * (torch.sign(y) * torch.log1p(y.abs())).sum()
    likelihood = -0.5 * len(y) * torch.log(transformed.var(dim=1, correction=0).clamp_min(1e-300)) + jacobian
    best = int(torch.argmax(likelihood))
    return _standardise(transformed[best], torch)


def _yeo_johnson(y, lam, torch):
    positive = y >= 0
    lam_pos = torch.where(lam.abs() < 1e-8, torch.ones_like(lam), lam)
    lam_neg = torch.where((2.0 - lam).abs() < 1e-8, torch.ones_like(lam), 2.0 - lam)
    up = torch.where(lam.abs() < 1e-8, torch.log1p(y.clamp_min(0)), ((y.clamp_min(0) + 1) ** lam_pos - 1) / lam_pos)
    down = torch.where((2.0 - lam).abs() < 1e-8, -torch.log1p((-y).clamp_min(0)),
                       -(((-y).clamp_min(0) + 1) ** lam_neg - 1) / lam_neg)
    return torch.where(positive, up, down)


class _GaussianProcess:
    """A zero-mean GP on standardised values: Matern-5/2 ARD kernel plus Gaussian noise."""

    def __init__(self, x, y, log_lengthscale, log_signal, noise, features, torch) -> None:
        self.torch = torch
        self.x, self.y = x, y
        self.inverse_lengthscale = torch.exp(-log_lengthscale)[features.owner]
        self.signal = float(torch.exp(log_signal))
        self.noise = float(noise)
        self.params = (log_lengthscale, log_signal, noise, features)
        kernel = self._kernel(x, x) + self.noise * torch.eye(len(x), dtype=x.dtype)
        self.chol = _cholesky(kernel, torch)
        self.alpha = torch.cholesky_solve(y[:, None], self.chol)

    def _kernel(self, a, b):
        return self.signal * _matern52(a * self.inverse_lengthscale, b * self.inverse_lengthscale, self.torch)

    @classmethod
    def fit(cls, x, y, features, torch, loose: bool = False) -> "_GaussianProcess":
        """Maximum a posteriori hyperparameters, by L-BFGS from the priors' centres.

        The gradient is written out rather than taken by autograd: it is a few matrix products
        either way, and skipping the autograd graph makes the fit about three times faster.
        """
        dimension = len(features.cube.coordinates)
        prior_loc, prior_var = LENGTHSCALE_PRIOR_LOC, LENGTHSCALE_PRIOR_VAR
        noise_loc = NOISE_PRIOR_LOC
        start = torch.cat([
            torch.full((dimension,), prior_loc, dtype=torch.float64),
            torch.tensor([0.0, noise_loc], dtype=torch.float64),  # log signal variance, log noise
        ])
        theta = start.clone().requires_grad_(True)
        # Far outside anything the priors allow, so they never bind in a sensible fit.
        lower = torch.tensor([-12.0] * dimension + [-20.0, -60.0], dtype=torch.float64)
        upper = torch.tensor([12.0] * dimension + [20.0, 20.0], dtype=torch.float64)
        owner = features.owner
        n = len(y)
        eye = torch.eye(n, dtype=x.dtype)
        squares = x * x
        root5 = math.sqrt(5.0)

        def objective():
            # Bounded, so that a long line-search step cannot overflow the kernel.
            t = torch.maximum(torch.minimum(theta.detach(), upper), lower)
            log_ls, log_signal, log_noise = t[:dimension], t[dimension], t[dimension + 1]
            signal, noise_part = torch.exp(log_signal), torch.exp(log_noise)
            inverse = torch.exp(-log_ls)[owner]
            scaled = x * inverse
            r = root5 * torch.sqrt(((scaled * scaled).sum(-1)[:, None] + (scaled * scaled).sum(-1)[None, :]
                                    - 2.0 * scaled @ scaled.T).clamp_min(0.0) + 1e-12)
            decay = torch.exp(-r)
            covariance = signal * (1.0 + r + r * r / 3.0) * decay
            kernel = covariance + (MIN_NOISE + noise_part) * eye
            chol = _cholesky(kernel, torch)
            alpha = torch.cholesky_solve(y[:, None], chol)
            value = 0.5 * float((y[:, None] * alpha).sum()) + float(torch.log(torch.diagonal(chol)).sum())
            # d(nll)/d(theta) = -1/2 tr(W dK/dtheta) with W = alpha alpha^T - K^-1.
            w = alpha @ alpha.T - torch.cholesky_inverse(chol)
            # dK/dlog(l_j) = signal * 5/3 (1 + r) e^-r * sum over j's columns of (dx * inverse)^2
            a = w * (signal * (5.0 / 3.0) * (1.0 + r) * decay)
            per_column = 2.0 * (squares * a.sum(1)[:, None]).sum(0) - 2.0 * (x * (a @ x)).sum(0)
            grad_ls = torch.zeros(dimension, dtype=x.dtype).index_add_(0, owner, per_column * inverse * inverse)
            grad = torch.cat([
                -0.5 * grad_ls + (log_ls - prior_loc) / prior_var,
                (-0.5 * (w * covariance).sum() + log_signal).reshape(1),
                (-0.5 * noise_part * torch.diagonal(w).sum() + (log_noise - noise_loc)).reshape(1),
            ])
            value += (float(((log_ls - prior_loc) ** 2).sum()) / (2 * prior_var)
                      + 0.5 * float(log_signal) ** 2 + 0.5 * (float(log_noise) - noise_loc) ** 2)
            theta.grad = grad / n
            return torch.tensor(value / n, dtype=torch.float64)

        optimiser = torch.optim.LBFGS([theta], lr=1.0, max_iter=FIT_ITERATIONS, line_search_fn="strong_wolfe",
                                      tolerance_grad=1e-3 if loose else 1e-4,
                                      tolerance_change=1e-5 if loose else 1e-7,
                                      history_size=10 if loose else 100)
        optimiser.step(objective)
        theta = torch.maximum(torch.minimum(theta.detach(), upper), lower)
        if not bool(torch.isfinite(theta).all()):
            theta = start
        noise = MIN_NOISE + math.exp(float(theta[dimension + 1]))
        return cls(x, y, theta[:dimension], theta[dimension], noise, features, torch)

    def posterior(self, x):
        """Mean and variance at x, and L^-1 k(X, x), from which posterior covariances follow."""
        torch = self.torch
        cross = self._kernel(x, self.x)
        mean = (cross @ self.alpha)[:, 0]
        solved = torch.linalg.solve_triangular(self.chol, cross.T, upper=False)
        variance = (self.signal - (solved ** 2).sum(0)).clamp_min(1e-12)
        return mean, variance, solved

    def log_ei(self, x, incumbent: float):
        """log E[max(incumbent - f(x), 0)]: we minimise."""
        mean, variance, _ = self.posterior(x)
        return _log_ei(mean, variance, incumbent, self.torch)


class _PendingLogEI:
    """log of the expected improvement a candidate adds to the trials still running.

    This is q-EI chosen one point at a time (Ginsbourger et al., 2010; BoTorch's Monte Carlo
    EI with pending points): E[max(0, best - f(x))], where best is the lower of the incumbent
    and the pending trials' results, and f(x) and those results are drawn jointly from the
    model. The expectation is taken over BATCH_SAMPLES quasi-random draws, the same for every
    candidate, so that candidates are compared on common samples.

    A candidate beside a pending trial is almost perfectly correlated with it and adds nothing,
    so parallel workers spread out; a distinct candidate in the promising region keeps the
    value it deserves. (A constant liar, which fantasised pending trials as average results,
    pushed every worker but the first out of that region: docs/bayesian-optimization.md.)
    """

    def __init__(self, gp: "_GaussianProcess", pending, incumbent: float, seed: int, torch) -> None:
        from torch.quasirandom import SobolEngine

        self.gp, self.torch, self.incumbent = gp, torch, incumbent
        count = len(pending)
        mean, _, self.pending_solved = gp.posterior(pending)
        covariance = gp._kernel(pending, pending) - self.pending_solved.T @ self.pending_solved
        self.pending_chol = _cholesky(covariance, torch)
        self.pending_x = pending
        # Standard normal draws, one column per pending trial and one for the candidate.
        uniform = SobolEngine(count + 1, scramble=True, seed=seed).draw(BATCH_SAMPLES, dtype=torch.float64)
        normal = torch.special.ndtri(uniform.clamp(1e-9, 1 - 1e-9))
        results = mean[None, :] + normal[:, :count] @ self.pending_chol.T
        self.best = results.min(dim=1).values.clamp_max(incumbent)[None, :]
        # A candidate's draws are one product: [loading, spread, mean] @ [z_pending, z_own, 1]^T.
        self.basis = torch.cat([normal, torch.ones(BATCH_SAMPLES, 1, dtype=torch.float64)], dim=1).T

    def __call__(self, candidates):
        torch = self.torch
        mean, variance, solved = self.gp.posterior(candidates)
        # The candidate's draw given the pending ones: its covariance with them, whitened.
        cross = self.gp._kernel(candidates, self.pending_x) - solved.T @ self.pending_solved
        loading = torch.linalg.solve_triangular(self.pending_chol, cross.T, upper=False).T
        spread = (variance - (loading ** 2).sum(1)).clamp_min(1e-12).sqrt()
        weights = torch.cat([loading, spread[:, None], mean[:, None]], dim=1)
        gain = torch.addmm(self.best, weights, self.basis, alpha=-1.0).clamp_min_(0.0).mean(dim=1)
        # No improvement in any draw: ranked below every candidate that has some (whose log is
        # above log(1e-300) = -691), in the order of its own log EI.
        ranked_last = _log_ei(mean, variance, self.incumbent, torch) - 1e4
        return torch.where(gain > 0, torch.log(gain.clamp_min(1e-300)), ranked_last)


def _log_ei(mean, variance, incumbent: float, torch):
    sigma = variance.sqrt()
    return _log_h((incumbent - mean) / sigma, torch) + torch.log(sigma)


def _matern52(a, b, torch):
    squared = ((a * a).sum(-1)[:, None] + (b * b).sum(-1)[None, :] - 2.0 * a @ b.T).clamp_min(0.0)
    # The small offset keeps the gradient of the square root finite at distance zero.
    r = torch.sqrt(squared + 1e-12) * math.sqrt(5.0)
    return (1.0 + r + r * r / 3.0) * torch.exp(-r)


def _cholesky(kernel, torch):
    """The Cholesky factor, with the least jitter that makes it work.

    The jitter grows relative to the kernel's diagonal: with long lengthscales every entry is
    close to the signal variance, and an absolute jitter can be too small when that is large.
    """
    chol, info = torch.linalg.cholesky_ex(kernel)
    if not int(info):
        return chol
    eye = torch.eye(len(kernel), dtype=kernel.dtype)
    size = float(torch.diagonal(kernel).abs().mean())
    size = size if math.isfinite(size) and size > 0 else 1.0
    jitter = 1e-9 * size
    for _ in range(7):
        chol, info = torch.linalg.cholesky_ex(kernel + jitter * eye)
        if not int(info):
            return chol
        jitter *= 10
    return torch.linalg.cholesky(kernel + 1e-2 * size * eye)


def _log_h(z, torch):
    """log(phi(z) + z * Phi(z)), accurate for very negative z (Ament et al., 2023, eq. 9)."""
    c1 = 0.5 * math.log(2 * math.pi)
    c2 = 0.5 * math.log(math.pi / 2)
    upper = z.clamp_min(-1.0)
    direct = torch.log(torch.exp(-0.5 * upper ** 2 - c1) + upper * 0.5 * torch.special.erfc(-upper / math.sqrt(2)))
    lower = z.clamp(-1e6, -1.0)
    tail = -0.5 * lower ** 2 - c1 + _log1mexp(torch.log(torch.special.erfcx(-lower / math.sqrt(2)) * lower.abs()) + c2, torch)
    far = -0.5 * z ** 2 - c1 - 2 * torch.log(z.abs().clamp_min(1.0))
    return torch.where(z > -1.0, direct, torch.where(z > -1e6, tail, far))


def _log1mexp(x, torch):
    """log(1 - exp(x)) for x < 0, without cancellation."""
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))
