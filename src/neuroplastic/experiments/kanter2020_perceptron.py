"""kanter2020-perceptron: a time-dependent learning step against the best fixed step.

Claim tested (Sardi, Vardi, Meir, Tevet, Hodassman, Goldental and Kanter, "Brain experiments imply
adaptation mechanisms which outperform common AI learning algorithms", Sci. Rep. 10:6923 (2020),
arXiv:2005.04106; paper sheet ``shared/papers/kanter2020-accelerated-learning.md``): in
teacher-student learning by a perceptron with asynchronous inputs and a leaky integrate-and-fire
output, the time-dependent adaptation step of Eq. 1,

    eta_{t+1} = eta_t * exp(-tau / tau_0) + Delta,                                        (Eq. 1)

gives a markedly lower generalisation error eps_g than a fixed step, both when every synapse adapts
(synaptic scenario) and when only a few dendritic strengths adapt (dendritic scenario).

What we could read, and what is ours
------------------------------------
Searching the stored public text, we could read the abstract and introduction of the 2020 paper,
the abstract, introduction and Fig. 1 caption of its precursor (Sardi et al., "Biological learning
curves outperform existing ones in artificial intelligence algorithms", Sci. Rep. 9:11558 (2019)),
and two figure captions of Sardi et al., Sci. Rep. 8:5100 (2018) (a leaky integrate-and-fire
output; relative weight changes ``0.05 * exp(-|Delta t| / 15 ms) * sign(Delta t)`` in their
culture-inspired adaptation; dendritic weights multiplying fixed synaptic ones). We could *not*
read the methods or results of the 2019 and 2020 papers: their N, window, membrane time constant,
weight distributions, student rule, dendritic bounds, Delta, tau_0 and the examples grid are
unknown to us. Hence:

- The paper's: the architecture (N asynchronous inputs, each firing once within a window, decaying
  summation by a leaky integrate-and-fire output, binary output "fires or not"; teacher and student
  alike), the two scenarios (synaptic; dendritic with bounded, reflecting dendritic strengths), the
  measure (eps_g against the number of examples P), Eq. 1, and the claim.
- Ours: every parameter value (see ``Config``); the student rule; the reading of Eq. 1 below; the
  threshold calibration; the tuning protocol.

The student rule (ours). The paper's 2019 rule is STDP-like and could not be read. We use the
tempotron-like error rule (Guetig & Sompolinsky 2006): on an example whose student output differs
from the teacher's label ``y``, each adaptive parameter moves by its step times its contribution to
the membrane potential at the decision time t*, the time of the student's largest potential in the
window::

    w_i <- w_i + eta_i * (y - y_student) * c_i,    c_i = exp(-(t* - t_i) / tau_m) [t_i <= t*]
    d_k <- reflect(d_k + eta_k * (y - y_student) * sum_{i on k} s_i c_i, [d_min, d_max])

(``c_i = dV(t*)/dw_i``: a missed spike raises the inputs that built the largest potential, a false
spike lowers them.) On a correct example nothing changes.

Eq. 1 as a per-weight step (our reading). A *learning step* of a weight is an example on which
that weight changes (an error to which its input contributed), and tau is the time since the
weight's previous learning step, counted in examples (one example per unit of time). So each weight
keeps its own eta: ``eta_i <- eta_i * exp(-tau_i / tau_0) + Delta`` at each of its learning steps,
starting from ``eta_i = eta_0`` at time 0, and the step uses the updated eta. Frequent errors
(early in learning) let eta accumulate towards ``Delta / (1 - exp(-1/tau_0))``; rare errors (late)
let it decay towards Delta: a schedule driven by the training history, not by a clock. With
``Delta = 0`` and ``tau_0 = inf`` (decay 1) it *is* the fixed step ``eta_0``, exactly (tested).
Because tau varies per weight and step, this does not fit ``neuroplastic.optim.AcceleratedSGD``
(whose decay per learning step is a constant) and the reflecting bounds are not an optimiser's
business; the rule's step is implemented here directly, in :func:`train_students`.

Task ("teacher-student", synthetic). Per seed and scenario: a teacher with random weights
(synaptic: ``w ~ N(0, weight_std^2)``; dendritic: fixed synapses ``s ~ N(0, weight_std^2)``
shared by teacher and student, so the rule stays realisable, and strengths ``d ~ U[d_min,
d_max]``), the threshold set to the median of the teacher's largest potential on random inputs (so
the labels are balanced; teacher and student share it), a student initialised independently from
the same distribution, an online stream of ``n_examples`` fresh random inputs labelled by the
teacher (each used once), and ``n_test`` further inputs on which eps_g is measured at a geometric
grid of P. Inputs: every input fires once at a uniform random time in the window.

Tuning (equal budget), through the one tuner (:mod:`neuroplastic.tuning`). One :class:`Study`
per method and scenario (``"fixed-synaptic"``, ``"accelerated-dendritic"``, ...): the fixed step
(one hyper-parameter, eta) and the accelerated step (eta_0, Delta, tau_0) each get
``tuning_trials`` random-search trials (Optuna's random sampler seeded by ``tuning_seed``, every
range log-uniform), scored by eps_g on ``n_validation`` held-out inputs after ``n_examples``
examples, averaged over ``tuning_tasks`` teacher-student tasks drawn from ``tuning_seed``:
teachers and inputs that no evaluated seed ever sees. A trial that diverges on any task fails.
The tuning depends on the config only, never on the runner's seeds, so a seed's record is
reproducible alone; the runner tunes in the driver before the seeds (:func:`tune`) and records
every trial in its store. All trials of a study are one round, run as one batched computation
(trials x tasks replicas), as are all seeds and both methods of a scenario.

Replicas. ``run_batch`` simulates every (seed, method) pair as one row of ``(R, ...)`` tensors;
each row's arithmetic depends on that row only, so a batch of seeds gives bit for bit what the
seeds give one by one on the CPU (tested exactly).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

from neuroplastic.errors import ConfigError, DivergenceError, NeuroplasticError
from neuroplastic.experiments.base import (
    Experiment,
    Progress,
    RunContext,
    RunResult,
    SilentProgress,
    Verdict,
    default_runs,
)
from neuroplastic.models.lif_perceptron import (
    LIFPerceptronParams,
    SortedInputs,
    contributions,
    dendritic_weights,
    potentials_at_arrivals,
    reflect,
    respond,
    sample_arrival_times,
    sort_inputs,
)
from neuroplastic.results import Key
from neuroplastic.seeding import sequence_seed
from neuroplastic.stats import Summary, mean_ci
from neuroplastic.store import RunRecord
from neuroplastic.threads import one_cpu_thread
from neuroplastic.tuning import (
    Batch,
    BatchObjective,
    Dimension,
    LogUniform,
    Study,
    Trial,
    TrialOutcome,
    TuningResult,
)

NAME = "kanter2020-perceptron"
SCENARIOS = ("synaptic", "dendritic")
METHODS = ("fixed", "accelerated")
MIN_SEEDS = 20
TPE_ROUND_SIZE, TPE_STARTUP_TRIALS = 4, 8
"""With ``sampler="tpe"``: trials asked (and batched) together, and TPE's random first trials."""
DTYPE = torch.float64
EVAL_CHUNK_ELEMENTS = 1 << 21
"""Largest ``replicas x examples x inputs`` tensor built at once when measuring eps_g."""
_ROLE_EVALUATION, _ROLE_TUNING_TASK = 0, 1


@dataclass(frozen=True)
class Config:
    dataset: str = "teacher-student"
    """Synthetic teacher-student task (no files): random teachers, inputs with random arrival
    times, labels from the teacher; see the module docstring."""
    n_inputs: int = 100
    """N, inputs of the perceptron (ours; the paper's N could not be read)."""
    n_dendrites: int = 10
    """K, dendrites of the dendritic scenario, each gathering N/K inputs (ours)."""
    window: float = 50.0
    """Length of the input window in ms; every input fires once in it, at a uniform time (ours)."""
    tau_m: float = 20.0
    """Membrane time constant of the output neuron in ms (ours)."""
    weight_std: float = 1.0
    """Standard deviation of the Gaussian synaptic weights (mean 0) of teachers, of student
    initialisations and of the fixed synapses of the dendritic scenario (ours)."""
    d_min: float = 0.2
    """Lower reflecting bound of the dendritic strengths (ours)."""
    d_max: float = 2.0
    """Upper reflecting bound of the dendritic strengths (ours)."""
    n_examples: int = 5000
    """P, examples presented online (each once); eps_g is reported against it."""
    n_curve_points: int = 12
    """Points of the eps_g curve: P = 0 and a geometric grid from 10 to n_examples."""
    n_test: int = 2000
    """Fresh inputs per seed on which eps_g (disagreement with the teacher) is measured."""
    n_calibration: int = 1000
    """Random inputs whose median largest teacher potential sets the threshold."""
    tuning_trials: int = 24
    """Random-search trials per method and scenario (the trials of each study: the same budget
    for both methods)."""
    sampler: Literal["random", "tpe"] = "random"
    """Sampler of every study: ``random`` (every trial in one round, so one replica batch per
    study) or ``tpe`` (Optuna's TPE in rounds of ``TPE_ROUND_SIZE`` trials, its first
    ``TPE_STARTUP_TRIALS`` random); the same for every method."""
    tuning_tasks: int = 8
    """Teacher-student tasks (from tuning_seed) over which each trial's eps_g is averaged."""
    n_validation: int = 1000
    """Held-out inputs per tuning task on which a trial is scored."""
    tuning_seed: int = 2020
    """Seed of the tuning tasks and of the random search; independent of the runner's seeds."""
    eta_range: tuple[float, ...] = (1e-3, 1.0)
    """Log-uniform search range of the fixed step eta and of the initial step eta_0."""
    delta_range: tuple[float, ...] = (1e-4, 0.1)
    """Log-uniform search range of Delta, the increment of Eq. 1."""
    tau_0_range: tuple[float, ...] = (1.0, 1000.0)
    """Log-uniform search range of tau_0 of Eq. 1, in examples (one example per unit of time)."""

    def __post_init__(self) -> None:
        if self.sampler not in ("random", "tpe"):
            raise ValueError(f"sampler must be random or tpe, got {self.sampler!r}")
        for name in (
            "n_inputs",
            "n_dendrites",
            "n_examples",
            "n_test",
            "n_calibration",
            "tuning_trials",
            "tuning_tasks",
            "n_validation",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.n_curve_points < 2:
            raise ValueError(f"n_curve_points must be at least 2, got {self.n_curve_points}")
        if self.n_inputs % self.n_dendrites:
            raise ValueError(
                f"n_inputs ({self.n_inputs}) must be a multiple of n_dendrites ({self.n_dendrites})"
            )
        for name in ("window", "tau_m", "weight_std"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.d_min < self.d_max:
            raise ValueError(f"need d_min < d_max, got [{self.d_min}, {self.d_max}]")
        for name in ("eta_range", "delta_range", "tau_0_range"):
            bounds = getattr(self, name)
            if len(bounds) != 2 or not 0 < bounds[0] < bounds[1] < math.inf:
                raise ValueError(f"{name} must be two numbers 0 < low < high, got {bounds}")


def quick(config: Config) -> Config:
    """1000 examples, 6 trials on 2 tuning tasks, smaller test sets: a smoke test (seconds).

    The same task; with N = 100 the synaptic student is still near chance after 1000 examples
    (its error starts falling after about 10 N), the dendritic one visibly learns.
    """
    return dataclasses.replace(
        config,
        n_examples=min(config.n_examples, 1000),
        n_curve_points=min(config.n_curve_points, 8),
        n_test=min(config.n_test, 1000),
        n_calibration=min(config.n_calibration, 500),
        tuning_trials=min(config.tuning_trials, 6),
        tuning_tasks=min(config.tuning_tasks, 2),
        n_validation=min(config.n_validation, 500),
    )


# -- tasks ------------------------------------------------------------------------------------


class Task(NamedTuple):
    """One teacher-student problem; several tasks stack into a batch along a leading dim."""

    threshold: Tensor
    """``()``, or ``(T,)`` stacked: the firing threshold of teacher and student (> 0)."""
    teacher: Tensor
    """``(D,)``: the teacher's adaptive parameters (N weights or K dendritic strengths)."""
    student: Tensor
    """``(D,)``: the student's initial adaptive parameters."""
    synapses: Tensor
    """``(N,)``: fixed synaptic weights (dendritic scenario; all ones in the synaptic one)."""
    train: SortedInputs
    """``(P, N)``: the online examples, in presentation order."""
    train_labels: Tensor
    """``(P,)`` bool: the teacher's outputs for them."""
    evaluation: SortedInputs
    """``(M, N)``: fresh inputs on which eps_g is measured (test or validation)."""
    evaluation_labels: Tensor
    """``(M,)`` bool: the teacher's outputs for them."""


def neuron(config: Config) -> LIFPerceptronParams:
    return LIFPerceptronParams(tau_m=config.tau_m, window=config.window)


def effective_weights(params: Tensor, synapses: Tensor, scenario: str) -> Tensor:
    """The N weights the neuron sums: the parameters themselves, or ``d_{k(i)} * s_i``."""
    if scenario == "synaptic":
        return params
    return dendritic_weights(params, synapses)


def make_task(config: Config, scenario: str, seed: int, n_evaluation: int) -> Task:
    """Draw a teacher, a student initialisation and labelled inputs from generator ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    n, k, std = config.n_inputs, config.n_dendrites, config.weight_std
    if scenario == "synaptic":
        synapses = torch.ones(n, dtype=DTYPE)
        teacher = torch.randn(n, generator=generator, dtype=DTYPE) * std
        student = torch.randn(n, generator=generator, dtype=DTYPE) * std
    else:
        span = config.d_max - config.d_min
        synapses = torch.randn(n, generator=generator, dtype=DTYPE) * std
        teacher = config.d_min + span * torch.rand(k, generator=generator, dtype=DTYPE)
        student = config.d_min + span * torch.rand(k, generator=generator, dtype=DTYPE)
    weights = effective_weights(teacher, synapses, scenario)  # (N,)
    params = neuron(config)

    def draw(count: int) -> SortedInputs:
        times = sample_arrival_times(count, n, config.window, generator, DTYPE)
        return sort_inputs(times, params)

    calibration = draw(config.n_calibration)
    threshold = potentials_at_arrivals(weights, calibration).amax(dim=-1).median()
    if not threshold > 0:
        raise ConfigError(
            f"the teacher's median largest potential is {threshold.item():.3g}, not positive, so "
            "no positive threshold balances its labels",
            hint="use more inputs (--set n_inputs=...) or a longer window",
        )
    train = draw(config.n_examples)
    evaluation = draw(n_evaluation)
    return Task(
        threshold=threshold,
        teacher=teacher,
        student=student,
        synapses=synapses,
        train=train,
        train_labels=respond(weights, train, threshold).fires,
        evaluation=evaluation,
        evaluation_labels=respond(weights, evaluation, threshold).fires,
    )


def stack_tasks(tasks: Sequence[Task], device: torch.device) -> Task:
    """Tasks stacked along a new leading dim and moved to ``device``."""

    def stack(values: Sequence[Tensor]) -> Tensor:
        return torch.stack(list(values)).to(device)

    return Task(
        threshold=stack([t.threshold for t in tasks]),
        teacher=stack([t.teacher for t in tasks]),
        student=stack([t.student for t in tasks]),
        synapses=stack([t.synapses for t in tasks]),
        train=SortedInputs(
            stack([t.train.order for t in tasks]), stack([t.train.kernel for t in tasks])
        ),
        train_labels=stack([t.train_labels for t in tasks]),
        evaluation=SortedInputs(
            stack([t.evaluation.order for t in tasks]),
            stack([t.evaluation.kernel for t in tasks]),
        ),
        evaluation_labels=stack([t.evaluation_labels for t in tasks]),
    )


# -- the student and its step sizes -------------------------------------------------------------


class StepSizes(NamedTuple):
    """Per-replica hyper-parameters of Eq. 1, each ``(R,)``; the fixed step is ``Delta = 0``,
    ``tau_0 = inf``."""

    eta_0: Tensor
    delta: Tensor
    tau_0: Tensor

    @staticmethod
    def fixed(eta: Tensor) -> StepSizes:
        return StepSizes(eta, torch.zeros_like(eta), torch.full_like(eta, math.inf))


class Training(NamedTuple):
    """What :func:`train_students` returns, one row per replica."""

    eps_g: Tensor
    """``(R, len(checkpoints))``: eps_g after each checkpoint's number of examples."""
    params: Tensor
    """``(R, D)``: the final adaptive parameters."""
    eta: Tensor
    """``(R, D)``: the final per-parameter steps."""
    mistakes: Tensor
    """``(R,)`` int64: examples the student got wrong during training (its learning steps)."""
    finite: Tensor
    """``(R,)`` bool: the replica's potentials, weights and steps stayed finite throughout."""


def update_step_sizes(
    eta: Tensor, last: Tensor, active: Tensor, t: float, delta: Tensor, tau_0: Tensor
) -> tuple[Tensor, Tensor]:
    """Eq. 1 per parameter, at time ``t``, for the parameters taking a learning step.

    Where ``active``: ``eta <- eta * exp(-(t - last) / tau_0) + delta`` and ``last <- t``;
    elsewhere both are unchanged. ``tau = t - last`` is the time since the parameter's previous
    learning step. ``delta`` and ``tau_0`` broadcast against ``eta`` (``(R, 1)`` per replica);
    ``delta = 0`` with ``tau_0 = inf`` leaves ``eta`` unchanged bit for bit (the fixed step).
    """
    decayed = eta * torch.exp((last - t) / tau_0) + delta  # (R, D); exp(-0.0) = 1 at tau_0 = inf
    return torch.where(active, decayed, eta), torch.where(active, t, last)


@torch.no_grad()
def generalisation_error(
    params: Tensor, batch: Task, task_of: Tensor, config: Config, scenario: str
) -> Tensor:
    """``(R,)``: the fraction of each replica's evaluation inputs on which it and its teacher
    disagree (eps_g)."""
    weights = effective_weights(params, batch.synapses[task_of], scenario)  # (R, N)
    threshold = batch.threshold[task_of].unsqueeze(-1)  # (R, 1)
    n_replicas, n_inputs = weights.shape
    n_examples = batch.evaluation_labels.shape[-1]
    chunk = max(1, EVAL_CHUNK_ELEMENTS // (n_replicas * n_inputs))
    wrong = torch.zeros(n_replicas, dtype=torch.int64, device=params.device)
    for start in range(0, n_examples, chunk):
        part = slice(start, start + chunk)
        inputs = SortedInputs(
            batch.evaluation.order[task_of, part], batch.evaluation.kernel[task_of, part]
        )  # (R, m, N)
        fires = respond(weights, inputs, threshold).fires  # (R, m)
        wrong += (fires != batch.evaluation_labels[task_of, part]).sum(dim=-1)
    return wrong.to(DTYPE) / n_examples


@torch.no_grad()
def train_students(
    batch: Task,
    task_of: Tensor,
    steps: StepSizes,
    config: Config,
    scenario: str,
    checkpoints: Sequence[int],
    progress: Progress | None = None,
) -> Training:
    """Train ``R`` students online, replica r on task ``task_of[r]`` with step sizes ``steps[r]``.

    One example per step, the same examples in the same order for all replicas of a task. Per
    example (all ``(R, ...)``; ``D`` adaptive parameters per replica)::

        y_s, t* <- student's output and decision time                 (LIF, Eq. 1 of the model)
        err <- y_teacher - y_s                                        (-1, 0 or +1)
        g <- dV(t*)/dparams                                           (R, D)
        active <- err != 0 and the parameter contributed to V(t*)    (its learning step)
        eta <- eta * exp(-(t - t_last) / tau_0) + Delta   where active  (Eq. 1, per parameter)
        t_last <- t                                       where active
        params <- params + eta * err * g;  reflect into [d_min, d_max] (dendritic)

    eps_g is measured on the evaluation inputs after each number of examples in ``checkpoints``.
    Runs with one intra-op thread on the CPU (:func:`one_cpu_thread`).
    """
    with one_cpu_thread(batch.student.device):
        return _train_students(batch, task_of, steps, config, scenario, checkpoints, progress)


def _train_students(
    batch: Task,
    task_of: Tensor,
    steps: StepSizes,
    config: Config,
    scenario: str,
    checkpoints: Sequence[int],
    progress: Progress | None,
) -> Training:
    progress = progress or SilentProgress()
    n_replicas = task_of.numel()
    n, k = config.n_inputs, config.n_dendrites
    params = batch.student[task_of].clone()  # (R, D)
    synapses = batch.synapses[task_of]  # (R, N)
    threshold = batch.threshold[task_of]  # (R,)
    eta = steps.eta_0.to(params).unsqueeze(-1).expand_as(params).clone()  # (R, D)
    delta = steps.delta.to(params).unsqueeze(-1)  # (R, 1)
    tau_0 = steps.tau_0.to(params).unsqueeze(-1)  # (R, 1)
    last = torch.zeros_like(params)  # (R, D) time of each parameter's last learning step
    mistakes = torch.zeros(n_replicas, dtype=torch.int64, device=params.device)
    finite = torch.ones(n_replicas, dtype=torch.bool, device=params.device)
    # Examples-major copies, so that each step reads one contiguous (T, N) slice.
    order = batch.train.order.transpose(0, 1).contiguous()  # (P, T, N)
    kernel = batch.train.kernel.transpose(0, 1).contiguous()  # (P, T, N)
    labels = batch.train_labels.transpose(0, 1).to(DTYPE).contiguous()  # (P, T)
    measure = set(checkpoints)
    eps_g: list[Tensor] = []
    report_every = max(1, config.n_examples // 50)
    for p in range(config.n_examples + 1):
        if p in measure:
            eps_g.append(generalisation_error(params, batch, task_of, config, scenario))
        if p == config.n_examples:
            break
        inputs = SortedInputs(order[p].index_select(0, task_of), kernel[p].index_select(0, task_of))
        weights = effective_weights(params, synapses, scenario)  # (R, N)
        response = respond(weights, inputs, threshold)  # (R,)
        finite &= torch.isfinite(response.v_max)
        error = labels[p].index_select(0, task_of) - response.fires.to(DTYPE)  # (R,)
        c = contributions(inputs, response.k_star)  # (R, N) dV(t*)/dw
        if scenario == "synaptic":
            g, touched = c, c > 0  # (R, N)
        else:
            g = (c * synapses).view(n_replicas, k, n // k).sum(dim=-1)  # (R, K) dV(t*)/dd
            touched = (c > 0).view(n_replicas, k, n // k).any(dim=-1)  # (R, K)
        active = touched & (error != 0).unsqueeze(-1)  # (R, D)
        eta, last = update_step_sizes(eta, last, active, float(p + 1), delta, tau_0)  # Eq. 1
        params = params + eta * error.unsqueeze(-1) * g  # zero where not active
        if scenario == "dendritic":
            params = reflect(params, config.d_min, config.d_max)
        mistakes += error != 0
        if (p + 1) % report_every == 0:
            progress.advance(report_every)
    progress.advance(config.n_examples % report_every)
    finite &= torch.isfinite(params).all(dim=-1) & torch.isfinite(eta).all(dim=-1)
    return Training(torch.stack(eps_g, dim=-1), params, eta, mistakes, finite)


def curve_points(n_examples: int, n_points: int) -> list[int]:
    """0 and a geometric grid from 10 (or fewer) to ``n_examples``: where eps_g is measured."""
    start = min(10, n_examples)
    grid = np.geomspace(start, n_examples, n_points - 1)
    return sorted({0, *(int(round(x)) for x in grid), n_examples})


# -- tuning -----------------------------------------------------------------------------------


def search_space(config: Config, method: str) -> dict[str, Dimension]:
    """The fixed step's eta, or the accelerated step's (eta_0, Delta, tau_0), all log-uniform."""
    if method == "fixed":
        return {"eta": LogUniform(*config.eta_range)}
    return {
        "eta_0": LogUniform(*config.eta_range),
        "delta": LogUniform(*config.delta_range),
        "tau_0": LogUniform(*config.tau_0_range),
    }


def step_study(config: Config, method: str, scenario: str) -> Study:
    """The study of ``method`` in ``scenario``: ``tuning_trials`` settings, the same budget and
    seed for both methods; with random search all in one round (one replica batch)."""
    return Study(
        f"{method}-{scenario}",
        search_space(config, method),
        trials=config.tuning_trials,
        sampler=config.sampler,
        seed=config.tuning_seed,
        round_size=config.tuning_trials if config.sampler == "random" else TPE_ROUND_SIZE,
        startup_trials=TPE_STARTUP_TRIALS,
        training_seed=config.tuning_seed,  # the seed of the tuning tasks, shared by all trials
    )


def studies(config: Config) -> list[Study]:
    """Every study the config tunes (for reports: ranges, direction, edge flags)."""
    return [step_study(config, m, s) for s in SCENARIOS for m in METHODS]


def tuning_batch(config: Config, scenario: str, device: torch.device) -> Task:
    """The ``tuning_tasks`` teacher-student tasks of a scenario, from ``tuning_seed`` (stacked):
    teachers and inputs no evaluated seed ever sees."""
    s = SCENARIOS.index(scenario)
    tasks = [
        make_task(
            config,
            scenario,
            sequence_seed(config.tuning_seed, s, _ROLE_TUNING_TASK, j),
            config.n_validation,
        )
        for j in range(config.tuning_tasks)
    ]
    return stack_tasks(tasks, device)


def validation_error(
    config: Config,
    method: str,
    scenario: str,
    tasks: Callable[[], Task],
    progress: Progress | None = None,
) -> BatchObjective:
    """The batch objective of a study: every trial's steps on every tuning task (``tasks()``, the
    same for every trial and both methods: a paired comparison), one replica per (trial, task),
    all trained together; a trial scores eps_g on the validation inputs after ``n_examples``
    examples averaged over the tasks, or fails if it diverged on any task."""
    n_tasks = config.tuning_tasks

    def objective(trials: list[tuple[dict[str, Any], Trial]]) -> list:
        batch, n = tasks(), len(trials)

        def column(name: str) -> Tensor:  # (n * n_tasks,): trial-major, then task
            return torch.tensor([p[name] for p, _ in trials], dtype=DTYPE).repeat_interleave(
                n_tasks
            )

        if method == "fixed":
            steps = StepSizes.fixed(column("eta"))
        else:
            steps = StepSizes(column("eta_0"), column("delta"), column("tau_0"))
        task_of = torch.arange(n_tasks, device=batch.student.device).repeat(n)
        checkpoints = [config.n_examples]
        result = train_students(batch, task_of, steps, config, scenario, checkpoints, progress)
        finite = result.finite.view(n, n_tasks).all(dim=-1).tolist()
        score = result.eps_g[:, -1].view(n, n_tasks).mean(dim=-1).tolist()
        return [
            TrialOutcome(score[i])
            if finite[i]
            else DivergenceError(
                f"{method}-{scenario}: the setting {params} diverged in tuning",
                hint="narrow the search ranges (--set eta_range=...,... delta_range=...,...)",
            )
            for i, (params, _) in enumerate(trials)
        ]

    return objective


def tuned_steps(
    config: Config, scenario: str, context: RunContext, progress: Progress | None = None
) -> dict[str, TuningResult]:
    """Both methods' studies of ``scenario`` through ``context.tune`` (once per context, resumed
    from the store when the runner gives it one): ``{method: result}``. Every trial failing is a
    DivergenceError."""
    made: list[Task] = []

    def tasks() -> Task:  # built only if a study has trials left to run
        if not made:
            made.append(tuning_batch(config, scenario, context.device))
        return made[0]

    return {
        method: context.tune(
            config,
            step_study(config, method, scenario),
            batch_objective=validation_error(config, method, scenario, tasks, progress),
        )
        for method in METHODS
    }


def objective(config: Config, name: str, context: RunContext) -> Batch:
    """The batch objective of the study ``name`` (``Experiment.objective``: rebuilt anywhere)."""
    for scenario in SCENARIOS:
        for method in METHODS:
            if step_study(config, method, scenario).method == name:
                tasks = partial(tuning_batch, config, scenario, context.device)  # once a round
                return Batch(validation_error(config, method, scenario, tasks))
    raise KeyError(f"{NAME} has no study {name!r}")


def tune(config: Config, context: RunContext) -> None:
    """Every study of the config (the runner calls this in the driver before the seeds)."""
    steps = len(SCENARIOS) * len(METHODS) * config.n_examples
    context.progress.start(steps, f"{NAME} tuning ({config.tuning_trials} trials per study)")
    for scenario in SCENARIOS:
        tuned_steps(config, scenario, context, context.progress)


# -- the experiment ----------------------------------------------------------------------------


def run_batch(
    config: Config, seeds: Sequence[int], context: RunContext
) -> list[RunResult | NeuroplasticError]:
    """All seeds and both methods of each scenario as one batched computation per scenario.

    Replica ``m * S + i`` is method ``METHODS[m]`` on seed ``seeds[i]``'s task; both methods of a
    seed learn the same teacher from the same examples and start from the same student.
    """
    device = context.device
    seeds = list(seeds)
    n_seeds = len(seeds)
    if not seeds:
        return []
    checkpoints = curve_points(config.n_examples, config.n_curve_points)
    context.progress.start(len(SCENARIOS) * config.n_examples, f"{NAME} ({n_seeds} seeds)")
    metrics: list[dict[Key, float]] = [{} for _ in seeds]
    curves: list[dict[Key, dict[str, list[float]]]] = [{} for _ in seeds]
    hyperparameters: dict[str, dict[str, Any]] = {}
    failures: dict[int, NeuroplasticError] = {}
    for s, scenario in enumerate(SCENARIOS):
        tuning = tuned_steps(config, scenario, context)
        best = {method: dict(tuning[method].params) for method in METHODS}
        for method in METHODS:
            hyperparameters[f"{method}-{scenario}"] = dict(best[method])
        tasks = [
            make_task(config, scenario, sequence_seed(seed, s, _ROLE_EVALUATION), config.n_test)
            for seed in seeds
        ]
        batch = stack_tasks(tasks, device)
        ones = torch.ones(n_seeds, dtype=DTYPE)
        fixed = StepSizes.fixed(best["fixed"]["eta"] * ones)
        accelerated = StepSizes(
            best["accelerated"]["eta_0"] * ones,
            best["accelerated"]["delta"] * ones,
            best["accelerated"]["tau_0"] * ones,
        )
        steps = StepSizes(*(torch.cat(pair) for pair in zip(fixed, accelerated, strict=True)))
        task_of = torch.arange(n_seeds, device=device).repeat(len(METHODS))
        result = train_students(
            batch, task_of, steps, config, scenario, checkpoints, context.progress
        )
        finite = result.finite.cpu()
        eps_g = result.eps_g.cpu()
        eta_mean = result.eta.mean(dim=-1).cpu()
        for i, seed in enumerate(seeds):
            for m, method in enumerate(METHODS):
                r = m * n_seeds + i
                if not finite[r]:
                    failures.setdefault(
                        i,
                        DivergenceError(
                            f"{method}-{scenario}: the potential, weights or steps became "
                            f"non-finite (seed {seed})",
                            hint="narrow the search ranges (--set eta_range=...,...)",
                        ),
                    )
                key = functools.partial(Key, method, setting=scenario)
                metrics[i][key("eps_g_final")] = eps_g[r, -1].item()
                metrics[i][key("eps_g_initial")] = eps_g[r, 0].item()
                metrics[i][key("eps_g_curve_mean")] = eps_g[r].mean().item()
                metrics[i][key("mistakes")] = float(result.mistakes[r].item())
                metrics[i][key("eta_mean_final")] = eta_mean[r].item()
                curves[i][key("eps_g")] = {"x": list(checkpoints), "y": eps_g[r].tolist()}
    return [
        failures[i]
        if i in failures
        else RunResult(metrics[i], curves[i], "examples", dict(hyperparameters))
        for i in range(n_seeds)
    ]


def run(config: Config, seed: int, context: RunContext) -> RunResult:
    """One seed: exactly ``run_batch(config, [seed], context)[0]``."""
    outcome = run_batch(config, [seed], context)[0]
    if isinstance(outcome, NeuroplasticError):
        raise outcome
    return outcome


def _compact(summary: Summary) -> str:
    return f"{summary.mean:.3f} ± {summary.ci95:.3f}"


def verdict(records: Sequence[RunRecord]) -> Verdict:
    """Holds when, in both scenarios, the accelerated step's final eps_g is lower than the fixed
    step's with non-overlapping 95 % intervals over >= 20 seeds of the default config; partly
    holds for one scenario."""
    keys = [Key(m, "eps_g_final", setting=s) for s in SCENARIOS for m in METHODS]
    runs = [r for r in default_runs(records, Config) if all(key in r.metrics for key in keys)]
    if len(runs) < MIN_SEEDS:
        return Verdict("not run", f"{len(runs)} of {MIN_SEEDS} seeds of the default config")
    wins, parts = [], []
    for scenario in SCENARIOS:
        final = {
            method: mean_ci(r.metrics[Key(method, "eps_g_final", setting=scenario)] for r in runs)
            for method in METHODS
        }
        fixed, accelerated = final["fixed"], final["accelerated"]
        wins.append(accelerated.mean + accelerated.ci95 < fixed.mean - fixed.ci95)
        parts.append(
            f"{scenario}: eps_g {_compact(accelerated)} accelerated vs {_compact(fixed)} fixed"
        )
    status = "holds" if all(wins) else "partly holds" if any(wins) else "does not hold"
    p = Config().n_examples
    return Verdict(status, f"after {p} examples, {'; '.join(parts)} (n={len(runs)})")


EXPERIMENT = Experiment(
    name=NAME,
    paper="Sardi et al. 2020, Sci. Rep. 10:6923 (teacher-student perceptron)",
    claim=(
        "The time-dependent step of Eq. 1 gives a lower generalisation error than the best fixed "
        "step, for synaptic and for dendritic learning of an LIF perceptron with asynchronous "
        "inputs."
    ),
    config_cls=Config,
    run=run,
    verdict=verdict,
    quick=quick,
    command=f"neuroplastic run {NAME} --seeds {MIN_SEEDS}",
    run_batch=run_batch,
    studies=studies,
    tune=tune,
    objective=objective,
)
