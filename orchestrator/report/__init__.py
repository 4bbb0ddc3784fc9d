"""The run report: what a run did, where, how long and for how much, as one self-contained HTML file.

- ``view``: the run, its stages and attempts, money and recent runs as plain data (also for
  `lhorch status` and `lhorch runs`)
- ``figures``: the PNG figures (timeline, training curves, metric series, history), drawn once
- ``html``: the HTML page with the figures embedded; no network needed to view it
- ``build``: ``write_report(store, run_id)``: the page and its PNGs into the run folder
"""
