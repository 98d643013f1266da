"""Protocol files: valid ones become frozen Protocols; every invalid one gets one located message."""

from __future__ import annotations

import dataclasses
import re
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from experiment import __version__
from experiment.errors import InputError
from experiment.protocol.model import (PROTOCOL_SPEC, ChoiceDuration, FixedDuration, TruncExpDuration, UniformDuration,
                                 load_protocol, parse_protocol, protocol_json_schema)
from experiment.protocol.schedule import build_schedule
from experiment.protocol.schema import GENERATED_BEGIN, GENERATED_END, reference_markdown
from tests.protocol_samples import DEMO, LOGGIA, PROTOCOLS, ROOT, load_dict

BASE = textwrap.dedent("""\
    cuedpain_version: dev
    metadata:
      name: test protocol
      task: test
    cues:
      fixation: {kind: shape, shape: cross, size: 0.05, units: height}
      pain_cue: {kind: shape, shape: triangle, color: orange, size: 0.2, units: height}
      relief_cue: {kind: text, text: relief soon, size: 0.05, units: height}
    trial_types:
      pain:
        phases:
          - name: anticipation
            cue: pain_cue
            duration: {dist: uniform, min: 2, max: 4, step: 0.5}
            bids_trial_type: pain_anticipation
          - name: pain
            cue: fixation
            cuff: inflate
            timed_from: target_reached
            duration: 3
            bids_trial_type: pain
          - name: relief
            cue: relief_cue
            cuff: hold
            duration: 2
          - name: deflation
            cue: fixation
            cuff: deflate
            duration: 1
          - name: rating
            kind: rating
            cue: fixation
            duration: 4
          - name: rest
            cue: fixation
            duration: {dist: choice, values: [5, 6]}
    trials:
      counts: {pain: 2}
    rating:
      timeout_s: 3
    stimulation:
      target: {value: 20, unit: kPa}
      rate_kpa_s: 40
    safety:
      max_pressure: {value: 30, unit: kPa}
    scan:
      tr_s: 1.0
      n_volumes: 60
      discard_pulses: 0
      lead_in_s: 2
      tail_s: 3
    checks: [onset_cue, relief_cue]
    """)


def with_edit(old: str, new: str, text: str = BASE) -> str:
    assert text.count(old) == 1, f"{old!r} must occur once in the base protocol"
    return text.replace(old, new)


def parse(text: str):
    return parse_protocol(text, file="p.yaml")


# ---------------------------------------------------------------- valid files


def test_base_protocol_values():
    p = parse(BASE)
    assert p.version_pin == "dev"
    assert p.task == "test" and p.name == "test protocol" and p.seed == 0
    assert p.cues["pain_cue"].color == "#ffa500"           # CSS name -> hex
    assert p.cues["fixation"].color == "#ffffff"           # default white
    assert p.cues["relief_cue"].size == (0.05, 0.05)
    assert p.fixation_cue is p.cues["fixation"]
    phases = p.trial_types["pain"].phases
    assert [ph.name for ph in phases] == ["anticipation", "pain", "relief", "deflation", "rating", "rest"]
    assert phases[0].duration == UniformDuration(2.0, 4.0, 0.5)
    assert phases[1].duration == FixedDuration(3.0) and phases[1].timed_from == "target_reached"
    assert phases[5].duration == ChoiceDuration((5.0, 6.0))
    assert phases[4].kind == "rating" and phases[4].scale == "rating"
    assert p.scales["rating"].timeout_s == 3.0 and p.scales["rating"].start == 50
    assert p.stimulation.fixed_kpa == {"target": 20.0} and not p.stimulation.calibrated
    assert phases[1].level == "target" and p.checks == ("onset_cue", "relief_cue")
    assert p.safety.max_pressure_kpa == 30.0
    assert p.safety.max_inflation_per_stimulus_s == 30.0   # defaults filled
    assert p.safety.release_threshold_kpa == 2.0 and p.safety.on_participant_stop == "end"
    assert p.scan.duration_s == 60.0 and p.scan.scanner_stop_trs == 3.0 and p.scan.on_scanner_stop == "end"
    assert (p.keys.trigger, p.keys.stop, p.keys.escape) == ("5", "4", "escape")
    assert p.trials.counts == {"pain": 2} and p.trials.max_run_length is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.scan.tr_s = 3.0  # type: ignore[misc]


def test_mmhg_is_converted_and_version_pin_accepted():
    text = with_edit("target: {value: 20, unit: kPa}", "target: {value: 150, unit: mmHg}")
    text = with_edit("cuedpain_version: dev", f"cuedpain_version: '{__version__}'", text)
    p = parse(text)
    assert p.stimulation.fixed_kpa["target"] == pytest.approx(150 / 7.50062)
    assert p.stimulation.levels["target"].as_written == "150 mmHg"
    assert p.version_pin == __version__


def test_calibrated_target_and_fraction():
    text = with_edit("target: {value: 20, unit: kPa}", "target: calibrated\n  calibrated_fraction: 0.8")
    p = parse(text)
    assert p.stimulation.calibrated and p.stimulation.fixed_kpa == {}
    assert p.stimulation.levels["target"].fraction == 0.8


def test_truncexp_and_unquoted_digit_keys():
    text = with_edit("duration: {dist: choice, values: [5, 6]}",
                     "duration: {dist: truncexp, mean: 6, min: 5, max: 9, step: 0.5}")
    text += "keys: {trigger: 5, stop: 4, left: 1, right: 2, confirm: 3}\n"
    p = parse(text)
    assert p.trial_types["pain"].phases[5].duration == TruncExpDuration(6.0, 5.0, 9.0, 0.5)
    assert p.keys.trigger == "5" and p.keys.left == "1"


def test_reference_protocols_load(tmp_path):
    demo = load_protocol(DEMO)
    loggia = load_protocol(LOGGIA)
    assert demo.sha256 and len(demo.sha256) == 64 and demo.path == DEMO
    assert demo.cues["pain_cue"].image_path == ROOT / "stimuli" / "orange_triangle.png"
    assert loggia.cue_mapping is not None and loggia.cue_mapping.roles == ("pain_cue", "relief_cue")
    assert loggia.trial_types["catch_no_pain"].catch and loggia.trials.counts["catch_no_pain"] == 0
    assert loggia.scan.discard_pulses == 5 and loggia.scan.tr_s == 2.0
    # demo: at most 60 s, two trials
    assert demo.trials.n_trials == 2 and demo.scan.duration_s <= 60


def test_cue_images_are_small_pngs():
    images = sorted((ROOT / "stimuli").glob("*.png"))
    assert images, "stimuli/ must hold at least one PNG cue"
    for path in images:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size < 50_000


# ---------------------------------------------------------------- one clear message per invalid file

CASES = [
    # (old, new, expected message (regex))
    ("        duration: 3\n", "        duraton: 3\n",
     r"^p\.yaml:20:9: trial_types\.pain\.phases\[1\]\.duraton: unknown key 'duraton' \(did you mean 'duration'\?\); "
     r"allowed keys here: name, kind, cue, duration, cuff, timed_from, cuff_at, bids_trial_type, level, scale$"),
    ("        duration: 3\n", "        duration: -1\n",
     r"^p\.yaml:20:19: trial_types\.pain\.phases\[1\]\.duration: must be a number of seconds more than 0 and at "
     r"most 600, got -1\.0$"),
    ("  max_pressure: {value: 30, unit: kPa}\n", "  max_inflation_per_stimulus_s: 20\n",
     r"^p\.yaml:44:1: safety\.max_pressure: required key 'max_pressure' is missing \(it must be a mapping with "
     r"keys value, unit\)$"),
    ("target: {value: 20, unit: kPa}", "target: {value: 20, unit: kpa}",
     r"^p\.yaml:42:29: stimulation\.target\.unit: must be one of 'kPa', 'mmHg', got 'kpa' \(text\) "
     r"\(did you mean 'kPa'\?\)$"),
    ("target: {value: 20, unit: kPa}", "target: {value: 20}",
     r"^p\.yaml:42:3: stimulation\.target\.unit: required key 'unit' is missing"),
    ("  n_volumes: 60\n", "  n_volumes: many\n",
     r"^p\.yaml:48:14: scan\.n_volumes: must be a whole number from 1 to 100000, got 'many' \(text\)$"),
    ("  n_volumes: 60\n", "  n_volumes: 60.5\n", r"^p\.yaml:48:14: scan\.n_volumes: must be a whole number"),
    ("  tr_s: 1.0\n", "  tr_s: true\n",
     r"^p\.yaml:47:9: scan\.tr_s: must be a number of seconds .*, got true \(a boolean\)$"),
    ("  tr_s: 1.0\n", "  tr_s: .nan\n", r"^p\.yaml:47:9: scan\.tr_s: must be a number of seconds .*, got nan$"),
    ("  tr_s: 1.0\n", "  tr_s: 0\n",
     r"^p\.yaml:47:9: scan\.tr_s: must be a number of seconds more than 0 and at most 10, got 0\.0$"),
    ("cuedpain_version: dev", "cuedpain_version: '0.0.1'",
     rf"^p\.yaml:1:19: cuedpain_version: this protocol is pinned to cuedpain '0\.0\.1' but this is cuedpain "
     rf"{re.escape(__version__)};"),
    ("cuedpain_version: dev\n", "",
     r"^p\.yaml:1:1: cuedpain_version: required key 'cuedpain_version' is missing"),
    ("    cue: relief_cue\n", "    cue: releif_cue\n",
     r"^p\.yaml:23:14: trial_types\.pain\.phases\[2\]\.cue: no cue or cue-mapping role named 'releif_cue' "
     r"\(did you mean 'relief_cue'\?\); known: fixation, pain_cue, relief_cue$"),
    ("        cuff: hold\n", "        cuff: none\n",
     r"^p\.yaml:24:15: trial_types\.pain\.phases\[2\]\.cuff: the cuff is inflated here; say 'hold' to keep it "
     r"inflated or 'deflate' to release it$"),
    ("        cuff: deflate\n", "        cuff: hold\n",
     r"^p\.yaml:30:9: trial_types\.pain\.phases\[4\]\.cuff: the cuff is inflated here; say 'hold' to keep it "
     r"inflated or 'deflate' to release it$"),
    (BASE[BASE.index("      - name: deflation"):BASE.index("trials:")], "",
     r"^p\.yaml:11:5: trial_types\.pain\.phases: the trial ends with the cuff inflated; add a phase with "
     r"cuff: deflate$"),
    ("        cuff: inflate\n", "        cuff: hold\n",
     r"^p\.yaml:18:15: trial_types\.pain\.phases\[1\]\.cuff: the cuff is deflated here; 'hold' keeps an inflated "
     r"cuff inflated"),
    ("        cuff: hold\n", "        cuff: hold\n        timed_from: target_reached\n",
     r"^p\.yaml:25:21: trial_types\.pain\.phases\[2\]\.timed_from: 'target_reached' is only for the phase that "
     r"inflates the cuff"),
    ("  fixation: {kind: shape, shape: cross, size: 0.05, units: height}\n",
     "  fixation: {kind: shape, shape: cross, size: 0.05, units: height}\n  dot: {kind: shape, shape: circle, "
     "size: 0.05, units: heigth}\n",
     r"^p\.yaml:7:56: cues\.dot\.units: must be one of 'pix', 'norm', 'height', 'deg', 'cm', got 'heigth' \(text\) "
     r"\(did you mean 'height'\?\)$"),
    ("  fixation: {kind: shape, shape: cross, size: 0.05, units: height}\n",
     "  fixation: {kind: shape, shape: cross, size: 0.05}\n",
     r"^p\.yaml:6:3: cues\.fixation\.units: required key 'units' is missing \(it must be one of 'pix', 'norm', "
     r"'height', 'deg', 'cm'\)$"),
    ("  fixation: {kind: shape, shape: cross,", "  fixation: {kind: shape, shape: star,",
     r"^p\.yaml:6:34: cues\.fixation\.shape: must be one of 'circle', 'triangle', 'square', 'cross', 'rect', "
     r"got 'star' \(text\) \(did you mean 'square'\?\)$"),
    ("  fixation: {kind: shape,", "  fixation: {kind: sprite,",
     r"^p\.yaml:6:20: cues\.fixation\.kind: must be one of 'shape', 'text', 'image', got 'sprite' \(text\)$"),
    ("  fixation: {", "  cross: {",
     r"^p\.yaml:5:1: cues: must include a cue named 'fixation'"),
    ("color: orange", "color: ornage",
     r"^p\.yaml:7:51: cues\.pain_cue\.color: unknown colour name 'ornage' \(did you mean 'orange'\?\)"),
    ("text: relief soon, size: 0.05,", "text: relief soon, size: [0.05, 0.1],",
     r"^p\.yaml:8:47: cues\.relief_cue\.size: a text cue's size is its letter height: one number, "
     r"got \[0\.05, 0\.1\]$"),
    ("  counts: {pain: 2}\n", "  counts: {pian: 2}\n",
     r"^p\.yaml:38:12: trials\.counts\.pian: no trial type named 'pian' \(did you mean 'pain'\?\); trial types: pain$"),
    ("  counts: {pain: 2}\n", "  counts: {pain: 0}\n",
     r"^p\.yaml:38:3: trials\.counts: the run has no trials"),
    ("  counts: {pain: 2}\n", "  counts: {pain: 3}\n  max_run_length: 2\n",
     r"^p\.yaml:39:19: trials\.max_run_length: 3 'pain' trials cannot be ordered with at most 2 in a row among "
     r"0 other trials \(at most 2 fit\)$"),
    ("target: {value: 20, unit: kPa}", "target: {value: 31, unit: kPa}",
     r"^p\.yaml:42:3: stimulation\.target: 31\.0 kPa is above safety\.max_pressure \(30\.0 kPa\)$"),
    ("max_pressure: {value: 30, unit: kPa}", "max_pressure: {value: 800, unit: mmHg}",
     r"^p\.yaml:45:3: safety\.max_pressure: 106\.7 kPa is above 100 kPa, the highest any supported cuff allows$"),
    ("  rate_kpa_s: 40\n", "  rate_kpa_s: 40\n  calibrated_fraction: 0.5\n",
     r"^p\.yaml:44:24: stimulation\.calibrated_fraction: only applies to target: calibrated"),
    ("  tail_s: 3\n", "  tail_s: 3\nkeys: {left: '5'}\n",
     r"^p\.yaml:52:14: keys\.left: key '5' is already the trigger key"),
    ("  tail_s: 3\n", "  tail_s: 3\nkeys: {left: 'Shift'}\n",
     r"^p\.yaml:52:14: keys\.left: must be a key name as PsychoPy reports it"),
    ("{dist: uniform, min: 2, max: 4, step: 0.5}", "{dist: uniform, min: 5, max: 4, step: 0.5}",
     r"^p\.yaml:14:48: trial_types\.pain\.phases\[0\]\.duration\.max: must be >= min \(5 s\), got 4\.0$"),
    ("{dist: uniform, min: 2, max: 4, step: 0.5}", "{dist: uniform, min: 2, max: 4, step: 0.3}",
     r"^p\.yaml:14:57: trial_types\.pain\.phases\[0\]\.duration\.step: max - min \(2 s\) must be a whole number of "
     r"steps; step 0\.3 s does not divide it$"),
    ("{dist: uniform, min: 2, max: 4, step: 0.5}", "{dist: uniform, min: 2, max: 4, stpe: 0.5}",
     r"^p\.yaml:14:51: trial_types\.pain\.phases\[0\]\.duration\.stpe: unknown key 'stpe' \(did you mean 'step'\?\)"),
    ("{dist: uniform, min: 2, max: 4, step: 0.5}", "{dist: normal, mean: 3}",
     r"^p\.yaml:14:26: trial_types\.pain\.phases\[0\]\.duration\.dist: must be one of 'uniform', 'choice', "
     r"'truncexp', got 'normal' \(text\) \(did you mean 'uniform'\?\)$"),
    ("{dist: uniform, min: 2, max: 4, step: 0.5}", "{min: 2, max: 4}",
     r"^p\.yaml:14:9: trial_types\.pain\.phases\[0\]\.duration\.dist: required key 'dist' is missing"),
    ("{dist: choice, values: [5, 6]}", "{dist: choice, values: [5, -6]}",
     r"^p\.yaml:36:46: trial_types\.pain\.phases\[5\]\.duration\.values\[1\]: must be a number of seconds more "
     r"than 0 and at most 600, got -6\.0$"),
    ("{dist: choice, values: [5, 6]}", "{dist: choice, values: []}",
     r"^p\.yaml:36:34: trial_types\.pain\.phases\[5\]\.duration\.values: must be a list of 1 to 1000"),
    ("{dist: choice, values: [5, 6]}", "{dist: truncexp, mean: 8, min: 5, max: 9}",
     r"^p\.yaml:36:42: trial_types\.pain\.phases\[5\]\.duration\.mean: must be more than min \(5 s\) and less than "
     r"\(min \+ max\) / 2 \(7 s\) for a truncated exponential, got 8\.0$"),
    ("        duration: 4\n", "        duration: 2\n",
     r"^p\.yaml:33:19: trial_types\.pain\.phases\[4\]\.duration: a rating phase must last at least "
     r"rating\.timeout_s \(3 s\); its shortest duration is 2 s$"),
    ("rating:\n  timeout_s: 3\n", "",
     r"^p\.yaml:31:15: trial_types\.pain\.phases\[4\]\.kind: a rating phase needs a rating scale: a top-level 'rating' \(one scale\) or 'ratings' \(named scales\) section$"),
    ("        cue: pain_cue\n", "        cue: fixation\n",
     r"^p\.yaml:13:14: trial_types\.pain\.phases\[0\]\.cue: the phase before inflation must show the pain-onset cue"),
    ("        cue: relief_cue\n", "        cue: pain_cue\n",
     r"^p\.yaml:23:14: trial_types\.pain\.phases\[2\]\.cue: the phase before deflation must show the relief cue"),
    ("  task: test\n", "  task: my-task\n",
     r"^p\.yaml:4:9: metadata\.task: must be letters and digits only \(a BIDS label\), e.g\. 'loggia2014', got "
     r"'my-task' \(text\)$"),
    ("        bids_trial_type: pain\n", "        bids_trial_type: 'pain onset'\n",
     r"^p\.yaml:21:26: trial_types\.pain\.phases\[1\]\.bids_trial_type: must be letters, digits and '_', starting "
     r"with a letter, got 'pain onset' \(text\)$"),
    ("      - name: relief\n", "      - name: pain\n",
     r"^p\.yaml:22:15: trial_types\.pain\.phases\[2\]\.name: phase name 'pain' is used twice in this trial type$"),
    ("    phases:\n", "    phases: []\n    old_phases:\n",
     r"^p\.yaml:12:5: trial_types\.pain\.old_phases: unknown key 'old_phases'"),
    ("scan:\n", "scna:\n",
     r"^p\.yaml:46:1: scna: unknown key 'scna' \(did you mean 'scan'\?\); allowed keys here: cuedpain_version, "),
    ("  n_volumes: 60\n", "  n_volumes: 60\n  n_volumes: 61\n",
     r"^p\.yaml:49:3: scan\.n_volumes: duplicate key 'n_volumes' \(first given on line 48\)$"),
    ("  lead_in_s: 2\n", "  lead_in_s: 2\n  on: 3\n",
     r"^p\.yaml:51:3: scan\.True: key True must be text \(YAML reads yes/no/on/off/true/false as booleans: quote "
     r"the key\)$"),
    ("  lead_in_s: 2\n", "  lead_in_s: [2\n",
     r"^p\.yaml:51:9: YAML syntax error: while parsing a flow sequence expected ',' or '\]', but got ':'$"),
    ("    phases:\n", "\tphases:\n",
     r"^p\.yaml:11:1: YAML syntax error: while scanning for the next token found character '\\t' that cannot start "
     r"any token$"),
    ("  fixation: {kind: shape,",
     "  pic: {kind: image, image: ../secret.png, size: 1, units: pix}\n  fixation: {kind: shape,",
     r"^p\.yaml:6:29: cues\.pic\.image: must stay inside the stimuli directory"),
]


@pytest.mark.parametrize("old,new,message", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_invalid_protocol_message(old, new, message):
    with pytest.raises(InputError, match=message):
        parse(with_edit(old, new))


CUE_MAPPING = textwrap.dedent("""\
    cue_mapping:
      select: participant_number
      mappings:
        - {pain_role: pain_cue, relief_role: relief_cue}
        - {pain_role: relief_cue, relief_role: pain_cue}
    """)


def _with_mapping(mapping: str = CUE_MAPPING) -> str:
    text = with_edit("trial_types:\n", mapping + "trial_types:\n")
    text = with_edit("    cue: pain_cue\n", "    cue: pain_role\n", text)
    return with_edit("    cue: relief_cue\n", "    cue: relief_role\n", text)


def test_cue_mapping_valid():
    p = parse(_with_mapping())
    assert p.cue_mapping.select == "participant_number"
    assert p.cue_mapping.roles == ("pain_role", "relief_role")


@pytest.mark.parametrize("edit,message", [
    (("relief_role: pain_cue}", "relief_role: pian_cue}"),
     r"^p\.yaml:13:44: cue_mapping\.mappings\[1\]\.relief_role: no cue named 'pian_cue' \(did you mean 'pain_cue'\?\)"),
    (("relief_role: pain_cue}", "relief_role: relief_cue}"),
     r"^p\.yaml:13:7: cue_mapping\.mappings\[1\]: maps two roles to the same cue"),
    (("{pain_role: relief_cue, relief_role: pain_cue}", "{pain_role: relief_cue}"),
     r"^p\.yaml:13:7: cue_mapping\.mappings\[1\]: must map the same roles as mappings\[0\] \(pain_role, relief_role\)"),
    (("{pain_role: pain_cue, relief_role: relief_cue}", "{fixation: pain_cue, relief_role: relief_cue}"),
     r"^p\.yaml:12:8: cue_mapping\.mappings\[0\]\.fixation: role 'fixation' is also a cue name"),
    (("select: participant_number", "select: by_number"),
     r"^p\.yaml:10:11: cue_mapping\.select: must be one of 'participant_hash', 'participant_number', 'table', got 'by_number'"),
])
def test_invalid_cue_mapping(edit, message):
    with pytest.raises(InputError, match=message):
        parse(_with_mapping(with_edit(*edit, CUE_MAPPING)))


def test_relief_cue_mapped_to_fixation_is_refused():
    mapping = CUE_MAPPING.replace("- {pain_role: relief_cue, relief_role: pain_cue}",
                                  "- {pain_role: pain_cue, relief_role: fixation}")
    with pytest.raises(InputError, match=r"phases\[2\]\.cue: the phase before deflation must show the relief cue"):
        parse(_with_mapping(mapping))


@pytest.mark.parametrize("text,message", [
    ("", r"^p\.yaml:1:1: \(top level\): a protocol must be a mapping of sections .*; got an empty file$"),
    ("- a\n- b\n", r"^p\.yaml:1:1: \(top level\): a protocol must be a mapping of sections .*; got list$"),
    ("just text\n", r"^p\.yaml:1:1: \(top level\): a protocol must be a mapping .*; got str$"),
    ("a: 1\n---\nb: 2\n", r"^p\.yaml:2:1: YAML syntax error: expected a single document in the stream"),
    ("a: !!python/object:os.system {}\n", r"^p\.yaml:1:4: a: unsupported YAML tag "
                                          r"'tag:yaml\.org,2002:python/object:os\.system'; write plain lists"),
    ("a: !!python/name:os.system\n", r"^p\.yaml:1:4: a: cannot read this value \(could not determine a "
                                     r"constructor for the tag"),
    ("a: \x07\n", r"^p\.yaml:1: YAML syntax error: character U\+0007 is not allowed in YAML text$"),
    ("? [a, b]\n: 1\n", r"^p\.yaml:1:3: \(top level\): a key must be a plain name, not a list or mapping$"),
    ("a: &x [*x]\n", r"^p\.yaml"),
])
def test_not_a_protocol(text, message):
    with pytest.raises(InputError, match=message):
        parse(text)


def test_alias_bomb_is_refused_quickly():
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    with pytest.raises(InputError, match=r"too many values \(more than 100000, counting repeated aliases\)"):
        parse("\n".join(lines) + "\n")


# ---------------------------------------------------------------- files


def test_load_protocol_file_errors(tmp_path):
    with pytest.raises(InputError, match=r"nope\.yaml: protocol file not found$"):
        load_protocol(tmp_path / "nope.yaml")
    with pytest.raises(InputError, match=r": is a directory, expected a protocol file"):
        load_protocol(tmp_path)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"cuedpain_version: dev\nname: \xff\xfe\n")
    with pytest.raises(InputError, match=r"bin\.yaml:2: not UTF-8 text \(byte 0xff\); save the file as UTF-8$"):
        load_protocol(binary)


def test_image_cue_files_are_checked(tmp_path):
    (tmp_path / "protocols").mkdir()
    (tmp_path / "stimuli").mkdir()
    text = with_edit("  pain_cue: {kind: shape, shape: triangle, color: orange, size: 0.2, units: height}\n",
                     "  pain_cue: {kind: image, image: cues/tri.png, size: [0.2, 0.1], units: height}\n")
    path = tmp_path / "protocols" / "p.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=rf"^{re.escape(str(path))}:7:34: cues\.pain_cue\.image: image file not "
                                         rf"found: {re.escape(str(tmp_path / 'stimuli' / 'cues' / 'tri.png'))}"):
        load_protocol(path)
    (tmp_path / "stimuli" / "cues").mkdir()
    (tmp_path / "stimuli" / "cues" / "tri.png").write_bytes(b"not a png at all")
    with pytest.raises(InputError, match=r"cues\.pain_cue\.image: .*tri\.png is not a readable image"):
        load_protocol(path)
    (tmp_path / "stimuli" / "cues" / "tri.png").write_bytes((ROOT / "stimuli" / "orange_triangle.png").read_bytes())
    p = load_protocol(path)
    assert p.cues["pain_cue"].size == (0.2, 0.1)
    assert p.cues["pain_cue"].image_path == tmp_path / "stimuli" / "cues" / "tri.png"


# ---------------------------------------------------------------- schema and docs from one source


def test_committed_json_schema_matches_the_code():
    committed = (PROTOCOLS / "cuedpain-protocol.schema.json").read_text(encoding="utf-8")
    assert committed == protocol_json_schema(), "run: .venv/bin/python -m experiment.protocol.generate"


def test_json_schema_shape():
    import json

    schema = json.loads(protocol_json_schema())
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"cuedpain_version", "metadata", "cues", "trial_types", "trials",
                                       "stimulation", "safety", "scan"}
    safety = schema["properties"]["safety"]
    assert "max_pressure" in safety["required"] and "default" not in safety["properties"]["max_pressure"]
    assert safety["properties"]["max_pressure"]["properties"]["unit"]["enum"] == ["kPa", "mmHg"]


def _generated(doc: str, name: str) -> str:
    begin, end = GENERATED_BEGIN.format(name=name), GENERATED_END.format(name=name)
    return doc.split(begin, 1)[1].split(end, 1)[0].lstrip("\n")


def test_docs_field_table_matches_the_code():
    doc = (ROOT / "docs" / "protocol-format.md").read_text(encoding="utf-8")
    assert _generated(doc, "protocol") == reference_markdown(PROTOCOL_SPEC), "run: python -m experiment.protocol.generate"


def test_docs_annotated_example_is_a_valid_protocol():
    doc = (ROOT / "docs" / "protocol-format.md").read_text(encoding="utf-8")
    example = re.search(r"```yaml\n(.*?)```", doc, re.S).group(1)
    p = parse_protocol(example, file="docs example", base_dir=ROOT / "docs")
    # every top-level section of the format appears in the complete example
    # (`ratings` is the named-scales form of `rating`: a file gives one or the other)
    assert set(yaml.safe_load(example)) | {"ratings"} == set(PROTOCOL_SPEC.fields)
    build_schedule(p, participant="P01")


# ---------------------------------------------------------------- property: no input gives a traceback

VALID = load_dict(DEMO)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


ALL_PATHS = [p for p in _paths(VALID) if p]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                    st.sampled_from(["kPa", "mmHg", "calibrated", "inflate", "hold", "deflate", "uniform",
                                     "choice", "truncexp", "target_reached", "rating", "fixation", "pain_cue"]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=8)


def _typo(key: str, data: st.DataObject) -> str:
    i = data.draw(st.integers(0, max(0, len(key) - 1)))
    op = data.draw(st.sampled_from(["drop", "double", "swap", "upper"]))
    if op == "drop":
        return key[:i] + key[i + 1:]
    if op == "double":
        return key[:i] + key[i:i + 1] * 2 + key[i + 1:]
    if op == "swap" and i + 1 < len(key):
        return key[:i] + key[i + 1] + key[i] + key[i + 2:]
    return key.upper()


def _mutate(doc: dict, data: st.DataObject) -> dict:
    import copy

    doc = copy.deepcopy(doc)
    for _ in range(data.draw(st.integers(1, 3))):
        paths = [p for p in _paths(doc) if p]
        path = data.draw(st.sampled_from(paths or ALL_PATHS[:1]))
        parent = doc
        try:
            for step in path[:-1]:
                parent = parent[step]
            last = path[-1]
            op = data.draw(st.sampled_from(["delete", "replace", "typo", "copy"]))
            if op == "delete":
                del parent[last]
            elif op == "replace":
                parent[last] = data.draw(VALUES)
            elif op == "typo" and isinstance(last, str):
                parent[_typo(last, data)] = parent.pop(last)
            else:
                other = data.draw(st.sampled_from(ALL_PATHS))
                src = VALID
                for step in other:
                    src = src[step]
                parent[last] = copy.deepcopy(src)
        except (KeyError, IndexError, TypeError):
            continue
    return doc


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_protocols_give_a_protocol_or_one_input_error(data):
    doc = _mutate(VALID, data)
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    try:
        p = parse_protocol(text, file="m.yaml", base_dir=PROTOCOLS)
    except InputError as exc:
        assert exc.message.startswith("m.yaml"), exc.message
        assert "\n" not in exc.message
        event("refused by the checker")
        return
    try:
        timeline = build_schedule(p, participant="P01")
    except InputError as exc:
        assert exc.message.startswith("m.yaml"), exc.message
        event("refused by pre-flight")
        return
    event("valid")
    assert timeline.events and timeline.run_length_s <= p.scan.duration_s


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_gives_a_protocol_or_one_input_error(text):
    try:
        parse_protocol(text, file="t.yaml")
    except InputError as exc:
        assert exc.message.startswith("t.yaml")


def test_spec_covers_the_reference_protocols():
    """Every key used in the reference protocols is a documented field (no key is ignored)."""
    for path in (DEMO, LOGGIA):
        data = yaml.safe_load(path.read_text())
        assert set(data) <= set(PROTOCOL_SPEC.fields)


def test_protocol_paths_resolve_relative_to_the_file(tmp_path):
    target = tmp_path / "deep" / "p.yaml"
    target.parent.mkdir()
    text = with_edit("cues:\n", "stimuli_dir: ../images\ncues:\n")
    target.write_text(text)
    p = load_protocol(target)
    assert p.stimuli_dir == Path(tmp_path / "images")


@pytest.mark.parametrize("key", ["\n", " padded", "tab\there", ""])
def test_an_unprintable_key_is_quoted_in_the_message_path(key: str) -> None:
    """Found by the mutation test: a key of '\\n' put a line break into the field path."""
    doc = load_dict(DEMO)
    doc["metadata"][key] = None
    with pytest.raises(InputError) as err:
        parse_protocol(yaml.safe_dump(doc, sort_keys=False), file="m.yaml", base_dir=PROTOCOLS)
    assert "\n" not in err.value.message and f"metadata.{key!r}: unknown key" in err.value.message
