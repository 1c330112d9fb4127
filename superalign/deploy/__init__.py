"""Deploy iteratively: admit a new policy only within a KL budget of a known-safe one.

- :mod:`superalign.deploy.gate`: the ``gate`` stage, which estimates KL(candidate || safe) on the
  task distribution with a confidence interval, runs the audits its config requires, and writes
  a machine-readable ``verdict.json`` (pass / fail and every reason).
"""
