"""Rig files: site hardware validated with the same located messages; rig + protocol keys and units."""

from __future__ import annotations

import textwrap

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from experiment.errors import InputError
from experiment.protocol.rig import (RIG_SPEC, check_rig_for_protocol, effective_keys, load_rig, parse_rig,
                                    rig_json_schema)
from experiment.protocol.specs import CuffKind, CuffSpec, KeyboardSpec, KeyBackend, ScannerKind, SerialSpec
from experiment.protocol.schema import GENERATED_BEGIN, GENERATED_END, reference_markdown
from tests.protocol_samples import DEMO, PROTOCOLS, ROOT, edited, load_dict, protocol_from

EXAMPLE = PROTOCOLS / "rig-example.yaml"


def test_example_rig():
    rig = load_rig(EXAMPLE)
    assert rig.path == EXAMPLE
    assert rig.cuff == CuffSpec(CuffKind.LINE, "/dev/ttyUSB0")
    assert rig.scanner == KeyboardSpec("5")
    assert rig.screen.size == (1920, 1080) and rig.screen.refresh_hz == 60.0 and rig.screen.distance_cm == 100.0
    assert (rig.keys.left, rig.keys.stop, rig.keys.trigger) == ("1", "4", None)
    assert rig.serial_latency_ms == 1.0 and rig.discard_pulses is None and "FTDI" in rig.notes


def test_no_rig_means_nothing_configured():
    for rig in (load_rig(None), parse_rig(""), parse_rig("# only a comment\n")):
        assert rig.cuff is None and rig.scanner is None
        assert rig.screen.fullscreen is True and rig.screen.index == 0 and rig.screen.size is None
        assert rig.screen.units == "height" and rig.discard_pulses is None
        assert rig.keys.left is None


def test_rig_specs_are_typed_and_take_every_form_of_the_grammar():
    rig = parse_rig("cuff: cpar:socket://10.0.0.2:5000\nscanner: keyboard:t:event\n")
    assert rig.cuff == CuffSpec(CuffKind.CPAR, "socket://10.0.0.2:5000")
    assert rig.scanner == KeyboardSpec("t", KeyBackend.EVENT)
    rig = parse_rig("scanner: serial:rfc2217://10.0.0.5:7000:custom:t@38400\n")
    assert isinstance(rig.scanner, SerialSpec) and rig.scanner.port == "rfc2217://10.0.0.5:7000"
    assert (rig.scanner.preset.trigger_byte, rig.scanner.preset.baud) == (ord("t"), 38400)
    assert str(parse_rig("scanner: sim:syncgen\n").scanner) == "sim:syncgen"


RIG = textwrap.dedent("""\
    cuff: line:/dev/ttyUSB0
    scanner: serial:/dev/ttyACM0
    screen:
      fullscreen: false
      size: [800, 600]
    keys: {left: '1', right: '2'}
    """)


@pytest.mark.parametrize("old,new,message", [
    ("cuff: line:/dev/ttyUSB0", "cuff: usb:/dev/ttyUSB0",
     r"^r\.yaml:1:7: cuff: unknown cuff kind 'usb' in 'usb:/dev/ttyUSB0'; allowed: sim \| sim:gated\[:rts\|dtr\] \| line:PORT \| cpar:PORT \| gated:PORT:rts\|dtr\|board$"),
    ("scanner: serial:/dev/ttyACM0", "scanner: serial:/dev/ttyACM0:syncbx",
     r"^r\.yaml:2:10: scanner: unknown trigger preset 'syncbx' in 'serial:/dev/ttyACM0:syncbx'; allowed: syncbox "),
    ("scanner: serial:/dev/ttyACM0", "scaner: serial:/dev/ttyACM0",
     r"^r\.yaml:2:1: scaner: unknown key 'scaner' \(did you mean 'scanner'\?\); allowed keys here: cuff, scanner, "),
    ("  size: [800, 600]", "  size: [800]",
     r"^r\.yaml:5:3: screen\.size: must be a list of exactly 2 \(each a whole number from 1 to 20000\), "
     r"got a list of 1$"),
    ("  size: [800, 600]", "  size: 800",
     r"^r\.yaml:5:9: screen\.size: must be a list of exactly 2 \(each a whole number from 1 to 20000\), or null, "
     r"got 800$"),
    ("  fullscreen: false", "  fullscreen: 'no'",
     r"^r\.yaml:4:15: screen\.fullscreen: must be true or false, got 'no' \(text\)$"),
    ("keys: {left: '1', right: '2'}", "keys: {left: '1', right: '1'}",
     r"^r\.yaml:6:26: keys\.right: key '1' is already the left key; every key needs its own role$"),
    ("keys: {left: '1', right: '2'}", "keys: {left: '1', escape: '2'}",
     r"^r\.yaml:6:19: keys\.escape: unknown key 'escape'; allowed keys here: trigger, stop, left, right, confirm$"),
    ("cuff: line:/dev/ttyUSB0\n", "cuff: line:/dev/ttyUSB0\ndiscard_pulses: -1\n",
     r"^r\.yaml:2:17: discard_pulses: must be a whole number from 0 to 100, got -1$"),
    ("screen:\n  fullscreen: false\n  size: [800, 600]\n", "screen: [1, 2]\n",
     r"^r\.yaml:3:1: screen: must be a mapping \(key: value lines\) with keys fullscreen, index, size, units, "
     r"refresh_hz, width_cm, distance_cm, light_patch, light_patch_px; got a list of 2$"),
    ("keys: {left: '1', right: '2'}", "keys: {left: '1', right: '2'",
     r"^r\.yaml:7:1: YAML syntax error: while parsing a flow mapping expected ',' or '\}', but got '<stream end>'$"),
])
def test_bad_rig_files(old, new, message):
    assert RIG.count(old) == 1
    with pytest.raises(InputError, match=message):
        parse_rig(RIG.replace(old, new), file="r.yaml")


def test_rig_file_errors(tmp_path):
    with pytest.raises(InputError, match=r"missing\.yaml: file not found$"):
        load_rig(tmp_path / "missing.yaml")
    path = tmp_path / "list.yaml"
    path.write_text("- cuff\n")
    with pytest.raises(InputError, match=rf"^{path}:1:1: \(top level\): a rig file must be a mapping"):
        load_rig(path)


def test_effective_keys():
    protocol = protocol_from(load_dict(DEMO))
    assert effective_keys(protocol, load_rig(None)) == protocol.keys
    rig = parse_rig("scanner: keyboard:t\nkeys: {left: 'a', right: 'd', confirm: 's', stop: 'x'}\n")
    keys = effective_keys(protocol, rig)
    assert (keys.trigger, keys.left, keys.right, keys.confirm, keys.stop, keys.escape) == \
        ("t", "a", "d", "s", "x", "escape")
    clash = parse_rig("keys: {left: '5'}\n")
    with pytest.raises(InputError, match=r"key '5' is both the trigger key \(protocol\) and the left key \(rig\); "
                                         r"with <rig> and <test>, every key needs its own role$"):
        effective_keys(protocol, clash)
    clash2 = parse_rig("scanner: keyboard:1\n")
    with pytest.raises(InputError, match=r"key '1' is both the trigger key \(rig scanner\) and the left key "
                                         r"\(protocol\)"):
        effective_keys(protocol, clash2)
    # a trigger key from the command line is checked the same way, and wins over the rig's
    cli = KeyboardSpec(key="4")
    with pytest.raises(InputError, match=r"key '4' is both the trigger key \(--scanner\) and the stop key \(protocol\)"):
        effective_keys(protocol, load_rig(None), scanner=cli)
    assert effective_keys(protocol, rig, scanner=KeyboardSpec(key="y")).trigger == "y"


def test_cue_units_need_the_screen():
    deg = protocol_from(edited(load_dict(DEMO), **{"cues.relief_cue.units": "deg"}))
    with pytest.raises(InputError, match=r"^<test>:\d+:\d+: cues\.relief_cue\.units: units 'deg' need "
                                         r"screen\.width_cm and screen\.distance_cm in the default rig \(no rig file given\)$"):
        check_rig_for_protocol(deg, load_rig(None))
    check_rig_for_protocol(deg, load_rig(EXAMPLE))
    cm = protocol_from(edited(load_dict(DEMO), **{"cues.relief_cue.units": "cm"}))
    with pytest.raises(InputError, match=r"units 'cm' need screen\.width_cm in r\.yaml$"):
        check_rig_for_protocol(cm, parse_rig("screen: {distance_cm: 60}\n", file="r.yaml"))
    check_rig_for_protocol(cm, parse_rig("screen: {width_cm: 40}\n"))
    check_rig_for_protocol(protocol_from(load_dict(DEMO)), load_rig(None))  # height units need nothing


def test_committed_rig_schema_and_docs_match_the_code():
    assert (PROTOCOLS / "cuedpain-rig.schema.json").read_text(encoding="utf-8") == rig_json_schema()
    doc = (ROOT / "docs" / "protocol-format.md").read_text(encoding="utf-8")
    begin, end = GENERATED_BEGIN.format(name="rig"), GENERATED_END.format(name="rig")
    assert doc.split(begin, 1)[1].split(end, 1)[0].lstrip("\n") == reference_markdown(RIG_SPEC)


VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 5000), st.floats(), st.text(max_size=20),
                   st.lists(st.integers(-5, 5000), max_size=3),
                   st.sampled_from(["sim", "line:", "cpar:COM1", "keyboard:5", "serial:COM2:x", "serial::"]))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(list(RIG_SPEC.fields) + ["cufff", "size"]), VALUES, max_size=5),
       st.dictionaries(st.sampled_from(["fullscreen", "index", "size", "units", "refresh_hz", "width_cm",
                                        "distance_cm", "sise"]), VALUES, max_size=4))
def test_random_rigs_give_a_rig_or_one_input_error(top, screen):
    doc = dict(top)
    if screen:
        doc["screen"] = screen
    try:
        rig = parse_rig(yaml.safe_dump(doc), file="r.yaml")
    except InputError as exc:
        assert exc.message.startswith("r.yaml") and "\n" not in exc.message
        return
    if rig.cuff is not None:
        assert rig.cuff.kind in CuffKind
    if rig.scanner is not None:
        assert rig.scanner.kind in ScannerKind


def test_cuff_timing_defaults_and_overrides():
    from experiment.protocol.schedule import CuffTiming

    assert load_rig(None).cuff_timing == CuffTiming() == load_rig(EXAMPLE).cuff_timing
    rig = parse_rig("cuff_timing: {release_margin_s: 0.2, ramp_margin_fraction: 0}\n")
    assert rig.cuff_timing == CuffTiming(release_margin_s=0.2, ramp_margin_fraction=0.0)
    with pytest.raises(InputError, match=r"^r\.yaml:1:\d+: cuff_timing\.ramp_margin: unknown key 'ramp_margin'"):
        parse_rig("cuff_timing: {ramp_margin: 1}\n", file="r.yaml")
    with pytest.raises(InputError, match=r"^r\.yaml:1:\d+: cuff_timing\.ramp_margin_fraction: must be a number "
                                         r"from 0 to 1, got 2"):
        parse_rig("cuff_timing: {ramp_margin_fraction: 2}\n", file="r.yaml")
