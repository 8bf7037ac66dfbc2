"""Run a hybridopt search on the Ray cluster; the script ``ray submit`` copies to the head node.

    ray submit cluster/run.yaml cluster/submit_search.py -- configs/smoke_search.yaml [--set k=v] [--seed N] [--resume]

On the head it re-runs itself with the python of the virtual environment that the cluster's
setup commands installed hybridopt into (``~/hybridopt-venv``, or ``HYBRIDOPT_VENV``), joins
the cluster (``address="auto"``), makes sure the head's MLflow server is up (SQLite store in
``~/hybridopt-runs``) and runs ``hybridopt search`` logging to it.  A relative config path is
looked up in the project copy (``~/hybridopt``).  Options: ``python submit_search.py --help``.
"""

import os
import sys

VENV = os.path.expanduser(os.environ.get("HYBRIDOPT_VENV", "~/hybridopt-venv"))


def main() -> int:
    venv_python = os.path.join(VENV, "bin", "python")
    if os.path.realpath(sys.prefix) != os.path.realpath(VENV) and os.path.exists(venv_python):
        os.execv(venv_python, [venv_python, os.path.abspath(__file__), *sys.argv[1:]])
    # Python puts this script's folder first on sys.path.  `ray submit` runs it from ~, beside the
    # project copy ~/hybridopt, a folder without __init__.py that would be imported as an empty
    # namespace package in place of the installed hybridopt: the script needs nothing from there.
    here = os.path.dirname(os.path.realpath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != here]
    try:
        from hybridopt.entry.cluster import main as entry
    except ImportError as e:
        print(
            f"submit_search: hybridopt is not importable by {sys.executable} ({e}); "
            f"did `ray up` install it into {VENV}?",
            file=sys.stderr,
        )
        return 2
    return entry(["search", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
