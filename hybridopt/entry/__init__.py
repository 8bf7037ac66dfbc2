"""The entry points: the ``hybridopt`` command line (:mod:`.cli`), its cluster commands on Ray's
Jobs API (:mod:`.service`), and what runs on a cluster's head (:mod:`.cluster`); the arguments
they share in :mod:`.arguments`."""
