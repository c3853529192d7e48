"""The kit's standard of evidence: claims declared before they are computed, decided from paired units.

A :class:`Claim` names the paper's statement and where the paper makes it, the two sides it compares
(or the trend), the direction, and a margin in points fixed in advance: ``0`` for "A beats B", ``-2``
for "A is on par with B (at most 2 points worse)". It is decided from **paired units**, the same seeds
on both sides, with the seed as the unit of replication (episodes, datasets and test images within a
seed are averaged first, so sampling and training variance both count):

* **held** when the 95% CI of the estimate lies wholly past the margin in the claimed direction;
* **contradicted** when it lies wholly on the other side;
* **inconclusive** otherwise, with the number of seeds that would resolve it at the observed variance;
* **not staged** when the paper's situation did not occur: every claim of a method is decided only where its
  **premise** (a claim with ``role="premise"``: "plain fine-tuning forgets new classes") held first, level by
  level of a dial (:func:`stage`); where it held nowhere, the claim's record says so, with the premise's numbers.

Margins come from one rule per kind of claim (:data:`MARGINS`), the same in every notebook.

Paired comparisons use Student's t interval of the per-seed differences (:func:`scipy.stats.t`); trends are
decided over a designed sweep of at least :data:`MIN_LEVELS` levels (a dial's, or a grid of a knob), from
Spearman's rho per seed and its t-interval over seeds. A trend across a handful of fixed datasets cannot be
decided by design: it is shown with a bootstrap interval, and its verdict is inconclusive. Every decision is printed and recorded in ``runs/claims/<notebook>.json``
(keys ``claim, paper_ref, verdict, estimate, ci_low, ci_high, margin, n, unit``), which ``make reproduce``
summarises.
"""
from __future__ import annotations

import json
import math
import platform
import subprocess
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from IPython.display import Markdown, display
from scipy import stats

from fslib.paths import project_dir

VERDICTS = ("held", "contradicted", "inconclusive", "not staged")
DIRECTIONS = ("greater", "less")
ROLES = ("claim", "premise")
MAX_SEEDS_QUOTED = 200  # past this, "more seeds" is not a realistic way to resolve a claim
MIN_LEVELS = 6  # a trend is decided over a designed sweep of at least this many levels, never fewer

# One margin per kind of claim, in accuracy points, for every notebook of the kit:
MARGINS = {
    # "A beats B": any gain, as long as its whole CI is above zero
    "beats": 0.0,
    # "A keeps within m points of B" (on par, no loss): the papers call differences of 1-2 points of accuracy
    # gains or losses (APEX's and CLIP-CITE's tables), so a loss of more than 2 points is one they would report
    "within": -2.0,
    # a premise "plain practice P goes wrong": P loses more than 5 points, over twice the on-par margin, so
    # a method that ends within 2 points of the reference has recovered most of a real loss, not a rounding's worth
    "goes wrong": -5.0,
}


@dataclass(frozen=True)
class Claim:
    """A claim as declared before its numbers exist.

    ``sides`` is what is compared: ``("LLU", "zero-shot")`` for a paired claim (estimate = first −
    second), or ``("gain", "RTD")`` for a trend (estimate = Spearman's rho of the first against the
    second). The claim is that the estimate is ``direction`` than ``margin``.
    """

    notebook: str
    claim: str
    paper_ref: str
    sides: tuple[str, str]
    margin: float = 0.0
    direction: str = "greater"
    kind: str = "paired"
    unit: str = "seed"
    units: str = "points"  # what the compared quantity is measured in ("" for a share or a weight)
    role: str = "claim"  # or "premise": the paper's situation, decided before the method's claims

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"claim {self.claim!r}: direction {self.direction!r}; allowed: {', '.join(DIRECTIONS)}")
        if self.kind not in ("paired", "trend"):
            raise ValueError(f"claim {self.claim!r}: kind {self.kind!r}; allowed: paired, trend")
        if self.role not in ROLES:
            raise ValueError(f"claim {self.claim!r}: role {self.role!r}; allowed: {', '.join(ROLES)}")

    @property
    def quantity(self) -> str:
        a, b = self.sides
        return f"{a} − {b}" if self.kind == "paired" else f"Spearman ρ({a}, {b})"

    @property
    def test(self) -> str:
        """The decision rule in words, e.g. ``LLU − zero-shot > 0 points``."""
        units = f" {self.units}" if self.kind == "paired" and self.units else ""
        return f"{self.quantity} {'>' if self.direction == 'greater' else '<'} {self.margin:g}{units}"


@dataclass(frozen=True)
class Verdict:
    claim: Claim
    verdict: str
    estimate: float
    ci_low: float
    ci_high: float
    n: int
    seeds_needed: int | None = None
    detail: str = ""
    per_unit: dict = field(default_factory=dict)
    interval_kind: str = "t"  # "t" over units, or "bootstrap" over units and groups

    def record(self) -> dict:
        number = lambda value: None if math.isnan(value) else round(value, 3)  # not staged: no numbers
        return {"claim": self.claim.claim, "paper_ref": self.claim.paper_ref, "role": self.claim.role,
                "verdict": self.verdict, "estimate": number(self.estimate), "ci_low": number(self.ci_low),
                "ci_high": number(self.ci_high), "margin": self.claim.margin, "direction": self.claim.direction,
                "quantity": self.quantity_kind, "n": self.n, "unit": self.claim.unit, "test": self.claim.test,
                "seeds_needed": self.seeds_needed, "detail": self.detail}

    @property
    def staged(self) -> bool:
        return self.verdict != "not staged"

    @property
    def quantity_kind(self) -> str:
        """What the estimate measures: ``"points"`` (accuracy), ``"rho"`` (a trend's Spearman ρ) or ``"share"``."""
        return "rho" if self.claim.kind == "trend" else "points" if self.claim.units == "points" else "share"

    @property
    def interval(self) -> str:
        """``+3.1 [+1.2, +5.0]`` (points for paired claims, rho for trends, three decimals for shares)."""
        if not self.staged:
            return "not computed"
        fmt = "{:+.2f}" if self.claim.kind == "trend" else "{:+.1f}" if self.claim.units == "points" else "{:+.3f}"
        return f"{fmt.format(self.estimate)} [{fmt.format(self.ci_low)}, {fmt.format(self.ci_high)}]"

    @property
    def resolution(self) -> str:
        """For an inconclusive verdict: what would resolve it."""
        if self.seeds_needed:
            return f"about {self.seeds_needed} {self.claim.unit}s would resolve it at this variance"
        if self.interval_kind == "bootstrap":
            return ("a trend across a few fixed datasets cannot be decided by design (the bootstrap over them "
                    f"spans nearly every ρ); a dial's designed levels, at least {MIN_LEVELS}, can decide it")
        if self.interval_kind == "levels":
            return f"a designed sweep needs at least {MIN_LEVELS} levels to decide a trend; this one has fewer"
        return (f"more than {MAX_SEEDS_QUOTED} {self.claim.unit}s would be needed at this variance: "
                "the estimate sits close to the margin")

    def __str__(self) -> str:
        if not self.staged:
            return f"[NOT STAGED] {self.claim.claim} ({self.claim.paper_ref})\n    {self.detail}"
        role = "PREMISE " if self.claim.role == "premise" else ""
        line = (f"[{role}{self.verdict.upper()}] {self.claim.claim} ({self.claim.paper_ref})\n"
                f"    {self.claim.quantity} = {self.interval}, 95% CI over n = {self.n} {self.claim.unit}s; "
                f"test: {self.claim.test}")
        if self.verdict == "inconclusive":
            line += "\n    " + self.resolution
        return line + (f"\n    {self.detail}" if self.detail else "")


def declare(notebook: str, claims: Sequence[dict]) -> dict[str, Claim]:
    """Declare a notebook's claims before anything is computed; show them as a table (rendered in HTML).

    ``claims`` holds keyword dicts for :class:`Claim` with a short ``key`` each; returns them by key.
    """
    declared = {spec["key"]: Claim(notebook=notebook, **{k: v for k, v in spec.items() if k != "key"}) for spec in claims}
    premises = any(c.role == "premise" for c in declared.values())
    rows = [{"claim": c.claim, **({"role": c.role} if premises else {}), "paper": c.paper_ref, "decided by": c.test,
             "unit": c.unit} for c in declared.values()]
    display(pd.DataFrame(rows).set_index("claim"))  # an HTML table in a notebook, wrapping within its columns
    return declared


def claims_file(notebook: str) -> Path:
    """Where this run's records of ``notebook`` go: ``runs/claims/<notebook>.json``."""
    return project_dir("runs") / "claims" / f"{notebook}.json"


_RUNS: dict[str, dict] = {}  # notebook -> provenance of the run in progress in this kernel


def provenance(P: SimpleNamespace) -> dict:
    """Where a run's numbers come from: date, fslib's commit, the CPU (model and the kernels torch picked),
    the precision in force, the scale, the seeds and every parameter."""
    from fslib import training

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=Path(__file__).parent, text=True, capture_output=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    # "+" marks a package that differs from the commit: the numbers come from uncommitted code
    commit = (git("rev-parse", "--short", "HEAD") or "unknown") + ("+" if git("status", "--porcelain", "--", ".") else "")
    parameters = {k: v for k, v in vars(P).items() if k != "given"}
    return {"date": date.today().isoformat(), "commit": commit, "cpu": cpu_name(),
            "precision": training.precision(getattr(P, "device", "cpu")), "scale": getattr(P, "scale", "paper"),
            "seeds": list(getattr(P, "seeds", [])), "parameters": json.loads(json.dumps(parameters, default=str))}


def cpu_name() -> str:
    """The CPU's model name and the vector kernels torch runs on it, e.g. ``AMD EPYC (AVX2)``."""
    import torch

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({torch.backends.cpu.get_cpu_capability()})"


def begin(notebook: str, P: SimpleNamespace) -> None:
    """Start ``notebook``'s run (call once, after its parameters are validated): forget the records of an
    earlier run and note this one's provenance and scale. At the lesson scale every verdict is labelled as the
    lesson's and printed beside the committed paper-scale verdict of the same claim (:func:`committed`)."""
    _RUNS[notebook] = provenance(P)
    claims_file(notebook).unlink(missing_ok=True)


def read_run(path: Path) -> dict:
    """A claims file: ``{"provenance": {...}, "claims": [records]}`` (empty if the file does not exist)."""
    return json.loads(Path(path).read_text()) if Path(path).exists() else {"provenance": {}, "claims": []}


def read_claims(notebook: str) -> list[dict]:
    """The records of ``notebook``'s latest run (``runs/claims/<notebook>.json``)."""
    return read_run(claims_file(notebook))["claims"]


RECORDS = Path(__file__).resolve().parent / "records"


def committed_file(notebook: str, scale: str) -> Path:
    """The committed records of ``notebook`` at ``scale``: ``fslib/records/<notebook>.<scale>.json``."""
    return RECORDS / f"{notebook}.{scale}.json"


def committed(notebook: str, scale: str) -> dict:
    """The committed run of ``notebook`` at ``scale`` (provenance and claim records; empty if none)."""
    return read_run(committed_file(notebook, scale))


def _describe_provenance(run: Mapping) -> str:
    p = run["provenance"]
    seeds = ",".join(map(str, p.get("seeds", [])))
    return f"committed {p.get('date')}, fslib {p.get('commit')}, {p.get('cpu')}, {p.get('precision')}, seeds {seeds}"


def _beside_paper(verdict: Verdict) -> str:
    """At the lesson scale: the lesson's label and the committed paper-scale verdict of the same claim."""
    run = _RUNS.get(verdict.claim.notebook, {})
    if run.get("scale") != "lesson":
        return ""
    paper = committed(verdict.claim.notebook, "paper")
    record = next((r for r in paper["claims"] if r["claim"] == verdict.claim.claim), None)
    n = verdict.n if verdict.staged else len(run.get("seeds", []))
    size = f"lesson scale ({n} {verdict.claim.unit}s at class size)"
    reading = {"inconclusive": "this lesson cannot decide the claim",
               "not staged": "the lesson did not stage the premise"}.get(verdict.verdict,
                                                                         "a lesson's verdict, not the kit's finding")
    lines = [f"    ↑ {size}: {reading}"]
    if record is None:
        lines.append("    paper scale: no committed record of this claim (run the notebook at scale='paper')")
    elif record["estimate"] is None:
        lines.append(f"    paper scale: {record['verdict'].upper()} ({_describe_provenance(paper)})")
    else:
        lines.append(f"    paper scale: {record['verdict'].upper()} {record['estimate']:+.2f} "
                     f"[{record['ci_low']:+.2f}, {record['ci_high']:+.2f}], n = {record['n']} ({_describe_provenance(paper)})")
    return "\n" + "\n".join(lines)


def _save(verdict: Verdict) -> Verdict:
    path = claims_file(verdict.claim.notebook)
    path.parent.mkdir(parents=True, exist_ok=True)
    records = [r for r in read_claims(verdict.claim.notebook) if r["claim"] != verdict.claim.claim]
    run = {"provenance": _RUNS.get(verdict.claim.notebook, {}), "claims": records + [verdict.record()]}
    path.write_text(json.dumps(run, indent=2, ensure_ascii=False) + "\n")
    print(str(verdict) + _beside_paper(verdict))
    return verdict


def _verdict(claim: Claim, low: float, high: float) -> str:
    above, below = low > claim.margin, high < claim.margin
    if claim.direction == "less":
        above, below = below, above
    return "held" if above else "contradicted" if below else "inconclusive"


def _check_units(claim: Claim, values: pd.Series, side: str) -> None:
    if len(values) == 0:
        raise ValueError(f"claim {claim.claim!r}: no values for {side!r}; nothing to decide from")
    missing = values[values.isna()].index.tolist()
    if missing:
        raise ValueError(f"claim {claim.claim!r}: {side!r} is missing (NaN) for {claim.unit}s {missing}")


def seeds_to_resolve(differences: np.ndarray, margin: float, confidence: float = 0.95) -> int | None:
    """Smallest n whose t-interval half-width, at the observed sd, no longer reaches the margin."""
    gap, sd = abs(float(np.mean(differences)) - margin), float(np.std(differences, ddof=1))
    if sd == 0:
        return None if gap == 0 else len(differences)
    for n in range(2, MAX_SEEDS_QUOTED + 1):
        if stats.t.ppf((1 + confidence) / 2, n - 1) * sd / math.sqrt(n) < gap:
            return n
    return None


def _t_decision(claim: Claim, values: np.ndarray, confidence: float,
                bounds: tuple[float, float] = (-np.inf, np.inf)) -> tuple[float, float, float, str, int | None]:
    """Mean, Student-t interval (clipped to ``bounds``), verdict and, when inconclusive, the seeds that
    would resolve it: the one decision rule behind every per-seed claim."""
    mean = float(values.mean())
    low, high = (stats.t.interval(confidence, len(values) - 1, loc=mean, scale=stats.sem(values))
                 if values.std() > 0 else (mean, mean))
    low, high = max(float(low), bounds[0]), min(float(high), bounds[1])
    verdict = _verdict(claim, low, high)
    needed = seeds_to_resolve(values, claim.margin, confidence) if verdict == "inconclusive" else None
    return mean, low, high, verdict, needed


def decide(claim: Claim, a: pd.Series | Callable[[], pd.Series], b: pd.Series | Callable[[], pd.Series],
           detail: str = "", confidence: float = 0.95, staging: "Staging | None" = None) -> Verdict:
    """Decide a paired claim from per-unit values of its two sides (Series indexed by seed).

    The units are paired by index; a unit present on one side only, a NaN or an empty side is an
    error naming the claim, never a verdict. With ``staging`` (:func:`stage`) the claim is decided only if its
    premise held at some level: the sides are then callables of nothing, computed only in that case (they
    average the staged levels, :attr:`Staging.levels`); otherwise the record says ``not staged``.
    """
    if staging is not None:
        if not staging.levels:
            return not_staged(claim, staging)
        a, b = a(), b()
        detail = "; ".join(filter(None, [f"at the staged levels {staging.describe_levels()}", detail]))
    a, b = pd.Series(a, dtype=float), pd.Series(b, dtype=float)
    _check_units(claim, a, claim.sides[0])
    _check_units(claim, b, claim.sides[1])
    if set(a.index) != set(b.index):
        raise ValueError(f"claim {claim.claim!r}: the sides are not paired: {claim.unit}s {sorted(a.index)} vs {sorted(b.index)}")
    differences = (a - b.loc[a.index]).to_numpy()
    n = len(differences)
    if n < 2:
        raise ValueError(f"claim {claim.claim!r}: one {claim.unit} cannot give an interval; run at least 2 (3 recommended)")
    mean, low, high, verdict, needed = _t_decision(claim, differences, confidence)
    return _save(Verdict(claim, verdict, mean, low, high, n, needed, detail,
                         {str(k): round(float(v), 3) for k, v in zip(a.index, differences)}))


def decide_trend(claim: Claim, table: pd.DataFrame, y: str, x: str, group: str = "dataset", detail: str = "",
                 resamples: int = 2000, confidence: float = 0.95, seed: int = 0, too_few: str = "refuse",
                 staging: "Staging | None" = None) -> Verdict:
    """Decide a trend claim: Spearman's rho between ``y`` and ``x`` across ``group``s; with ``staging`` (a
    premise's :class:`Staging`, e.g. :func:`trend_staging`) only if the premise held somewhere, else ``not staged``.

    ``table`` has one row per (unit, group). When ``x`` is the group itself (a designed sweep: a dial's levels,
    a grid of κ), rho is computed per seed and its t-interval taken over seeds, like a paired claim. A designed
    sweep needs at least :data:`MIN_LEVELS` levels: with fewer it is refused (``too_few="refuse"``, a
    ``ValueError``), or, with ``too_few="record"`` (a lesson-scale run's smaller sweep), recorded as inconclusive
    with rho shown and the reason said.

    When the groups are fixed datasets, the estimate is rho of the per-group means, with a percentile bootstrap
    that resamples units and groups, shown for what it is: a handful of fixed datasets cannot decide a trend, so
    the verdict is inconclusive whatever the interval.
    """
    if too_few not in ("refuse", "record"):
        raise ValueError(f"too_few={too_few!r}; allowed: refuse, record")
    if staging is not None and not staging.levels:
        return not_staged(claim, staging)
    _check_units(claim, table[y], y)
    unit = claim.unit
    wide_y = table.pivot_table(index=unit, columns=group, values=y)
    if wide_y.isna().any().any():
        raise ValueError(f"claim {claim.claim!r}: {y!r} is missing for some ({unit}, {group}) pairs")
    n_units, n_groups = wide_y.shape
    if n_units < 2 or n_groups < 3:
        raise ValueError(f"claim {claim.claim!r}: a trend needs >= 2 {unit}s and >= 3 {group}s, got {n_units} and {n_groups}")
    detail = detail or f"over {n_groups} {group}s"

    def spearman(xs: np.ndarray, ys: np.ndarray) -> float:
        return float(stats.spearmanr(xs, ys).statistic) if np.ptp(xs) > 0 and np.ptp(ys) > 0 else 0.0

    if x == group:
        if n_groups < MIN_LEVELS and too_few == "refuse":
            raise ValueError(f"claim {claim.claim!r}: a designed sweep of {n_groups} {group}s cannot decide a trend; "
                             f"it needs at least {MIN_LEVELS}")
        grid = wide_y.columns.to_numpy(float)
        per_seed = pd.Series([spearman(grid, row) for row in wide_y.to_numpy()], index=wide_y.index)
        rho = per_seed.to_numpy()
        # a correlation cannot leave [-1, 1]
        mean, low, high, verdict, needed = _t_decision(claim, rho, confidence, bounds=(-1.0, 1.0))
        enough = n_groups >= MIN_LEVELS
        return _save(Verdict(claim, verdict if enough else "inconclusive", mean, low, high, n_units,
                             needed if enough else None,
                             detail + f"; rho per {unit}: " + ", ".join(f"{v:+.2f}" for v in rho),
                             per_seed.round(3).to_dict(), interval_kind="t" if enough else "levels"))

    _check_units(claim, table[x], x)
    wide_x = table.pivot_table(index=unit, columns=group, values=x).loc[wide_y.index, wide_y.columns]

    def rho(units: np.ndarray, groups: np.ndarray) -> float:
        return spearman(wide_x.to_numpy()[units][:, groups].mean(0), wide_y.to_numpy()[units][:, groups].mean(0))

    estimate = rho(np.arange(n_units), np.arange(n_groups))
    rng = np.random.default_rng(seed)
    draws = np.array([rho(rng.integers(0, n_units, n_units), rng.integers(0, n_groups, n_groups)) for _ in range(resamples)])
    low, high = np.quantile(draws, [(1 - confidence) / 2, (1 + confidence) / 2])
    return _save(Verdict(claim, "inconclusive", estimate, float(low), float(high), n_units, None, detail,
                         interval_kind="bootstrap"))


def level_name(level: object) -> str:
    """A dial's level as printed (``0.4``), or a named dataset standing for one (a real-data run)."""
    return f"{level:g}" if isinstance(level, (int, float, np.number)) else str(level)


@dataclass(frozen=True)
class Staging:
    """Where a premise held: its verdict at every level of a dial (decided on data the method's claims are not
    decided on, the validation split), and so the levels at which the method's claims are decided."""

    premise: Claim
    verdicts: dict  # level -> Verdict
    dial: str = "level"

    @property
    def levels(self) -> list:
        """The levels where the premise held, in the dial's order."""
        return [level for level, v in self.verdicts.items() if v.verdict == "held"]

    def restricted(self, levels: Sequence) -> "Staging":
        """The same premise decided at ``levels`` only (where one experiment of the notebook runs), or, if
        ``levels`` is empty, everywhere it was decided (a claim is then not staged)."""
        if not levels:
            return Staging(self.premise, {x: v for x, v in self.verdicts.items() if v.verdict != "held"}, self.dial)
        return Staging(self.premise, {x: self.verdicts[x] for x in levels}, self.dial)

    def describe_levels(self) -> str:
        return f"{self.dial} " + ", ".join(map(level_name, self.levels))

    def describe(self) -> str:
        """The premise's numbers at every level, e.g. ``0: −12.1 [−15.0, −9.2] held; 0.2: …``."""
        return "; ".join(f"{level_name(level)}: {v.interval} {v.verdict}" for level, v in self.verdicts.items())


def stage(premise: Claim, sides: Mapping[object, tuple[pd.Series, pd.Series]], dial: str = "level",
          confidence: float = 0.95) -> Staging:
    """Decide ``premise`` (``role="premise"``) at each level of a dial: ``sides`` maps a level to the two
    per-seed Series the premise compares there. Each level's verdict is recorded as the premise at that level;
    the method's claims are then decided where it held (:func:`decide` with ``staging``)."""
    if premise.role != "premise":
        raise ValueError(f"claim {premise.claim!r} has role {premise.role!r}; stage() decides a premise")
    if not sides:
        raise ValueError(f"premise {premise.claim!r}: no levels to decide it at")
    verdicts = {level: decide(replace(premise, claim=f"{premise.claim} ({dial} {level_name(level)})"), a, b,
                              confidence=confidence) for level, (a, b) in sides.items()}
    return Staging(premise, verdicts, dial)


def trend_staging(premise: Verdict, dial: str) -> Staging:
    """A premise that is a trend over a whole dial ("P gets worse as the level rises") as a :class:`Staging`:
    held, it stages the claims that are trends over the same levels; otherwise they are not staged."""
    if premise.claim.role != "premise" or premise.claim.kind != "trend":
        raise ValueError(f"claim {premise.claim.claim!r} is not a trend premise")
    return Staging(premise.claim, {"all levels": premise}, dial)


def not_staged(claim: Claim, staging: Staging) -> Verdict:
    """Record that ``claim`` was not decided: its premise held at no level of the dial (its numbers said)."""
    detail = (f"not decided: the premise \"{staging.premise.claim}\" held at no level of {staging.dial} "
              f"({staging.describe()})")
    nan = float("nan")
    return _save(Verdict(claim, "not staged", nan, nan, nan, 0, None, detail))


# How far a claim's estimate and CI bounds may move between two runs of the same code and parameters before the
# difference counts as a change in what the code computes. Float rounding that differs between CPUs (vector
# widths, reduction orders) flips a few predictions of a fine-tuned model, which moves a claim by a fraction of
# its seed-to-seed spread: so a floor per kind of quantity plus a share of the committed CI's half-width.
# Calibrated on the lesson scale (docs/performance.md, "Tolerance"): two threads per kernel instead of one moved
# an estimate by at most 0.07 half-widths and a CI bound by at most 0.36; these allow about twice and 1.4 times that.
TOLERANCE = {"floor": {"points": 0.5, "rho": 0.25, "share": 0.02}, "estimate": 0.15, "bounds": 0.5}


def tolerances(record: Mapping, tolerance: Mapping = TOLERANCE) -> tuple[float, float]:
    """How far ``record``'s estimate and its CI bounds may move (see :data:`TOLERANCE`)."""
    floor = tolerance["floor"][record.get("quantity", "points")]
    half_width = (record["ci_high"] - record["ci_low"]) / 2
    return floor + tolerance["estimate"] * half_width, floor + tolerance["bounds"] * half_width


def compare_runs(now: Mapping, reference: Mapping, tolerance: Mapping = TOLERANCE) -> pd.DataFrame:
    """One row per claim of ``reference`` (a committed run) beside ``now`` (a run of the same notebook):

    ``within`` when the estimate and both CI bounds moved by at most their tolerances (:func:`tolerances`), and
    the verdict word is the same, unless a CI bound of either run lies within the bounds' tolerance of the margin
    (then float noise may tip the word, and the numbers decide). A claim missing from either run is not within.
    """
    rows = []
    current = {r["claim"]: r for r in now["claims"]}
    for ref in reference["claims"]:
        run = current.pop(ref["claim"], None)
        row = {"claim": ref["claim"], "committed": _short(ref), "now": _short(run) if run else "missing"}
        if run is None:
            rows.append({**row, "estimate moved": np.nan, "bounds moved": np.nan, "tolerance": "", "within": False})
            continue
        if ref["estimate"] is None or run["estimate"] is None:  # not staged: only the word can be compared
            rows.append({**row, "estimate moved": np.nan, "bounds moved": np.nan, "tolerance": "",
                         "within": run["verdict"] == ref["verdict"]})
            continue
        estimate_tol, bounds_tol = tolerances(ref, tolerance)
        estimate_moved = abs(run["estimate"] - ref["estimate"])
        bounds_moved = max(abs(run[k] - ref[k]) for k in ("ci_low", "ci_high"))
        at_margin = any(abs(r[k] - ref["margin"]) <= bounds_tol for r in (ref, run) for k in ("ci_low", "ci_high"))
        rows.append({**row, "estimate moved": round(estimate_moved, 3), "bounds moved": round(bounds_moved, 3),
                     "tolerance": f"{estimate_tol:.2f} / {bounds_tol:.2f}",
                     "within": (estimate_moved <= estimate_tol + 1e-9 and bounds_moved <= bounds_tol + 1e-9
                                and (run["verdict"] == ref["verdict"] or at_margin))})
    rows += [{"claim": claim, "committed": "missing", "now": _short(run), "estimate moved": np.nan,
              "bounds moved": np.nan, "tolerance": "", "within": False} for claim, run in current.items()]
    return pd.DataFrame(rows)


def _short(record: Mapping) -> str:
    if record["estimate"] is None:
        return record["verdict"]
    return f"{record['verdict']} {record['estimate']:+.2f} [{record['ci_low']:+.2f}, {record['ci_high']:+.2f}]"


def unit_means(results: pd.DataFrame, unit: str = "seed", measure: str = "accuracy", **where) -> pd.Series:
    """Mean ``measure`` per ``unit`` over the rows matching ``where`` (column=value or column=[values])."""
    mask = pd.Series(True, index=results.index)
    for column, wanted in where.items():
        mask &= results[column].isin(wanted if isinstance(wanted, (list, tuple, set)) else [wanted])
    return results[mask].groupby(unit)[measure].mean()


def level_sides(results: pd.DataFrame, a: Mapping, b: Mapping, level: str = "level", unit: str = "seed",
                measure: str = "accuracy", **where) -> dict[object, tuple[pd.Series, pd.Series]]:
    """Per level of a dial, the two per-``unit`` sides of a paired comparison (what :func:`stage` takes):
    ``a`` and ``b`` select each side's rows (``dict(method="LLU")``), ``where`` the rows of both."""
    rows = {level_value: group for level_value, group in results.groupby(level, sort=True)}
    return {x: (unit_means(group, unit, measure, **where, **a), unit_means(group, unit, measure, **where, **b))
            for x, group in rows.items()}


def counts(records: Sequence[Mapping]) -> dict[str, int]:
    """How many records are held, contradicted, inconclusive and not staged."""
    return {v: sum(r["verdict"] == v for r in records) for v in VERDICTS}


def takeaway(verdicts: Sequence[Verdict], readings: Mapping[str, Mapping[str, str]] | None = None,
             notes: Sequence[str] = ()) -> Markdown:
    """The notebook's "What to take away", rendered from this run: one bullet per verdict with its numbers,
    followed by the reading (``readings[claim][verdict]``, written in advance for each outcome) and notes."""
    readings = readings or {}
    tally = counts([v.record() for v in verdicts])
    staged = f", {tally['not staged']} not staged" if tally["not staged"] else ""
    lines = [f"**{tally['held']} held, {tally['contradicted']} contradicted, {tally['inconclusive']} inconclusive"
             f"{staged}** (95% CIs over seeds)."]
    notebooks = {v.claim.notebook for v in verdicts}
    if any(_RUNS.get(nb, {}).get("scale") == "lesson" for nb in notebooks):
        lines[0] += (" *These are the lesson scale's verdicts, from a run sized for a class: the kit's findings are "
                     "the committed paper-scale verdicts printed beside each claim above.*")
    for v in verdicts:
        reading = readings.get(v.claim.claim, {}).get(v.verdict, "")
        if not v.staged:
            lines.append(f"* **not staged** — {v.claim.claim} ({v.claim.paper_ref}): {v.detail}"
                         f"{'. ' + reading if reading else '.'}")
            continue
        lines.append(f"* **{v.verdict}** — {v.claim.claim} ({v.claim.paper_ref}): {v.claim.quantity} = {v.interval}, "
                     f"n = {v.n}{'. ' + reading if reading else '.'}")
    lines += [f"* {note}" for note in notes]
    return Markdown("\n".join(lines))


__all__ = ["Claim", "Verdict", "Staging", "declare", "decide", "decide_trend", "stage", "not_staged", "unit_means",
           "level_sides", "level_name", "trend_staging", "begin", "read_claims", "read_run", "committed", "compare_runs", "tolerances", "TOLERANCE", "MARGINS",
           "MIN_LEVELS", "counts", "takeaway", "seeds_to_resolve", "VERDICTS"]
