"""A visit: the steps of a visit plan carried out one after another, each as its own
`cuedpain` process, with which steps are done read from the data on disk (pure rules in
`state.py` over a listing made by `listing.py`; the commands in `commands.py`; the
terminal's visit in `procedure.py`). The operator station (experiment/web/) uses the
same pieces."""
