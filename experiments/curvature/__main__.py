"""``python -m experiments.curvature``: the curvature studies' command line."""

from experiments.curvature import main

main()
