"""`cuedpain timing-test`: the rig's screen and light sensor, measured with the protocol's own cues."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser("timing-test", help="measure the rig's screen (refresh, frame intervals, dropped frames) and, "
                                           "with a light sensor, the lag from flip to light of each cue")
    p.add_argument("protocol", help="protocol file whose cues are drawn at its own pace")
    p.add_argument("--rig", metavar="FILE", default=None, help="rig file (screen, light patch, timing limits)")
    p.add_argument("--sensor", metavar="PORT", default=None,
                   help="the light sensor's serial port (docs/light-sensor.md); without it, no lag is measured")
    p.add_argument("--duration", metavar="SECONDS", type=float, default=60.0,
                   help="how much of the protocol's timeline to draw (default 60 s)")
    p.add_argument("--seed", type=int, default=None, help="the timeline's seed (default: the protocol's)")
    p.add_argument("--data", metavar="DIR", default=None,
                   help="dataset root; the figures go to DIR/sourcedata/timing-tests/ (default: data)")


def command(args: argparse.Namespace) -> int:
    from experiment.outputs.dataset import default_root
    from experiment.procedures.timingtest.procedure import TimingTestRequest, run_timing_test
    from experiment.protocol.model import load_protocol
    from experiment.protocol.rig import load_rig
    from experiment.station.runinfo import check_writable
    from experiment.station.surroundings import check_display

    protocol = load_protocol(args.protocol)
    rig = load_rig(Path(args.rig) if args.rig else None)
    data_root = Path(args.data) if args.data else default_root(dry_run=False)
    check_writable(data_root)
    check_display()
    return run_timing_test(TimingTestRequest(protocol=protocol, protocol_path=Path(args.protocol), rig=rig,
                                             sensor_port=args.sensor, duration_s=args.duration,
                                             data_root=data_root, seed=args.seed))
