"""The outer loop: genomes, evolution on evotorch, candidates on Ray, checkpoints."""
