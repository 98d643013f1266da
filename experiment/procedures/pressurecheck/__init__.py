"""Two short procedures after the calibration, on the Station: the confirmation plateaus
(the found pressure and +-10 %, each rated) and the check inside the scanner (one
stimulus at the confirmed pressure, rated, which the operator may adjust within the
ceiling). Each writes a new calibration result that says it was confirmed or adjusted,
so the newest result, the one a run takes, is the confirmed pressure."""
