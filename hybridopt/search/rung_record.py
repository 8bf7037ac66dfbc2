"""What becomes of a generation's candidates as they go through the rungs: their child runs,
their trained states kept for their children, their records in the standings, and the progress
display (the :class:`~hybridopt.search.halving.RungListener` of a search)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

from hybridopt.search.genome import GenomeSpace
from hybridopt.search.halving import Job
from hybridopt.search.inherit import Lineage
from hybridopt.search.outcome import Standings
from hybridopt.search.record import SearchRecord
from hybridopt.stored_names import CandidateRecord
from hybridopt.train import ProgressEvent, ProgressFn, TrainResult

__all__ = ["RungRecorder"]


class RungRecorder:
    """Records the candidates of generation ``generation`` (of ``generations``; the winner's final
    training is generation ``generations``) as successive halving trains them.  With
    ``inheritance == "lamarckian"`` a finished candidate's state is kept, for its children.

    After a resume, ``take_stored`` is given the children the store already holds; a candidate
    found there with the same genome is not trained again."""

    def __init__(
        self,
        record: SearchRecord,
        lineage: Lineage,
        standings: Standings,
        progress: Optional[ProgressFn],
        inheritance: str,
    ):
        self.record, self.lineage, self.standings = record, lineage, standings
        self.progress: ProgressFn = progress or (lambda event: None)
        self.keeps_states = inheritance == "lamarckian"
        self.generation, self.generations = 0, 0
        self.stored: dict[tuple[int, int], CandidateRecord] = {}

    def take_stored(self, children: Sequence[CandidateRecord], recorded: Sequence[CandidateRecord]) -> None:
        """Children finished before a resume; those the checkpoint already ``recorded`` are left out."""
        done = {(r.generation, r.index) for r in recorded}
        self.stored = {(c.generation, c.index): c for c in children if (c.generation, c.index) not in done}

    def start_generation(self, generation: int, generations: int, jobs: Sequence[Job]) -> None:
        """``jobs`` are about to train in ``generation``: those the store holds are taken from it; a
        stored child of another genome (the config changed between runs) is deleted and redone."""
        self.generation, self.generations = generation, generations
        for job in jobs:
            stored = self.stored.pop((generation, job.index), None)
            if stored is not None and stored.genome == job.genome:
                job.take_stored(stored)
            elif stored is not None:
                self.record.delete(stored.run_id)

    def recorded(self, job: Job) -> CandidateRecord:
        """A job that stopped, recorded in the standings (with its weights, should it lead)."""
        rec = job.record(self.generation)
        if job.stored is None:
            result = job.result
            assert result is not None
            self.standings.add(rec, lambda: result.state_dict)
        else:  # finished before the resume: its weights are in its state
            self.standings.add(rec, lambda: self._stored_weights(rec.run_id))
        return rec

    def _stored_weights(self, run_id: str) -> Optional[dict[str, Any]]:
        state = self.record.trained_state(run_id)
        return state.model if state is not None else None

    # ------------------------------------------------------------------ the RungListener
    def started(self, job: Job, at: float) -> str:
        g, inherited = self.generation, (job.inherited_from, job.inherited, job.lineage_genes)
        return self.record.open_child(g, job.index, job.unit, job.genome, job.cfg, *inherited, start_time=at)

    def completed(self, job: Job, result: TrainResult) -> None:
        assert job.run_id is not None
        self.record.log_rung(job.run_id, job.rung, result, job.nodes)

    def stopped(self, job: Job) -> None:
        """Its child run ends; its state is kept for children."""
        result = job.result
        assert result is not None and job.run_id is not None
        keep_state = self.keeps_states and not result.failed
        self.record.close_child(job.run_id, result, job.cpu_s, job.wall_s, keep_state, job.queue_wait_s)
        self.progress(ProgressEvent(line=job.record(self.generation).line(GenomeSpace.describe(job.genome))))
        if keep_state and result.state is not None:
            self.lineage.trained[job.run_id] = result.state

    def progressed(self, done: int, total: int) -> None:
        g, gens = self.generation, self.generations
        stage = f"generation {g + 1}/{gens}" if g < gens else "final training"
        self.progress(ProgressEvent(done, total, {"best": self.standings.best_fitness}, stage))
