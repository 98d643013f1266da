"""The device-spec grammar (experiment/protocol/specs.py): every accepted form and what it
parses to, every refused form and its one-line message (from the option, from a rig file
with file:line:col, from the command line), and `parse(str(spec)) == spec`."""

from __future__ import annotations

import json

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from experiment.cli import main
from experiment.errors import InputError
from experiment.protocol.rig import parse_rig
from experiment.protocol.specs import (PRESETS, SIM_CUFF, SIM_GATED, STANDARD_BAUDS, CuffKind, CuffSpec, Gate,
                                       KeyBackend, KeyboardSpec, SerialPreset, SerialSpec, SimDriver, SimSpec, parse_cuff_spec,
                                       parse_scanner_spec)

FORP, SYNCBOX, BITWISE = PRESETS["forp"], PRESETS["syncbox"], PRESETS["forp-bitwise"]

CUFF_FORMS = "sim | sim:gated[:rts|dtr] | line:PORT | cpar:PORT | gated:PORT:rts|dtr|board"
SCANNER_FORMS = ("keyboard[:KEY[:ptb|event]] | serial:PORT[:PRESET] | "
                 "sim[:virtual|serial|pty|socket|keyboard|syncgen]")
PORT = "a device path, a COM name or a pyserial URL (socket://host:port, rfc2217://host:port, hwgrep://...)"
PRESET_FORMS = "syncbox | forp | forp-bitwise | NAME@BAUD | custom:BYTE@BAUD (BYTE: 0xNN or one character)"
KEYBOARD = ("keyboard | keyboard:KEY | keyboard:KEY:BACKEND (KEY a PsychoPy key name such as 5 or t; "
            "BACKEND ptb or event)")
SERIAL = f"serial:PORT or serial:PORT:PRESET with PORT {PORT} and PRESET {PRESET_FORMS}"
BAUDS = "1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600"

# text -> (spec, canonical text)
CUFFS = [
    ("sim", SIM_CUFF, "sim"),
    ("line:/dev/ttyUSB0", CuffSpec(CuffKind.LINE, "/dev/ttyUSB0"), "line:/dev/ttyUSB0"),
    ("line:COM3", CuffSpec(CuffKind.LINE, "COM3"), "line:COM3"),
    ("cpar:COM3", CuffSpec(CuffKind.CPAR, "COM3"), "cpar:COM3"),
    ("line:socket://localhost:7000", CuffSpec(CuffKind.LINE, "socket://localhost:7000"),
     "line:socket://localhost:7000"),
    ("cpar:hwgrep://0403:6001", CuffSpec(CuffKind.CPAR, "hwgrep://0403:6001"), "cpar:hwgrep://0403:6001"),
    ("line:rfc2217://10.0.0.2:2217", CuffSpec(CuffKind.LINE, "rfc2217://10.0.0.2:2217"),
     "line:rfc2217://10.0.0.2:2217"),
    ("  line:COM3  ", CuffSpec(CuffKind.LINE, "COM3"), "line:COM3"),
    ("sim:gated", SIM_GATED, "sim:gated"),
    ("sim:gated:board", SIM_GATED, "sim:gated"),
    ("sim:gated:rts", CuffSpec(CuffKind.SIM, gate=Gate.RTS), "sim:gated:rts"),
    ("gated:/dev/ttyUSB0:rts", CuffSpec(CuffKind.GATED, "/dev/ttyUSB0", Gate.RTS), "gated:/dev/ttyUSB0:rts"),
    ("gated:COM3:dtr", CuffSpec(CuffKind.GATED, "COM3", Gate.DTR), "gated:COM3:dtr"),
    ("gated:socket://h:7000:board", CuffSpec(CuffKind.GATED, "socket://h:7000", Gate.BOARD),
     "gated:socket://h:7000:board"),
]

SCANNERS = [
    ("keyboard", KeyboardSpec(), "keyboard"),
    ("keyboard:t", KeyboardSpec("t"), "keyboard:t"),
    ("keyboard:5:ptb", KeyboardSpec("5"), "keyboard:5"),
    ("keyboard:5:event", KeyboardSpec("5", KeyBackend.EVENT), "keyboard:5:event"),
    ("keyboard:num_5", KeyboardSpec("num_5"), "keyboard:num_5"),
    ("serial:/dev/ttyACM0", SerialSpec("/dev/ttyACM0", FORP), "serial:/dev/ttyACM0:forp"),
    ("serial:COM4:syncbox", SerialSpec("COM4", SYNCBOX), "serial:COM4:syncbox"),
    ("serial:COM3:forp@115200", SerialSpec("COM3", SerialPreset("forp", 115200, trigger_byte=ord("5"))),
     "serial:COM3:forp@115200"),
    ("serial:COM3:syncbox@57600", SerialSpec("COM3", SYNCBOX), "serial:COM3:syncbox"),
    ("serial:/dev/ttyACM0:forp-bitwise", SerialSpec("/dev/ttyACM0", BITWISE), "serial:/dev/ttyACM0:forp-bitwise"),
    ("serial:/dev/ttyUSB0:custom:0x54@9600", SerialSpec("/dev/ttyUSB0", SerialPreset("custom", 9600, 0x54)),
     "serial:/dev/ttyUSB0:custom:0x54@9600"),
    ("serial:COM4:custom:t@38400", SerialSpec("COM4", SerialPreset("custom", 38400, ord("t"))),
     "serial:COM4:custom:0x74@38400"),
    ("serial:socket://host:7000", SerialSpec("socket://host:7000", FORP), "serial:socket://host:7000:forp"),
    ("serial:loop://", SerialSpec("loop://", FORP), "serial:loop://:forp"),
    ("serial:rfc2217://host:2217:syncbox", SerialSpec("rfc2217://host:2217", SYNCBOX),
     "serial:rfc2217://host:2217:syncbox"),
    ("serial:rfc2217://10.0.0.5:7000:custom:t@38400",
     SerialSpec("rfc2217://10.0.0.5:7000", SerialPreset("custom", 38400, ord("t"))),
     "serial:rfc2217://10.0.0.5:7000:custom:0x74@38400"),
    ("serial:hwgrep://FTDI:FT232R:forp", SerialSpec("hwgrep://FTDI:FT232R", FORP), "serial:hwgrep://FTDI:FT232R:forp"),
    ("serial:hwgrep://0403:6001", SerialSpec("hwgrep://0403:6001", FORP), "serial:hwgrep://0403:6001:forp"),
    ("sim", SimSpec(), "sim"),
    *[(f"sim:{d.value}", SimSpec(d), f"sim:{d.value}") for d in SimDriver],
]

GATED = (f"gated:PORT:GATE with GATE rts, dtr, board (rts, dtr: a relay on that line of the port; board: a GATE/1 "
         f"gate board) and PORT {PORT}, e.g. gated:/dev/ttyUSB0:rts")

# text -> message after "WHAT: "
BAD_CUFFS = [
    ("", f"no cuff given; allowed: {CUFF_FORMS}"),
    ("usb:/dev/x", f"unknown cuff kind 'usb' in 'usb:/dev/x'; allowed: {CUFF_FORMS}"),
    ("gated:/dev/ttyUSB0", f"'gated:/dev/ttyUSB0' does not say how the gate is wired (it ends in ':rts', ':dtr' or "
                           f"':board'); allowed: {GATED}"),
    ("gated:/dev/ttyUSB0:RTS", f"'gated:/dev/ttyUSB0:RTS' does not say how the gate is wired (it ends in ':rts', "
                               f"':dtr' or ':board'); allowed: {GATED}"),
    ("gated::rts", f"'gated' needs a port, got 'gated::rts'; allowed: {GATED}"),
    ("Line:COM3", f"unknown cuff kind 'Line' in 'Line:COM3' (kinds are lowercase); allowed: {CUFF_FORMS}"),
    ("line", f"'line' needs a port, got 'line'; allowed: line:PORT with PORT {PORT}, e.g. line:/dev/ttyUSB0 "
             f"or line:COM3"),
    ("line:", f"'line' needs a port, got 'line:'; allowed: line:PORT with PORT {PORT}, e.g. line:/dev/ttyUSB0 "
              f"or line:COM3"),
    ("cpar: COM3", f"the port ' COM3' has spaces around it, in 'cpar: COM3'; allowed: cpar:PORT with PORT {PORT}, "
                   f"e.g. cpar:/dev/ttyUSB0 or cpar:COM3"),
    ("sim:fast", f"'sim' takes no port (the simulated gate board is sim:gated[:rts|dtr]), got 'sim:fast'; allowed: "
                 f"{CUFF_FORMS}"),
    ("sim:gated:RTS", f"'sim' takes no port (the simulated gate board is sim:gated[:rts|dtr]), got 'sim:gated:RTS'; "
                      f"allowed: {CUFF_FORMS}"),
]

BAD_SCANNERS = [
    ("", f"no trigger source given; allowed: {SCANNER_FORMS}"),
    ("parallel:0x378", f"unknown trigger source 'parallel' in 'parallel:0x378'; allowed: {SCANNER_FORMS}"),
    ("Keyboard:5", f"unknown trigger source 'Keyboard' in 'Keyboard:5' (kinds are lowercase); "
                   f"allowed: {SCANNER_FORMS}"),
    ("keyboard:Shift", f"keyboard trigger key 'Shift' is not a PsychoPy key name (lowercase letters, digits, '_'); "
                       f"allowed: {KEYBOARD}"),
    ("keyboard:event", f"'event' is a keyboard backend, not a key: name the key first, e.g. keyboard:5:event; "
                       f"allowed: {KEYBOARD}"),
    ("keyboard::event", f"'keyboard::event' names no key; allowed: {KEYBOARD}"),
    ("keyboard:5:pygame", f"keyboard backend 'pygame' is not one of ptb, event; allowed: {KEYBOARD}"),
    ("keyboard:5:ptb:x", f"'keyboard:5:ptb:x' has too many parts; allowed: {KEYBOARD}"),
    ("serial", f"'serial' needs a port, got 'serial'; allowed: {SERIAL}"),
    ("serial::syncbox", f"'serial' needs a port, got 'serial::syncbox'; allowed: {SERIAL}"),
    ("serial:syncbox", f"'syncbox' is a trigger preset, not a port (name the port first: serial:PORT:syncbox), "
                       f"in 'serial:syncbox'; allowed: {SERIAL}"),
    ("serial:/dev/ttyUSB0:syncbx", f"unknown trigger preset 'syncbx' in 'serial:/dev/ttyUSB0:syncbx'; "
                                   f"allowed: {PRESET_FORMS}"),
    ("serial:rfc2217://host:2217:forp-ascii", f"unknown trigger preset 'forp-ascii' in "
                                              f"'serial:rfc2217://host:2217:forp-ascii'; allowed: {PRESET_FORMS}"),
    ("serial:/dev/ttyUSB0:forp@12345", f"baud rate 12345 is not a standard rate, in "
                                       f"'serial:/dev/ttyUSB0:forp@12345'; allowed: {BAUDS}"),
    ("serial:/dev/ttyUSB0:forp@fast", f"baud rate 'fast' is not a number, in 'serial:/dev/ttyUSB0:forp@fast'; "
                                      f"allowed: {BAUDS}"),
    ("serial:/dev/ttyUSB0:custom", f"a custom trigger preset is custom:BYTE@BAUD, got 'custom' in "
                                   f"'serial:/dev/ttyUSB0:custom'; allowed: {PRESET_FORMS}"),
    ("serial:/dev/ttyUSB0:custom:0x54", f"a custom trigger preset is custom:BYTE@BAUD, got 'custom:0x54' in "
                                        f"'serial:/dev/ttyUSB0:custom:0x54'; allowed: {PRESET_FORMS}"),
    ("serial:/dev/ttyUSB0:custom:0x154@9600", f"trigger byte '0x154' is more than one byte (0x00-0xff), in "
                                              f"'serial:/dev/ttyUSB0:custom:0x154@9600'; allowed: {PRESET_FORMS}"),
    ("serial:/dev/ttyUSB0:custom:tt@9600", f"trigger byte 'tt' is neither 0xNN nor one character, in "
                                           f"'serial:/dev/ttyUSB0:custom:tt@9600'; allowed: {PRESET_FORMS}"),
    ("sim:laser", "simulated scanner driver 'laser' is not one of virtual, serial, pty, socket, keyboard, syncgen; "
                  "allowed: sim[:virtual|serial|pty|socket|keyboard|syncgen] (dry runs only)"),
]


@pytest.mark.parametrize("text, spec, canonical", CUFFS)
def test_accepted_cuff_specs(text, spec, canonical) -> None:
    got = parse_cuff_spec(text, what="--cuff")
    assert got == spec and str(got) == got.text == canonical
    assert parse_cuff_spec(canonical, what="--cuff") == spec
    assert got.simulated == (spec.kind is CuffKind.SIM)


@pytest.mark.parametrize("text, spec, canonical", SCANNERS)
def test_accepted_scanner_specs(text, spec, canonical) -> None:
    got = parse_scanner_spec(text, what="--scanner")
    assert got == spec and str(got) == got.text == canonical
    assert parse_scanner_spec(canonical, what="--scanner") == spec
    assert got.simulated == isinstance(spec, SimSpec)


def test_kinds_are_exact_and_a_gated_spec_names_its_wiring() -> None:
    with pytest.raises(InputError, match=r"does not say how the gate is wired"):
        parse_cuff_spec("gated:/dev/ttyUSB0", what="--cuff")
    assert parse_cuff_spec("sim:gated", what="--cuff").simulated
    assert not parse_cuff_spec("gated:COM3:board", what="--cuff").simulated
    with pytest.raises(InputError, match=r"unknown cuff kind 'LINE'"):
        parse_cuff_spec("LINE:COM3", what="--cuff")


@pytest.mark.parametrize("text, message", BAD_CUFFS)
def test_refused_cuff_specs_from_the_option(text, message) -> None:
    with pytest.raises(InputError) as err:
        parse_cuff_spec(text, what="--cuff")
    assert err.value.message == f"--cuff: {message}"


@pytest.mark.parametrize("text, message", BAD_SCANNERS)
def test_refused_scanner_specs_from_the_option(text, message) -> None:
    with pytest.raises(InputError) as err:
        parse_scanner_spec(text, what="--scanner")
    assert err.value.message == f"--scanner: {message}"


@pytest.mark.parametrize("field, text, message",
                         [("cuff", t, m) for t, m in BAD_CUFFS if t.strip()]
                         + [("scanner", t, m) for t, m in BAD_SCANNERS if t.strip()])
def test_refused_specs_from_a_rig_file_name_file_line_and_field(field, text, message) -> None:
    rig = f"# site rig\n{field}: {json.dumps(text)}\n"   # a JSON string is a YAML double-quoted scalar
    with pytest.raises(InputError) as err:
        parse_rig(rig, file="rig.yaml")
    assert err.value.message == f"rig.yaml:2:{len(field) + 3}: {field}: {message}"


@pytest.mark.parametrize("option, text, message",
                         [("--cuff", t, m) for t, m in BAD_CUFFS[1:4]]
                         + [("--scanner", t, m) for t, m in BAD_SCANNERS[::4]])
def test_refused_specs_on_the_command_line_exit_2_with_the_same_message(option, text, message, capsys,
                                                                        tmp_path) -> None:
    code = main(["rig-check", option, text, "--data", str(tmp_path / "data")])
    assert code == 2
    assert capsys.readouterr().err == f"cuedpain rig-check: {option}: {message}\n"
    assert not (tmp_path / "data").exists()  # refused before anything was touched


def test_the_run_command_parses_its_specs_with_the_same_grammar(capsys, tmp_path) -> None:
    from tests.protocol_samples import DEMO

    code = main(["run", str(DEMO), "--participant", "P1", "--data", str(tmp_path / "data"),
                 "--cuff", "line:/dev/ttyUSB0", "--scanner", "serial:/dev/ttyUSB0:syncbx"])
    assert code == 2
    assert capsys.readouterr().err == ("cuedpain run: --scanner: unknown trigger preset 'syncbx' in "
                                       f"'serial:/dev/ttyUSB0:syncbx'; allowed: {PRESET_FORMS}\n")


def test_invariants_refuse_what_the_grammar_cannot_write() -> None:
    for bad in (lambda: CuffSpec(CuffKind.SIM, "COM3"), lambda: CuffSpec(CuffKind.LINE),
                lambda: CuffSpec(CuffKind.GATED, "COM3"), lambda: CuffSpec(CuffKind.LINE, "COM3", Gate.RTS),

                lambda: CuffSpec(CuffKind.LINE, " COM3"), lambda: KeyboardSpec("Shift"),
                lambda: KeyboardSpec(None, KeyBackend.EVENT), lambda: SerialSpec("syncbox"),
                lambda: SerialSpec("x:custom"), lambda: SerialPreset("forp", 19200, trigger_byte=0x40),
                lambda: SerialPreset("custom", 12345, trigger_byte=0x40), lambda: SerialPreset("fancy", 9600, 1)):
        with pytest.raises(ValueError):
            bad()


# ---------------------------------------------------------------- properties

PORTS = st.one_of(
    st.sampled_from(["/dev/ttyUSB0", "COM3", r"\\.\COM10", "socket://127.0.0.1:7000", "rfc2217://h:2217",
                     "hwgrep://0403:6001", "hwgrep://FTDI:FT232R", "loop://", "spy://COM3?file=x.txt"]),
    st.text(st.characters(min_codepoint=32, max_codepoint=0x17F), min_size=1, max_size=24),
    st.lists(st.sampled_from(["a", "custom", "forp", "0x35@9600", "//h", "7000", " ", "@", "syncbox@57600"]),
             min_size=1, max_size=5).map(":".join),
)
SERIAL_PRESETS = st.one_of(
    st.builds(lambda p, baud: SerialPreset(p.name, baud, p.trigger_byte, p.trigger_mask),
              st.sampled_from(list(PRESETS.values())), st.sampled_from(STANDARD_BAUDS)),
    st.builds(lambda byte, baud: SerialPreset("custom", baud, byte), st.integers(0, 255),
              st.sampled_from(STANDARD_BAUDS)),
)


def _valid(make):  # a drawn value the invariants refuse is not a spec
    try:
        return make()
    except ValueError:
        assume(False)


CUFF_SPECS = st.one_of(st.just(SIM_CUFF),
                       st.builds(lambda g: CuffSpec(CuffKind.SIM, gate=g), st.sampled_from(list(Gate))),
                       st.builds(lambda k, p: _valid(lambda: CuffSpec(k, p)),
                                 st.sampled_from([CuffKind.LINE, CuffKind.CPAR]), PORTS),
                       st.builds(lambda p, g: _valid(lambda: CuffSpec(CuffKind.GATED, p, g)), PORTS,
                                 st.sampled_from(list(Gate))))
SCANNER_SPECS = st.one_of(
    st.just(KeyboardSpec()),
    st.builds(KeyboardSpec, st.from_regex(r"[a-z0-9_]{1,20}", fullmatch=True), st.sampled_from(list(KeyBackend))),
    st.builds(lambda p, s: _valid(lambda: SerialSpec(p, s)), PORTS, SERIAL_PRESETS),
    st.builds(SimSpec, st.none() | st.sampled_from(list(SimDriver))),
)


@settings(max_examples=400, deadline=None)
@given(CUFF_SPECS)
def test_every_cuff_spec_reads_back_from_its_text(spec) -> None:
    assert parse_cuff_spec(str(spec), what="--cuff") == spec


@settings(max_examples=600, deadline=None)
@given(SCANNER_SPECS)
def test_every_scanner_spec_reads_back_from_its_text(spec) -> None:
    assert parse_scanner_spec(str(spec), what="--scanner") == spec


@settings(max_examples=600, deadline=None)
@given(st.one_of(st.text(max_size=40),
                 st.tuples(st.sampled_from(["sim", "line", "cpar", "keyboard", "serial", "gated", "Serial"]),
                           st.lists(st.sampled_from(["", "5", "t", "event", "COM3", "/dev/x", "socket", "//h",
                                                     "7000", "syncbox", "forp@115200", "custom", "0x54@9600",
                                                     "syncbx", " x", "rts", "board", "gated"]), max_size=4))
                 .map(lambda t: ":".join([t[0], *t[1]]))))
def test_any_text_is_a_spec_that_reads_back_or_one_line_naming_the_option(text) -> None:
    for parse, what in ((parse_cuff_spec, "--cuff"), (parse_scanner_spec, "--scanner")):
        try:
            spec = parse(text, what=what)
        except InputError as exc:
            assert exc.message.startswith(f"{what}: ") and "\n" not in exc.message and "; allowed: " in exc.message
            continue
        assert parse(str(spec), what=what) == spec
