"""The evotorch genetic algorithm of a search, over unit-encoded genomes."""

from __future__ import annotations

from collections.abc import Callable

import torch

from hybridopt.config import SearchConfig
from hybridopt.evo import CopyingOperator, GaussianMutation, GeneticAlgorithm, OnePointCrossOver, Problem, SolutionBatch
from hybridopt.search.genome import GenomeSpace

__all__ = ["CategoricalResample", "GenomeProblem", "SearchGA", "make_algorithm"]


class GenomeProblem(Problem):
    """Maximise candidate fitness over the unit-encoded genome; evaluation is delegated to
    ``evaluator(values) -> fitness`` (a generation's training)."""

    def __init__(self, n_genes: int, seed: int, evaluator: Callable[[torch.Tensor], torch.Tensor]):
        self.evaluator = evaluator
        super().__init__(
            "max", solution_length=n_genes, initial_bounds=(0.0, 1.0), bounds=(0.0, 1.0), seed=seed, dtype=torch.float32
        )

    def _evaluate_batch(self, batch: SolutionBatch) -> None:
        batch.set_evals(self.evaluator(batch.values.clone()))


class CategoricalResample(CopyingOperator):
    """With probability ``p`` per categorical gene, draw its value afresh, uniformly in
    ``[0, 1]`` (i.e. a uniformly random category): Gaussian steps alone rarely cross
    several category cells."""

    def __init__(self, problem: Problem, mask: torch.Tensor, p: float):
        super().__init__(problem)
        self.mask = mask
        self.p = float(p)

    @torch.no_grad()
    def _do(self, batch: SolutionBatch) -> SolutionBatch:
        from copy import deepcopy

        result = deepcopy(batch)
        data = result.access_values()
        hit = (self.problem.make_uniform_shaped_like(data) < self.p) & self.mask.to(data.device)
        data[hit] = self.problem.make_uniform_shaped_like(data)[hit]
        return result


class SearchGA(GeneticAlgorithm):
    """evotorch's GA, told when its population was measured outside it."""

    def population_measured(self) -> None:
        """The current population's fitness is set (generation 0 evaluated, or restored from a
        checkpoint): the first :meth:`step` breeds from it instead of evaluating it again."""
        self._first_iter = False


def make_algorithm(problem: GenomeProblem, sc: SearchConfig, space: GenomeSpace) -> SearchGA:
    """The evotorch GA of a search: ``elite`` survivors plus ``population - elite`` children."""
    return SearchGA(
        problem,
        popsize=sc.population,
        elitist=False,  # elitism by count: the best ``elite`` parents survive, children fill the rest
        re_evaluate=False,  # fitness is a deterministic function of the genome
        operators=[
            OnePointCrossOver(problem, tournament_size=sc.tournament, num_children=sc.population - sc.elite),
            GaussianMutation(problem, stdev=sc.mutation_stdev, mutation_probability=sc.mutation_prob),
            CategoricalResample(problem, space.categorical_mask, sc.categorical_resample),
        ],
    )
