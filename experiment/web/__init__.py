"""The operator station: a local web page from which a visit is run (`cuedpain station`).

Layout: `config.py` (the station's settings), `follow.py` (reading a step's append-only
logs as they grow, and the live view computed from them: pure), `children.py` (one
process per step: launch, the state file, abort by signal), `blocks.py` (the
confirmation block of a step, from the procedures' pre-flights), `app.py` (the web app:
token, routes, the live stream), `static/` (the page, its script, vendored uPlot).

Nothing else imports this package: a run never imports the web stack, and the station
controls a run only through its command line, its logs and signals (docs/station.md).
"""
