"""The outer loop's evolution: an evotorch genetic algorithm over genomes, and its population's
fitness.

Generation 0 is the initial population (``population`` random genomes, or the fittest
``population`` of ``initial_population`` random genomes measured); every later
generation keeps the ``elite`` best and adds ``population - elite`` children (tournament
selection, one-point cross-over, Gaussian mutation, categorical resampling).  A generation's
candidates are measured by ``measure(genomes) -> fitness`` (the driver's training); elites that
train on are measured again, and their new fitness written into the population with
:meth:`Evolution.set_fitness`.  A candidate that failed has fitness
:data:`~hybridopt.search.checkpoint.FAILED_FITNESS`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from hybridopt.config import SearchConfig
from hybridopt.search.checkpoint import SearchCheckpoint
from hybridopt.search.ga import GenomeProblem, make_algorithm
from hybridopt.search.genome import GenomeSpace

__all__ = ["Evolution"]


class Evolution:
    """The GA of a search (seeded with ``seed``) and its population's fitness."""

    def __init__(
        self, space: GenomeSpace, sc: SearchConfig, seed: int, measure: Callable[[torch.Tensor], torch.Tensor]
    ):
        self.problem = GenomeProblem(len(space), seed, measure)
        self.ga = make_algorithm(self.problem, sc, space)
        self.initial = sc.initial_population or sc.population  # validated: at least population

    @property
    def population(self) -> torch.Tensor:
        """The current population's unit genomes, one row each."""
        return self.ga.population.values

    @property
    def fitness(self) -> torch.Tensor:
        """The current population's fitness, one per row."""
        return self.ga.population.evals[:, 0]

    @property
    def generator_state(self) -> torch.Tensor:
        """The GA's random state (what a checkpoint keeps)."""
        return self.problem.generator.get_state()

    def restore(self, checkpoint: SearchCheckpoint) -> None:
        """Population and random state as the checkpoint has them, and their fitness when the
        checkpoint has measured them (after generation 0)."""
        self.ga.population.set_values(checkpoint.population)
        self.problem.generator.set_state(checkpoint.generator)
        if checkpoint.generation >= 0:
            self.ga.population.set_evals(checkpoint.evals)
            self.ga.population_measured()

    def measure_initial(self) -> None:
        """Generation 0: the initial population trained and measured.  With a wider first draw
        (``initial_population``), the population's random genomes and as many more as it takes
        (drawn next from the GA's generator, so a resume draws the same) are measured, and the
        fittest ``population`` (ties: the first drawn) are kept with their fitness."""
        population = self.ga.population
        extra = self.initial - len(population)
        if extra <= 0:
            self.problem.evaluate(population)
        else:
            values = torch.cat([population.values.clone(), self.problem.generate_values(extra)])
            fitness = self.problem.evaluator(values.clone())
            kept = _fittest(fitness, len(population))
            population.set_values(values[kept])
            population.set_evals(fitness[kept])
        self.ga.population_measured()

    def step(self) -> None:
        """The next generation: children bred and measured, the population renewed."""
        self.ga.step()

    def best_rows(self, n: int) -> list[int]:
        """The rows of the population's ``n`` fittest (ties: the lower row first)."""
        return _fittest(self.fitness, n)

    def set_fitness(self, row: int, fitness: float) -> None:
        """A member measured again (an elite that trained on)."""
        self.ga.population.access_evals()[row, 0] = fitness


def _fittest(fitness: torch.Tensor, n: int) -> list[int]:
    """The indices of the ``n`` highest of ``fitness`` (ties: the lower index first)."""
    return sorted(range(len(fitness)), key=lambda r: (-float(fitness[r]), r))[:n]
