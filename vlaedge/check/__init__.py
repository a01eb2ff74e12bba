"""Check: is the candidate still the policy it was, and is it fast enough?

The public verb is `verify.verify(policy, candidate, evaluation, VerifyConfig, ...)`, which runs
- `drift.open_loop_drift`: reference vs candidate actions on the evaluation frames (% of action range,
  per dimension and along the chunk, token agreement, gripper flips);
- `closedloop.closed_loop`: success rates in an environment, with Wilson intervals;
  `envspace.check_spaces` first refuses an env whose action/observation spaces do not fit the policy;
- `profile.profile`: latency / rate / memory on a runtime, models interleaved (`host` records the machine);
and assembles the report (`report`: report.json, junit.xml; `report_markdown`, `report_html` with the
matplotlib figures of `plots` and the rollout frames `filmstrip` keeps during the closed loop).
`gate.gate(report, Budgets, target)` judges a report against budgets: exit 0 met, 1 violated.
Nothing here imports the pipeline, the CLI or another wing.
"""
